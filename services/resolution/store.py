"""Resolution's schema: dossiers, their event history, and the outbox."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from datetime import datetime

import asyncpg

from services.resolution.judge import Verdicts
from shared.contract.lifecycle import EventAccepted
from shared.db import Connection, columns
from shared.dossier import Dossier, TimelineEntry

SCHEMA = "resolution"
OUTBOX_CHANNEL = "resolution_outbox"
EVENT_COLUMNS = ("source", "event_id", "dossier_code", "sequence", "occurred_at", "payload", "refusal", "recorded_at")
OUTBOX_COLUMNS = ("topic", "key", "payload")
OUTBOX_WRITER_LOCK = 0x7474_686F
"""Held by the one transaction at a time that writes outbox rows, from its first row until it commits: the rows'
ids then follow commit order, so the relay takes what follows the last row it took (services/resolution/relay.py)."""


# A primary-key lookup per key, as intake's (services/intake/store.py says why it is not a join).
JUDGED_KEYS = (
    "SELECT k.source, k.event_id FROM unnest($1::text[], $2::text[]) AS k(source, event_id) "
    f"CROSS JOIN LATERAL (SELECT FROM {SCHEMA}.events e "
    "WHERE e.source = k.source AND e.event_id = k.event_id OFFSET 0) AS e"
)


# Each dossier found by its key and locked, in the order of the codes given (sorted by the caller), with its
# snapshot only if it changed since `written_at`: a lookup per key, as the dedupe's.
LOCK_DOSSIERS = (
    "SELECT d.code, CASE WHEN d.updated_at = k.written_at THEN NULL ELSE d.snapshot END AS snapshot "
    "FROM unnest($1::text[], $2::timestamptz[]) AS k(code, written_at) "
    f"CROSS JOIN LATERAL (SELECT code, snapshot, updated_at FROM {SCHEMA}.dossiers d WHERE d.code = k.code "
    "FOR UPDATE) AS d"
)


async def judged_keys(conn: Connection, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
    rows = await conn.fetch(JUDGED_KEYS, [key[0] for key in keys], [key[1] for key in keys])
    return {(row["source"], row["event_id"]) for row in rows}


class DossierCache:
    """Dossiers as this instance last committed them, each with the `updated_at` it was written with.

    Reading a dossier back would mean fetching and parsing its snapshot. A batch asks the database only whether
    each row still carries the `updated_at` remembered here, and reads the snapshot of those someone else has
    written since (another instance after a rebalance, a replay). A cached dossier keeps the timeline entries
    folded since it was read; the batch stores only those newer than the stored ones.
    Entries are put only after their batch commits; least recently used ones go beyond `size`."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[str, tuple[datetime, Dossier]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def written_at(self, code: str) -> datetime | None:
        entry = self._entries.get(code)
        return entry[0] if entry is not None else None

    def take(self, code: str) -> Dossier | None:
        entry = self._entries.get(code)
        if entry is None:
            return None
        self._entries.move_to_end(code)
        return entry[1]

    def put(self, dossiers: Iterable[Dossier], written_at: datetime) -> None:
        for dossier in dossiers:
            self._entries[dossier.code] = (written_at, dossier)
            self._entries.move_to_end(dossier.code)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def drop(self, codes: Iterable[str]) -> None:
        for code in codes:
            self._entries.pop(code, None)


async def lock_dossiers(conn: Connection, codes: list[str], cache: DossierCache) -> tuple[dict[str, Dossier], int]:
    """The dossiers' current states, row-locked until the batch commits (another instance waits), and how many
    came from `cache` unchanged. `codes` sorted, so that two batches lock shared dossiers in the same order."""
    rows = await conn.fetch(LOCK_DOSSIERS, codes, [cache.written_at(code) for code in codes])
    found: dict[str, Dossier] = {}
    from_cache = 0
    evicted: list[str] = []  # unchanged, but pushed out of the cache by a concurrent batch meanwhile
    for row in rows:
        if row["snapshot"] is not None:
            found[row["code"]] = Dossier.model_validate_json(row["snapshot"])
        elif (cached := cache.take(row["code"])) is not None:
            found[row["code"]] = cached
            from_cache += 1
        else:
            evicted.append(row["code"])
    if evicted:
        for row in await conn.fetch(f"SELECT snapshot FROM {SCHEMA}.dossiers WHERE code = ANY($1::text[])", evicted):
            dossier = Dossier.model_validate_json(row["snapshot"])
            found[dossier.code] = dossier
    cache.drop(set(codes) - found.keys())  # remembered here, gone from the database (a rebuilt schema)
    return found, from_cache


