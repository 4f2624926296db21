"""Intake's and resolution's dedupe look each key up by the primary key, also through a plan made while the
table was empty. PostgreSQL keeps a statement's plan for its connection, and a service's connections live
for as long as the service: the plan made in a fresh deployment's first seconds is the one its dedupe runs
until an ANALYZE of the grown table replans it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from services.intake import store as intake_store
from services.intake.app import MIGRATIONS as INTAKE_MIGRATIONS
from services.resolution import store as resolution_store
from services.resolution.app import MIGRATIONS as RESOLUTION_MIGRATIONS
from shared import db

pytestmark = pytest.mark.integration

SOURCE = "https://motcua.example.vn"
STORED = 20_000


async def fill_received_events(conn: asyncpg.Connection) -> None:
    await intake_store.record_accepted(conn, [(SOURCE, f"e{n}", f"code-{n}") for n in range(STORED)],
                                       datetime.now(UTC))


async def fill_events(conn: asyncpg.Connection) -> None:
    await conn.execute(
        f"INSERT INTO {resolution_store.SCHEMA}.events SELECT $1, 'e' || n, 'code-' || n, 1, now(), '{{}}', "
        "NULL, now() FROM generate_series(0, $2 - 1) AS n", SOURCE, STORED)


async def accepted_keys(conn: asyncpg.Connection, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
    return set(await intake_store.already_accepted(conn, keys))


@dataclass(frozen=True)
class Dedupe:
    schema: str
    table: str
    migrations: Path
    fill: Callable[[asyncpg.Connection], Awaitable[None]]
    known: Callable[[asyncpg.Connection, list[tuple[str, str]]], Awaitable[set[tuple[str, str]]]]


DEDUPES = {
    "intake": Dedupe(intake_store.SCHEMA, "received_events", INTAKE_MIGRATIONS, fill_received_events, accepted_keys),
    "resolution": Dedupe(resolution_store.SCHEMA, "events", RESOLUTION_MIGRATIONS, fill_events,
                         resolution_store.judged_keys),
}


@pytest.mark.parametrize("service", DEDUPES)
async def test_dedupe_reads_by_key_with_a_plan_made_on_the_empty_table(database_url: str, service: str) -> None:
    dedupe = DEDUPES[service]
    pool = await db.create_pool(database_url)
    try:
        await db.migrate(pool, dedupe.schema, dedupe.migrations)
    finally:
        await pool.close()
    # A generic plan from the first run on: PostgreSQL settles on one after a statement's first five runs when
    # it costs no more than theirs, as it does while the table is nearly empty.
    conn = await asyncpg.connect(database_url, server_settings={"plan_cache_mode": "force_generic_plan"})
    try:
        assert await dedupe.known(conn, [(SOURCE, "e1"), (SOURCE, "e2")]) == set()  # planned here, table empty
        await dedupe.fill(conn)
        asked = [(SOURCE, f"e{n}") for n in (5, 19_999, 7_000)] + [(SOURCE, "never"), ("urn:other", "e5")]
        async with conn.transaction():
            assert await dedupe.known(conn, asked) == {(SOURCE, "e5"), (SOURCE, "e19999"), (SOURCE, "e7000")}
            scans = await conn.fetchrow("SELECT seq_scan, idx_scan FROM pg_stat_xact_user_tables "
                                        "WHERE schemaname = $1 AND relname = $2", dedupe.schema, dedupe.table)
    finally:
        await conn.close()
    assert scans is not None
    assert scans["seq_scan"] == 0, f"{service}'s dedupe read all {STORED} rows of {dedupe.table} for five keys"
    assert scans["idx_scan"] >= 1
