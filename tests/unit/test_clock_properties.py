"""Properties of the deadline engine that must hold for every receipt instant, duration and zone."""

from __future__ import annotations

import os
import time as system_time
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.clock import LOCAL_ZONE, Clock, OfficeHours, Policy, WorkingCalendar
from shared.contract.duration import Duration, DurationUnit
from shared.contract.lifecycle import OpenState, Timeliness

pytestmark = pytest.mark.unit

CALENDAR = WorkingCalendar.load()
CLOCK = Clock(CALENDAR, OfficeHours.default(), Policy())
LITERAL = Clock(CALENDAR, OfficeHours.default(), Policy(after_hours_receipt_next_day=False))
SPLIT = Clock(CALENDAR, OfficeHours.parse([["07:00", "11:30"], ["13:30", "17:00"]]), Policy())
CLOCKS = st.sampled_from([CLOCK, LITERAL, SPLIT])

ZONES = st.sampled_from([LOCAL_ZONE, UTC, ZoneInfo("Europe/Paris"), ZoneInfo("America/New_York")])

# Instants across the three years with data (and the edges into 2023/2027), in assorted zones.
INSTANTS = st.datetimes(
    min_value=datetime(2023, 12, 20), max_value=datetime(2026, 12, 20), timezones=st.just(LOCAL_ZONE)
).flatmap(lambda value: ZONES.map(value.astimezone))

# Instants on the minute, in Vietnam: what commune systems actually send.
MINUTES = st.builds(
    lambda day, minute: datetime(2024, 1, 1, tzinfo=LOCAL_ZONE) + timedelta(days=day, minutes=minute),
    st.integers(min_value=0, max_value=3 * 365 - 20),
    st.integers(min_value=0, max_value=24 * 60 - 1),
)

COUNTED_UNITS = st.sampled_from(
    [DurationUnit.WORKING_DAYS, DurationUnit.WORKING_HOURS, DurationUnit.CALENDAR_DAYS]
)
DURATIONS = st.one_of(
    st.just(Duration(0, DurationUnit.SAME_DAY)),
    st.builds(Duration, st.integers(min_value=1, max_value=60), COUNTED_UNITS),
)
CUTOFFS = st.sampled_from([None, time(15, 0), time(11, 0)])
OFFICE_SPANS = st.integers(min_value=0, max_value=40 * 60).map(lambda minutes: timedelta(minutes=minutes))

RANK = {Timeliness.EARLY: 0, Timeliness.ON_TIME: 1, Timeliness.LATE: 2}


def _local(value: datetime) -> datetime:
    return value.astimezone(LOCAL_ZONE)


def _office_reference(clock: Clock, start: datetime, end: datetime) -> timedelta:
    """Day-by-day, session-by-session sum, sharing no shortcut with the engine."""
    start, end = _local(start), _local(end)
    total = timedelta()
    day = start.date()
    while day <= end.date():
        if clock.calendar.is_working_day(day):
            for opening, closing in clock.hours.sessions:
                low = max(start, datetime.combine(day, opening, tzinfo=LOCAL_ZONE))
                high = min(end, datetime.combine(day, closing, tzinfo=LOCAL_ZONE))
                if high > low:
                    total += high - low
        day += timedelta(days=1)
    return total


@given(clock=CLOCKS, received=INSTANTS, duration=DURATIONS, cutoff=CUTOFFS)
def test_due_is_inside_office_hours_on_a_working_day(
    clock: Clock, received: datetime, duration: Duration, cutoff: time | None
) -> None:
    due = _local(clock.due(received, duration, cutoff).due_at)
    assert clock.calendar.is_working_day(due.date())
    assert any(opening < due.time() <= closing for opening, closing in clock.hours.sessions)
    if duration.unit is not DurationUnit.WORKING_HOURS:
        assert due.time() == clock.hours.closing()
    assert due > received


@given(received=INSTANTS, amount=st.integers(min_value=1, max_value=40), cutoff=CUTOFFS)
def test_n_working_days_count_exactly_n_days_after_the_receipt_day(
    received: datetime, amount: int, cutoff: time | None
) -> None:
    deadline = CLOCK.due(received, Duration(amount, DurationUnit.WORKING_DAYS), cutoff)
    counted = [step for step in deadline.explanation if step.kind == "counted_day"]
    assert len(counted) == amount
    receipt_day = date.fromisoformat(next(s.at for s in deadline.explanation if s.kind == "not_counted"))
    due_day = _local(deadline.due_at).date()
    assert (
        CALENDAR.working_days_between(receipt_day + timedelta(days=1), due_day + timedelta(days=1)) == amount
    )
    # Every day between the receipt day and the due day is explained, once.
    explained = [s.at for s in deadline.explanation if s.kind in {"counted_day", "skipped_day"}]
    span = (due_day - receipt_day).days
    assert explained[-span:] == [(receipt_day + timedelta(days=i)).isoformat() for i in range(1, span + 1)]


@given(
    clock=CLOCKS,
    received=INSTANTS,
    unit=COUNTED_UNITS,
    amounts=st.tuples(st.integers(1, 60), st.integers(1, 60)).map(sorted),
    cutoff=CUTOFFS,
)
def test_longer_duration_never_gives_an_earlier_due(
    clock: Clock, received: datetime, unit: DurationUnit, amounts: list[int], cutoff: time | None
) -> None:
    shorter, longer = amounts
    first = clock.due(received, Duration(shorter, unit), cutoff).due_at
    second = clock.due(received, Duration(longer, unit), cutoff).due_at
    assert first <= second
    same_day = clock.due(received, Duration(0, DurationUnit.SAME_DAY), cutoff).due_at
    if unit is not DurationUnit.WORKING_HOURS:
        assert same_day <= first