async def histories(conn: Connection, codes: list[str]) -> dict[str, list[EventAccepted]]:
    rows = await conn.fetch(
        f"SELECT dossier_code, payload FROM {SCHEMA}.events WHERE dossier_code = ANY($1::text[]) "
        "AND sequence IS NOT NULL ORDER BY dossier_code, sequence", codes,
    )
    found: dict[str, list[EventAccepted]] = {}
    for row in rows:
        found.setdefault(row["dossier_code"], []).append(EventAccepted.model_validate_json(row["payload"]))
    return found


async def write(conn: Connection, verdicts: Verdicts, now: datetime,
                as_received: Mapping[tuple[str, str], str] | None = None) -> None:
    """The batch's verdicts in the caller's transaction. History rows keep each event's bytes as received
    (`as_received`, by source and id) rather than serialising it again."""
    received = as_received or {}
    if verdicts.dossiers:
        # One statement rather than one per dossier, as the pipeline's floor writes them (each code appears
        # once: `dossiers` is keyed by it).
        await conn.execute(
            f"INSERT INTO {SCHEMA}.dossiers (code, state, unit_code, snapshot, updated_at) "
            "SELECT code, state, unit_code, snapshot::jsonb, $5 "
            "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS t(code, state, unit_code, snapshot) "
            "ON CONFLICT (code) DO UPDATE SET state = EXCLUDED.state, unit_code = EXCLUDED.unit_code, "
            "snapshot = EXCLUDED.snapshot, updated_at = EXCLUDED.updated_at",
            *columns((d.code, d.state.value, d.unit_code, d.snapshot_json()) for d in verdicts.dossiers.values()),
            now,
        )
    await write_timeline(conn, verdicts.timeline, replacing=verdicts.refolded)
    # COPY rather than INSERTs: one stream instead of a statement per row, for this process and for PostgreSQL.
    # A row already there (another instance judged it first) fails the batch as an INSERT would.
    if verdicts.recorded:
        await conn.copy_records_to_table(
            "events", schema_name=SCHEMA, columns=EVENT_COLUMNS,
            records=[(e.source, e.id, e.dossier_code, sequence, e.occurred_at,
                      received.get((e.source, e.id)) or e.model_dump_json(), refusal, now)
                     for e, sequence, refusal in verdicts.recorded],
        )
    if verdicts.outbox:
        if not conn.is_in_transaction():
            raise RuntimeError("outbox rows are written in the transaction of the state they announce")
        # Without the lock, two batches committing at once could number their rows in the other order, and the
        # relay, already past the later numbers, would never take the earlier ones.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", OUTBOX_WRITER_LOCK)
        await conn.copy_records_to_table("outbox", schema_name=SCHEMA, columns=OUTBOX_COLUMNS,
                                         records=verdicts.outbox)
        await conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")


async def write_timeline(conn: Connection, timelines: Mapping[str, list[TimelineEntry]], schema: str = SCHEMA,
                         *, replacing: Iterable[str] = ()) -> None:
    """Store timeline entries by dossier: new rows, after deleting those of the dossiers `replacing` (refolded
    ones, whose entries all move)."""
    if replacing := list(replacing):
        await conn.execute(f"DELETE FROM {schema}.timeline WHERE dossier_code = ANY($1::text[])", replacing)
    records = [(code, e.sequence, e.event_type.value, e.occurred_at, e.state.value, e.due_at, e.clock_change)
               for code, timeline in timelines.items() for e in timeline]
    if records:
        await conn.copy_records_to_table("timeline", schema_name=schema, records=records)


async def dossier(pool: asyncpg.Pool, code: str, *, with_timeline: bool = False) -> Dossier | None:
    snapshot = await pool.fetchval(f"SELECT snapshot FROM {SCHEMA}.dossiers WHERE code = $1", code)
    if snapshot is None:
        return None
    found = Dossier.model_validate_json(snapshot)
    if not with_timeline:
        return found
    rows = await pool.fetch(f"SELECT sequence, event_type, occurred_at, state, due_at, clock_change "
                            f"FROM {SCHEMA}.timeline WHERE dossier_code = $1 ORDER BY sequence", code)
    return found.model_copy(update={"timeline": [TimelineEntry.model_validate(dict(row)) for row in rows]})


async def counts_by_state(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch(f"SELECT state, count(*) AS n FROM {SCHEMA}.dossiers GROUP BY state")
    return {row["state"]: int(row["n"]) for row in rows}
