"""The dossier fold: every lifecycle path, every forbidden transition, and the clock change each event causes."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.clock.calendar import WorkingCalendar
from shared.clock.policy import Policy, SupplementMode
from shared.contract.events import EventType
from shared.contract.lifecycle import DossierState, EventAccepted, OpenState, Timeliness
from shared.contract.rejections import RejectionReason
from shared.dossier import ClockFor, Dossier, ImpossibleTransition, clock_for_units, fold
from tests.support import CATALOG, UNIT, VN

pytestmark = pytest.mark.unit

CALENDAR = WorkingCalendar.load()
RESTART = clock_for_units(CATALOG, CALENDAR, Policy())
SUBTRACT = clock_for_units(CATALOG, CALENDAR, Policy(supplement_mode=SupplementMode.SUBTRACT))
THREE_DAYS = next(p for p in CATALOG.procedures.values() if str(p.duration) == "3 working_days" and not p.cutoff)
CODE = f"000.00.24.{UNIT.code}-250106-0001"
# Monday 6 January 2025, 09:00: 3 working days later is Thursday 9 January, 17:00.
MONDAY = datetime(2025, 1, 6, 9, 0, tzinfo=VN)
DUE = datetime(2025, 1, 9, 17, 0, tzinfo=VN)


def event(kind: EventType, at: datetime, **data: Any) -> EventAccepted:
    if kind is EventType.RECEIVED:
        data = {"procedure_code": THREE_DAYS.code, "unit_code": UNIT.code, "channel": "online", **data}
    return EventAccepted(id=f"{kind.value}-{at.isoformat()}-{random.random()}", source="urn:test", event_type=kind,
                         dossier_code=CODE, occurred_at=at, accepted_at=at, data=data)


def run(*events: EventAccepted, clock_for: ClockFor = RESTART) -> Dossier:
    return fold(events, CATALOG, clock_for)


def received() -> EventAccepted:
    return event(EventType.RECEIVED, MONDAY)


def test_receipt_sets_the_legal_due_instant_with_its_explanation() -> None:
    dossier = run(received())
    assert dossier.state is DossierState.RECEIVED
    assert dossier.legal_due_at == DUE == dossier.appointment_at
    assert dossier.calendar_version == CALENDAR.version
    assert any(step["kind"] == "counted_day" for step in dossier.explanation(CATALOG, RESTART(UNIT.code)))
    assert dossier.open_state(MONDAY) is OpenState.ON_TRACK
    assert dossier.open_state(DUE - timedelta(hours=2)) is OpenState.DUE_SOON
    assert dossier.open_state(DUE + timedelta(minutes=1)) is OpenState.OVERDUE


@pytest.mark.parametrize(("completed", "timeliness"), [
    (datetime(2025, 1, 8, 16, 0, tzinfo=VN), Timeliness.EARLY),
    (datetime(2025, 1, 9, 8, 0, tzinfo=VN), Timeliness.ON_TIME),
    (datetime(2025, 1, 9, 17, 0, tzinfo=VN), Timeliness.ON_TIME),
    (datetime(2025, 1, 9, 17, 1, tzinfo=VN), Timeliness.LATE),
])
def test_completion_is_classified_against_the_due_instant(completed: datetime, timeliness: Timeliness) -> None:
    dossier = run(received(), event(EventType.RESOLVED, completed))
    assert (dossier.state, dossier.timeliness, dossier.completed_at) == (DossierState.RESOLVED, timeliness, completed)
    assert dossier.time_used_ratio is not None
    assert dossier.time_used_ratio > 0


@pytest.mark.parametrize(("kind", "state", "reason"), [
    (EventType.REJECTED, DossierState.REJECTED, "Không đủ điều kiện"),
    (EventType.STOPPED, DossierState.STOPPED, "Dừng theo yêu cầu"),
    (EventType.WITHDRAWN, DossierState.WITHDRAWN, "Công dân xin rút"),
])
def test_every_ending_is_classified(kind: EventType, state: DossierState, reason: str) -> None:
    dossier = run(received(), event(kind, MONDAY + timedelta(hours=1), reason=reason))
    assert (dossier.state, dossier.timeliness, dossier.reason) == (state, Timeliness.EARLY, reason)


def test_the_whole_path_with_steps_fee_pause_and_return() -> None:
    tuesday = datetime(2025, 1, 7, 8, 0, tzinfo=VN)
    dossier = run(
        received(),
        event(EventType.STEP_STARTED, tuesday, step="thẩm định", unit_code=UNIT.code, duration="1 working_days"),
        event(EventType.FEE_REQUESTED, tuesday + timedelta(hours=1), amount_vnd=50000),
        event(EventType.FEE_PAID, tuesday + timedelta(hours=2)),
        event(EventType.PAUSED, tuesday + timedelta(hours=6), reason="inspection"),  # 14:00
        event(EventType.RESUMED, tuesday + timedelta(hours=8)),  # 16:00
        event(EventType.STEP_COMPLETED, tuesday + timedelta(hours=8, minutes=30), step="thẩm định",
              unit_code=UNIT.code),
        event(EventType.RESOLVED, tuesday + timedelta(hours=9)),
        event(EventType.RESULT_RETURNED, tuesday + timedelta(days=1)),
    )
    assert dossier.state is DossierState.RETURNED
    # One hour of fee wait and two hours of pause, all inside office hours: the due instant moves 3 office hours,
    # from Thursday 17:00 to Friday 10:30 (07:30 + 3 h).
    assert dossier.legal_due_at == datetime(2025, 1, 10, 10, 30, tzinfo=VN)
    step = dossier.steps[f"thẩm định@{UNIT.code}"]
    assert step.due_at == datetime(2025, 1, 8, 17, 0, tzinfo=VN)
    assert step.timeliness is Timeliness.EARLY
    assert [entry.event_type for entry in dossier.timeline][-1] is EventType.RESULT_RETURNED
    # receipt, fee requested, fee paid, paused, resumed: each says what it did to the clock
    assert [e.event_type for e in dossier.timeline if e.clock_change] == [
        EventType.RECEIVED, EventType.FEE_REQUESTED, EventType.FEE_PAID, EventType.PAUSED, EventType.RESUMED]


def test_supplement_restarts_the_clock_by_default() -> None:
    dossier = run(received(),
                  event(EventType.SUPPLEMENT_REQUESTED, datetime(2025, 1, 7, 10, 0, tzinfo=VN), reason="Thiếu"),
                  event(EventType.SUPPLEMENT_RECEIVED, datetime(2025, 1, 13, 9, 0, tzinfo=VN)))
    assert dossier.supplement_count == 1
    assert dossier.state is DossierState.PROCESSING
    assert dossier.legal_due_at == datetime(2025, 1, 16, 17, 0, tzinfo=VN)  # 3 working days from Monday 13
    assert dossier.clock_started_at == datetime(2025, 1, 13, 9, 0, tzinfo=VN)


def test_supplement_in_decision_766_mode_subtracts_the_wait_and_a_second_request_is_late() -> None:
    requested, answered = datetime(2025, 1, 7, 10, 0, tzinfo=VN), datetime(2025, 1, 8, 10, 0, tzinfo=VN)
    once = run(received(), event(EventType.SUPPLEMENT_REQUESTED, requested, reason="Thiếu"),
               event(EventType.SUPPLEMENT_RECEIVED, answered), clock_for=SUBTRACT)
    assert once.legal_due_at == datetime(2025, 1, 10, 17, 0, tzinfo=VN)  # one working day of waiting added
    twice = run(received(), event(EventType.SUPPLEMENT_REQUESTED, requested, reason="Thiếu"),
                event(EventType.SUPPLEMENT_RECEIVED, answered),
                event(EventType.SUPPLEMENT_REQUESTED, answered + timedelta(hours=1), reason="Thiếu nữa"),
                event(EventType.SUPPLEMENT_RECEIVED, answered + timedelta(hours=2)),
                event(EventType.RESOLVED, answered + timedelta(hours=3)), clock_for=SUBTRACT)
    assert twice.supplement_count == 2
    assert twice.timeliness is Timeliness.LATE


def test_apology_moves_the_appointment_not_the_legal_due_instant() -> None:
    new_date = datetime(2025, 1, 14, 17, 0, tzinfo=VN)
    in_time = run(received(), event(EventType.APOLOGY_ISSUED, datetime(2025, 1, 8, 9, 0, tzinfo=VN),
                                    reason="Chờ xác minh", new_appointment_at=new_date.isoformat()))
    assert (in_time.legal_due_at, in_time.appointment_at, in_time.apology_late) == (DUE, new_date, False)
    late = run(received(), event(EventType.APOLOGY_ISSUED, datetime(2025, 1, 9, 9, 0, tzinfo=VN),
                                 reason="Chờ xác minh", new_appointment_at=new_date.isoformat()))
    assert late.apology_late
    resolved = late.apply(event(EventType.RESOLVED, datetime(2025, 1, 13, 9, 0, tzinfo=VN)), CATALOG, RESTART)
    assert resolved.timeliness is Timeliness.LATE  # statistics keep the legal due instant


FORBIDDEN: list[tuple[str, list[tuple[EventType, dict[str, Any]]], EventType, dict[str, Any]]] = [
    ("resolved before received", [], EventType.RESOLVED, {}),
    ("a second receipt", [], EventType.RECEIVED, {}),
    ("a second apology",
     [(EventType.APOLOGY_ISSUED, {"reason": "a", "new_appointment_at": "2025-01-20T17:00:00+07:00"})],
     EventType.APOLOGY_ISSUED, {"reason": "b", "new_appointment_at": "2025-01-21T17:00:00+07:00"}),
    ("an apology earlier than the due instant", [], EventType.APOLOGY_ISSUED,
     {"reason": "a", "new_appointment_at": "2025-01-08T17:00:00+07:00"}),
    ("anything after the end", [(EventType.WITHDRAWN, {"reason": "rút"})], EventType.PAUSED, {"reason": "other"}),
    ("returned before a result", [], EventType.RESULT_RETURNED, {}),
    ("supplement received without a request", [], EventType.SUPPLEMENT_RECEIVED, {}),
    ("fee paid without a request", [], EventType.FEE_PAID, {}),
    ("resumed without a pause", [], EventType.RESUMED, {}),
    ("paused twice", [(EventType.PAUSED, {"reason": "other"})], EventType.PAUSED, {"reason": "other"}),
    ("resolved while awaiting a fee", [(EventType.FEE_REQUESTED, {"amount_vnd": 1})], EventType.RESOLVED, {}),
    ("a step completed that never started", [], EventType.STEP_COMPLETED, {"step": "x", "unit_code": UNIT.code}),
    ("a step started twice", [(EventType.STEP_STARTED, {"step": "x", "unit_code": UNIT.code})],
     EventType.STEP_STARTED, {"step": "x", "unit_code": UNIT.code}),
    ("returned twice", [(EventType.RESOLVED, {}), (EventType.RESULT_RETURNED, {})], EventType.RESULT_RETURNED, {}),
    ("refused at intake after receipt and work", [(EventType.PAUSED, {"reason": "other"})],
     EventType.REFUSED_AT_INTAKE, {"reason": "x"}),
]


@pytest.mark.parametrize(("name", "before", "kind", "data"), FORBIDDEN, ids=[case[0] for case in FORBIDDEN])
def test_forbidden_transitions_are_refused_with_the_current_state(
        name: str, before: list[tuple[EventType, dict[str, Any]]], kind: EventType, data: dict[str, Any]) -> None:
    history = [] if name == "resolved before received" else [received()]
    history += [event(k, MONDAY + timedelta(minutes=10 * (i + 1)), **d) for i, (k, d) in enumerate(before)]
    with pytest.raises(ImpossibleTransition) as caught:
        run(*history, event(kind, MONDAY + timedelta(hours=3), **data))
    assert caught.value.reason is RejectionReason.IMPOSSIBLE_TRANSITION
    expected_state = fold(history, CATALOG, RESTART).state if history else None
    assert caught.value.state == expected_state


def test_refused_at_intake_opens_and_ends_a_dossier() -> None:
    dossier = run(event(EventType.REFUSED_AT_INTAKE, MONDAY, reason="Hồ sơ không đúng thẩm quyền"))
    assert (dossier.state, dossier.reason) == (DossierState.REFUSED, "Hồ sơ không đúng thẩm quyền")


PATH = [
    (EventType.STEP_STARTED, {"step": "s", "unit_code": UNIT.code, "duration": "1 working_days"}),
    (EventType.PAUSED, {"reason": "fee"}), (EventType.RESUMED, {}),
    (EventType.SUPPLEMENT_REQUESTED, {"reason": "r"}), (EventType.SUPPLEMENT_RECEIVED, {}),
    (EventType.STEP_COMPLETED, {"step": "s", "unit_code": UNIT.code}), (EventType.RESOLVED, {}),
]


@settings(max_examples=60, deadline=None)
@given(gaps=st.lists(st.integers(min_value=1, max_value=60 * 24 * 4), min_size=len(PATH), max_size=len(PATH)))
def test_folding_the_same_events_twice_gives_the_same_answer(gaps: list[int]) -> None:
    at = MONDAY
    history = [received()]
    for (kind, data), gap in zip(PATH, gaps, strict=True):
        at += timedelta(minutes=gap)
        history.append(event(kind, at, **data))
    first, second = run(*history), run(*history)
    assert first == second
    assert first.state is DossierState.RESOLVED
    assert first.legal_due_at is not None
    assert first.legal_due_at >= first.clock_started_at
