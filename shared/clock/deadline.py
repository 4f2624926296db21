"""The deadline engine: due instants, office time, and the timeliness of open and completed dossiers.

Pure: `now` is always an argument, every datetime must be timezone-aware, and all local reasoning happens in
Asia/Ho_Chi_Minh (never the server's zone). Walks go day by day, never minute by minute, and the day walks of
`due` are cached, because the engine runs per event.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

from shared.clock.calendar import WEEKDAY_EN, WEEKDAY_VI, WorkingCalendar
from shared.clock.office import OfficeHours, time_to_delta
from shared.clock.policy import CompletionGranularity, Policy
from shared.contract.duration import Duration, DurationUnit
from shared.contract.lifecycle import OpenState, Timeliness

# Asia/Ho_Chi_Minh has been UTC+07:00 without daylight saving since 13 June 1975, long before any dossier
# or calendar year here. A fixed offset gives the same instants and wall clocks as the tz database's zone, and
# converting to it, comparing and subtracting with it cost a fraction of a ZoneInfo lookup: the engine does
# that several times for every event.
LOCAL_ZONE = timezone(timedelta(hours=7), "Asia/Ho_Chi_Minh")

_ZERO = timedelta()
_ONE_DAY = timedelta(days=1)
_CACHE_LIMIT = 65_536

_CIVIL_CODE_FIRST_DAY = "Bộ luật Dân sự 2015 Điều 147.2"
_CIVIL_CODE_LAST_DAY = "Bộ luật Dân sự 2015 Điều 148.5"
_CIVIL_CODE_HOURS = "Bộ luật Dân sự 2015 Điều 147.1"
_CUTOFF_SOURCE = "Luật Hộ tịch 2014 Điều 5.3; Nghị định 23/2015 Điều 7; Nghị định 63/2024 Điều 7.2"


@dataclass(frozen=True)
class ExplanationStep:
    """One line of a deadline's explanation.

    kind: receipt, not_counted, after_hours, non_working_receipt, cutoff, skipped_day, counted_day,
    rolled_forward, calendar_warning, due, and for `Clock.extend`: pause, supplement (or the caller's kind).
    at: an ISO date (day steps) or an ISO datetime with offset (instants).
    """

    kind: str
    at: str
    text_en: str
    text_vi: str
    source: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "at": self.at,
            "text_en": self.text_en,
            "text_vi": self.text_vi,
            "source": self.source,
        }


@dataclass(frozen=True)
class Deadline:
    due_at: datetime
    explanation: tuple[ExplanationStep, ...]
    calendar_version: str
    policy_version: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "due_at": self.due_at.isoformat(),
            "explanation": [step.as_dict() for step in self.explanation],
            "calendar_version": self.calendar_version,
            "policy_version": self.policy_version,
        }

    def text(self, language: str = "en") -> str:
        """The explanation as lines, for the CLI and the counter's printout."""
        return "\n".join(step.text_vi if language == "vi" else step.text_en for step in self.explanation)


# ---- local time helpers ------------------------------------------------------------------------------------


def vi_instant(value: datetime) -> str:
    """An instant as citizens read it: `17:00 ngày 01/12/2026`, Vietnam time."""
    return to_local(value).strftime("%H:%M ngày %d/%m/%Y")


def to_local(value: datetime) -> datetime:
    """The same instant in Asia/Ho_Chi_Minh; a naive datetime is refused because its zone would be a guess."""
    zone = value.tzinfo
    if zone is LOCAL_ZONE:  # the engine passes its own results back in: nothing to convert or check
        return value
    if zone is None or value.utcoffset() is None:
        raise ValueError(f"{value!r} has no timezone; pass an aware datetime (Vietnam is UTC+07:00)")
    return value.astimezone(LOCAL_ZONE)


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=LOCAL_ZONE)


def _offset(value: datetime) -> timedelta:
    """Wall-clock offset from local midnight of an already-local datetime."""
    return timedelta(
        hours=value.hour, minutes=value.minute, seconds=value.second, microseconds=value.microsecond
    )


# "thứ Hai" mid-sentence; "Chủ nhật" keeps its capital.
_WEEKDAY_VI_INLINE = tuple(
    name[0].lower() + name[1:] if name.startswith("Thứ") else name for name in WEEKDAY_VI
)


