"""Notify's metrics counts, kept by triggers as rows change: always what counting the tables would give."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from services.notify import stats
from services.notify.app import MIGRATIONS
from services.notify.stats import SCHEMA
from shared import db

pytestmark = pytest.mark.integration
NOW = datetime.now(UTC)
INSERT = (f"INSERT INTO {SCHEMA}.deliveries (dossier_code, event_id, channel, template, status, next_attempt_at, "
          "context, created_at) VALUES ($1, $2, $3, 'received', 'queued', $4, '{}', $4) ON CONFLICT DO NOTHING")


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(database_url)
    yield pool
    await pool.close()


async def truth(pool: asyncpg.Pool) -> stats.Snapshot:
    """The counts the slow way: every row of the tables."""
    counted = stats.Snapshot()
    rows = await pool.fetch(f"SELECT channel, status, count(*) AS n FROM {SCHEMA}.deliveries GROUP BY 1, 2")
    counted.deliveries = {(r["channel"], r["status"]): r["n"] for r in rows}
    for r in await pool.fetch(f"SELECT unit_code, rating, count(*) AS n FROM {SCHEMA}.surveys GROUP BY 1, 2"):
        counted.invited[r["unit_code"]] = counted.invited.get(r["unit_code"], 0) + r["n"]
        if r["rating"] is not None:
            counted.answers[(r["unit_code"], r["rating"])] = r["n"]
    return counted


async def assert_counts_true(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        read = await stats.read(conn)
    expected = await truth(pool)
    assert (read.deliveries, read.invited, read.answers) == (expected.deliveries, expected.invited, expected.answers)


async def queue(pool: asyncpg.Pool, prefix: str, count: int, channel: str = "email") -> None:
    await pool.executemany(INSERT, [(f"{prefix}{n}", f"{prefix}{n}:1", channel, NOW) for n in range(count)])


async def test_counts_follow_inserts_repeats_status_changes_and_deletes(pool: asyncpg.Pool) -> None:
    await db.migrate(pool, SCHEMA, MIGRATIONS)
    await queue(pool, "A", 30)
    await queue(pool, "A", 30)  # repeats: nothing inserted, nothing counted
    await queue(pool, "B", 12, "sms")
    await pool.execute(f"UPDATE {SCHEMA}.deliveries SET status = 'sending' WHERE dossier_code LIKE 'A1%'")
    await pool.execute(f"UPDATE {SCHEMA}.deliveries SET status = 'delivered' WHERE status = 'sending'")
    await pool.execute(f"UPDATE {SCHEMA}.deliveries SET attempts = attempts + 1")  # no status moves
    await pool.execute(f"DELETE FROM {SCHEMA}.deliveries WHERE dossier_code LIKE 'B%' AND dossier_code < 'B5'")
    await pool.executemany(f"INSERT INTO {SCHEMA}.surveys (dossier_code, unit_code, invited_at) VALUES ($1, $2, $3)",
                           [(f"S{n}", f"0742{n % 3}", NOW) for n in range(9)])
    await pool.execute(f"UPDATE {SCHEMA}.surveys SET rating = 'satisfied', answered_at = $1 WHERE dossier_code < 'S4'",
                       NOW)
    await pool.execute(f"UPDATE {SCHEMA}.surveys SET rating = 'neutral' WHERE dossier_code = 'S0'")
    await assert_counts_true(pool)
    assert (await truth(pool)).deliveries[("email", "delivered")] == 11  # A1 and A10..A19

    async with pool.acquire() as conn:
        await stats.compact(conn, "delivery_counts", "channel, status")
        await stats.compact(conn, "survey_counts", "unit_code, rating")
    assert await pool.fetchval(f"SELECT count(*) FROM {SCHEMA}.delivery_counts") == 3  # one per key left
    await assert_counts_true(pool)


async def test_folding_alongside_writers_and_another_folder_loses_nothing(pool: asyncpg.Pool) -> None:
    await db.migrate(pool, SCHEMA, MIGRATIONS)
    await queue(pool, "C", 200)

    async def fold() -> None:
        async with pool.acquire() as conn:
            await stats.compact(conn, "delivery_counts", "channel, status")

    await asyncio.gather(fold(), fold(), queue(pool, "D", 200), fold(), queue(pool, "E", 50, "zalo"), fold())
    await assert_counts_true(pool)


async def test_the_migration_counts_rows_written_before_it(pool: asyncpg.Pool, tmp_path: Path) -> None:
    earlier = tmp_path / "migrations"
    earlier.mkdir()
    for path in sorted(MIGRATIONS.glob("*.sql")):
        if path.name < "0007":
            shutil.copy(path, earlier / path.name)
    await db.migrate(pool, SCHEMA, earlier)
    await queue(pool, "F", 25)
    await pool.execute(f"INSERT INTO {SCHEMA}.surveys VALUES ('S1', '07420', $1, 'dissatisfied', NULL, $1)", NOW)

    assert (await db.migrate(pool, SCHEMA, MIGRATIONS))[0] == "0007_counts.sql"
    await assert_counts_true(pool)
    assert (await truth(pool)).answers == {("07420", "dissatisfied"): 1}
