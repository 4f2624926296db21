"""Worked deadline examples, each checked by hand against the calendar (the same table is in
docs/timeliness.md), and the classification rules."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from shared.clock import (
    LOCAL_ZONE,
    Clock,
    CompletionGranularity,
    ExplanationStep,
    OfficeHours,
    Policy,
    SupplementMode,
    WorkingCalendar,
)
from shared.contract.duration import Duration
from shared.contract.lifecycle import OpenState, Timeliness

pytestmark = pytest.mark.unit

CALENDAR = WorkingCalendar.load()
CLOCK = Clock(CALENDAR, OfficeHours.default(), Policy())
LITERAL = Clock(CALENDAR, OfficeHours.default(), Policy(after_hours_receipt_next_day=False))


def at(text: str) -> datetime:
    """ISO text; local Vietnam time unless it carries its own offset."""
    value = datetime.fromisoformat(text)
    return value if value.tzinfo is not None else value.replace(tzinfo=LOCAL_ZONE)


# received (local unless offset given), duration, cutoff, due (local). Hand-checked; see docs/timeliness.md.
WORKED = [
    # Tết 2025: Sat 25/1 - Sun 2/2 off (27-31/1 Tết, 1/2 Sat, the rest weekends).
    pytest.param(
        "2025-01-24T16:00", "3 working_days", None, "2025-02-05T17:00", id="tet2025-3wd-from-friday"
    ),
    pytest.param("2025-01-23T10:00", "1 working_days", None, "2025-01-24T17:00", id="tet2025-1wd-thursday"),
    pytest.param("2025-01-23T10:00", "2 working_days", None, "2025-02-03T17:00", id="tet2025-2wd-thursday"),
    pytest.param(
        "2025-01-29T09:00", "1 working_days", None, "2025-02-04T17:00", id="tet2025-received-on-tet"
    ),
    pytest.param(
        "2025-01-24T17:30", "1 working_days", None, "2025-02-04T17:00", id="tet2025-after-hours-friday"
    ),
    pytest.param(
        "2025-01-20T10:00", "10 calendar_days", None, "2025-02-03T17:00", id="tet2025-calendar-days"
    ),
    pytest.param("2025-01-24T15:30", "same_day", "15:00", "2025-02-03T17:00", id="tet2025-cutoff-friday"),
    # Tết 2026: Sat 14/2 - Sun 22/2 off.
    pytest.param("2026-02-13T10:00", "1 working_days", None, "2026-02-23T17:00", id="tet2026-1wd-friday"),
    pytest.param("2026-02-11T09:00", "5 working_days", None, "2026-02-25T17:00", id="tet2026-5wd-wednesday"),
    pytest.param("2026-02-13T15:00", "4 working_hours", None, "2026-02-23T09:30", id="tet2026-working-hours"),
    # 30/4-1/5 2024: off Sat 27/4 - Wed 1/5 (Mon 29/4 swapped), Sat 4/5 worked.
    pytest.param(
        "2024-04-26T10:00", "3 working_days", None, "2024-05-04T17:00", id="2024-ends-on-make-up-sat"
    ),
    pytest.param("2024-04-26T10:00", "4 working_days", None, "2024-05-06T17:00", id="2024-past-make-up-sat"),
    pytest.param(
        "2024-05-04T09:00", "1 working_days", None, "2024-05-06T17:00", id="2024-received-make-up-sat"
    ),
    # 30/4-1/5 2025: Sat 26/4 worked, off Wed 30/4 - Sun 4/5 (Fri 2/5 swapped).
    pytest.param(
        "2025-04-24T10:00", "2 working_days", None, "2025-04-26T17:00", id="2025-ends-on-make-up-sat"
    ),
    pytest.param("2025-04-24T10:00", "3 working_days", None, "2025-04-28T17:00", id="2025-past-make-up-sat"),
    pytest.param("2025-04-26T10:00", "same_day", None, "2025-04-26T17:00", id="2025-same-day-make-up-sat"),
    pytest.param(
        "2025-04-29T10:00", "1 working_days", None, "2025-05-05T17:00", id="2025-across-swapped-friday"
    ),
    # Year boundaries: 1/1 off; 2026 also Fri 2/1 off (swap) and Sat 10/1 worked.
    pytest.param("2024-12-31T16:00", "2 working_days", None, "2025-01-03T17:00", id="year-end-2024"),
    pytest.param("2025-12-31T10:00", "1 working_days", None, "2026-01-05T17:00", id="year-end-2025"),
    pytest.param(
        "2025-12-31T10:00", "6 working_days", None, "2026-01-10T17:00", id="year-end-2025-make-up-sat"
    ),
    pytest.param(
        "2025-12-29T10:00", "3 calendar_days", None, "2026-01-05T17:00", id="year-end-calendar-days"
    ),
    pytest.param(
        "2025-12-31T16:00", "2 working_hours", None, "2026-01-05T08:30", id="year-end-working-hours"
    ),
    # The 15:00 cutoff (civil status, certification): strictly after 15:00 counts from the next working day.
    pytest.param("2025-01-13T14:59", "same_day", "15:00", "2025-01-13T17:00", id="cutoff-before"),
    pytest.param("2025-01-13T15:00", "same_day", "15:00", "2025-01-13T17:00", id="cutoff-exactly"),
    pytest.param("2025-01-13T15:01", "same_day", "15:00", "2025-01-14T17:00", id="cutoff-after"),
    pytest.param("2025-01-10T15:30", "same_day", "15:00", "2025-01-13T17:00", id="cutoff-friday"),
    pytest.param("2025-01-13T15:30", "2 working_days", "15:00", "2025-01-16T17:00", id="cutoff-working-days"),
    pytest.param("2025-01-13T15:30", "2 working_days", None, "2025-01-15T17:00", id="no-cutoff-working-days"),
    pytest.param("2025-01-13T16:30", "same_day", None, "2025-01-13T17:00", id="same-day-no-cutoff"),
    pytest.param(
        "2025-01-13T15:30", "2 working_hours", "15:00", "2025-01-14T09:30", id="cutoff-working-hours"
    ),
    # Working hours: 07:30-11:30, 13:00-17:00.
    pytest.param("2025-01-13T10:00", "4 working_hours", None, "2025-01-13T15:30", id="hours-across-lunch"),
    pytest.param(
        "2025-01-13T12:00", "2 working_hours", None, "2025-01-13T15:00", id="hours-received-at-lunch"
    ),
    pytest.param("2025-01-13T09:30", "2 working_hours", None, "2025-01-13T11:30", id="hours-end-at-lunch"),
    pytest.param("2025-01-13T15:00", "4 working_hours", None, "2025-01-14T09:30", id="hours-across-evening"),
    pytest.param("2025-01-10T16:00", "8 working_hours", None, "2025-01-13T16:00", id="hours-across-weekend"),
    pytest.param("2025-01-13T18:00", "2 working_hours", None, "2025-01-14T09:30", id="hours-after-closing"),
    pytest.param("2025-01-13T06:00", "1 working_hours", None, "2025-01-13T08:30", id="hours-before-opening"),
    pytest.param("2025-01-13T13:00", "4 working_hours", None, "2025-01-13T17:00", id="hours-end-at-closing"),
    # Saturday receipt and receipt after 17:00 count from the next working day's opening.
    pytest.param("2025-01-11T09:00", "1 working_days", None, "2025-01-14T17:00", id="saturday-1wd"),
    pytest.param("2025-01-11T09:00", "same_day", None, "2025-01-13T17:00", id="saturday-same-day"),
    pytest.param("2025-01-12T09:00", "2 working_hours", None, "2025-01-13T09:30", id="sunday-hours"),
    pytest.param("2025-01-13T17:30", "2 working_days", None, "2025-01-16T17:00", id="after-17-2wd"),
    pytest.param("2025-01-13T17:00", "1 working_days", None, "2025-01-15T17:00", id="at-17-exactly"),
    pytest.param("2025-01-13T16:59", "1 working_days", None, "2025-01-14T17:00", id="at-16-59"),
    pytest.param("2025-01-13T17:30", "same_day", None, "2025-01-14T17:00", id="after-17-same-day"),
    # Calendar days: receipt day not counted; a last day off moves to the next working day.
    pytest.param(
        "2025-01-06T10:00", "5 calendar_days", None, "2025-01-13T17:00", id="calendar-ends-saturday"
    ),
    pytest.param("2025-01-07T10:00", "5 calendar_days", None, "2025-01-13T17:00", id="calendar-ends-sunday"),
    pytest.param(
        "2025-01-06T10:00", "10 calendar_days", None, "2025-01-16T17:00", id="calendar-ends-weekday"
    ),
    # Instants in other zones are the same instants: reasoning is in Vietnam time.
    pytest.param("2025-01-13T03:00+00:00", "1 working_days", None, "2025-01-14T17:00", id="utc-input"),
    pytest.param(
        "2025-01-12T23:00+00:00", "1 working_days", None, "2025-01-14T17:00", id="utc-previous-evening"
    ),
    pytest.param("2025-01-13T10:30+00:00", "1 working_days", None, "2025-01-15T17:00", id="utc-after-hours"),
]


@pytest.mark.parametrize(("received", "duration", "cutoff", "due"), WORKED)
def test_worked_examples(received: str, duration: str, cutoff: str | None, due: str) -> None:
    deadline = CLOCK.due(
        at(received), Duration.parse(duration), time.fromisoformat(cutoff) if cutoff else None
    )
    assert deadline.due_at == at(due)
    assert deadline.due_at.tzinfo == LOCAL_ZONE
    assert deadline.calendar_version == CALENDAR.version
    assert deadline.policy_version == "2026.1"
    assert deadline.explanation[0].kind == "receipt"
    assert deadline.explanation[-1].kind == "due"
    assert deadline.explanation[-1].at == at(due).isoformat()


# The literal reading (policy.after_hours_receipt_next_day = False): the calendar day of receipt is the
# uncounted receipt day whatever the hour; a same-day procedure with no office time left is due next day.
LITERAL_WORKED = [
    pytest.param("2025-01-11T09:00", "1 working_days", "2025-01-13T17:00", id="saturday-1wd"),
    pytest.param("2025-01-13T17:30", "1 working_days", "2025-01-14T17:00", id="after-17-1wd"),
    pytest.param("2025-01-13T17:30", "same_day", "2025-01-14T17:00", id="after-17-same-day"),
    pytest.param("2025-01-11T09:00", "same_day", "2025-01-13T17:00", id="saturday-same-day"),
    pytest.param("2025-01-24T17:30", "1 working_days", "2025-02-03T17:00", id="tet2025-after-hours"),
    pytest.param("2025-01-11T09:00", "5 calendar_days", "2025-01-16T17:00", id="saturday-calendar-days"),
]


@pytest.mark.parametrize(("received", "duration", "due"), LITERAL_WORKED)
def test_worked_examples_literal_policy(received: str, duration: str, due: str) -> None:
    deadline = LITERAL.due(at(received), Duration.parse(duration))
    assert deadline.due_at == at(due)
    assert deadline.policy_version.startswith("2026.1~")


# Under the literal reading a receipt after the procedure's cutoff counts as one after closing (its day is the
# uncounted receipt day), so it is never due later than a receipt on the non-working days that follow it: a
# property test found the Friday before Tết 2025 due a day after the Saturday.
@pytest.mark.parametrize(("received", "due"), [
    pytest.param("2025-01-24T15:30", "2025-02-03T17:00", id="friday-before-tet-after-cutoff"),
    pytest.param("2025-01-24T21:54", "2025-02-03T17:00", id="friday-before-tet-evening"),
    pytest.param("2025-01-25T00:00", "2025-02-03T17:00", id="the-saturday-after"),
    pytest.param("2025-01-13T15:30", "2025-01-14T17:00", id="monday-after-cutoff-like-after-closing"),
    pytest.param("2025-01-13T14:30", "2025-01-14T17:00", id="monday-before-cutoff"),
])
def test_literal_policy_counts_a_receipt_after_the_cutoff_as_after_closing(received: str, due: str) -> None:
    deadline = LITERAL.due(at(received), Duration.parse("1 working_days"), time(15, 0))
    assert deadline.due_at == at(due)
    if at(received).hour >= 15:
        assert "cutoff" in _kinds(deadline.explanation)


# ---- explanations -----------------------------------------------------------------------------------------


def _kinds(steps: tuple[ExplanationStep, ...]) -> list[str]:
    return [step.kind for step in steps]


def test_explanation_names_every_skipped_and_counted_day() -> None:
    deadline = CLOCK.due(at("2025-01-24T16:00"), Duration.parse("3 working_days"))
    skipped = [step for step in deadline.explanation if step.kind == "skipped_day"]
    counted = [step for step in deadline.explanation if step.kind == "counted_day"]
    assert [step.at for step in skipped] == [f"2025-01-{d}" for d in range(25, 32)] + [
        "2025-02-01",
        "2025-02-02",
    ]
    assert [step.at for step in counted] == ["2025-02-03", "2025-02-04", "2025-02-05"]
    by_day = {step.at: step for step in skipped}
    assert "Lunar New Year" in by_day["2025-01-29"].text_en
    assert "Tết Nguyên Đán" in by_day["2025-01-29"].text_vi
    assert "Saturday" in by_day["2025-01-25"].text_en
    assert "Chủ nhật" in by_day["2025-01-26"].text_vi
    assert by_day["2025-01-29"].source is not None
    not_counted = next(step for step in deadline.explanation if step.kind == "not_counted")
    assert not_counted.at == "2025-01-24"
    assert not_counted.source is not None
    assert "147" in not_counted.source


def test_explanation_names_the_swap_and_the_make_up_saturday() -> None:
    deadline = CLOCK.due(at("2024-04-26T10:00"), Duration.parse("3 working_days"))
    steps = {step.at: step for step in deadline.explanation}
    assert steps["2024-04-29"].kind == "skipped_day"
    assert "04/05/2024" in steps["2024-04-29"].text_vi  # the package's swap name
    assert steps["2024-05-04"].kind == "counted_day"
    assert "Make-up Saturday" in steps["2024-05-04"].text_en
    assert steps["2024-05-04"].source is not None
    assert "2450" in steps["2024-05-04"].source


def test_explanation_of_cutoff_and_after_hours() -> None:
    cutoff = CLOCK.due(at("2025-01-10T15:30"), Duration.parse("same_day"), time(15, 0))
    assert _kinds(cutoff.explanation)[:2] == ["receipt", "cutoff"]
    assert cutoff.explanation[1].at == "2025-01-13T07:30:00+07:00"
    assert {step.at for step in cutoff.explanation if step.kind == "skipped_day"} == {
        "2025-01-11",
        "2025-01-12",
    }
    after = CLOCK.due(at("2025-01-13T17:30"), Duration.parse("2 working_days"))
    assert _kinds(after.explanation)[:3] == ["receipt", "after_hours", "not_counted"]
    saturday = CLOCK.due(at("2025-01-11T09:00"), Duration.parse("1 working_days"))
    assert _kinds(saturday.explanation)[:2] == ["receipt", "non_working_receipt"]


def test_explanation_of_calendar_days_rolled_forward() -> None:
    deadline = CLOCK.due(at("2025-01-06T10:00"), Duration.parse("5 calendar_days"))
    counted = [step.at for step in deadline.explanation if step.kind == "counted_day"]
    assert counted == [f"2025-01-{d:02d}" for d in range(7, 12)]
    rolled = next(step for step in deadline.explanation if step.kind == "rolled_forward")
    assert rolled.at == "2025-01-11"
    assert rolled.source is not None
    assert "148" in rolled.source
    assert [step.at for step in deadline.explanation if step.kind == "skipped_day"] == ["2025-01-12"]


def test_explanation_of_working_hours_per_day() -> None:
    deadline = CLOCK.due(at("2025-01-10T16:00"), Duration.parse("8 working_hours"))
    counted = [step for step in deadline.explanation if step.kind == "counted_day"]
    assert [step.at for step in counted] == ["2025-01-10", "2025-01-13"]
    assert "1 h" in counted[0].text_en
    assert "7 h" in counted[1].text_en
    assert [step.at for step in deadline.explanation if step.kind == "skipped_day"] == [
        "2025-01-11",
        "2025-01-12",
    ]


def test_incomplete_year_is_flagged_in_the_explanation() -> None:
    deadline = CLOCK.due(at("2026-12-30T10:00"), Duration.parse("3 working_days"))
    warned = {step.at for step in deadline.explanation if step.kind == "calendar_warning"}
    assert "2027-01-01" in warned
    quiet = CLOCK.due(at("2025-03-03T10:00"), Duration.parse("3 working_days"))
    assert not [step for step in quiet.explanation if step.kind == "calendar_warning"]


def test_repeated_due_is_cached_but_receipt_specific() -> None:
    first = CLOCK.due(at("2025-03-03T09:00"), Duration.parse("15 working_days"))
    second = CLOCK.due(at("2025-03-03T10:00"), Duration.parse("15 working_days"))
    assert first.due_at == second.due_at
    assert first.explanation[0] != second.explanation[0]
    assert first.explanation[1:] == second.explanation[1:]


def test_as_dict_and_text() -> None:
    deadline = CLOCK.due(at("2025-01-13T10:00"), Duration.parse("1 working_days"))
    data = deadline.as_dict()
    assert data["due_at"] == "2025-01-14T17:00:00+07:00"
    assert data["explanation"][0]["kind"] == "receipt"
    assert "Tiếp nhận" in deadline.text("vi")
    assert "Received" in deadline.text()


def test_naive_datetimes_are_refused() -> None:
    naive = datetime(2025, 1, 13, 10, 0)
    with pytest.raises(ValueError, match="timezone"):
        CLOCK.due(naive, Duration.parse("1 working_days"))
    with pytest.raises(ValueError, match="timezone"):
        CLOCK.office_time_between(naive, at("2025-01-14T10:00"))
    with pytest.raises(ValueError, match="timezone"):
        CLOCK.add_office_time(naive, timedelta())


# ---- office time ------------------------------------------------------------------------------------------

OFFICE_TIME = [
    pytest.param("2025-01-13T10:00", "2025-01-13T15:00", timedelta(hours=3, minutes=30), id="across-lunch"),
    pytest.param("2025-01-13T12:00", "2025-01-13T12:30", timedelta(), id="inside-lunch"),
    pytest.param("2025-01-10T16:00", "2025-01-13T08:30", timedelta(hours=2), id="across-weekend"),
    pytest.param("2025-01-24T07:30", "2025-02-03T17:00", timedelta(hours=16), id="across-tet-2025"),
    pytest.param("2025-01-13T15:00", "2025-01-13T10:00", timedelta(), id="reversed"),
    pytest.param("2025-04-25T07:30", "2025-04-28T07:30", timedelta(hours=16), id="make-up-saturday-counts"),
]


@pytest.mark.parametrize(("start", "end", "expected"), OFFICE_TIME)
def test_office_time_between(start: str, end: str, expected: timedelta) -> None:
    assert CLOCK.office_time_between(at(start), at(end)) == expected


ADD_OFFICE_TIME = [
    pytest.param("2025-01-13T10:00", timedelta(hours=1, minutes=30), "2025-01-13T11:30", id="to-lunch"),
    pytest.param("2025-01-13T10:00", timedelta(hours=1, minutes=31), "2025-01-13T13:01", id="past-lunch"),
    pytest.param("2025-01-13T17:00", timedelta(hours=8), "2025-01-14T17:00", id="a-full-day"),
    pytest.param("2025-01-24T17:00", timedelta(hours=1), "2025-02-03T08:30", id="across-tet"),
    pytest.param("2025-01-13T19:00", timedelta(minutes=1), "2025-01-14T07:31", id="from-evening"),
]


@pytest.mark.parametrize(("start", "amount", "expected"), ADD_OFFICE_TIME)
def test_add_office_time(start: str, amount: timedelta, expected: str) -> None:
    assert CLOCK.add_office_time(at(start), amount) == at(expected)


def test_add_zero_returns_start_unchanged() -> None:
    start = datetime(2025, 1, 13, 20, 0, tzinfo=UTC)
    assert CLOCK.add_office_time(start, timedelta()) is start
    with pytest.raises(ValueError, match="negative"):
        CLOCK.add_office_time(start, timedelta(minutes=-1))


# ---- classification ---------------------------------------------------------------------------------------

DUE = at("2025-01-15T17:00")  # Wednesday

COMPLETIONS = [
    pytest.param("2025-01-14T10:00", Timeliness.EARLY, id="earlier-day"),
    pytest.param("2025-01-15T07:00", Timeliness.ON_TIME, id="due-day-before-opening"),
    pytest.param("2025-01-15T17:00", Timeliness.ON_TIME, id="at-due-instant"),
    pytest.param("2025-01-15T17:00:01", Timeliness.LATE, id="one-second-late"),
    pytest.param("2025-01-16T08:00", Timeliness.LATE, id="next-day"),
    pytest.param("2025-01-15T10:00:01+00:00", Timeliness.LATE, id="utc-after-due"),
    pytest.param("2025-01-14T17:30:00+00:00", Timeliness.ON_TIME, id="utc-previous-day-is-local-due-day"),
]


@pytest.mark.parametrize(("completed", "expected"), COMPLETIONS)
def test_classify_completion(completed: str, expected: Timeliness) -> None:
    assert CLOCK.classify_completion(at(completed), DUE) is expected


def test_classify_completion_by_day() -> None:
    by_day = Clock(CALENDAR, policy=Policy(completion_granularity=CompletionGranularity.DAY))
    assert by_day.classify_completion(at("2025-01-15T18:00"), DUE) is Timeliness.ON_TIME
    assert by_day.classify_completion(at("2025-01-16T07:00"), DUE) is Timeliness.LATE
    assert by_day.classify_completion(at("2025-01-14T07:00"), DUE) is Timeliness.EARLY


OPEN = [
    pytest.param("2025-01-13T10:00", OpenState.ON_TRACK, id="two-days-ahead"),
    pytest.param("2025-01-14T16:59", OpenState.ON_TRACK, id="just-over-a-day-left"),
    pytest.param("2025-01-14T17:00", OpenState.DUE_SOON, id="one-day-left"),
    pytest.param("2025-01-14T20:00", OpenState.DUE_SOON, id="evening-before"),
    pytest.param("2025-01-15T17:00", OpenState.DUE_SOON, id="at-due"),
    pytest.param("2025-01-15T17:00:01", OpenState.OVERDUE, id="after-due"),
]


@pytest.mark.parametrize(("now", "expected"), OPEN)
def test_classify_open(now: str, expected: OpenState) -> None:
    assert CLOCK.classify_open(at(now), DUE) is expected


def test_classify_open_paused_and_awaiting_supplement_take_precedence() -> None:
    late = at("2025-01-20T10:00")
    assert CLOCK.classify_open(late, DUE, paused=True) is OpenState.PAUSED
    assert CLOCK.classify_open(late, DUE, awaiting_supplement=True) is OpenState.AWAITING_SUPPLEMENT
    assert (
        CLOCK.classify_open(late, DUE, paused=True, awaiting_supplement=True) is OpenState.AWAITING_SUPPLEMENT
    )


DUE_SOON_AT = [
    pytest.param("2025-01-15T17:00", "2025-01-14T17:00", id="close-of-previous-day"),
    pytest.param("2025-02-03T17:00", "2025-01-24T17:00", id="across-tet"),
    pytest.param("2025-01-14T09:30", "2025-01-13T09:30", id="mid-session"),
    pytest.param("2025-04-28T17:00", "2025-04-26T17:00", id="make-up-saturday"),
]


@pytest.mark.parametrize(("due", "expected"), DUE_SOON_AT)
def test_due_soon_at(due: str, expected: str) -> None:
    assert CLOCK.due_soon_at(at(due)) == at(expected)
    assert CLOCK.classify_open(at(expected), at(due)) is OpenState.DUE_SOON
    assert CLOCK.classify_open(at(expected) - timedelta(microseconds=1), at(due)) is OpenState.ON_TRACK


def test_due_soon_threshold_is_configurable() -> None:
    two_days = Clock(CALENDAR, policy=Policy(due_soon_working_days=2))
    assert two_days.due_soon_at(DUE) == at("2025-01-13T17:00")
    none = Clock(CALENDAR, policy=Policy(due_soon_working_days=0))
    assert none.due_soon_at(DUE) == DUE


APOLOGIES = [
    # issued, due, late?
    pytest.param("2025-01-14T16:00", "2025-01-15T17:00", False, id="day-before"),
    pytest.param("2025-01-14T17:00", "2025-01-15T17:00", False, id="at-close-day-before"),
    pytest.param("2025-01-14T17:01", "2025-01-15T17:00", True, id="evening-before"),
    pytest.param("2025-01-15T08:00", "2025-01-15T17:00", True, id="on-due-day"),
    pytest.param("2025-01-24T16:00", "2025-02-03T17:00", False, id="before-tet"),
    pytest.param("2025-01-31T10:00", "2025-02-03T17:00", True, id="during-tet"),
    pytest.param("2025-04-26T16:00", "2025-04-28T17:00", False, id="on-make-up-saturday"),
    pytest.param("2025-04-26T17:30", "2025-04-28T17:00", True, id="after-make-up-saturday"),
]


@pytest.mark.parametrize(("issued", "due", "late"), APOLOGIES)
def test_apology_late(issued: str, due: str, late: bool) -> None:
    assert CLOCK.apology_late(at(issued), at(due)) is late


def test_time_used_ratio() -> None:
    received, due = at("2025-01-13T07:30"), at("2025-01-15T17:00")  # 24 h of office time allowed
    assert CLOCK.time_used_ratio(received, at("2025-01-14T07:30"), due) == pytest.approx(1 / 3)
    assert CLOCK.time_used_ratio(received, due, due) == 1.0
    assert CLOCK.time_used_ratio(received, at("2025-01-16T11:30"), due) == pytest.approx(28 / 24)
    assert CLOCK.time_used_ratio(received, received, received) == 0.0
    assert CLOCK.time_used_ratio(received, due, received) == float("inf")


def test_extend_for_a_pause() -> None:
    deadline = CLOCK.due(at("2025-01-13T10:00"), Duration.parse("1 working_days"))
    assert deadline.due_at == at("2025-01-14T17:00")
    extended = CLOCK.extend(deadline, at("2025-01-13T10:00"), at("2025-01-13T15:00"))
    assert extended.due_at == at("2025-01-15T11:00")  # 3 h 30 min of office time later
    assert _kinds(extended.explanation)[-2:] == ["pause", "due"]
    assert "3 h 30 min" in extended.explanation[-2].text_en
    supplement = CLOCK.extend(deadline, at("2025-01-24T16:00"), at("2025-02-03T08:00"), kind="supplement")
    assert supplement.due_at == at("2025-01-15T09:00")  # 1 h Fri + 30 min Mon = 1 h 30 min
    assert "supplement" in supplement.explanation[-2].text_en


# ---- configuration ----------------------------------------------------------------------------------------


def test_office_hours_parse_and_validation() -> None:
    hours = OfficeHours.parse([["07:00", "11:30"], ["13:30", "17:00"]])
    assert hours.opening() == time(7, 0)
    assert hours.closing() == time(17, 0)
    assert hours.daily() == timedelta(hours=8)
    assert OfficeHours.default().sessions == ((time(7, 30), time(11, 30)), (time(13, 0), time(17, 0)))
    assert OfficeHours.default().daily() == timedelta(hours=8)
    for bad in (
        [],
        [["11:30", "07:30"]],
        [["07:30", "11:30"], ["11:00", "17:00"]],
        [["13:00", "17:00"], ["07:30", "11:30"]],
        [["7h30", "11:30"]],
        [["07:30"]],
        [["07:30+07:00", "11:30"]],
    ):
        with pytest.raises(ValueError):  # noqa: PT011 - each bad shape has its own message
            OfficeHours.parse(bad)


def test_custom_office_hours_move_due_and_version() -> None:
    hours = OfficeHours.parse([["07:00", "11:30"], ["13:30", "16:30"]])
    clock = Clock(CALENDAR, hours, Policy())
    deadline = clock.due(at("2025-01-13T10:00"), Duration.parse("1 working_days"))
    assert deadline.due_at == at("2025-01-14T16:30")
    assert deadline.policy_version.startswith("2026.1~")
    assert deadline.policy_version != CLOCK.policy_version
    late = clock.due(at("2025-01-13T16:45"), Duration.parse("1 working_days"))
    assert late.due_at == at("2025-01-15T16:30")  # 16:45 is after this office's closing


def test_policy_fingerprint_and_mapping() -> None:
    assert Policy().fingerprint() == "2026.1"
    changed = Policy(supplement_mode=SupplementMode.SUBTRACT)
    assert changed.fingerprint().startswith("2026.1~")
    assert changed.second_supplement_is_late()
    assert not Policy().second_supplement_is_late()
    loaded = Policy.from_mapping({"supplement_mode": "subtract", "due_soon_working_days": 2})
    assert loaded.supplement_mode is SupplementMode.SUBTRACT
    assert loaded.as_mapping()["supplement_mode"] == "subtract"
    with pytest.raises(ValueError, match="unknown policy settings"):
        Policy.from_mapping({"due_soon_days": 2})
    with pytest.raises(ValueError, match="negative"):
        Policy(due_soon_working_days=-1)


def test_the_fixed_local_zone_agrees_with_the_tz_database_from_1975_on() -> None:
    """LOCAL_ZONE is a fixed UTC+07:00 for speed; the tz database's Asia/Ho_Chi_Minh must give the same wall
    clock for every instant a dossier can have (an hour-and-a-bit step visits every hour of the day)."""
    database_zone = ZoneInfo("Asia/Ho_Chi_Minh")
    instant, differing = datetime(1975, 6, 13, 17, tzinfo=UTC), []
    while instant.year < 2100:
        if instant.astimezone(database_zone).replace(tzinfo=None) != \
                instant.astimezone(LOCAL_ZONE).replace(tzinfo=None):
            differing.append(instant)
        instant += timedelta(hours=25, minutes=7)
    assert differing == []
    # Before mid-1975 Saigon kept UTC+08:00, which a fixed zone does not: the check above does see offsets.
    assert datetime(1970, 1, 1, tzinfo=UTC).astimezone(database_zone).utcoffset() == timedelta(hours=8)