@given(clock=CLOCKS, received=INSTANTS, later=OFFICE_SPANS, duration=DURATIONS, cutoff=CUTOFFS)
def test_later_receipt_never_gives_an_earlier_due(
    clock: Clock, received: datetime, later: timedelta, duration: Duration, cutoff: time | None
) -> None:
    first = clock.due(received, duration, cutoff).due_at
    second = clock.due(received + later, duration, cutoff).due_at
    assert first <= second


@given(clock=CLOCKS, start=INSTANTS)
def test_adding_zero_office_time_returns_start(clock: Clock, start: datetime) -> None:
    assert clock.add_office_time(start, timedelta()) == start


@given(clock=CLOCKS, start=MINUTES, amount=OFFICE_SPANS)
def test_add_then_measure_office_time_round_trips(clock: Clock, start: datetime, amount: timedelta) -> None:
    # Start aligned to office hours (the next instant the clock runs), and also the raw instant.
    aligned = clock.add_office_time(start, timedelta(minutes=1)) - timedelta(minutes=1)
    for origin in (aligned, start):
        end = clock.add_office_time(origin, amount)
        assert clock.office_time_between(origin, end) == amount
        assert end >= origin
        if amount > timedelta():
            # The earliest such instant: a moment earlier, less office time has elapsed.
            assert clock.office_time_between(origin, end - timedelta(microseconds=1)) < amount


@given(clock=CLOCKS, end=MINUTES, amount=OFFICE_SPANS)
def test_subtract_office_time_is_the_earliest_instant_with_that_much_left(
    clock: Clock, end: datetime, amount: timedelta
) -> None:
    start = clock.subtract_office_time(end, amount)
    assert clock.office_time_between(start, end) == amount
    assert clock.office_time_between(start - timedelta(microseconds=1), end) > amount


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(clock=CLOCKS, a=INSTANTS, b=INSTANTS)
def test_office_time_between_matches_a_reference_and_is_additive(
    clock: Clock, a: datetime, b: datetime
) -> None:
    start, end = sorted((a, b))
    middle = start + (end - start) / 3
    measured = clock.office_time_between(start, end)
    assert measured == _office_reference(clock, start, end)
    assert measured == clock.office_time_between(start, middle) + clock.office_time_between(middle, end)
    assert clock.office_time_between(end, start) == timedelta()


@given(clock=CLOCKS, due=INSTANTS, first=INSTANTS, second=INSTANTS)
def test_classify_completion_is_monotone(
    clock: Clock, due: datetime, first: datetime, second: datetime
) -> None:
    earlier, later = sorted((first, second))
    assert RANK[clock.classify_completion(earlier, due)] <= RANK[clock.classify_completion(later, due)]


@given(clock=CLOCKS, received=INSTANTS, duration=DURATIONS)
def test_completion_at_the_due_instant_is_on_time(
    clock: Clock, received: datetime, duration: Duration
) -> None:
    due = clock.due(received, duration).due_at
    assert clock.classify_completion(due, due) is Timeliness.ON_TIME
    assert clock.classify_completion(due + timedelta(seconds=1), due) is Timeliness.LATE
    assert clock.time_used_ratio(received, due, due) in (0.0, 1.0)


@given(clock=CLOCKS, received=INSTANTS, duration=DURATIONS, now=INSTANTS)
def test_classify_open_agrees_with_due_soon_at(
    clock: Clock, received: datetime, duration: Duration, now: datetime
) -> None:
    due = clock.due(received, duration).due_at
    soon = clock.due_soon_at(due)
    state = clock.classify_open(now, due)
    if now > due:
        assert state is OpenState.OVERDUE
    elif now >= soon:
        assert state is OpenState.DUE_SOON
    else:
        assert state is OpenState.ON_TRACK


@given(clock=CLOCKS, received=INSTANTS, duration=DURATIONS, issued=INSTANTS)
def test_apology_late_is_monotone_and_before_the_due_day(
    clock: Clock, received: datetime, duration: Duration, issued: datetime
) -> None:
    due = clock.due(received, duration).due_at
    limit = clock.apology_deadline(due)
    assert _local(limit).date() < _local(due).date()
    assert clock.calendar.is_working_day(_local(limit).date())
    assert clock.apology_late(issued, due) is (issued > limit)


# ---- the server's zone changes nothing --------------------------------------------------------------------


@pytest.fixture
def server_zone() -> Iterator[None]:
    previous = os.environ.get("TZ")
    yield
    if previous is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = previous
    system_time.tzset()


def _snapshot(clock: Clock) -> list[object]:
    results: list[object] = []
    base = datetime(2025, 1, 24, 15, 30, tzinfo=LOCAL_ZONE)
    for offset_hours in range(0, 24 * 5, 7):
        received = (base + timedelta(hours=offset_hours)).astimezone(UTC)
        for text in ("same_day", "3 working_days", "4 working_hours", "10 calendar_days"):
            deadline = clock.due(received, Duration.parse(text), time(15, 0))
            results.append((deadline.due_at, deadline.explanation))
            results.append(clock.classify_open(received, deadline.due_at))
            results.append(clock.due_soon_at(deadline.due_at))
            results.append(clock.classify_completion(received + timedelta(days=3), deadline.due_at))
    return results


@pytest.mark.usefixtures("server_zone")
def test_server_timezone_does_not_change_results() -> None:
    # A fresh clock per zone, so no cache carries a result across.
    os.environ["TZ"] = "UTC"
    system_time.tzset()
    in_utc = _snapshot(Clock(WorkingCalendar.load()))
    for zone in ("America/Los_Angeles", "Asia/Tokyo", "Pacific/Kiritimati"):
        os.environ["TZ"] = zone
        system_time.tzset()
        assert _snapshot(Clock(WorkingCalendar.load())) == in_utc
