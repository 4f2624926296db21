"""Resolution's judge: out-of-order events are judged against the dossier's history."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from services.resolution.judge import judge, needs_history
from shared.contract import topics
from shared.contract.events import EventType
from shared.contract.lifecycle import DossierState
from shared.dossier import fold
from tests.support import CATALOG
from tests.unit.test_dossier import MONDAY, RESTART, event, received

pytestmark = pytest.mark.unit
NOW = datetime(2025, 1, 10, tzinfo=UTC)


def test_an_older_event_that_fits_the_history_is_accepted_and_refolded() -> None:
    history = [received(), event(EventType.RESOLVED, MONDAY + timedelta(days=2))]
    current = fold(history, CATALOG, RESTART)
    # The step really started before the resolution; its event arrives late.
    late_step = event(EventType.STEP_STARTED, MONDAY + timedelta(hours=1), step="s", unit_code=current.unit_code)
    verdicts = judge([late_step], {current.code: current}, {current.code: list(history)},
                     catalog=CATALOG, clock_for=RESTART, now=NOW)
    assert (verdicts.accepted, verdicts.refused) == (1, 0)
    updated = verdicts.dossiers[current.code]
    assert updated.state is DossierState.RESOLVED
    assert updated.sequence == 3
    assert [e.event_type for e in updated.timeline] == [EventType.RECEIVED, EventType.STEP_STARTED,
                                                         EventType.RESOLVED]
    topic, _, payload = verdicts.outbox[0]
    assert topic == topics.LIFECYCLE
    assert json.loads(payload)["sequence"] == 3


def test_an_older_event_that_does_not_fit_is_refused_as_out_of_order() -> None:
    history = [received(), event(EventType.PAUSED, MONDAY + timedelta(hours=2), reason="other"),
               event(EventType.RESUMED, MONDAY + timedelta(hours=4))]
    current = fold(history, CATALOG, RESTART)
    # A second pause placed inside the first one cannot have happened.
    inside = event(EventType.PAUSED, MONDAY + timedelta(hours=3), reason="other")
    verdicts = judge([inside], {current.code: current}, {current.code: list(history)},
                     catalog=CATALOG, clock_for=RESTART, now=NOW)
    assert (verdicts.accepted, verdicts.refused) == (0, 1)
    topic, _, payload = verdicts.outbox[0]
    rejection = json.loads(payload)
    assert topic == topics.REJECTIONS
    assert rejection["reason"] == "out_of_order"
    assert rejection["dossier_state"] == "processing"
    assert current.code not in verdicts.dossiers


def test_events_in_one_batch_see_each_other() -> None:
    first, second = received(), event(EventType.RESOLVED, MONDAY + timedelta(hours=5))
    verdicts = judge([first, second], {}, {}, catalog=CATALOG, clock_for=RESTART, now=NOW)
    assert verdicts.accepted == 2
    assert [json.loads(p)["sequence"] for _, _, p in verdicts.outbox] == [1, 2]


def test_history_is_loaded_for_every_stored_dossier_an_event_reaches_back_into() -> None:
    current = fold([received(), event(EventType.PAUSED, MONDAY + timedelta(hours=2), reason="other")],
                   CATALOG, RESTART)
    in_order = event(EventType.RESUMED, MONDAY + timedelta(hours=6))
    behind_the_batch = event(EventType.STEP_STARTED, MONDAY + timedelta(hours=5), step="s",
                             unit_code=current.unit_code)
    assert needs_history([in_order], {current.code: current}) == set()
    assert needs_history([in_order, behind_the_batch], {current.code: current}) == {current.code}


def test_a_new_dossier_out_of_order_within_its_first_batch_is_refolded() -> None:
    resolved_first = event(EventType.RESOLVED, MONDAY + timedelta(hours=5))
    step = event(EventType.STEP_STARTED, MONDAY + timedelta(hours=1), step="s", unit_code="07420")
    verdicts = judge([received(), resolved_first, step], {}, {}, catalog=CATALOG, clock_for=RESTART, now=NOW)
    assert verdicts.accepted == 3
    dossier = next(iter(verdicts.dossiers.values()))
    assert [e.event_type for e in dossier.timeline] == [EventType.RECEIVED, EventType.STEP_STARTED,
                                                        EventType.RESOLVED]
