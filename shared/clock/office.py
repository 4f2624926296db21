"""Office hours: the sessions of a working day during which the clock runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import time, timedelta

_DEFAULT_SESSIONS: tuple[tuple[time, time], ...] = ((time(7, 30), time(11, 30)), (time(13, 0), time(17, 0)))


def time_to_delta(value: time) -> timedelta:
    """Offset of a wall-clock time from midnight; arithmetic on timedeltas avoids rebuilding datetimes."""
    return timedelta(
        hours=value.hour, minutes=value.minute, seconds=value.second, microseconds=value.microsecond
    )


def _parse_time(text: str) -> time:
    try:
        parsed = time.fromisoformat(text.strip())
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a time of day: write HH:MM, e.g. '07:30'") from exc
    if parsed.tzinfo is not None:
        # Office hours are wall-clock times in Vietnam; an offset here would mean two sources of truth.
        raise ValueError(f"{text!r}: office hours are local wall-clock times, without an offset")
    return parsed


@dataclass(frozen=True)
class OfficeHours:
    """Sessions of a working day, in Asia/Ho_Chi_Minh wall-clock time, ordered and not overlapping.

    The default 07:30-11:30 and 13:00-17:00 is the common civil-service day; provinces differ
    (07:00-11:30 / 13:30-17:00 is also seen), so it is configuration, not code.
    """

    sessions: tuple[tuple[time, time], ...] = _DEFAULT_SESSIONS

    def __post_init__(self) -> None:
        if not self.sessions:
            raise ValueError("office hours need at least one session")
        previous_end: time | None = None
        for start, end in self.sessions:
            if start.tzinfo is not None or end.tzinfo is not None:
                raise ValueError("office hours are local wall-clock times, without an offset")
            if start >= end:
                raise ValueError(f"session {start:%H:%M}-{end:%H:%M} ends before it starts")
            if previous_end is not None and start < previous_end:
                raise ValueError(
                    f"session from {start:%H:%M} overlaps or precedes the one ending {previous_end:%H:%M}; "
                    "list sessions in order without overlap"
                )
            previous_end = end
        # Offsets from midnight, precomputed once: every clock operation walks these.
        object.__setattr__(
            self,
            "_offsets",
            tuple((time_to_delta(start), time_to_delta(end)) for start, end in self.sessions),
        )
        object.__setattr__(self, "_daily", sum((end - start for start, end in self._offsets), timedelta()))

    _offsets: tuple[tuple[timedelta, timedelta], ...] = field(
        default=(), init=False, repr=False, compare=False
    )
    _daily: timedelta = field(default=timedelta(), init=False, repr=False, compare=False)

    @classmethod
    def default(cls) -> OfficeHours:
        return cls(_DEFAULT_SESSIONS)

    @classmethod
    def parse(cls, sessions: list[list[str]]) -> OfficeHours:
        """Build from configuration such as ``[["07:00", "11:30"], ["13:30", "17:00"]]``."""
        parsed: list[tuple[time, time]] = []
        for session in sessions:
            if len(session) != 2:
                raise ValueError(f"a session is [start, end], got {session!r}")
            parsed.append((_parse_time(session[0]), _parse_time(session[1])))
        return cls(tuple(parsed))

    def opening(self) -> time:
        return self.sessions[0][0]

    def closing(self) -> time:
        return self.sessions[-1][1]

    def daily(self) -> timedelta:
        """Office time in one working day (8 h by default)."""
        return self._daily

    def offsets(self) -> tuple[tuple[timedelta, timedelta], ...]:
        """Sessions as offsets from local midnight."""
        return self._offsets

    def contains(self, value: time) -> bool:
        """True if the wall-clock time is in a session; a session's end counts (due instants sit there)."""
        return any(start <= value <= end for start, end in self.sessions)

    def as_config(self) -> list[list[str]]:
        """The inverse of `parse`, for fingerprints and docs."""
        return [[_format(start), _format(end)] for start, end in self.sessions]


def _format(value: time) -> str:
    return value.isoformat(timespec="minutes" if not (value.second or value.microsecond) else "auto")
