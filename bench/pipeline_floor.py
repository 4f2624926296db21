"""The pipeline's floor: the Kafka and PostgreSQL work this design does for every lifecycle event, with raw
aiokafka and asyncpg and no application logic, laid out in processes as the stack is.

The end-to-end benchmark's floor (raw produce, raw consume, raw inserts, each alone) says how fast one client
moves records; this one says how fast the design's own I/O can go on this machine, all of it at once:

- a source process produces every record to an ingress topic (as the commune systems' Kafka lane does);
- `intake` consumes it, records each event for dedupe (one row) and produces it to the accepted topic;
- `resolution` consumes that and in one transaction upserts each dossier's snapshot (the record as its
  `jsonb`), copies each event into the history, adds its timeline row and copies it into the outbox, then
  takes the outbox rows after the last one it took out (`DELETE … RETURNING`) and produces them to the
  lifecycle topic;
- `metrics` and `notify` each consume the lifecycle topic: metrics upserts each dossier's progress row and its
  partition's counter, notify inserts one delivery per event;
- every consumer commits its offsets after each batch, as FastStream does.

With `--through faststream` each stage consumes as the services do instead of with a bare consumer: a
FastStream broker built by `shared.kafka.make_broker` (its Prometheus middleware included) hands the batches,
raw, to the same code through `shared.kafka.batch_subscriber`, which commits after each one. The difference
between the two is what the services' framework costs on top of the clients it drives.

The tables are the services' own, made by their migrations in schemas of their own (`floor_<service>`),
indexes and notify's counting triggers included. Nothing is parsed, validated or judged, and the reads the
services make before writing (dedupe look-ups, row locks, snapshots) are left out: whatever the stack spends
beyond this, its code spends. The result: events/s from the first record produced until metrics and notify
have the last, and CPU per event of every process (PostgreSQL's backends by stage).

    .venv/bin/python -m bench.pipeline_floor --dossiers 20000     # a broker and a database of its own
    .venv/bin/python -m bench.pipeline_floor --dossiers 20000 --through faststream

`bench.end_to_end` runs it on its own payloads after each run (`floor.pipeline_events_per_s`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pickle
import platform
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter as Tally
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from prometheus_client import CollectorRegistry

from bench.infra import infrastructure
from bench.processes import ProcessWatch, database_backends
from bench.resolution_throughput import RESULTS, lifecycles
from services.resolution.relay import TAKE_FROM
from services.resolution.store import OUTBOX_WRITER_LOCK
from shared.crypto import Keyring, new_key_spec
from shared.db import create_pool, migrate
from shared.infra.paths import PROJECT_ROOT
from shared.kafka import Records, batch_subscriber, ensure_topics, make_broker, partition_by_key, send_batched

INGRESS, ACCEPTED, LIFECYCLE = "ingress", "accepted", "lifecycle"
# What each stage consumes and what it produces to.
STAGES = {"intake": (INGRESS, ACCEPTED), "resolution": (ACCEPTED, LIFECYCLE), "metrics": (LIFECYCLE, None),
          "notify": (LIFECYCLE, None)}
SOURCE_CHUNK = 1000
BATCH = 2000
RELAYED = {"up to": 0}
"""The last outbox id this process took: its relay starts after it, as the service's does."""
Handler = Callable[[str, asyncpg.Pool, AIOKafkaProducer | None, list[ConsumerRecord[bytes, bytes]]],
                   Awaitable[None]]


def schema(stage: str) -> str:
    return f"floor_{stage}"


def topic(run: str, name: str) -> str:
    """A measurement's own topics: a broker that served an earlier one holds its records."""
    return f"floor.{run}.{name}"


# ---------------------------------------------------------------- what each stage writes per batch

