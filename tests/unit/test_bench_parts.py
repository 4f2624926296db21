"""The end-to-end benchmark's CPU per event by part of the stack, beside the pipeline's floor and the logic's."""

from __future__ import annotations

import pytest

from bench.end_to_end import cpu_by_part


def test_each_service_is_charged_with_its_database_backends_and_nothing_is_lost() -> None:
    run = {"intake": 2.0, "postgres: intake": 1.0, "resolution": 4.0, "postgres: resolution": 2.0,
           "metrics": 1.5, "postgres: metrics": 0.5, "notify": 3.0, "postgres: notify": 1.0, "kafka": 2.5,
           "postgres": 0.25, "postgres: walwriter": 0.25, "load generator (this bench)": 1.0, "sinks": 0.5}
    floor = {"floor intake": 30.0, "postgres: floor intake": 10.0, "floor resolution": 50.0,
             "postgres: floor resolution": 55.0, "floor metrics": 20.0, "postgres: floor metrics": 25.0,
             "floor notify": 18.0, "postgres: floor notify": 21.0, "kafka": 70.0, "floor source": 13.0,
             "postgres: background writer": 1.0}

    logic = {"intake": 60.0, "resolution": 90.0, "metrics": 30.0, "notify": 35.0}

    parts = cpu_by_part(run, 10_000, {"cpu_us_per_event": floor}, {"cpu_us_per_event": logic})

    assert parts["intake"] == {"end_to_end": 300.0, "pipeline_floor": 40.0, "logic_floor": 60.0, "glue": 200.0}
    assert parts["resolution"] == {"end_to_end": 600.0, "pipeline_floor": 105.0, "logic_floor": 90.0,
                                   "glue": 405.0}
    assert parts["kafka"] == {"end_to_end": 250.0, "pipeline_floor": 70.0, "logic_floor": 0.0, "glue": 180.0}
    assert parts["postgres, shared"] == {"end_to_end": 50.0, "pipeline_floor": 1.0, "logic_floor": 0.0,
                                         "glue": 49.0}
    assert parts["load and sinks"] == {"end_to_end": 150.0, "pipeline_floor": 13.0, "logic_floor": 0.0,
                                       "glue": 137.0}
    assert parts["total"]["end_to_end"] == pytest.approx(1e6 * sum(run.values()) / 10_000)
    assert parts["total"]["pipeline_floor"] == pytest.approx(sum(floor.values()))
    assert parts["total"]["logic_floor"] == pytest.approx(sum(logic.values()))
    assert parts["total"]["glue"] == pytest.approx(
        parts["total"]["end_to_end"] - sum(floor.values()) - sum(logic.values()), abs=0.1)
