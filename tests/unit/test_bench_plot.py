"""The end-to-end benchmark's plot: rates from the cumulative timeline, drawn into a PNG."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from bench.plot import completed_median, plot, rates

pytestmark = pytest.mark.unit

TIMELINE = [{"t": 0.0, "sent": 0, "judged": 0, "probe_p50_5s": -1},
            {"t": 1.0, "sent": 500, "judged": 300, "probe_p50_5s": 0.4},
            {"t": 3.0, "sent": 1500, "judged": 1300, "probe_p50_5s": 0.6},
            {"t": 3.0, "sent": 1500, "judged": 1300, "probe_p50_5s": 0.6},  # sampled twice in one instant
            {"t": 4.0, "sent": 1500, "judged": 1500, "probe_p50_5s": 0.5}]


def test_rates_come_from_the_cumulative_counts_over_a_sliding_window() -> None:
    assert rates(TIMELINE, "sent", window=1.0) == ([1.0, 3.0, 3.0, 4.0], [500.0, 500.0, 500.0, 0.0])
    assert rates(TIMELINE, "judged", window=1.0) == ([1.0, 3.0, 3.0, 4.0], [300.0, 500.0, 500.0, 200.0])
    # Over 3 s: from t=0 until a sample 3 s back exists, then from t=1.
    assert rates(TIMELINE, "judged", window=3.0) == ([1.0, 3.0, 3.0, 4.0], [300.0, 1300 / 3, 1300 / 3, 400.0])


def test_the_latency_line_follows_when_probes_were_seen_not_sent() -> None:
    # Sent at 0, 1 and 2 s; seen at 6, 1.5 and 9 s.
    probes = [[0.0, 6.0], [1.0, 0.5], [2.0, 7.0]]
    assert completed_median(probes, [1.0, 2.0, 6.0, 9.0, 20.0], window=5.0) == [
        (2.0, 0.5), (6.0, 6.0), (9.0, 7.0)]  # at 6 s: 0.5 and 6.0 seen, the upper middle; nothing seen by 20 s


def test_a_run_is_drawn_as_a_png(tmp_path: Path) -> None:
    result = {"timeline": TIMELINE, "settings": {"rate": 500}, "machine": {"cpus": 2},
              "measured_at": "2026-11-26T04:00:00+00:00", "end_to_end_events_per_s": 375, "send_seconds": 3.0,
              "latency_s": {"p99": 0.6}, "probes": [[0.5, 0.4], [1.5, 0.6], [2.5, 0.5]]}
    out = plot(result, tmp_path / "run.png")
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == (1210, 770)  # 11 x 7 inches at 110 dpi
