"""The loop that fires the tracker's timers at their instants, with a periodic sweep as the safety net."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from services.metrics.tracker import Flips, OpenDossiers

log = logging.getLogger(__name__)
SWEEP_CHUNK = 20_000


def fire(tracker: OpenDossiers, clock: Callable[[], float], fired: Callable[[Flips, float], None] | None) -> float:
    now = clock()
    flips = tracker.advance(now)
    if fired is not None and flips.count:
        fired(flips, clock())
    return now


async def run_timers(tracker: OpenDossiers, wake: asyncio.Event, sweep_seconds: float,
                     clock: Callable[[], float] = time.time,
                     fired: Callable[[Flips, float], None] | None = None) -> None:
    """Sleep until the next instant (or until `wake`: a batch armed something sooner), fire what is due.
    `fired(flips, when)` hears of each round, for the benchmark's lag measurement."""
    next_sweep = time.monotonic() + sweep_seconds
    while True:
        now = fire(tracker, clock, fired)
        if time.monotonic() >= next_sweep:
            codes = tracker.codes()
            corrected = 0
            for start in range(0, len(codes), SWEEP_CHUNK):
                # In chunks, firing timers in between: batches and flips go on while a large sweep runs.
                corrected += tracker.sweep(codes[start:start + SWEEP_CHUNK], clock())
                await asyncio.sleep(0)
                now = fire(tracker, clock, fired)
            if corrected:
                log.warning("sweep corrected %d open dossiers the timers had missed", corrected)
            next_sweep = time.monotonic() + sweep_seconds
        upcoming = tracker.next_instant()
        delay = sweep_seconds if upcoming is None else min(sweep_seconds, upcoming - now)
        wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), max(delay, 0.0))
