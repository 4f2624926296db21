"""Metrics' schema: counters and per-dossier progress written with each batch, partition ownership fenced by
epochs, and the state a new owner loads."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.metrics.tally import CounterKey, open_kind, tally
from shared.clock.deadline import LOCAL_ZONE as VN
from shared.contract import topics
from shared.contract.lifecycle import DossierLifecycleEvent
from shared.contract.rejections import RejectionRecorded
from shared.db import Connection, columns

SCHEMA = "metrics"
OPEN_CHUNK = 10_000

# Each dossier's row found by its key and locked, in the order of the codes given ($1, sorted: two batches lock
# shared rows in the same order). A lookup per key, as intake's dedupe (services/intake/store.py says why): as
# `code = ANY($1)` the plan read the whole table for every batch.
LAST_SEQUENCES = (
    "SELECT p.code, p.last_sequence FROM unnest($1::text[]) AS k(code) "
    f"CROSS JOIN LATERAL (SELECT code, last_sequence FROM {SCHEMA}.dossier_progress p WHERE p.code = k.code "
    "FOR UPDATE) AS p"
)


# Histogram rows of an instance older than migration 0004 (cumulative buckets, family `time_used_bucket`) in the
# partitions taken ($1), turned into completions per bucket as that migration turns them. During a rolling
# upgrade such an instance may have owned these partitions since the migration ran. Its epoch is now fenced
# off: it adds no more rows to them unless it takes them back, and the next take-over converts those in turn.
CARRY_OVER_CUMULATIVE_BUCKETS = (
    f"WITH cumulative AS (DELETE FROM {SCHEMA}.counters WHERE family = 'time_used_bucket' AND part = ANY($1::int[]) "
    "RETURNING part, unit_code, sector, channel, label, value) "
    f"INSERT INTO {SCHEMA}.counters AS c (family, part, unit_code, sector, channel, label, value) "
    "SELECT 'time_used_in_bucket', part, unit_code, sector, channel, label, own FROM ("
    "SELECT part, unit_code, sector, channel, label, value - coalesce(lag(value) OVER ("
    "PARTITION BY part, unit_code, sector, channel "
    "ORDER BY CASE label WHEN '+Inf' THEN 'Infinity'::float8 ELSE label::float8 END), 0) AS own "
    "FROM cumulative) AS differences WHERE own <> 0 "
    "ON CONFLICT (family, part, unit_code, sector, channel, label) DO UPDATE SET value = c.value + EXCLUDED.value"
)


class OwnershipMoved(Exception):
    """A batch holds records of a partition this instance no longer owns: nothing is written, and the records
    are redelivered to whoever owns it now."""


@dataclass(frozen=True)
class OpenRow:
    code: str
    part: int
    unit_code: str
    sector: str
    kind: str
    received_at: datetime
    due_soon_at: datetime | None
    due_at: datetime | None


@dataclass
class PartitionState:
    epochs: dict[int, int]
    counters: list[tuple[CounterKey, float]] = field(default_factory=list)
    open: list[OpenRow] = field(default_factory=list)
    """Empty when the open dossiers were handed over in chunks instead."""
    open_count: int = 0
    rejections: list[tuple[int, str, str, float]] = field(default_factory=list)


async def take_over(conn: Connection, topic: str, parts: Sequence[int], owner: str,
                    open_chunks: Callable[[list[OpenRow]], None] | None = None) -> PartitionState:
    """Become the owner of `parts` (a new epoch each) and read their state, in the caller's transaction: a
    batch of the previous owner still running finishes first (it holds the rows locked). With `open_chunks`,
    open dossiers are handed over in chunks as they are read instead of collected (see `load_state`)."""
    await conn.execute(f"SELECT 1 FROM {SCHEMA}.partition_owner WHERE topic = $1 AND part = ANY($2::int[]) "
                       "ORDER BY part FOR UPDATE", topic, list(parts))
    rows = await conn.fetch(
        f"INSERT INTO {SCHEMA}.partition_owner (topic, part, epoch, owner) "
        "SELECT $1, part, 1, $3 FROM unnest($2::int[]) AS part ORDER BY part "
        "ON CONFLICT (topic, part) DO UPDATE SET epoch = partition_owner.epoch + 1, owner = EXCLUDED.owner "
        "RETURNING part, epoch", topic, sorted(parts), owner)
    if topic == topics.LIFECYCLE:
        await conn.execute(CARRY_OVER_CUMULATIVE_BUCKETS, sorted(parts))
    return await load_state(conn, topic, {row["part"]: row["epoch"] for row in rows}, open_chunks)


async def load_state(conn: Connection, topic: str, epochs: dict[int, int],
                     open_chunks: Callable[[list[OpenRow]], None] | None = None) -> PartitionState:
    """The stored state of the partitions in `epochs`, for memory to start from. Open dossiers are read
    through a cursor: with `open_chunks` each chunk goes there as it arrives (a million open dossiers need
    neither be held twice nor block the event loop while they load), else into `open`."""
    parts = sorted(epochs)
    state = PartitionState(epochs)
    if topic == topics.REJECTIONS:
        state.rejections = [(r["part"], r["stage"], r["reason"], float(r["value"])) for r in await conn.fetch(
            f"SELECT part, stage, reason, value FROM {SCHEMA}.rejection_counts WHERE part = ANY($1::int[])",
            parts)]
        return state
    state.counters = [((r["family"], r["part"], r["unit_code"], r["sector"], r["channel"], r["label"]), r["value"])
                      for r in await conn.fetch(
                          f"SELECT family, part, unit_code, sector, channel, label, value FROM {SCHEMA}.counters "
                          "WHERE part = ANY($1::int[])", parts)]
    cursor = conn.cursor(
        f"SELECT code, part, unit_code, sector, open_kind, received_at, due_soon_at, due_at "
        f"FROM {SCHEMA}.dossier_progress WHERE part = ANY($1::int[]) AND open_kind IS NOT NULL", parts,
        prefetch=OPEN_CHUNK)
    chunk: list[OpenRow] = []
    async for row in cursor:
        chunk.append(OpenRow(*row))
        if open_chunks is not None and len(chunk) == OPEN_CHUNK:
            open_chunks(chunk)
            state.open_count += len(chunk)
            chunk = []
    state.open_count += len(chunk)
    if open_chunks is not None:
        open_chunks(chunk)
    else:
        state.open = chunk
    return state


async def check_epochs(conn: Connection, topic: str, expected: dict[int, int | None]) -> dict[int, int]:
    """Lock the batch's partitions and make sure this instance still owns each at the epoch it
    loaded; returns the partitions' next unconsumed offsets."""
    rows = await conn.fetch(
        f"SELECT part, epoch, next_offset FROM {SCHEMA}.partition_owner WHERE topic = $1 AND part = ANY($2::int[]) "
        "ORDER BY part FOR UPDATE", topic, sorted(expected))
    found = {row["part"]: row["epoch"] for row in rows}
    moved = sorted(part for part, epoch in expected.items() if epoch is None or found.get(part) != epoch)
    if moved:
        raise OwnershipMoved(f"{topic} partitions {moved} are no longer this instance's")
    return {row["part"]: row["next_offset"] for row in rows}


