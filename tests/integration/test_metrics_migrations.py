"""Metrics' migrations, and its take-overs during a rolling upgrade, carry counters stored the old way over to
the new, against a real database."""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from pathlib import Path

import asyncpg
import pytest

from services.metrics.app import MIGRATIONS
from services.metrics.store import SCHEMA, take_over
from services.metrics.tally import RATIO_BUCKETS, bucket_of
from shared import db
from shared.contract import topics
from tests.support import eventually, waiting_for_a_lock

pytestmark = pytest.mark.integration
Group = tuple[int, str, str, str]
"""(part, unit, sector, channel): the labels one histogram's counter rows share."""
# The time-used ratios of the dossiers completed in each group; partition 0's groups differ in each label.
COMPLETED: dict[Group, list[float]] = {
    (0, "10000", "ho_tich", "online"): [0.1, 0.3, 0.3, 0.95, 5.0],
    (0, "10003", "ho_tich", "online"): [0.6],
    (0, "10000", "dat_dai", "online"): [2.0, 2.5],
    (0, "10000", "ho_tich", "direct"): [0.2, 1.3],
    (1, "10001", "ho_tich", "online"): [1.0, 1.0],
    (1, "10002", "ho_tich", "online"): [2.9],
}
# An older instance's batch: each counter row it adds to, or inserts if missing.
OLD_INSTANCE_UPSERT = (f"INSERT INTO {SCHEMA}.counters VALUES ($1, $2, $3, $4, $5, $6, $7) "
                       "ON CONFLICT (family, part, unit_code, sector, channel, label) "
                       "DO UPDATE SET value = counters.value + EXCLUDED.value")


def cumulative(ratios: list[float]) -> dict[str, int]:
    """The rows the old tally left: every bound at or above some completion's ratio, with how many are under it."""
    counts = {str(bound): sum(ratio <= bound for ratio in ratios) for bound in RATIO_BUCKETS}
    return {**{label: n for label, n in counts.items() if n}, "+Inf": len(ratios)}


def cumulative_rows(completed: dict[Group, list[float]]) -> list[tuple[str, int, str, str, str, str, float]]:
    return [("time_used_bucket", *group, label, float(n))
            for group, ratios in completed.items() for label, n in cumulative(ratios).items()]


def in_buckets(rows: list[asyncpg.Record]) -> dict[Group, dict[str, float]]:
    found: dict[Group, dict[str, float]] = {}
    for row in rows:
        if row["family"] == "time_used_in_bucket":
            group = (row["part"], row["unit_code"], row["sector"], row["channel"])
            found.setdefault(group, {})[row["label"]] = row["value"]
    return found


def as_the_tally_stores(completed: dict[Group, list[float]]) -> dict[Group, dict[str, float]]:
    return {group: {label: float(n) for label, n in Counter(map(bucket_of, ratios)).items()}
            for group, ratios in completed.items()}


def before_0004(tmp_path: Path) -> Path:
    earlier = tmp_path / "migrations"
    earlier.mkdir()
    for path in sorted(MIGRATIONS.glob("*.sql")):
        if path.name < "0004":
            shutil.copy(path, earlier / path.name)
    return earlier


async def test_cumulative_histogram_rows_become_one_row_per_bucket_with_the_same_counts(
        database_url: str, tmp_path: Path) -> None:
    pool = await db.create_pool(database_url)
    try:
        await db.migrate(pool, SCHEMA, before_0004(tmp_path))
        await pool.executemany(f"INSERT INTO {SCHEMA}.counters VALUES ($1, $2, $3, $4, $5, $6, $7)",
                               [*cumulative_rows(COMPLETED), ("received", 0, "10000", "ho_tich", "online", "", 9.0)])

        assert await db.migrate(pool, SCHEMA, MIGRATIONS) == ["0004_ratio_buckets.sql"]

        stored = await pool.fetch(f"SELECT * FROM {SCHEMA}.counters")
        assert {row["family"] for row in stored} == {"received", "time_used_in_bucket"}
        assert in_buckets(stored) == as_the_tally_stores(COMPLETED)
        assert [row["value"] for row in stored if row["family"] == "received"] == [9.0]
    finally:
        await pool.close()


async def test_the_migration_waits_for_an_older_instance_s_batch_and_converts_it_whole(
        database_url: str, tmp_path: Path) -> None:
    """During a rolling upgrade an older instance may be writing while a newer one migrates. A batch of it that
    adds to some rows and inserts others is converted once it commits, whole: none of it is lost or counted in
    two buckets."""
    group: Group = (0, "10000", "ho_tich", "online")
    pool = await db.create_pool(database_url)
    try:
        await db.migrate(pool, SCHEMA, before_0004(tmp_path))
        await pool.executemany(OLD_INSTANCE_UPSERT, cumulative_rows({group: [0.3]}))
        async with pool.acquire() as old_instance:
            batch = old_instance.transaction()
            await batch.start()
            # A completion at 0.1: one more in every bucket from 0.25 up, the row of 0.25 new.
            await old_instance.executemany(OLD_INSTANCE_UPSERT, cumulative_rows({group: [0.1]}))
            migrating = asyncio.create_task(db.migrate(pool, SCHEMA, MIGRATIONS))

            await eventually(lambda: waiting_for_a_lock(pool), timeout=30,
                             what="the migration waiting for the batch")
            await batch.commit()
        assert await migrating == ["0004_ratio_buckets.sql"]

        stored = await pool.fetch(f"SELECT * FROM {SCHEMA}.counters")
        assert {row["family"] for row in stored} == {"time_used_in_bucket"}
        assert in_buckets(stored) == as_the_tally_stores({group: [0.3, 0.1]})
    finally:
        await pool.close()


async def test_a_take_over_carries_over_what_an_instance_older_than_the_migration_wrote(database_url: str) -> None:
    """In a rolling upgrade an old instance keeps writing cumulative rows into its partitions after the migration
    ran; whoever takes a partition over next adds them to the rows per bucket, and leaves the others' alone."""
    already = {(0, "10000", "ho_tich", "online"): [0.3, 1.0]}  # counted the new way before the old instance
    pool = await db.create_pool(database_url)
    try:
        await db.migrate(pool, SCHEMA, MIGRATIONS)
        rows = [("time_used_in_bucket", *group, label, n)
                for group, by_label in as_the_tally_stores(already).items() for label, n in by_label.items()]
        await pool.executemany(f"INSERT INTO {SCHEMA}.counters VALUES ($1, $2, $3, $4, $5, $6, $7)",
                               rows + cumulative_rows(COMPLETED))

        async with pool.acquire() as conn, conn.transaction():
            state = await take_over(conn, topics.LIFECYCLE, [0], "upgraded")

        taken = {group: ratios + already.get(group, []) for group, ratios in COMPLETED.items() if group[0] == 0}
        loaded: dict[Group, dict[str, float]] = {}
        for (family, part, unit, sector, channel, label), value in state.counters:
            assert family == "time_used_in_bucket"
            loaded.setdefault((part, unit, sector, channel), {})[label] = value
        assert loaded == as_the_tally_stores(taken)
        left = await pool.fetch(f"SELECT * FROM {SCHEMA}.counters WHERE part = 1")
        assert sorted(tuple(row.values()) for row in left) == sorted(
            cumulative_rows({group: ratios for group, ratios in COMPLETED.items() if group[0] == 1}))
    finally:
        await pool.close()
