"""The working calendar: which days the one-stop clock runs on, and why each other day does not.

Base: the `holidays` package's Vietnamese public holidays (Labour Code 2019 art. 112, lunar dates included),
Monday-Friday otherwise. On top: one versioned override file per year (shared/data/calendar/vn-YYYY.toml)
with the Prime Minister's yearly swaps, extra days off, make-up Saturdays, and package entries that are not
days off. Per-day answers come from per-year bitmaps built once, because the engine asks them per event.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import holidays

DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "calendar"

WEEKDAY_EN = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
WEEKDAY_VI = ("Thứ Hai", "Thứ Ba", "Thứ Tư", "Thứ Năm", "Thứ Sáu", "Thứ Bảy", "Chủ nhật")

_WEEKEND_SOURCE = "QĐ 188/1999/QĐ-TTg (tuần làm việc 40 giờ, thứ Hai-thứ Sáu)"
_HOLIDAY_SOURCE = "Bộ luật Lao động 2019 Điều 112 (holidays {version}, VN)"

# The package computes lunar dates only inside its supported range and silently returns nothing outside it;
# an empty year would look like a year without holidays, so refuse it instead.
_FIRST_YEAR: int = getattr(holidays.country_holidays("VN"), "start_year", 1901)
_LAST_YEAR: int = getattr(holidays.country_holidays("VN"), "end_year", 2099)


@dataclass(frozen=True)
class DayReason:
    """Why a day is (or, for a make-up day, is not) a non-working day, in both languages, with its source."""

    reason_en: str
    reason_vi: str
    source: str | None


@dataclass(frozen=True)
class YearOverrides:
    """One parsed override file (vn-YYYY.toml)."""

    year: int
    version: str
    complete: bool
    days_off: Mapping[date, DayReason]
    working_days: Mapping[date, DayReason]
    not_holidays: Mapping[date, DayReason]
    origin: str = "<memory>"

    def canonical(self) -> dict[str, Any]:
        """A normalised form for the calendar's content digest: comments and formatting do not count."""

        def entries(table: Mapping[date, DayReason]) -> list[list[str | None]]:
            return [[d.isoformat(), r.reason_en, r.reason_vi, r.source] for d, r in sorted(table.items())]

        return {
            "year": self.year,
            "version": self.version,
            "complete": self.complete,
            "days_off": entries(self.days_off),
            "working_days": entries(self.working_days),
            "not_holidays": entries(self.not_holidays),
        }


def _as_date(value: object, where: str) -> date:
    if isinstance(value, date) and not hasattr(value, "hour"):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError(f"{where}: date must be a TOML date such as 2025-04-26, got {value!r}")