@dataclass(frozen=True)
class Applied:
    """What a committed batch changed, for the in-memory copy."""

    deltas: dict[CounterKey, float]
    progress: list[tuple[DossierLifecycleEvent, int, str | None]]
    """(event, partition, open kind or None once closed), the latest per dossier."""


async def record_lifecycle(conn: Connection, events: list[tuple[int, DossierLifecycleEvent]]) -> Applied:
    """Count each event once: a repeat (sequence not above the dossier's last) changes nothing."""
    rows = await conn.fetch(LAST_SEQUENCES, sorted({event.dossier_code for _, event in events}))
    last = {row["code"]: row["last_sequence"] for row in rows}
    deltas: dict[CounterKey, float] = {}
    latest: dict[str, tuple[DossierLifecycleEvent, int, str | None]] = {}
    for part, event in events:
        if event.sequence <= last.get(event.dossier_code, 0):
            continue  # a repeat: redelivery or a second publish from resolution's outbox
        last[event.dossier_code] = event.sequence
        tally(event, part, deltas)
        latest[event.dossier_code] = (event, part, open_kind(event))
    # One statement per table rather than one per row, which costs PostgreSQL a third less per row; each
    # dossier and each counter key appears once in a batch's rows, as ON CONFLICT DO UPDATE requires.
    if latest:
        await conn.execute(
            f"INSERT INTO {SCHEMA}.dossier_progress (code, part, last_sequence, unit_code, sector, channel, "
            "open_kind, due_at, due_soon_at, received_on, completed_on, timeliness, received_at) "
            "SELECT * FROM unnest($1::text[], $2::int[], $3::int[], $4::text[], $5::text[], $6::text[], "
            "$7::text[], $8::timestamptz[], $9::timestamptz[], $10::date[], $11::date[], $12::text[], "
            "$13::timestamptz[]) "
            "ON CONFLICT (code) DO UPDATE SET part = EXCLUDED.part, last_sequence = EXCLUDED.last_sequence, "
            "unit_code = EXCLUDED.unit_code, sector = EXCLUDED.sector, channel = EXCLUDED.channel, "
            "open_kind = EXCLUDED.open_kind, due_at = EXCLUDED.due_at, due_soon_at = EXCLUDED.due_soon_at, "
            "received_on = EXCLUDED.received_on, completed_on = EXCLUDED.completed_on, "
            "timeliness = EXCLUDED.timeliness, received_at = EXCLUDED.received_at",
            *columns(progress_row(event, part, kind) for event, part, kind in latest.values()),
        )
    if deltas:
        await conn.execute(
            f"INSERT INTO {SCHEMA}.counters SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], "
            "$5::text[], $6::text[], $7::float8[]) "
            "ON CONFLICT (family, part, unit_code, sector, channel, label) "
            "DO UPDATE SET value = counters.value + EXCLUDED.value",
            *columns((*key, value) for key, value in deltas.items()),
        )
    return Applied(deltas, list(latest.values()))


