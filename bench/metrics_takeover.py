"""How long a metrics instance takes to load its partitions' open dossiers when Kafka assigns them.

Fills metrics' schema in a PostgreSQL of its own (or DATABASE_URL) with `--open` open dossiers (1M by
default) over `--partitions` partitions and 3,400 communes, then takes over the partitions the way the
service does on assignment (store.take_over: a new epoch and the stored state, in one transaction) and fills
the tracker the timers run on, chunk by chunk as the cursor reads them. Reports the time, the longest the
event loop was held, and the memory it took, for all partitions at once and for one partition. Writes JSON
to bench/results/.

    .venv/bin/python -m bench.metrics_takeover --open 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.metrics_memory import SECTORS, rss_bytes
from bench.resolution_throughput import RESULTS, progress_bar
from services.metrics import store
from services.metrics.app import MIGRATIONS, track_stored
from services.metrics.store import SCHEMA
from services.metrics.tracker import OpenDossiers
from shared.contract import topics
from shared.db import ServiceDatabase
from shared.infra.ports import free_port
from shared.infra.postgres import LocalPostgres

UNITS = [(f"{p:02d}", f"{p:02d}{u:03d}") for p in range(34) for u in range(100)]
PROVINCE = {unit: province for province, unit in UNITS}


async def fill(database: ServiceDatabase, open_dossiers: int, partitions: int) -> None:
    rng = random.Random(20261126)
    now = datetime.now(UTC)
    chunk = 50_000
    async with database.pool.acquire() as conn:
        for first in range(0, open_dossiers, chunk):
            rows = []
            for number in range(first, min(first + chunk, open_dossiers)):
                province, unit = UNITS[number % len(UNITS)]
                received = now - timedelta(seconds=rng.uniform(0, 9e5))
                due = now + timedelta(seconds=rng.uniform(86_400, 40 * 86_400))
                kind = rng.choices(["running", "paused", "awaiting_supplement"], [0.85, 0.1, 0.05])[0]
                rows.append((f"000.00.{province}.{unit}-261126-BN{number:07d}", number % partitions, 1, unit,
                             SECTORS[number % len(SECTORS)], "online", kind, due, due - timedelta(days=1),
                             received.date(), None, None, received))
            await conn.copy_records_to_table(
                "dossier_progress", schema_name=SCHEMA, records=rows,
                columns=["code", "part", "last_sequence", "unit_code", "sector", "channel", "open_kind", "due_at",
                         "due_soon_at", "received_on", "completed_on", "timeliness", "received_at"])
            print(f"\r  {progress_bar((first + len(rows)) / open_dossiers)} {first + len(rows):,} open dossiers "
                  "stored", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        await conn.execute(f"ANALYZE {SCHEMA}.dossier_progress")


async def take(database: ServiceDatabase, parts: list[int]) -> dict[str, float]:
    """What the service's `take` does (services/metrics/app.py): open dossiers go into the tracker chunk by
    chunk as the cursor reads them, counters are left out."""
    tracker = OpenDossiers()
    filling = 0.0
    longest = 0.0

    def put_open(rows: list[store.OpenRow]) -> None:
        nonlocal filling, longest
        began = time.perf_counter()
        track_stored(tracker, PROVINCE.__getitem__, rows, time.time())
        spent = time.perf_counter() - began
        filling += spent
        longest = max(longest, spent)

    before = rss_bytes()
    started = time.perf_counter()
    async with database.pool.acquire() as conn, conn.transaction():
        state = await store.take_over(conn, topics.LIFECYCLE, parts, "bench", put_open)
    total = time.perf_counter() - started
    result = {"partitions": len(parts), "open_dossiers": len(tracker), "total_s": round(total, 2),
              "of_which_tracker_fill_s": round(filling, 2),
              "longest_event_loop_block_s": round(longest, 3),
              "rss_growth_mib": round((rss_bytes() - before) / 2**20)}
    assert state.open_count == len(tracker)
    return result


async def main(open_dossiers: int, partitions: int) -> dict[str, Any]:
    database_url = os.environ.get("DATABASE_URL", "")
    postgres = None
    if not database_url:
        postgres = LocalPostgres(Path(tempfile.mkdtemp(prefix="tthc-takeover-")) / "data", free_port())
        database_url = postgres.start()
    database = ServiceDatabase(database_url, SCHEMA, MIGRATIONS)
    try:
        await database.open()
        await fill(database, open_dossiers, partitions)
        every = await take(database, list(range(partitions)))
        one = await take(database, [0])
        return {
            "benchmark": "metrics_takeover",
            "measured_at": datetime.now(UTC).isoformat(),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "open_dossiers": open_dossiers, "partitions": partitions,
            "all_partitions": every, "one_partition": one,
        }
    finally:
        await database.close()
        if postgres is not None:
            postgres.stop()
            shutil.rmtree(postgres.data_dir.parent, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--open", type=int, default=1_000_000, help="open dossiers stored")
    parser.add_argument("--partitions", type=int, default=12)
    args = parser.parse_args()
    result = asyncio.run(main(args.open, args.partitions))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"metrics-takeover-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
