"""The working calendar: package holidays + yearly override files, checked by hand against the official
arrangements for 2024-2026 (shared/data/calendar/vn-YYYY.toml cite the sources)."""

from __future__ import annotations

import re
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.clock.calendar import WorkingCalendar, parse_overrides

pytestmark = pytest.mark.unit

CALENDAR = WorkingCalendar.load()


def _days(first: str, last: str) -> list[date]:
    start, stop = date.fromisoformat(first), date.fromisoformat(last)
    return [start + timedelta(days=i) for i in range((stop - start).days + 1)]


# ---- which days are off, by hand from the official arrangements ------------------------------------------

OFF_RUNS = [
    pytest.param("2025-01-25", "2025-02-02", id="tet-2025-9-days"),
    pytest.param("2026-02-14", "2026-02-22", id="tet-2026-9-days"),
    pytest.param("2024-04-27", "2024-05-01", id="30-4-2024-sat-to-wed"),
    pytest.param("2025-04-30", "2025-05-04", id="30-4-2025-wed-to-sun"),
    pytest.param("2024-02-08", "2024-02-14", id="tet-2024"),
    pytest.param("2026-01-01", "2026-01-04", id="new-year-2026-4-days"),
    pytest.param("2025-08-30", "2025-09-02", id="national-day-2025"),
    pytest.param("2026-08-29", "2026-09-02", id="national-day-2026"),
]


@pytest.mark.parametrize(("first", "last"), OFF_RUNS)
def test_holiday_runs_are_not_working(first: str, last: str) -> None:
    for day in _days(first, last):
        assert not CALENDAR.is_working_day(day), day
        assert CALENDAR.reason_not_working(day) is not None
    # The days around each run are ordinary working days.
    assert CALENDAR.is_working_day(CALENDAR.previous_working_day(date.fromisoformat(first)))
    assert CALENDAR.next_working_day(date.fromisoformat(last)) > date.fromisoformat(last)


WORKING = [
    pytest.param("2025-01-24", id="friday-before-tet-2025"),
    pytest.param("2025-02-03", id="monday-after-tet-2025"),
    pytest.param("2026-02-13", id="friday-before-tet-2026"),
    pytest.param("2026-02-23", id="monday-after-tet-2026"),
    pytest.param("2024-05-04", id="make-up-saturday-2024"),
    pytest.param("2025-04-26", id="make-up-saturday-2025"),
    pytest.param("2026-01-10", id="make-up-saturday-2026-new-year"),
    pytest.param("2026-08-22", id="make-up-saturday-2026-national-day"),
    pytest.param("2024-05-02", id="thursday-after-1-5-2024"),
    pytest.param("2025-12-31", id="new-years-eve-2025"),
]


@pytest.mark.parametrize("day", WORKING)
def test_working_days(day: str) -> None:
    assert CALENDAR.is_working_day(date.fromisoformat(day))
    assert CALENDAR.reason_not_working(date.fromisoformat(day)) is None


def test_swapped_weekdays_are_off_with_their_reason() -> None:
    # 29/4/2024 (package) and 2/5/2025 (package) and 2/1/2026 (override file) are swapped days off.
    for day in ("2024-04-29", "2025-05-02", "2026-01-02", "2026-08-31"):
        reason = CALENDAR.reason_not_working(date.fromisoformat(day))
        assert reason is not None, day
        assert reason.reason_vi
        assert reason.reason_en


def test_make_up_saturday_has_a_reason_with_a_source() -> None:
    reason = CALENDAR.reason_working(date(2025, 4, 26))
    assert reason is not None
    assert "26/4/2025" in reason.reason_vi
    assert reason.source
    # An ordinary weekday and a day off have no "why working" reason.
    assert CALENDAR.reason_working(date(2025, 4, 24)) is None
    assert CALENDAR.reason_working(date(2025, 4, 27)) is None


def test_holiday_names_in_both_languages() -> None:
    reason = CALENDAR.reason_not_working(date(2025, 1, 29))
    assert reason is not None
    assert reason.reason_vi == "Tết Nguyên Đán"
    assert reason.reason_en == "Lunar New Year"
    assert reason.source is not None
    assert "Điều 112" in reason.source