async def intake(run: str, pool: asyncpg.Pool, producer: AIOKafkaProducer | None,
                 records: list[ConsumerRecord[bytes, bytes]]) -> None:
    assert producer is not None
    await pool.execute(
        f"INSERT INTO {schema('intake')}.received_events SELECT 'floor', e, c, $3 "
        "FROM unnest($1::text[], $2::text[]) AS t(e, c) ON CONFLICT DO NOTHING",
        [f"{r.partition}:{r.offset}" for r in records], [_code(r) for r in records], datetime.now(UTC))
    await (await send_batched(producer, [(topic(run, ACCEPTED), r.key, r.value) for r in records]))


async def resolution(run: str, pool: asyncpg.Pool, producer: AIOKafkaProducer | None,
                     records: list[ConsumerRecord[bytes, bytes]]) -> None:
    assert producer is not None
    where = schema("resolution")
    now = datetime.now(UTC)
    latest = {_code(r): r for r in records}  # an upsert may touch a row once per statement
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            f"INSERT INTO {where}.dossiers SELECT c, 'received', '', s::jsonb, $3 "
            "FROM unnest($1::text[], $2::text[]) AS t(c, s) ON CONFLICT (code) DO UPDATE SET "
            "state = EXCLUDED.state, unit_code = EXCLUDED.unit_code, snapshot = EXCLUDED.snapshot, "
            "updated_at = EXCLUDED.updated_at",
            list(latest), [_text(r) for r in latest.values()], now)
        await conn.copy_records_to_table(
            "events", schema_name=where,
            columns=("source", "event_id", "dossier_code", "sequence", "occurred_at", "payload", "recorded_at"),
            records=[("floor", f"{r.partition}:{r.offset}", _code(r), 1, now, _text(r), now) for r in records])
        await conn.copy_records_to_table(
            "timeline", schema_name=where,
            records=[(_code(r), r.offset, "received", now, "received", now, None) for r in records])
        await conn.execute("SELECT pg_advisory_xact_lock($1)", OUTBOX_WRITER_LOCK)  # ids in commit order
        await conn.copy_records_to_table("outbox", schema_name=where, columns=("topic", "key", "payload"),
                                         records=[(topic(run, LIFECYCLE), _code(r), r.value) for r in records])
    taken = BATCH
    while taken == BATCH:  # the relay, until the outbox is empty: other instances' rows are in it too
        async with pool.acquire() as conn, conn.transaction():
            rows = sorted(await conn.fetch(TAKE_FROM.format(schema=where), BATCH, RELAYED["up to"]),
                          key=lambda row: row["id"])
            await (await send_batched(producer, [(row["topic"], row["key"].encode(), row["payload"])
                                                 for row in rows]))
        if rows:
            RELAYED["up to"] = rows[-1]["id"]
        taken = len(rows)


async def metrics(_run: str, pool: asyncpg.Pool, _: AIOKafkaProducer | None,
                  records: list[ConsumerRecord[bytes, bytes]]) -> None:
    where = schema("metrics")
    now = datetime.now(UTC)
    latest = {_code(r): r for r in records}
    per_partition: dict[int, int] = {}
    for record in records:
        per_partition[record.partition] = per_partition.get(record.partition, 0) + 1
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            f"INSERT INTO {where}.dossier_progress (code, part, last_sequence, unit_code, sector, channel, "
            "open_kind, due_at, due_soon_at, received_on, completed_on, timeliness, received_at) "
            "SELECT c, p, s, '', '', '', 'running', $4, $4, $5, NULL, NULL, $4 "
            "FROM unnest($1::text[], $2::int[], $3::int[]) AS t(c, p, s) "
            "ON CONFLICT (code) DO UPDATE SET part = EXCLUDED.part, last_sequence = EXCLUDED.last_sequence, "
            "open_kind = EXCLUDED.open_kind, due_at = EXCLUDED.due_at, due_soon_at = EXCLUDED.due_soon_at",
            list(latest), [r.partition for r in latest.values()], [r.offset for r in latest.values()], now,
            now.date())
        await conn.execute(
            f"INSERT INTO {where}.counters SELECT 'received', p, '', '', '', '', n "
            "FROM unnest($1::int[], $2::float8[]) AS t(p, n) "
            "ON CONFLICT (family, part, unit_code, sector, channel, label) "
            "DO UPDATE SET value = counters.value + EXCLUDED.value",
            list(per_partition), [float(n) for n in per_partition.values()])


