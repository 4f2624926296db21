"""Open dossiers held in memory, each armed with the instant it next changes state with no event arriving.

Pure: instants are epoch seconds passed in. A heap of (instant, dossier) timers fires due-soon and overdue
flips; re-arming a dossier leaves its old timer in the heap, recognised as stale when it fires (the entry's
armed instant differs) and dropped when the heap is compacted. Counts by bounded labels are kept current
with every change, so reading them costs nothing per dossier.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

ON_TRACK, DUE_SOON, OVERDUE, PAUSED, AWAITING_SUPPLEMENT = (
    "on_track", "due_soon", "overdue", "paused", "awaiting_supplement")
OPEN_STATES = (ON_TRACK, DUE_SOON, OVERDUE, PAUSED, AWAITING_SUPPLEMENT)
_STOPPED_KINDS = {"paused": PAUSED, "awaiting_supplement": AWAITING_SUPPLEMENT}
# Overdue means strictly after the due instant (as in shared.dossier); the timer fires just past it.
_PAST = 1e-6

Place = tuple[str, str, str]
"""(province, unit, sector): where an open dossier is counted."""


class _Entry:
    __slots__ = ("armed", "due", "due_soon", "kind", "part", "place", "received", "state")

    def __init__(self, part: int, place: Place, kind: str, received: float, due_soon: float | None,
                 due: float | None) -> None:
        self.part = part
        self.place = place
        self.kind = kind
        self.received = received
        self.due_soon = due_soon
        self.due = due
        self.state = ""
        self.armed: float | None = None


@dataclass(frozen=True)
class Flips:
    count: int
    earliest: float | None
    """The earliest instant that fired: how late the flips ran is (time they ran − earliest)."""


def state_at(kind: str, due_soon: float | None, due: float | None, now: float) -> str:
    if kind in _STOPPED_KINDS:
        return _STOPPED_KINDS[kind]
    if due is not None and now > due:
        return OVERDUE
    if due_soon is not None and now >= due_soon:
        return DUE_SOON
    return ON_TRACK


def _next_flip(entry: _Entry) -> float | None:
    if entry.state == ON_TRACK and entry.due_soon is not None and (entry.due is None or entry.due_soon <= entry.due):
        return entry.due_soon
    if entry.state in (ON_TRACK, DUE_SOON) and entry.due is not None:
        return entry.due + _PAST
    return None


class OpenDossiers:
    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._places: dict[Place, Place] = {}  # one shared tuple per place, not one per dossier
        self._timers: list[tuple[float, str]] = []
        self._oldest: dict[tuple[str, str], list[tuple[float, str]]] = defaultdict(list)
        self._oldest_size = 0
        self.by_unit: dict[tuple[str, str, str], int] = defaultdict(int)
        """(province, unit, state) -> open dossiers."""
        self.by_sector: dict[tuple[str, str, str], int] = defaultdict(int)
        """(province, sector, state) -> open dossiers."""

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, code: str, part: int, place: Place, kind: str, received: float, due_soon: float | None,
            due: float | None, now: float) -> None:
        """Record an open dossier as it stands after its latest event (replacing what was known)."""
        place = self._places.setdefault(place, place)
        previous = self._entries.get(code)
        if previous is not None:
            self._count(previous, -1)
        else:
            heapq.heappush(self._oldest[place[:2]], (received, code))
            self._oldest_size += 1
        entry = _Entry(part, place, kind, received, due_soon, due)
        self._entries[code] = entry
        self._settle(code, entry, now)

    def remove(self, code: str) -> None:
        """The dossier is no longer open (completed, or its partition moved to another instance)."""
        entry = self._entries.pop(code, None)
        if entry is not None:
            self._count(entry, -1)

    def drop_partitions(self, parts: Iterable[int]) -> None:
        gone = set(parts)
        for code in [code for code, entry in self._entries.items() if entry.part in gone]:
            self.remove(code)
        self._compact()

    def next_instant(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    def advance(self, now: float) -> Flips:
        """Fire every timer due by `now`."""
        count, earliest = 0, None
        while self._timers and self._timers[0][0] <= now:
            instant, code = heapq.heappop(self._timers)
            entry = self._entries.get(code)
            if entry is None or entry.armed != instant:
                continue  # re-armed or closed since
            earliest = instant if earliest is None else earliest
            before = entry.state
            self._count(entry, -1)
            self._settle(code, entry, now)
            count += entry.state != before
        if len(self._timers) > 2 * len(self._entries) + 1024:
            self._compact()
        return Flips(count, earliest)

    def sweep(self, codes: Iterable[str], now: float) -> int:
        """The safety net: re-derive these dossiers' states from scratch (after a clock jump, or a missed
        timer). Returns how many were wrong."""
        corrected = 0
        for code in codes:
            entry = self._entries.get(code)
            if entry is None or (entry.armed is not None and entry.armed <= now):
                continue  # gone, or its timer is due and fires at the next advance
            if state_at(entry.kind, entry.due_soon, entry.due, now) != entry.state:
                self._count(entry, -1)
                self._settle(code, entry, now)
                corrected += 1
        return corrected

    def codes(self) -> list[str]:
        return list(self._entries)

    def oldest_received(self) -> dict[tuple[str, str], float]:
        """(province, unit) -> when its oldest open dossier was received."""
        oldest: dict[tuple[str, str], float] = {}
        for unit, heap in self._oldest.items():
            while heap:
                received, code = heap[0]
                entry = self._entries.get(code)
                if entry is not None and entry.received == received:
                    oldest[unit] = received
                    break
                heapq.heappop(heap)
                self._oldest_size -= 1
        return oldest

    def _settle(self, code: str, entry: _Entry, now: float) -> None:
        entry.state = state_at(entry.kind, entry.due_soon, entry.due, now)
        self._count(entry, +1)
        entry.armed = _next_flip(entry)
        if entry.armed is not None:
            heapq.heappush(self._timers, (entry.armed, code))

    def _count(self, entry: _Entry, delta: int) -> None:
        province, unit, sector = entry.place
        self.by_unit[(province, unit, entry.state)] += delta
        self.by_sector[(province, sector, entry.state)] += delta

    def _compact(self) -> None:
        entries = self._entries
        self._timers = [(entry.armed, code) for code, entry in entries.items() if entry.armed is not None]
        heapq.heapify(self._timers)
        if self._oldest_size > 2 * len(entries) + 1024:
            self._oldest = defaultdict(list)
            for code, entry in entries.items():
                self._oldest[entry.place[:2]].append((entry.received, code))
            for heap in self._oldest.values():
                heapq.heapify(heap)
            self._oldest_size = len(entries)