def _text(entry: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> str | None:
    value = entry.get(key)
    if value is None:
        if required:
            raise ValueError(f"{where}: missing {key}")
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: {key} must be a non-empty string")
    return value.strip()


def parse_overrides(data: Mapping[str, Any], origin: str = "<memory>") -> YearOverrides:
    """Validate one year's override table (already parsed from TOML)."""
    year = data.get("year")
    if not isinstance(year, int) or isinstance(year, bool):
        raise ValueError(f"{origin}: 'year' must be an integer")
    version = data.get("version")
    if not isinstance(version, str) or not version.strip():
        raise ValueError(f"{origin}: 'version' must be a non-empty string such as '{year}.1'")
    complete = data.get("complete", False)
    if not isinstance(complete, bool):
        raise ValueError(f"{origin}: 'complete' must be true or false")
    known = {"year", "version", "complete", "days_off", "working_days", "not_holidays"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{origin}: unknown keys {unknown}; known: {sorted(known)}")

    seen: dict[date, str] = {}

    def table(name: str, *, vi_required: bool) -> dict[date, DayReason]:
        raw = data.get(name, [])
        if not isinstance(raw, list):
            raise ValueError(f"{origin}: '{name}' must be an array of tables ([[{name}]])")
        result: dict[date, DayReason] = {}
        for index, entry in enumerate(raw):
            where = f"{origin}: {name}[{index}]"
            if not isinstance(entry, dict):
                raise ValueError(f"{where}: must be a table")
            day = _as_date(entry.get("date"), where)
            if day.year != year:
                raise ValueError(f"{where}: {day} is not in {year}")
            if day in seen:
                # The same date in two tables (off and worked) has no single meaning; make the author choose.
                raise ValueError(f"{where}: {day} is already listed in {seen[day]}")
            seen[day] = name
            reason_en = _text(entry, "reason_en", where)
            reason_vi = _text(entry, "reason_vi", where, required=vi_required)
            assert reason_en is not None
            result[day] = DayReason(
                reason_en=reason_en,
                reason_vi=reason_vi if reason_vi is not None else reason_en,
                source=_text(entry, "source", where, required=False),
            )
        return result

    days_off = table("days_off", vi_required=True)
    working_days = table("working_days", vi_required=True)
    not_holidays = table("not_holidays", vi_required=False)
    return YearOverrides(
        year=year,
        version=version.strip(),
        complete=complete,
        days_off=days_off,
        working_days=working_days,
        not_holidays=not_holidays,
        origin=origin,
    )


def load_override_file(path: Path) -> YearOverrides:
    with path.open("rb") as handle:
        try:
            data = tomllib.load(handle)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: not valid TOML: {exc}") from exc
    return parse_overrides(data, origin=str(path))


@dataclass(frozen=True)
class _Year:
    first_ordinal: int
    # One byte per day of the year, 1 = working; indexing bytes is the cheapest per-day lookup in Python.
    working: bytes
    # cumulative[i] = working days among the first i days of the year, for O(1) range counts.
    cumulative: tuple[int, ...]
    off: Mapping[date, DayReason]
    worked: Mapping[date, DayReason]


class WorkingCalendar:
    """Which local (Asia/Ho_Chi_Minh) dates are working days for the one-stop clock, and why.

    Precedence for a date: a `working_days` override (make-up day) > a `days_off` override > a package
    holiday not listed in `not_holidays` > Saturday/Sunday > working.
    """

    def __init__(
        self,
        overrides: Iterable[YearOverrides] = (),
        *,
        make_up_days_working: bool = True,
        holidays_version: str | None = None,
    ) -> None:
        by_year: dict[int, YearOverrides] = {}
        for item in overrides:
            if item.year in by_year:
                raise ValueError(
                    f"two override files for {item.year}: {by_year[item.year].origin} and {item.origin}"
                )
            by_year[item.year] = item
        self._overrides: dict[int, YearOverrides] = dict(sorted(by_year.items()))
        self._make_up_days_working = make_up_days_working
        self._holidays_version = holidays_version or str(getattr(holidays, "__version__", "unknown"))
        supported = set(getattr(holidays.country_holidays("VN"), "supported_languages", ()))
        self._language_vi: str | None = "vi" if "vi" in supported else None
        self._language_en: str | None = "en_US" if "en_US" in supported else None
        self._years: dict[int, _Year] = {}
        self.version: str = self._make_version()
        # Build the years the files cover (and their neighbours) now, so the first events pay nothing.
        for year in self._overrides:
            for near in (year - 1, year, year + 1):
                if _FIRST_YEAR <= near <= _LAST_YEAR:
                    self._year(near)

    @classmethod
    def load(cls, data_dir: Path | None = None, *, make_up_days_working: bool = True) -> WorkingCalendar:
        """Read every vn-YYYY.toml in `data_dir` (default shared/data/calendar).

        `make_up_days_working=False` treats make-up Saturdays as days off for deadlines (DESIGN §4 counts them
        as working; no source settles it), and says so in the version.
        """
        directory = DEFAULT_DATA_DIR if data_dir is None else data_dir
        if not directory.is_dir():
            raise FileNotFoundError(f"calendar data directory {directory} does not exist")
        files = sorted(directory.glob("vn-*.toml"))
        overrides = [load_override_file(path) for path in files]
        for path, item in zip(files, overrides, strict=True):
            if path.stem != f"vn-{item.year}":
                raise ValueError(f"{path}: file name says {path.stem[3:]} but year = {item.year}")
        return cls(overrides, make_up_days_working=make_up_days_working)

    def _make_version(self) -> str:
        files = "+".join(item.version for item in self._overrides.values()) or "none"
        parts = [f"vn:{files}", f"holidays:{self._holidays_version}"]
        if not self._make_up_days_working:
            parts.append("makeup:off")
        # A digest of the parsed content makes the version change even when an editor forgets to bump a file's
        # own version; formatting and comments do not change it.
        canonical = json.dumps([item.canonical() for item in self._overrides.values()], sort_keys=True)
        parts.append("sha:" + hashlib.sha256(canonical.encode()).hexdigest()[:8])
        return ";".join(parts)

    # ---- per-year tables -------------------------------------------------------------------------------

    def _year(self, year: int) -> _Year:
        built = self._years.get(year)
        if built is None:
            built = self._build_year(year)
            # Plain dict assignment is atomic; two threads building the same year compute the same value.
            self._years[year] = built
        return built

    def _package_names(self, year: int, language: str | None) -> Mapping[date, str]:
        if language is None:
            names: Mapping[date, str] = holidays.country_holidays("VN", years=year)
        else:
            names = holidays.country_holidays("VN", years=year, language=language)
        return names

    def _build_year(self, year: int) -> _Year:
        if not _FIRST_YEAR <= year <= _LAST_YEAR:
            raise ValueError(
                f"no working calendar for {year}: the holidays package covers {_FIRST_YEAR}-{_LAST_YEAR}"
            )
        names_vi = self._package_names(year, self._language_vi)
        names_en = self._package_names(year, self._language_en) if self._language_en else names_vi
        source = _HOLIDAY_SOURCE.format(version=self._holidays_version)
        overrides = self._overrides.get(year)
        not_holidays = overrides.not_holidays if overrides else {}

        off: dict[date, DayReason] = {}
        worked: dict[date, DayReason] = {}
        for day, name_vi in names_vi.items():
            if day in not_holidays:
                if day.weekday() < 5:
                    # Shown on counted days, so a reader comparing with the package sees why it was ignored.
                    note = not_holidays[day]
                    worked[day] = DayReason(
                        reason_en=f"{names_en.get(day, name_vi)} is not a day off: {note.reason_en}",
                        reason_vi=f"{name_vi} không phải ngày nghỉ: {note.reason_vi}",
                        source=note.source,
                    )
                continue
            off[day] = DayReason(reason_en=names_en.get(day, name_vi), reason_vi=name_vi, source=source)
        if overrides is not None:
            off.update(overrides.days_off)
            for day, reason in overrides.working_days.items():
                off.pop(day, None)
                if self._make_up_days_working:
                    worked[day] = reason
                else:
                    off[day] = DayReason(
                        reason_en=f"{reason.reason_en} (not counted for deadlines by configuration)",
                        reason_vi=f"{reason.reason_vi} (không tính là ngày làm việc theo cấu hình)",
                        source=reason.source,
                    )

        first = date(year, 1, 1)
        days = (date(year + 1, 1, 1) - first).days
        flags = bytearray(days)
        cumulative = [0] * (days + 1)
        for index in range(days):
            day = first + timedelta(days=index)
            if day in worked and day not in off:
                working = True
            elif day in off:
                working = False
            else:
                working = day.weekday() < 5
            flags[index] = 1 if working else 0
            cumulative[index + 1] = cumulative[index] + flags[index]
        return _Year(
            first_ordinal=first.toordinal(),
            working=bytes(flags),
            cumulative=tuple(cumulative),
            off=off,
            worked={day: reason for day, reason in worked.items() if day not in off},
        )

    # ---- public API ------------------------------------------------------------------------------------

    def is_working_day(self, day: date) -> bool:
        table = self._years.get(day.year) or self._year(day.year)
        return table.working[day.toordinal() - table.first_ordinal] == 1

    def reason_not_working(self, day: date) -> DayReason | None:
        """None for a working day; else the holiday or swap name, an override's reason, or the weekend."""
        if self.is_working_day(day):
            return None
        named = self._year(day.year).off.get(day)
        if named is not None:
            return named
        weekday = day.weekday()
        return DayReason(
            reason_en=f"{WEEKDAY_EN[weekday]} (weekly rest day)",
            reason_vi=f"{WEEKDAY_VI[weekday]} (ngày nghỉ hằng tuần)",
            source=_WEEKEND_SOURCE,
        )

    def reason_working(self, day: date) -> DayReason | None:
        """Why an unusual day is worked (a make-up Saturday, a package holiday that is not a day off); None
        for an ordinary weekday and for non-working days."""
        if not self.is_working_day(day):
            return None
        return self._year(day.year).worked.get(day)

    def years_with_data(self) -> frozenset[int]:
        """Years that have an override file (complete or not)."""
        return frozenset(self._overrides)

    def complete_years(self) -> frozenset[int]:
        """Years whose override file says every official decision of that year is in it."""
        return frozenset(year for year, item in self._overrides.items() if item.complete)

    def is_complete(self, year: int) -> bool:
        item = self._overrides.get(year)
        return item is not None and item.complete

    def missing_next_year(self, today: date) -> int | None:
        """Next year, if it has no complete override file yet (the operators' reminder to add it)."""
        year = today.year + 1
        return None if self.is_complete(year) else year

    def overrides(self, year: int) -> YearOverrides | None:
        return self._overrides.get(year)

    def next_working_day(self, day: date) -> date:
        """The first working day strictly after `day`."""
        candidate = day
        for _ in range(400):
            candidate += timedelta(days=1)
            if self.is_working_day(candidate):
                return candidate
        raise ValueError(f"no working day within 400 days after {day}; check the calendar data")

    def previous_working_day(self, day: date) -> date:
        """The last working day strictly before `day`."""
        candidate = day
        for _ in range(400):
            candidate -= timedelta(days=1)
            if self.is_working_day(candidate):
                return candidate
        raise ValueError(f"no working day within 400 days before {day}; check the calendar data")

    def working_day_on_or_after(self, day: date) -> date:
        return day if self.is_working_day(day) else self.next_working_day(day)

    def working_days_between(self, start: date, end: date) -> int:
        """Working days d with start <= d < end (0 if end <= start), from per-year running totals."""
        if end <= start:
            return 0
        total = 0
        cursor = start
        while cursor < end:
            table = self._year(cursor.year)
            year_end = date(cursor.year + 1, 1, 1)
            stop = min(end, year_end)
            total += (
                table.cumulative[stop.toordinal() - table.first_ordinal]
                - table.cumulative[cursor.toordinal() - table.first_ordinal]
            )
            cursor = stop
        return total

    def add_working_days(self, day: date, count: int) -> date:
        """The `count`-th working day after `day` (`day` itself not counted); `day` for count 0."""
        if count < 0:
            raise ValueError("count cannot be negative")
        current = day
        for _ in range(count):
            current = self.next_working_day(current)
        return current
