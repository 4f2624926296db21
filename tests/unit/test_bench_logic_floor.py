"""The logic's floor runs each stage's own code on the events the stage before produced, with no I/O."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from bench.logic_floor import STAGES, Stages, measure, simulated
from services.metrics.tally import open_kind
from shared.contract.events import EventType
from shared.contract.lifecycle import DossierLifecycleEvent, EventAccepted
from shared.crypto import Keyring, new_key_spec

pytestmark = pytest.mark.unit


def test_each_stage_takes_what_the_one_before_produced() -> None:
    payloads = simulated(1_500)
    stages = Stages(Keyring.parse(new_key_spec()), datetime.now(UTC))

    accepted = stages.intake(payloads)
    lifecycle = stages.resolution(accepted)
    stages.metrics(lifecycle)
    owed = stages.notify(lifecycle)
    stages.send(owed)

    assert len(accepted) == len(payloads)  # the simulator sends nothing intake refuses
    sent_ids = {json.loads(payload)["id"] for payload in payloads}
    assert {EventAccepted.model_validate_json(payload).id for payload in accepted} == sent_ids
    canonical = [DossierLifecycleEvent.model_validate_json(payload) for payload in lifecycle]
    assert canonical, "resolution judged nothing"
    assert {event.source_event_id for event in canonical} <= sent_ids
    assert any(event.event_type is EventType.RECEIVED for event in canonical)
    latest: dict[str, DossierLifecycleEvent] = {}
    for event in canonical:
        if event.sequence > getattr(latest.get(event.dossier_code), "sequence", 0):
            latest[event.dossier_code] = event
    assert len(stages.tracker) == sum(1 for event in latest.values() if open_kind(event) is not None)
    assert owed, "no message owed for a whole simulated stream"
    assert {channel for _, _, channel, _ in owed} <= {"email", "sms", "zalo"}


def test_a_measurement_charges_every_stage_and_every_message() -> None:
    result = measure(simulated(1_000), batch=250)

    assert result["events"] == 1_000
    assert set(result["cpu_us_per_event"]) == set(STAGES)
    assert all(value > 0 for value in result["cpu_us_per_event"].values())
    assert result["cpu_us_per_event_total"] == pytest.approx(sum(result["cpu_us_per_event"].values()), abs=0.5)
    assert result["messages"] > 0
    assert result["cpu_us_per_message_built"] > 0