def progress_row(event: DossierLifecycleEvent, part: int, kind: str | None) -> tuple[Any, ...]:
    completed_on = event.completed_at.astimezone(VN).date() if event.completed_at else None
    return (event.dossier_code, part, event.sequence, event.unit_code, event.sector, event.channel, kind,
            event.legal_due_at, event.due_soon_at if kind else None, event.received_at.astimezone(VN).date(),
            completed_on, event.timeliness.value if event.timeliness else None, event.received_at)


async def record_rejections(conn: Connection, topic: str, batch: list[tuple[int, int, RejectionRecorded | None]],
                            next_offsets: dict[int, int]) -> dict[tuple[int, str, str], int]:
    """Count refusals by offset: a record below its partition's stored next offset was counted before. A
    record that is not a readable refusal is counted as `unreadable` rather than dropped."""
    deltas: dict[tuple[int, str, str], int] = {}
    ends = dict(next_offsets)
    for part, offset, refusal in batch:
        if offset < next_offsets.get(part, 0):
            continue
        key = (part, refusal.stage.value, refusal.reason.value) if refusal else (part, "unknown", "unreadable")
        deltas[key] = deltas.get(key, 0) + 1
        ends[part] = max(ends.get(part, 0), offset + 1)
    if deltas:
        await conn.executemany(
            f"INSERT INTO {SCHEMA}.rejection_counts VALUES ($1, $2, $3, $4) ON CONFLICT (part, stage, reason) "
            "DO UPDATE SET value = rejection_counts.value + EXCLUDED.value",
            [(*key, value) for key, value in deltas.items()])
    await conn.executemany(f"UPDATE {SCHEMA}.partition_owner SET next_offset = $3 WHERE topic = $1 AND part = $2",
                           [(topic, part, end) for part, end in ends.items() if end != next_offsets.get(part)])
    return deltas