async def notify(_run: str, pool: asyncpg.Pool, _: AIOKafkaProducer | None,
                 records: list[ConsumerRecord[bytes, bytes]]) -> None:
    await pool.execute(
        f"INSERT INTO {schema('notify')}.deliveries (dossier_code, event_id, channel, template, status, "
        "next_attempt_at, context, created_at, required) "
        "SELECT c, e, 'email', 'floor', 'queued', $3, '{}'::jsonb, $3, true "
        "FROM unnest($1::text[], $2::text[]) AS t(c, e) ON CONFLICT DO NOTHING",
        [_code(r) for r in records], [f"{r.partition}:{r.offset}" for r in records], datetime.now(UTC))


HANDLERS: dict[str, Handler] = {"intake": intake, "resolution": resolution, "metrics": metrics, "notify": notify}


def _code(record: ConsumerRecord[bytes, bytes]) -> str:
    return record.key.decode() if record.key else ""


def _text(record: ConsumerRecord[bytes, bytes]) -> str:
    return record.value.decode() if record.value else "{}"


# ---------------------------------------------------------------- the processes

@contextlib.asynccontextmanager
async def _stage_clients(stage: str, bootstrap: str, database_url: str,
                         ) -> AsyncIterator[tuple[asyncpg.Pool, AIOKafkaProducer | None]]:
    """A stage's database pool, and its producer if it produces."""
    pool = await create_pool(database_url, max_size=2, application_name=f"floor {stage}")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True,
                                linger_ms=5) if STAGES[stage][1] else None
    if producer is not None:
        await producer.start()
    try:
        yield pool, producer
    finally:
        if producer is not None:
            await producer.stop()
        await pool.close()