# Explicit fields rather than strftime: these run for every step of every deadline.
def _day_en(day: date) -> str:
    return f"{WEEKDAY_EN[day.weekday()]} {day.day:02d}/{day.month:02d}/{day.year}"


def _day_vi(day: date) -> str:
    return f"{_WEEKDAY_VI_INLINE[day.weekday()]} {day.day:02d}/{day.month:02d}/{day.year}"


def _clock_text(value: datetime) -> str:
    if value.second or value.microsecond:
        return f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}"
    return f"{value.hour:02d}:{value.minute:02d}"


def _instant_en(value: datetime) -> str:
    return f"{_clock_text(value)} {_day_en(value.date())}"


def _instant_vi(value: datetime) -> str:
    return f"{_clock_text(value)} {_day_vi(value.date())}"


def _span(amount: timedelta) -> str:
    """`3 h 30 min`; seconds only when present."""
    seconds = int(amount.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = []
    if hours:
        parts.append(f"{hours} h")
    if minutes:
        parts.append(f"{minutes} min")
    if secs or not parts:
        parts.append(f"{secs} s")
    return " ".join(parts)


def _span_vi(amount: timedelta) -> str:
    return _span(amount).replace(" h", " giờ").replace(" min", " phút").replace(" s", " giây")


def _duration_vi(duration: Duration) -> str:
    return {
        DurationUnit.WORKING_DAYS: f"{duration.amount} ngày làm việc",
        DurationUnit.WORKING_HOURS: f"{duration.amount} giờ làm việc",
        DurationUnit.CALENDAR_DAYS: f"{duration.amount} ngày",
        DurationUnit.SAME_DAY: "trong ngày",
    }[duration.unit]


_EXTEND_LABELS: dict[str, tuple[str, str]] = {
    "pause": ("Paused", "Tạm dừng"),
    "supplement": ("Awaiting supplement", "Chờ bổ sung hồ sơ"),
    "fee": ("Awaiting fee payment", "Chờ nộp phí, lệ phí"),
}

_DayWalk = tuple[date, tuple[ExplanationStep, ...]]


@dataclass(frozen=True)
class Clock:
    """The working calendar, office hours and policy, bundled; every deadline computation goes through it."""

    calendar: WorkingCalendar
    hours: OfficeHours = field(default_factory=OfficeHours.default)
    policy: Policy = field(default_factory=Policy)
    _walks: dict[tuple[date, DurationUnit, int], _DayWalk] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _skips: dict[tuple[date, date], tuple[ExplanationStep, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _policy_version: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        extra = None if self.hours == OfficeHours.default() else {"office_hours": self.hours.as_config()}
        # Office hours move due instants too, so a non-default day changes the recorded policy version.
        object.__setattr__(self, "_policy_version", self.policy.fingerprint(extra))

    @classmethod
    def load(
        cls, data_dir: Path | None = None, *, hours: OfficeHours | None = None, policy: Policy | None = None
    ) -> Clock:
        return cls(WorkingCalendar.load(data_dir), hours or OfficeHours.default(), policy or Policy())

    @property
    def policy_version(self) -> str:
        """`policy.version`, plus a digest when a policy field or the office hours are not the defaults."""
        return self._policy_version

    # ---- day geometry --------------------------------------------------------------------------------------

    def opening_at(self, day: date) -> datetime:
        return _midnight(day) + self.hours.offsets()[0][0]

    def closing_at(self, day: date) -> datetime:
        return _midnight(day) + self.hours.offsets()[-1][1]

    def _office_in_day(self, start: timedelta, end: timedelta) -> timedelta:
        total = _ZERO
        for session_start, session_end in self.hours.offsets():
            low = max(session_start, start)
            high = min(session_end, end)
            if high > low:
                total += high - low
        return total

    def is_office_time(self, instant: datetime) -> bool:
        """Inside a session of a working day (a session's end counts: due instants sit there)."""
        local = to_local(instant)
        return self.calendar.is_working_day(local.date()) and self.hours.contains(local.time())

    # ---- office time ---------------------------------------------------------------------------------------

    def office_time_between(self, start: datetime, end: datetime) -> timedelta:
        """Office time elapsed between two instants; zero if end <= start."""
        begin, finish = to_local(start), to_local(end)
        if finish <= begin:
            return _ZERO
        first, last = begin.date(), finish.date()
        working = self.calendar.is_working_day
        if first == last:
            return self._office_in_day(_offset(begin), _offset(finish)) if working(first) else _ZERO
        total = _ZERO
        if working(first):
            total += self._office_in_day(_offset(begin), _ONE_DAY)
        # Whole days in between come from the calendar's running totals, not a loop.
        total += self.hours.daily() * self.calendar.working_days_between(first + _ONE_DAY, last)
        if working(last):
            total += self._office_in_day(_ZERO, _offset(finish))
        return total

    def add_office_time(self, start: datetime, amount: timedelta) -> datetime:
        """The earliest instant at which `amount` of office time has elapsed after `start`.

        Ending exactly at a session's end gives that end (11:30, 17:00), not the next opening. Zero returns
        `start` unchanged.
        """
        if amount < _ZERO:
            raise ValueError("cannot add negative office time; use subtract_office_time")
        if amount == _ZERO:
            to_local(start)  # still refuse a naive datetime
            return start
        local = to_local(start)
        day = local.date()
        position = _offset(local)
        remaining = amount
        sessions = self.hours.offsets()
        daily = self.hours.daily()
        working = self.calendar.is_working_day
        while True:
            if working(day):
                if position == _ZERO and remaining > daily:
                    remaining -= daily
                else:
                    for session_start, session_end in sessions:
                        if position >= session_end:
                            continue
                        begin = max(session_start, position)
                        available = session_end - begin
                        if remaining <= available:
                            return _midnight(day) + begin + remaining
                        remaining -= available
            day += _ONE_DAY
            position = _ZERO

    def subtract_office_time(self, end: datetime, amount: timedelta) -> datetime:
        """The earliest instant t with office_time_between(t, end) <= amount.

        Going back across a lunch break or a night lands on the previous session's end, because no office
        time passes in between; that is the instant a timer must fire.
        """
        if amount < _ZERO:
            raise ValueError("cannot subtract negative office time")
        local = to_local(end)
        day = local.date()
        position = _offset(local)
        remaining = amount
        sessions = self.hours.offsets()
        daily = self.hours.daily()
        working = self.calendar.is_working_day
        while True:
            if working(day):
                if position == _ONE_DAY and remaining >= daily:
                    remaining -= daily
                else:
                    for session_start, session_end in reversed(sessions):
                        if position <= session_start:
                            continue
                        finish = min(session_end, position)
                        available = finish - session_start
                        if remaining < available:
                            return _midnight(day) + finish - remaining
                        remaining -= available
            day -= _ONE_DAY
            position = _ONE_DAY

    # ---- due dates -----------------------------------------------------------------------------------------

    def _skipped(self, day: date) -> ExplanationStep:
        reason = self.calendar.reason_not_working(day)
        if reason is None:
            # A working day passed over because no office time was left on it (receipt after closing).
            return ExplanationStep(
                "skipped_day",
                day.isoformat(),
                f"{_day_en(day)} skipped: no office hours left after the receipt time.",
                f"Bỏ qua {_day_vi(day)}: đã hết giờ làm việc sau thời điểm tiếp nhận.",
            )
        return ExplanationStep(
            "skipped_day",
            day.isoformat(),
            f"{_day_en(day)} skipped: {reason.reason_en}.",
            f"Bỏ qua {_day_vi(day)}: {reason.reason_vi}.",
            reason.source,
        )

    def _skips_between(self, first: date, stop: date) -> tuple[ExplanationStep, ...]:
        """Skipped-day steps for the non-working days in [first, stop); cached because every after-hours
        receipt before a long holiday asks for the same run of days."""
        key = (first, stop)
        found = self._skips.get(key)
        if found is None:
            steps: list[ExplanationStep] = []
            day = first
            while day < stop:
                if not self.calendar.is_working_day(day):
                    steps.append(self._skipped(day))
                day += _ONE_DAY
            found = tuple(steps)
            if len(self._skips) >= _CACHE_LIMIT:
                self._skips.clear()
            self._skips[key] = found
        return found

    def _year_warnings(self, first: date, last: date) -> list[ExplanationStep]:
        steps: list[ExplanationStep] = []
        for year in range(first.year, last.year + 1):
            if not self.calendar.is_complete(year):
                steps.append(
                    ExplanationStep(
                        "calendar_warning",
                        f"{year}-01-01",
                        f"The {year} override file is missing or not marked complete: days in {year} come "
                        "from the holidays package and the known overrides only; an official swap may be "
                        "missing.",
                        f"Dữ liệu điều chỉnh năm {year} chưa có hoặc chưa đầy đủ: ngày làm việc năm {year} "
                        "tính theo gói holidays và các điều chỉnh đã biết; có thể thiếu ngày hoán đổi chính "
                        "thức.",
                    )
                )
        return steps

    def _cached_walk(self, key: tuple[date, DurationUnit, int], build: Callable[[], _DayWalk]) -> _DayWalk:
        found = self._walks.get(key)
        if found is None:
            found = build()
            if len(self._walks) >= _CACHE_LIMIT:
                # Bounded memory; receipt days cluster around "today", so a rare flush costs little.
                self._walks.clear()
            self._walks[key] = found
        return found

    def _closed(self, due_day: date, steps: list[ExplanationStep]) -> _DayWalk:
        """A day walk ending with its "due" step (at the close of office hours), cached with the walk."""
        due_at = self.closing_at(due_day)
        steps.append(
            ExplanationStep(
                "due",
                due_at.isoformat(),
                f"Due {_instant_en(due_at)}, the close of office hours.",
                f"Hạn giải quyết: {_instant_vi(due_at)}, hết giờ làm việc.",
            )
        )
        return due_day, tuple(steps)

    def _walk_working_days(self, receipt_day: date, count: int) -> _DayWalk:
        steps = [
            ExplanationStep(
                "not_counted",
                receipt_day.isoformat(),
                f"The receipt day, {_day_en(receipt_day)}, is not counted; counting starts the next day.",
                f"Ngày tiếp nhận, {_day_vi(receipt_day)}, không tính; thời hạn tính từ ngày tiếp theo.",
                _CIVIL_CODE_FIRST_DAY,
            )
        ]
        day = receipt_day
        counted = 0
        while counted < count:
            day += _ONE_DAY
            if not self.calendar.is_working_day(day):
                steps.append(self._skipped(day))
                continue
            counted += 1
            note = self.calendar.reason_working(day)
            steps.append(
                ExplanationStep(
                    "counted_day",
                    day.isoformat(),
                    f"Working day {counted} of {count}: {_day_en(day)}"
                    + (f" — {note.reason_en}." if note else "."),
                    f"Ngày làm việc thứ {counted}/{count}: {_day_vi(day)}"
                    + (f" — {note.reason_vi}." if note else "."),
                    note.source if note else None,
                )
            )
        steps.extend(self._year_warnings(receipt_day, day))
        return self._closed(day, steps)

    def _walk_calendar_days(self, receipt_day: date, count: int) -> _DayWalk:
        steps = [
            ExplanationStep(
                "not_counted",
                receipt_day.isoformat(),
                f"The receipt day, {_day_en(receipt_day)}, is not counted; counting starts the next day.",
                f"Ngày tiếp nhận, {_day_vi(receipt_day)}, không tính; thời hạn tính từ ngày tiếp theo.",
                _CIVIL_CODE_FIRST_DAY,
            )
        ]
        for index in range(1, count + 1):
            day = receipt_day + timedelta(days=index)
            reason = self.calendar.reason_not_working(day)
            steps.append(
                ExplanationStep(
                    "counted_day",
                    day.isoformat(),
                    f"Calendar day {index} of {count}: {_day_en(day)}"
                    + (f" ({reason.reason_en}; calendar days count non-working days)." if reason else "."),
                    f"Ngày thứ {index}/{count}: {_day_vi(day)}"
                    + (f" ({reason.reason_vi}; thời hạn theo ngày tính cả ngày nghỉ)." if reason else "."),
                )
            )
        last = receipt_day + timedelta(days=count)
        day = last
        if not self.calendar.is_working_day(last):
            reason = self.calendar.reason_not_working(last)
            assert reason is not None
            day = self.calendar.next_working_day(last)
            steps.append(
                ExplanationStep(
                    "rolled_forward",
                    last.isoformat(),
                    f"The last day, {_day_en(last)}, is not a working day ({reason.reason_en}); the deadline "
                    f"moves to the next working day, {_day_en(day)}.",
                    f"Ngày cuối, {_day_vi(last)}, là ngày nghỉ ({reason.reason_vi}); thời hạn chuyển sang "
                    f"ngày làm việc tiếp theo, {_day_vi(day)}.",
                    _CIVIL_CODE_LAST_DAY,
                )
            )
            steps.extend(self._skips_between(last + _ONE_DAY, day))
        steps.extend(self._year_warnings(receipt_day, day))
        return self._closed(day, steps)

    def _walk_same_day(self, receipt_day: date, open_left: bool) -> _DayWalk:
        if open_left:
            step = ExplanationStep(
                "counted_day",
                receipt_day.isoformat(),
                f"Same-day procedure: due at the close of the receipt day, {_day_en(receipt_day)}.",
                f"Thủ tục giải quyết trong ngày: hạn là cuối giờ làm việc ngày tiếp nhận, "
                f"{_day_vi(receipt_day)}.",
            )
            return self._closed(receipt_day, [step, *self._year_warnings(receipt_day, receipt_day)])
        day = self.calendar.next_working_day(receipt_day)
        steps = [self._skipped(receipt_day), *self._skips_between(receipt_day + _ONE_DAY, day)]
        steps.append(
            ExplanationStep(
                "counted_day",
                day.isoformat(),
                f"Same-day procedure received when no office time was left: due at the close of the next "
                f"working day, {_day_en(day)}.",
                f"Thủ tục giải quyết trong ngày, tiếp nhận khi đã hết giờ làm việc: hạn là cuối giờ làm việc "
                f"ngày làm việc tiếp theo, {_day_vi(day)}.",
            )
        )
        steps.extend(self._year_warnings(receipt_day, day))
        return self._closed(day, steps)

    def _explain_hours(self, start: datetime, due: datetime, amount: timedelta) -> list[ExplanationStep]:
        steps: list[ExplanationStep] = []
        so_far = _ZERO
        day = start.date()
        while day <= due.date():
            if not self.calendar.is_working_day(day):
                steps.append(self._skipped(day))
            else:
                counted = self.office_time_between(
                    max(start, _midnight(day)), min(due, _midnight(day + _ONE_DAY))
                )
                if counted == _ZERO:
                    steps.append(self._skipped(day))
                else:
                    so_far += counted
                    steps.append(
                        ExplanationStep(
                            "counted_day",
                            day.isoformat(),
                            f"{_day_en(day)}: {_span(counted)} of office time counted "
                            f"({_span(so_far)} of {_span(amount)}).",
                            f"Ngày {_day_vi(day)}: tính {_span_vi(counted)} làm việc "
                            f"({_span_vi(so_far)}/{_span_vi(amount)}).",
                        )
                    )
            day += _ONE_DAY
        steps.extend(self._year_warnings(start.date(), due.date()))
        return steps

    def _start(self, received: datetime, cutoff: time | None, explain: bool = True,
               ) -> tuple[datetime, list[ExplanationStep]]:
        """Where counting starts: the receipt instant, moved to the next working day's opening when received
        after hours or on a non-working day (policy) or after the procedure's cutoff. The explanation is built
        only when asked for: this runs for every event on the hot path."""
        steps: list[ExplanationStep] = []
        day = received.date()
        if self.policy.after_hours_receipt_next_day:
            if not self.calendar.is_working_day(day):
                moved = self.calendar.next_working_day(day)
                start = self.opening_at(moved)
                if explain:
                    steps.append(
                        ExplanationStep(
                            "non_working_receipt",
                            start.isoformat(),
                            f"Received on a non-working day: counted as received at the opening of the next "
                            f"working day, {_instant_en(start)}.",
                            f"Tiếp nhận vào ngày nghỉ: tính là tiếp nhận lúc mở cửa ngày làm việc tiếp theo, "
                            f"{_instant_vi(start)}.",
                        )
                    )
                    steps.extend(self._skips_between(day, moved))
                return start, steps
            if received >= self.closing_at(day):
                moved = self.calendar.next_working_day(day)
                start = self.opening_at(moved)
                if explain:
                    steps.append(
                        ExplanationStep(
                            "after_hours",
                            start.isoformat(),
                            f"Received at or after closing ({self.hours.closing():%H:%M}): counted as received "
                            f"at "
                            f"the opening of the next working day, {_instant_en(start)}.",
                            f"Tiếp nhận sau giờ làm việc ({self.hours.closing():%H:%M}): tính là tiếp nhận lúc "
                            f"mở cửa ngày làm việc tiếp theo, {_instant_vi(start)}.",
                        )
                    )
                    steps.extend(self._skips_between(day + _ONE_DAY, moved))
                return start, steps
        if (
            cutoff is not None
            and self.calendar.is_working_day(day)
            and _offset(received) > time_to_delta(cutoff)
        ):
            moved = self.calendar.next_working_day(day)
            opening = self.opening_at(moved)
            # A receipt after the cutoff counts as one after closing, under either policy: moved to the next
            # opening when after-hours receipts are, else made at this day's close (its day not counted). Never
            # later than a receipt after closing, or than one on the non-working days that follow.
            start = opening if self.policy.after_hours_receipt_next_day else self.closing_at(day)
            if explain:
                steps.append(
                    ExplanationStep(
                        "cutoff",
                        opening.isoformat(),
                        f"Received after the procedure's {cutoff:%H:%M} cutoff: counting starts from the next "
                        f"working day, {_instant_en(opening)}.",
                        f"Tiếp nhận sau {cutoff:%H:%M}: thời hạn được tính từ ngày làm việc tiếp theo, "
                        f"{_instant_vi(opening)}.",
                        _CUTOFF_SOURCE,
                    )
                )
                steps.extend(self._skips_between(day + _ONE_DAY, moved))
            return start, steps
        return received, steps

    def due(self, received_at: datetime, duration: Duration, cutoff: time | None = None, *,
            explain: bool = True) -> Deadline:
        """The legal due instant of a dossier (or a step) received at `received_at`, with its explanation.

        `cutoff` is the procedure's same-day cutoff (15:00 for civil status and certification); a receipt
        strictly after it on a working day counts from the next working day's opening, for every unit.
        With `explain=False` the explanation may be partial: the hot path (one call per event) needs only
        the instant, and the full explanation is rebuilt on read.
        """
        if duration.amount < 0:
            raise ValueError("a duration cannot be negative")
        received = to_local(received_at)
        steps: list[ExplanationStep] = [
            ExplanationStep(
                "receipt",
                received.isoformat(),
                f"Received {_instant_en(received)} (Asia/Ho_Chi_Minh); processing time {duration}.",
                f"Tiếp nhận lúc {_instant_vi(received)}; thời hạn giải quyết {_duration_vi(duration)}.",
            )
        ] if explain else []
        start, moved_steps = self._start(received, cutoff, explain)
        steps.extend(moved_steps)
        start_day = start.date()
        unit = duration.unit if duration.amount > 0 else DurationUnit.SAME_DAY

        if unit is DurationUnit.WORKING_HOURS:
            amount = timedelta(hours=duration.amount)
            due_at = self.add_office_time(start, amount)
            if explain:
                steps.append(
                    ExplanationStep(
                        "counting",
                        start.isoformat(),
                        f"{duration.amount} working hours of office time counted from {_instant_en(start)}.",
                        f"Tính {duration.amount} giờ làm việc kể từ {_instant_vi(start)}.",
                        _CIVIL_CODE_HOURS,
                    )
                )
                steps.extend(self._explain_hours(start, due_at, amount))
                steps.append(
                    ExplanationStep(
                        "due",
                        due_at.isoformat(),
                        f"Due {_instant_en(due_at)}, when {duration.amount} h of office time have elapsed.",
                        f"Hạn giải quyết: {_instant_vi(due_at)}, khi đủ {duration.amount} giờ làm việc.",
                    )
                )
            return Deadline(due_at, tuple(steps), self.calendar.version, self._policy_version)

        if unit is DurationUnit.WORKING_DAYS:
            due_day, day_steps = self._cached_walk(
                (start_day, unit, duration.amount),
                lambda: self._walk_working_days(start_day, duration.amount),
            )
        elif unit is DurationUnit.CALENDAR_DAYS:
            due_day, day_steps = self._cached_walk(
                (start_day, unit, duration.amount),
                lambda: self._walk_calendar_days(start_day, duration.amount),
            )
        else:
            open_left = self.calendar.is_working_day(start_day) and start < self.closing_at(start_day)
            due_day, day_steps = self._cached_walk(
                (start_day, unit, int(open_left)), lambda: self._walk_same_day(start_day, open_left)
            )
        steps.extend(day_steps)
        return Deadline(self.closing_at(due_day), tuple(steps), self.calendar.version, self._policy_version)

    def extend(self, deadline: Deadline, start: datetime, end: datetime, *, kind: str = "pause") -> Deadline:
        """Move a deadline later by the office time between `start` and `end` (a pause, or a supplement in
        SUBTRACT mode), appending the reason to its explanation."""
        paused = self.office_time_between(start, end)
        due_at = self.add_office_time(deadline.due_at, paused)
        local_due = to_local(due_at)
        label_en, label_vi = _EXTEND_LABELS.get(kind, (kind.replace("_", " ").capitalize(), kind))
        begin, finish = to_local(start), to_local(end)
        steps = (
            ExplanationStep(
                kind,
                begin.isoformat(),
                f"{label_en} from {_instant_en(begin)} to {_instant_en(finish)}: {_span(paused)} of office "
                "time; the deadline moves later by that much.",
                f"{label_vi} từ {_instant_vi(begin)} đến {_instant_vi(finish)}: {_span_vi(paused)} giờ làm "
                "việc; hạn giải quyết lùi tương ứng.",
            ),
            ExplanationStep(
                "due",
                local_due.isoformat(),
                f"Due {_instant_en(local_due)}.",
                f"Hạn giải quyết: {_instant_vi(local_due)}.",
            ),
        )
        return Deadline(local_due, deadline.explanation + steps, self.calendar.version, self._policy_version)

    # ---- classification ------------------------------------------------------------------------------------

    def classify_completion(self, completed_at: datetime, due_at: datetime) -> Timeliness:
        """Late after the due instant (or, by policy, the due day); on_time on the due day; else early."""
        completed, due = to_local(completed_at), to_local(due_at)
        completed_day, due_day = completed.date(), due.date()
        if self.policy.completion_granularity is CompletionGranularity.INSTANT:
            if completed > due:
                return Timeliness.LATE
        elif completed_day > due_day:
            return Timeliness.LATE
        return Timeliness.ON_TIME if completed_day == due_day else Timeliness.EARLY

    def due_soon_threshold(self) -> timedelta:
        return self.hours.daily() * self.policy.due_soon_working_days

    def classify_open(
        self, now: datetime, due_at: datetime, *, paused: bool = False, awaiting_supplement: bool = False
    ) -> OpenState:
        if awaiting_supplement:
            return OpenState.AWAITING_SUPPLEMENT
        if paused:
            return OpenState.PAUSED
        current, due = to_local(now), to_local(due_at)
        if current > due:
            return OpenState.OVERDUE
        if self.office_time_between(current, due) <= self.due_soon_threshold():
            return OpenState.DUE_SOON
        return OpenState.ON_TRACK

    def due_soon_at(self, due_at: datetime) -> datetime:
        """The instant an open dossier turns due_soon; `classify_open` agrees with it to the microsecond."""
        return self.subtract_office_time(due_at, self.due_soon_threshold())

    def apology_deadline(self, due_at: datetime) -> datetime:
        """The latest compliant apology instant: the close of the working day `apology_lead_working_days`
        before the due day (Decree 61/2018 art. 19.9, "chậm nhất 01 ngày trước ngày hết hạn")."""
        lead = self.policy.apology_lead_working_days
        due = to_local(due_at)
        if lead == 0:
            return due
        day = due.date()
        for _ in range(lead):
            day = self.calendar.previous_working_day(day)
        return self.closing_at(day)

    def apology_late(self, issued_at: datetime, due_at: datetime) -> bool:
        return to_local(issued_at) > self.apology_deadline(due_at)

    def time_used_ratio(self, received_at: datetime, completed_at: datetime, due_at: datetime) -> float:
        """Office time used / office time allowed (1.0 = exactly on the due instant).

        With no office time allowed (a due at or before receipt), 0.0 if none was used either, else inf.
        """
        allowed = self.office_time_between(received_at, due_at)
        used = self.office_time_between(received_at, completed_at)
        if allowed <= _ZERO:
            return 0.0 if used <= _ZERO else math.inf
        return used / allowed