def test_weekend_reason() -> None:
    saturday = CALENDAR.reason_not_working(date(2025, 1, 11))
    sunday = CALENDAR.reason_not_working(date(2025, 1, 12))
    assert saturday is not None
    assert saturday.reason_en.startswith("Saturday")
    assert saturday.reason_vi.startswith("Thứ Bảy")
    assert sunday is not None
    assert sunday.reason_vi.startswith("Chủ nhật")


NEIGHBOURS = [
    # day, next working day, previous working day
    pytest.param("2025-01-24", "2025-02-03", "2025-01-23", id="across-tet-2025"),
    pytest.param("2026-02-13", "2026-02-23", "2026-02-12", id="across-tet-2026"),
    pytest.param("2025-12-31", "2026-01-05", "2025-12-30", id="year-end-2025"),
    pytest.param("2024-12-31", "2025-01-02", "2024-12-30", id="year-end-2024"),
    pytest.param("2024-05-03", "2024-05-04", "2024-05-02", id="make-up-saturday-is-next"),
    pytest.param("2025-04-28", "2025-04-29", "2025-04-26", id="make-up-saturday-is-previous"),
    pytest.param("2026-01-01", "2026-01-05", "2025-12-31", id="on-a-holiday"),
]


@pytest.mark.parametrize(("day", "following", "preceding"), NEIGHBOURS)
def test_next_and_previous_working_day(day: str, following: str, preceding: str) -> None:
    assert CALENDAR.next_working_day(date.fromisoformat(day)) == date.fromisoformat(following)
    assert CALENDAR.previous_working_day(date.fromisoformat(day)) == date.fromisoformat(preceding)


def test_working_days_between_matches_a_day_by_day_count() -> None:
    start = date(2024, 11, 20)
    for length in (0, 1, 7, 45, 120, 400):
        end = start + timedelta(days=length)
        expected = sum(CALENDAR.is_working_day(start + timedelta(days=i)) for i in range(length))
        assert CALENDAR.working_days_between(start, end) == expected
    assert CALENDAR.working_days_between(date(2025, 1, 25), date(2025, 2, 3)) == 0
    assert CALENDAR.working_days_between(date(2025, 2, 3), date(2025, 1, 25)) == 0


def test_add_working_days() -> None:
    assert CALENDAR.add_working_days(date(2025, 1, 24), 3) == date(2025, 2, 5)
    assert CALENDAR.add_working_days(date(2025, 1, 24), 0) == date(2025, 1, 24)
    with pytest.raises(ValueError, match="negative"):
        CALENDAR.add_working_days(date(2025, 1, 24), -1)


# ---- years and versions ------------------------------------------------------------------------------------


def test_years_with_data_and_version() -> None:
    assert {2024, 2025, 2026} <= CALENDAR.years_with_data()
    assert re.match(r"^vn:2024\.\d+\+2025\.\d+\+2026\.\d+;holidays:[\w.]+;sha:[0-9a-f]{8}$", CALENDAR.version)


def test_missing_next_year_from_the_files() -> None:
    # No file for 2027 exists yet; the reminder names it.
    assert CALENDAR.missing_next_year(date(2026, 11, 25)) == 2027
    assert CALENDAR.missing_next_year(date(2024, 3, 1)) is None  # 2025 is complete


def _override(year: int, **extra: Any) -> dict[str, Any]:
    return {"year": year, "version": f"{year}.1", "complete": True, **extra}


def test_missing_next_year_needs_a_complete_file() -> None:
    incomplete = WorkingCalendar([parse_overrides({**_override(2031), "complete": False})])
    assert incomplete.missing_next_year(date(2030, 6, 1)) == 2031
    complete = WorkingCalendar([parse_overrides(_override(2031))])
    assert complete.missing_next_year(date(2030, 6, 1)) is None
    assert complete.missing_next_year(date(2031, 6, 1)) == 2032


def test_version_changes_whenever_data_changes() -> None:
    entry = {
        "date": date(2031, 5, 2),
        "reason_vi": "Nghỉ hoán đổi",
        "reason_en": "Swapped day off",
        "source": "X",
    }
    base = WorkingCalendar([parse_overrides(_override(2031, days_off=[entry]))])
    same = WorkingCalendar([parse_overrides(_override(2031, days_off=[dict(entry)]))])
    edited = WorkingCalendar([parse_overrides(_override(2031, days_off=[{**entry, "source": "Y"}]))])
    assert base.version == same.version
    # Same file version, different content: the digest still tells them apart.
    assert base.version != edited.version
    assert base.version.startswith("vn:2031.1;holidays:")