async def _done(first: float | None, seen: int) -> None:
    """Says `done {json}`, then waits for standard input to close (so that the stage's database backends live
    until the parent has counted their CPU)."""
    print("done " + json.dumps({"first": first, "last": time.time(), "records": seen}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def run_stage(stage: str, run: str, bootstrap: str, database_url: str, count: int,
                    partitions: list[int]) -> None:
    """One stage's process, consuming `partitions`: says `ready` once it can consume, `done {json}` when it has
    handled `count` records, and exits when its standard input closes."""
    handle = HANDLERS[stage]
    async with _stage_clients(stage, bootstrap, database_url) as (pool, producer):
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=f"floor-{run}-{stage}",
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    max_partition_fetch_bytes=4 * 1024 * 1024)
        await consumer.start()
        consumer.assign([TopicPartition(topic(run, STAGES[stage][0]), partition) for partition in partitions])
        print("ready", flush=True)
        seen, first = 0, None
        while seen < count:
            batches = await consumer.getmany(timeout_ms=50, max_records=BATCH)
            records = [record for partition in batches.values() for record in partition]
            if not records:
                continue
            first = first or time.time()
            await handle(run, pool, producer, records)
            await consumer.commit()
            seen += len(records)
        await _done(first, seen)
        await consumer.stop()


class _Assigned(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka's class has no annotations
    def __init__(self) -> None:
        self.event = asyncio.Event()

    async def on_partitions_assigned(self, assigned: object) -> None:
        self.event.set()

    async def on_partitions_revoked(self, revoked: object) -> None:
        pass


async def run_stage_through_faststream(stage: str, run: str, bootstrap: str, database_url: str,
                                       count: int) -> None:
    """As `run_stage`, the batches handed by FastStream as the services' are: the consumer group's partitions,
    all of them (one process per stage)."""
    handle, assigned, finished = HANDLERS[stage], _Assigned(), asyncio.Event()
    async with _stage_clients(stage, bootstrap, database_url) as (pool, producer):
        broker = make_broker(bootstrap, registry=CollectorRegistry(), app_name=f"floor-{stage}")
        seen, first = 0, None

        @batch_subscriber(broker, topic(run, STAGES[stage][0]), group_id=f"floor-{run}-{stage}",
                          max_records=BATCH, listener=assigned)
        async def on_batch(records: Records) -> None:
            nonlocal seen, first
            first = first or time.time()
            await handle(run, pool, producer, list(records))
            seen += len(records)
            if seen >= count:
                finished.set()

        await broker.start()
        await assigned.event.wait()
        print("ready", flush=True)
        await finished.wait()
        await _done(first, seen)
        await broker.stop()


async def run_source(run: str, bootstrap: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, linger_ms=5)
    await producer.start()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # the parent's go
    started = time.time()
    for start in range(0, len(records), SOURCE_CHUNK):
        await (await send_batched(producer, [(topic(run, INGRESS), key, value)
                                             for key, value in records[start:start + SOURCE_CHUNK]]))
    print("done " + json.dumps({"first": started, "last": time.time(), "records": len(records)}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await producer.stop()


async def _line(process: asyncio.subprocess.Process, expected: str) -> str:
    assert process.stdout is not None
    while True:
        line = (await process.stdout.readline()).decode()
        if not line:
            raise RuntimeError(f"a floor process ended before saying {expected!r}")
        if line.startswith(expected):
            return line[len(expected):].strip()


async def measure(bootstrap: str, database_url: str, records: list[tuple[bytes, bytes]], partitions: int,
                  watched: dict[int, str], instances: int = 1, replication: int = 1,
                  through: str = "aiokafka") -> dict[str, Any]:
    """Run the floor's processes over `records` (key, value), `instances` processes per stage sharing the
    partitions, consuming `through` bare aiokafka consumers or FastStream (one process per stage); `watched`
    adds processes whose CPU to count (the broker, the postmaster)."""
    if through == "faststream" and instances != 1:
        raise ValueError("through FastStream, a stage's consumer group shares the partitions: one process each")
    run = uuid.uuid4().hex[:8]
    await ensure_topics(bootstrap, partitions, replication,
                        names=tuple(topic(run, name) for name in (INGRESS, ACCEPTED, LIFECYCLE)))
    pool = await create_pool(database_url, max_size=1)
    try:
        for stage in STAGES:  # the services' tables, empty
            await pool.execute(f"DROP SCHEMA IF EXISTS {schema(stage)} CASCADE")
            await migrate(pool, schema(stage), PROJECT_ROOT / "services" / stage / "migrations")
    finally:
        await pool.close()
    work = Path(tempfile.mkdtemp(prefix="tthc-floor-"))
    records_file = work / "records.pickle"
    await asyncio.to_thread(records_file.write_bytes, pickle.dumps(records))
    spawned: dict[str, asyncio.subprocess.Process] = {}
    sampling: asyncio.Task[None] | None = None
    try:
        # Every topic is keyed by dossier code with as many partitions, so a record keeps its partition at every
        # hop, and each instance knows how many records its partitions will bring.
        per_partition = Tally(partition_by_key(key, list(range(partitions)), list(range(partitions)))
                              for key, _ in records)
        for stage in STAGES:
            for instance in range(instances):
                assigned = [partition for partition in range(partitions) if partition % instances == instance]
                spawned[f"{stage}#{instance}"] = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bench.pipeline_floor", "--stage", stage, "--run", run,
                    "--bootstrap", bootstrap, "--database-url", database_url,
                    "--count", str(sum(per_partition[partition] for partition in assigned)),
                    "--assigned", ",".join(map(str, assigned)), "--through", through, cwd=PROJECT_ROOT,
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        spawned["source"] = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.pipeline_floor", "--source", str(records_file), "--run", run,
            "--bootstrap", bootstrap,
            cwd=PROJECT_ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        for process in spawned.values():
            await _line(process, "ready")
        processes = ProcessWatch({**watched, **{process.pid: f"floor {name.split('#')[0]}"
                                                for name, process in spawned.items()}})
        processes.mark_start()
        sampling = asyncio.create_task(_sample_every(processes, 0.5))
        go = spawned["source"].stdin
        assert go is not None
        go.write(b"go\n")
        await go.drain()
        # Generous (the floor runs thousands a second), so that a stage stuck for good fails the measurement
        # instead of hanging it.
        deadline = time.monotonic() + 60 + len(records) / 200
        finished = {name: json.loads(await asyncio.wait_for(_line(process, "done "), deadline - time.monotonic()))
                    for name, process in spawned.items()}
        sampling.cancel()  # before the renaming below, which a later sample would undo
        processes.sample()
        processes.rename(await database_backends(database_url))
    finally:
        if sampling is not None:
            sampling.cancel()
        for process in spawned.values():
            if process.stdin is not None:
                process.stdin.close()
        for process in spawned.values():
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:  # still consuming: a measurement that failed before every record got through
                process.kill()
                await process.wait()
        shutil.rmtree(work, ignore_errors=True)
    first = finished["source"]["first"]
    wall = max(done["last"] for done in finished.values()) - first
    used = processes.cpu_seconds()
    per_event = {name: round(1e6 * seconds / len(records), 1) for name, seconds in used.items()}
    return {"run": run, "instances": instances, "through": through, "events": len(records), "seconds": round(wall, 2),
            "events_per_s": round(len(records) / wall),
            "cores": round(sum(used.values()) / wall, 2),
            "cpu_us_per_event": dict(sorted(per_event.items(), key=lambda item: -item[1])),
            "cpu_us_per_event_total": round(sum(per_event.values()), 1)}


async def _sample_every(processes: ProcessWatch, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        processes.sample()


async def main(dossiers: int, partitions: int, instances: int, through: str) -> dict[str, Any]:
    # Its own broker and database, never the environment's: the floor counts their CPU.
    async with infrastructure("tthc-floor-bench-", from_environment=False) as infra:
        records = lifecycles(dossiers, Keyring.parse(new_key_spec("bench")))
        result = await measure(infra.bootstrap_servers, infra.database_url, records, partitions, infra.started,
                               instances, through=through)
    return {"benchmark": "pipeline_floor", "measured_at": datetime.now(UTC).isoformat(),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "dossiers": dossiers, "partitions": partitions, **result}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dossiers", type=int, default=20000, help="three events each")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--instances", type=int, default=1, help="processes per stage, sharing the partitions")
    parser.add_argument("--through", choices=("aiokafka", "faststream"), default="aiokafka",
                        help="how each stage consumes: a bare aiokafka consumer, or FastStream as the services do")
    parser.add_argument("--assigned", help=argparse.SUPPRESS)
    parser.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage and args.through == "faststream":
        asyncio.run(run_stage_through_faststream(args.stage, args.run, args.bootstrap, args.database_url, args.count))
    elif args.stage:
        asyncio.run(run_stage(args.stage, args.run, args.bootstrap, args.database_url, args.count,
                              [int(partition) for partition in args.assigned.split(",") if partition]))
    elif args.source:
        asyncio.run(run_source(args.run, args.bootstrap, pickle.loads(args.source.read_bytes())))  # noqa: S301 - the parent wrote it
    else:
        outcome = asyncio.run(main(args.dossiers, args.partitions, args.instances, args.through))
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"pipeline-floor-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
        out.write_text(json.dumps(outcome, indent=2) + "\n")
        print(json.dumps(outcome, indent=2))
