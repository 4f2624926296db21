"""How many accepted events per second resolution judges and commits, against the floor of the same machine.

Runs a broker and a database of its own (or KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL), loads the accepted
topic with realistic lifecycles, then starts resolution as a process and times it from its first commit to
its last. In the same run it measures the floor: raw aiokafka producing and consuming the same payloads,
and raw asyncpg writing the same number of rows. Writes JSON to bench/results/.

    .venv/bin/python -m bench.resolution_throughput --dossiers 20000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.infra import infrastructure
from shared.clock.policy import Policy
from shared.contract import topics
from shared.contract.events import EventType
from shared.contract.lifecycle import EventAccepted
from shared.crypto import Keyring, new_key_spec
from shared.infra.paths import PROJECT_ROOT
from shared.infra.ports import free_port
from shared.kafka import ensure_topics
from shared.reference import Reference

RESULTS = PROJECT_ROOT / "bench" / "results"
SPREAD = 5_000
# Long runs report their rate per window too, to show whether it holds as the tables grow.
WINDOW_SECONDS = 10.0


def progress_bar(done: float, width: int = 20) -> str:
    """`[########------------]  40%`, for the status lines of long runs."""
    filled = round(done * width)
    return f"[{'#' * filled}{'-' * (width - filled)}] {done:4.0%}"


def lifecycles(dossiers: int, keyring: Keyring, spread: int = SPREAD) -> list[tuple[bytes, bytes]]:
    """(key, payload) for received -> step started -> resolved of each dossier, interleaved as communes send:
    `spread` other dossiers move between one event of a dossier and its next, as thousands do between a
    receipt and its next step, so nearly every later event finds its dossier stored by an earlier batch
    rather than in its own batch."""
    reference = Reference.load(Policy())
    procedures = list(reference.catalog.procedures.values())
    units = [unit for unit in reference.catalog.units.values() if unit.level == "commune"]
    start = datetime(2025, 3, 3, 1, 0, tzinfo=UTC)
    out: list[tuple[int, bytes, bytes]] = []
    for number in range(dossiers):
        unit, procedure = units[number % len(units)], procedures[number % len(procedures)]
        at = start + timedelta(minutes=number % 600)
        code = f"000.00.24.{unit.code}-250303-BN{number:06d}"
        steps = [
            (EventType.RECEIVED, {"procedure_code": procedure.code, "unit_code": unit.code, "channel": "online"}),
            (EventType.STEP_STARTED, {"step": "thẩm định", "unit_code": unit.code, "duration": "1 working_days"}),
            (EventType.RESOLVED, {}),
        ]
        for index, (kind, data) in enumerate(steps):
            sealed = keyring.seal(b'{"full_name": "x"}', code) if kind is EventType.RECEIVED else None
            event = EventAccepted(id=f"bench-{number}-{index}", source="urn:bench", event_type=kind,
                                  dossier_code=code, occurred_at=at + timedelta(hours=index), accepted_at=at,
                                  data=data, applicant_sealed=sealed)
            out.append((number + index * spread, code.encode(), event.model_dump_json().encode()))
    out.sort(key=lambda entry: entry[0])
    return [(key, payload) for _, key, payload in out]


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, linger_ms=5,
                                max_batch_size=256 * 1024)
    await producer.start()
    started = time.perf_counter()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(records) / (time.perf_counter() - started)


async def consume_all(bootstrap: str, topic: str, count: int) -> float:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None,
                                max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    seen = 0
    started = time.perf_counter()
    try:
        while seen < count:
            for records in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                seen += len(records)
    finally:
        await consumer.stop()
    return count / (time.perf_counter() - started)


async def raw_inserts(database_url: str, records: list[tuple[bytes, bytes]]) -> float:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE TEMP TABLE floor (key text, payload jsonb)")
        started = time.perf_counter()
        for start in range(0, len(records), 500):
            chunk = records[start:start + 500]
            async with conn.transaction():
                await conn.executemany("INSERT INTO floor VALUES ($1, $2::jsonb)",
                                       [(key.decode(), value.decode()) for key, value in chunk])
        return len(records) / (time.perf_counter() - started)
    finally:
        await conn.close()


async def judged(database_url: str) -> tuple[int, datetime | None, datetime | None]:
    conn = await asyncpg.connect(database_url)
    try:
        if not await conn.fetchval("SELECT to_regclass('resolution.events') IS NOT NULL"):
            return (0, None, None)
        row = await conn.fetchrow("SELECT count(*) AS n, min(recorded_at) AS first, max(recorded_at) AS last "
                                  "FROM resolution.events")
        assert row is not None
        return (int(row["n"]), row["first"], row["last"])
    finally:
        await conn.close()


async def rates_by_window(database_url: str, first: datetime, window: float) -> list[int]:
    """Events judged per second in each `window` seconds from `first`, the last window likely partial: does
    the rate hold as the tables grow?"""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT floor(extract(epoch FROM recorded_at - $1) / $2)::int AS w, count(*) AS n "
                                "FROM resolution.events GROUP BY w ORDER BY w", first, window)
    finally:
        await conn.close()
    counts = {int(row["w"]): int(row["n"]) for row in rows}
    return [round(counts.get(w, 0) / window) for w in range(max(counts, default=-1) + 1)]


async def main(dossiers: int, partitions: int, instances: int, brokers: int = 1) -> dict[str, Any]:
    resolutions: list[asyncio.subprocess.Process] = []
    async with infrastructure("tthc-bench-", brokers=brokers) as infra:
        try:
            bootstrap, database_url = infra.bootstrap_servers, infra.database_url
            await ensure_topics(bootstrap, partitions, infra.replication)
            keys = new_key_spec("bench")
            records = lifecycles(dossiers, Keyring.parse(keys))
            produce_rate = await produce(bootstrap, topics.ACCEPTED, records)
            consume_rate = await consume_all(bootstrap, topics.ACCEPTED, len(records))
            insert_rate = await raw_inserts(database_url, records)

            env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DATABASE_URL": database_url,
                   "TTHC_DATA_KEYS": keys, "TTHC_LOG_LEVEL": "WARNING",
                   "TTHC_TOPIC_REPLICATION": str(infra.replication)}
            profiler = os.environ.get("BENCH_PROFILE")  # e.g. "py-spy record -o out.svg --" to see where time goes
            resolutions = [
                await asyncio.create_subprocess_exec(
                    *(profiler.split() if profiler else []), sys.executable, "-m", "services.resolution",
                    cwd=PROJECT_ROOT, env={**env, "RESOLUTION_PORT": str(free_port())},
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
                for _ in range(instances)
            ]
            deadline = time.monotonic() + 600
            count, first, last = 0, None, None
            while count < len(records) and time.monotonic() < deadline:
                await asyncio.sleep(1.0)
                count, first, last = await judged(database_url)
                print(f"\r  {progress_bar(count / len(records))} {count:,} of {len(records):,} events judged",
                      end="", file=sys.stderr, flush=True)
            print(file=sys.stderr)
            seconds = (last - first).total_seconds() if first and last else float("nan")
            if not seconds > 0:  # nan too
                raise SystemExit(f"{count:,} events judged within one instant: too few to time; give more --dossiers")
            rate = count / seconds
            assert first is not None
            windows = await rates_by_window(database_url, first, WINDOW_SECONDS)
            return {
                "benchmark": "resolution_throughput",
                "measured_at": datetime.now(UTC).isoformat(),
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()},
                "dossiers": dossiers, "events": len(records), "partitions": partitions, "instances": instances,
                "brokers": brokers, "replication": infra.replication,
                "spread": SPREAD,
                # Overrides of resolution's settings this run was made with (A/B experiments), if any.
                "settings": {name: value for name, value in os.environ.items() if name.startswith("RESOLUTION_")},
                "judged": count,
                "resolution_events_per_s": round(rate), "seconds": round(seconds, 2),
                "window_seconds": WINDOW_SECONDS, "events_per_s_by_window": windows,
                "floor": {"aiokafka_produce_per_s": round(produce_rate), "aiokafka_consume_per_s": round(consume_rate),
                          "asyncpg_insert_per_s": round(insert_rate)},
                "ratio_to_asyncpg_floor": round(rate / insert_rate, 3),
            }
        finally:
            for process in resolutions:
                process.terminate()
                await process.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dossiers", type=int, default=20000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--instances", type=int, default=1, help="resolution processes in one consumer group")
    parser.add_argument("--brokers", type=int, default=1,
                        help="a cluster of this many brokers on this machine, topics with min(3, brokers) copies")
    args = parser.parse_args()
    result = asyncio.run(main(args.dossiers, args.partitions, args.instances, args.brokers))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"resolution-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