def test_overrides_take_precedence_over_the_package() -> None:
    off = {"date": "2031-05-02", "reason_vi": "Nghỉ bù", "reason_en": "Bridge day", "source": "CV 1/VPCP"}
    worked = {
        "date": "2031-05-10",
        "reason_vi": "Làm bù",
        "reason_en": "Make-up Saturday",
        "source": "CV 1/VPCP",
    }
    # 2031-04-30 is Wednesday, a package holiday; not_holidays turns it back into an ordinary weekday.
    not_holiday = {"date": "2031-04-30", "reason_en": "test: not a day off", "source": "test"}
    calendar = WorkingCalendar(
        [parse_overrides(_override(2031, days_off=[off], working_days=[worked], not_holidays=[not_holiday]))]
    )
    assert not calendar.is_working_day(date(2031, 5, 2))
    reason = calendar.reason_not_working(date(2031, 5, 2))
    assert reason is not None
    assert reason.reason_en == "Bridge day"
    assert reason.source == "CV 1/VPCP"
    assert calendar.is_working_day(date(2031, 5, 10))
    made_up = calendar.reason_working(date(2031, 5, 10))
    assert made_up is not None
    assert made_up.reason_vi == "Làm bù"
    assert calendar.is_working_day(date(2031, 4, 30))
    note = calendar.reason_working(date(2031, 4, 30))
    assert note is not None
    assert "not a day off" in note.reason_en
    # Without the files the package alone decides.
    bare = WorkingCalendar()
    assert not bare.is_working_day(date(2031, 4, 30))
    assert bare.is_working_day(date(2031, 5, 2))
    assert not bare.is_working_day(date(2031, 5, 10))
    assert bare.version.startswith("vn:none;holidays:")


def test_make_up_days_can_be_configured_off() -> None:
    calendar = WorkingCalendar.load(make_up_days_working=False)
    assert not calendar.is_working_day(date(2025, 4, 26))
    reason = calendar.reason_not_working(date(2025, 4, 26))
    assert reason is not None
    assert "not counted" in reason.reason_en
    assert "makeup:off" in calendar.version
    assert calendar.version != CALENDAR.version
    assert calendar.next_working_day(date(2025, 4, 25)) == date(2025, 4, 28)


BAD_OVERRIDES = [
    pytest.param({"version": "1"}, "'year'", id="no-year"),
    pytest.param({"year": 2031}, "'version'", id="no-version"),
    pytest.param({**_override(2031), "complete": "yes"}, "'complete'", id="complete-not-bool"),
    pytest.param({**_override(2031), "holidays": []}, "unknown keys", id="unknown-key"),
    pytest.param(
        _override(2031, days_off=[{"date": "2032-01-01", "reason_vi": "a", "reason_en": "a"}]),
        "not in 2031",
        id="wrong-year",
    ),
    pytest.param(
        _override(2031, days_off=[{"date": "2031-01-02", "reason_en": "a"}]), "reason_vi", id="no-vi"
    ),
    pytest.param(
        _override(2031, days_off=[{"date": "02/01/2031", "reason_vi": "a", "reason_en": "a"}]),
        "date",
        id="date",
    ),
    pytest.param(
        _override(
            2031,
            days_off=[{"date": "2031-01-04", "reason_vi": "a", "reason_en": "a"}],
            working_days=[{"date": "2031-01-04", "reason_vi": "b", "reason_en": "b"}],
        ),
        "already listed",
        id="off-and-worked",
    ),
]


@pytest.mark.parametrize(("data", "message"), BAD_OVERRIDES)
def test_bad_override_tables_are_refused(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_overrides(data)


def test_two_files_for_one_year_are_refused() -> None:
    with pytest.raises(ValueError, match="two override files"):
        WorkingCalendar([parse_overrides(_override(2031)), parse_overrides(_override(2031))])


def test_file_name_must_match_its_year(tmp_path: Path) -> None:
    (tmp_path / "vn-2031.toml").write_text(
        'year = 2032\nversion = "2032.1"\ncomplete = true\n', encoding="utf-8"
    )
    with pytest.raises(ValueError, match="file name"):
        WorkingCalendar.load(tmp_path)


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        WorkingCalendar.load(tmp_path / "nowhere")


def test_years_outside_the_package_range_are_refused() -> None:
    with pytest.raises(ValueError, match="no working calendar"):
        CALENDAR.is_working_day(date(2150, 1, 2))
