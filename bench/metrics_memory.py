"""How much memory metrics needs per open dossier, and how late its timers flip them, at national scale.

Puts `--open` dossiers (1M by default) of 3,400 communes in 34 provinces into the tracker the service uses,
measures the process's resident memory before and after, then runs the service's own timer loop for
`--seconds` while a share of the dossiers reach their due-soon or due instant and events keep re-arming
others (`--rate` per second), and reports how long after its instant each round of flips ran.

    .venv/bin/python -m bench.metrics_memory --open 1000000 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.resolution_throughput import RESULTS
from services.metrics.timers import run_timers
from services.metrics.tracker import Flips, OpenDossiers

SECTORS = [f"sector_{n:02d}" for n in range(30)]


def rss_bytes() -> int:
    with Path("/proc/self/status").open() as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


async def main(open_dossiers: int, seconds: float, flipping_share: float, rate: float) -> dict[str, Any]:
    rng = random.Random(20261125)
    units = [(f"{p:02d}", f"{p:02d}{u:03d}") for p in range(34) for u in range(100)]
    tracker = OpenDossiers()
    baseline = rss_bytes()
    start = time.time()
    codes = []
    for number in range(open_dossiers):
        province, unit = units[number % len(units)]
        code = f"000.00.{province}.{unit}-261125-BN{number:07d}"
        codes.append(code)
        kind = rng.choices(["running", "paused", "awaiting_supplement"], [0.85, 0.1, 0.05])[0]
        soon = start + rng.uniform(86_400, 40 * 86_400)
        tracker.put(code, number % 12, (province, unit, SECTORS[number % len(SECTORS)]), kind,
                    start - rng.uniform(0, 9e5), soon, soon + 86_400, start)
    loaded = rss_bytes()
    load_seconds = time.time() - start
    # Events bring a share of them close to their instants, which fall inside the run that follows.
    run_start = time.time() + 10
    for code in rng.sample(codes, int(flipping_share * open_dossiers)):
        number = int(code[-7:])
        province, unit = units[number % len(units)]
        soon = run_start + rng.uniform(0, seconds - 15)
        tracker.put(code, number % 12, (province, unit, SECTORS[number % len(SECTORS)]), "running",
                    start - 3600, soon, soon + rng.uniform(0, 10), time.time())

    lags: list[float] = []
    flips = 0

    def fired(round_: Flips, when: float) -> None:
        nonlocal flips
        flips += round_.count
        if round_.earliest is not None:
            lags.append(when - round_.earliest)

    wake = asyncio.Event()
    timers = asyncio.create_task(run_timers(tracker, wake, sweep_seconds=seconds / 2, fired=fired))

    async def events() -> int:
        """Re-arm random dossiers as their events arrive, in batches as the consumer applies them."""
        applied = 0
        end = time.time() + seconds
        while time.time() < end:
            now = time.time()
            for _ in range(int(rate / 10)):
                code = codes[rng.randrange(len(codes))]
                number = int(code[-7:])
                province, unit = units[number % len(units)]
                soon = now + rng.uniform(1, seconds)
                tracker.put(code, number % 12, (province, unit, SECTORS[number % len(SECTORS)]), "running",
                            now - 3600, soon, soon + 5, now)
                applied += 1
            wake.set()
            await asyncio.sleep(0.1)
        return applied

    applied = await events()
    timers.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await timers
    states: dict[str, int] = {}
    for (_, _, state), count in tracker.by_unit.items():
        states[state] = states.get(state, 0) + count
    return {
        "benchmark": "metrics_memory",
        "at": datetime.now(UTC).isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "open_dossiers": open_dossiers,
        "rss_before_mib": round(baseline / 2**20, 1),
        "rss_loaded_mib": round(loaded / 2**20, 1),
        "bytes_per_open_dossier": round((loaded - baseline) / open_dossiers),
        "load_seconds": round(load_seconds, 1),
        "run_seconds": seconds,
        "events_applied": applied,
        "flips": flips,
        "flip_rounds": len(lags),
        "flip_lag_ms": {"p50": round(percentile(lags, 0.5) * 1000, 1), "p99": round(percentile(lags, 0.99) * 1000, 1),
                        "max": round(max(lags, default=0.0) * 1000, 1)},
        "rss_end_mib": round(rss_bytes() / 2**20, 1),
        "open_by_state": states,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--open", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--flipping-share", type=float, default=0.2,
                        help="share of the dossiers whose instants fall inside the run")
    parser.add_argument("--rate", type=float, default=2000.0, help="re-arming events per second")
    args = parser.parse_args()
    result = asyncio.run(main(args.open, args.seconds, args.flipping_share, args.rate))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"metrics-memory-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
