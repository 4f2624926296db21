"""Resolution's judge: out-of-order events are judged against the dossier's history."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from services.resolution.judge import judge, needs_history
from services.resolution.store import DossierCache
from shared.contract import topics
from shared.contract.events import EventType
from shared.contract.lifecycle import DossierLifecycleEvent, DossierState
from shared.dossier import Dossier, fold
from tests.support import CATALOG, UNIT, VN
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


def test_every_canonical_event_and_snapshot_of_a_full_path_survives_a_round_trip() -> None:
    """What resolution publishes and stores is read back by other services and by itself: every canonical
    event and the dossier snapshot of a path through every event type must parse back unchanged."""
    tuesday = datetime(2025, 1, 7, 8, 0, tzinfo=VN)
    path = [
        received(),
        event(EventType.STEP_STARTED, tuesday, step="thẩm định", unit_code=UNIT.code, duration="1 working_days"),
        event(EventType.FEE_REQUESTED, tuesday + timedelta(hours=1), amount_vnd=50000),
        event(EventType.FEE_PAID, tuesday + timedelta(hours=2)),
        event(EventType.SUPPLEMENT_REQUESTED, tuesday + timedelta(hours=3), reason="thiếu bản sao"),
        event(EventType.SUPPLEMENT_RECEIVED, tuesday + timedelta(hours=4)),
        event(EventType.PAUSED, tuesday + timedelta(hours=5), reason="inspection"),
        event(EventType.RESUMED, tuesday + timedelta(hours=6)),
        event(EventType.APOLOGY_ISSUED, tuesday + timedelta(hours=7), reason="Chờ xác minh",
              new_appointment_at=datetime(2025, 1, 20, 17, 0, tzinfo=VN).isoformat()),
        event(EventType.STEP_COMPLETED, tuesday + timedelta(hours=8), step="thẩm định", unit_code=UNIT.code),
        event(EventType.RESOLVED, tuesday + timedelta(hours=9)),
        event(EventType.RESULT_RETURNED, tuesday + timedelta(days=1)),
    ]
    verdicts = judge(path, {}, {}, catalog=CATALOG, clock_for=RESTART, now=NOW)
    assert (verdicts.accepted, verdicts.refused) == (len(path), 0)
    canonical = [DossierLifecycleEvent.model_validate_json(payload) for _, _, payload in verdicts.outbox]
    assert [e.event_type for e in canonical] == [e.event_type for e in path]
    assert [e.sequence for e in canonical] == list(range(1, len(path) + 1))
    for built in canonical:
        assert DossierLifecycleEvent.model_validate_json(built.model_dump_json()) == built
    [dossier] = verdicts.dossiers.values()
    assert Dossier.model_validate_json(dossier.model_dump_json()) == dossier
    assert dossier == fold(path, CATALOG, RESTART)
    # The stored snapshot is all of it but the timeline, which is stored entry by entry.
    assert Dossier.model_validate_json(dossier.snapshot_json()) == dossier.model_copy(update={"timeline": []})
    assert verdicts.timeline == {dossier.code: dossier.timeline}


def test_only_the_timeline_entries_a_batch_adds_are_stored() -> None:
    history = [received(), event(EventType.STEP_STARTED, MONDAY + timedelta(hours=1), step="s", unit_code="07420")]
    as_cached = fold(history, CATALOG, RESTART)  # keeps the entries it folded, all of them stored already
    as_read = Dossier.model_validate_json(as_cached.snapshot_json())  # a snapshot keeps none
    resolved = event(EventType.RESOLVED, MONDAY + timedelta(hours=5))
    for stored in (as_cached, as_read):
        verdicts = judge([resolved], {stored.code: stored}, {}, catalog=CATALOG, clock_for=RESTART, now=NOW)
        [entry] = verdicts.timeline[stored.code]
        assert (entry.sequence, entry.event_type, entry.state) == (3, EventType.RESOLVED, DossierState.RESOLVED)


def test_a_refolded_dossier_stores_its_whole_timeline_again() -> None:
    history = [received(), event(EventType.PAUSED, MONDAY + timedelta(hours=2), reason="other"),
               event(EventType.RESUMED, MONDAY + timedelta(hours=4))]
    stored = Dossier.model_validate_json(fold(history, CATALOG, RESTART).snapshot_json())
    # A step that started before the pause: every entry after it moves one place.
    late_step = event(EventType.STEP_STARTED, MONDAY + timedelta(hours=1), step="s", unit_code=stored.unit_code)
    verdicts = judge([late_step], {stored.code: stored}, {stored.code: list(history)},
                     catalog=CATALOG, clock_for=RESTART, now=NOW)
    assert [(e.sequence, e.event_type) for e in verdicts.timeline[stored.code]] == [
        (1, EventType.RECEIVED), (2, EventType.STEP_STARTED), (3, EventType.PAUSED), (4, EventType.RESUMED)]


def test_the_dossier_cache_keeps_the_most_recently_used_and_the_time_each_was_written() -> None:
    first = fold([received()], CATALOG, RESTART)
    second, third = (first.model_copy(update={"code": f"{first.code}-{n}"}) for n in (2, 3))
    cache = DossierCache(size=2)
    cache.put([first, second], NOW)
    assert cache.take(first.code) is first  # now the most recently used of the two
    cache.put([third], NOW + timedelta(seconds=1))
    assert (len(cache), cache.take(second.code)) == (2, None)
    assert (cache.written_at(first.code), cache.written_at(third.code)) == (NOW, NOW + timedelta(seconds=1))
    cache.drop([first.code, "never-there"])
    assert (cache.take(first.code), cache.written_at(first.code), len(cache)) == (None, None, 1)
