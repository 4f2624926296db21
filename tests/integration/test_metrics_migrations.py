"""Metrics' migrations, and its take-overs during a rolling upgrade, carry counters stored the old way over to
the new, against a real database."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from services.metrics.app import MIGRATIONS
from services.metrics.store import SCHEMA, take_over
from services.metrics.tally import RATIO_BUCKETS, bucket_of
from shared import db
from shared.contract import topics

pytestmark = pytest.mark.integration
# (part, unit) -> the time-used ratios of the dossiers completed there.
COMPLETED = {(0, "10000"): [0.1, 0.3, 0.3, 0.95, 5.0], (1, "10001"): [1.0, 1.0], (1, "10002"): [2.9]}


def cumulative(ratios: list[float]) -> dict[str, int]:
    """The rows the old tally left: every bound at or above some completion's ratio, with how many are under it."""
    counts = {str(bound): sum(ratio <= bound for ratio in ratios) for bound in RATIO_BUCKETS}
    return {**{label: n for label, n in counts.items() if n}, "+Inf": len(ratios)}


async def test_cumulative_histogram_rows_become_one_row_per_bucket_with_the_same_counts(
        database_url: str, tmp_path: Path) -> None:
    earlier = tmp_path / "migrations"
    earlier.mkdir()
    for path in sorted(MIGRATIONS.glob("*.sql")):
        if path.name < "0004":
            shutil.copy(path, earlier / path.name)
    pool = await db.create_pool(database_url)
    try:
        await db.migrate(pool, SCHEMA, earlier)
        rows = [("time_used_bucket", part, unit, "ho_tich", "online", label, float(n))
                for (part, unit), ratios in COMPLETED.items() for label, n in cumulative(ratios).items()]
        rows.append(("received", 0, "10000", "ho_tich", "online", "", 9.0))
        await pool.executemany(f"INSERT INTO {SCHEMA}.counters VALUES ($1, $2, $3, $4, $5, $6, $7)", rows)

        assert await db.migrate(pool, SCHEMA, MIGRATIONS) == ["0004_ratio_buckets.sql"]

        stored = await pool.fetch(f"SELECT family, part, unit_code, label, value FROM {SCHEMA}.counters")
        assert {row["family"] for row in stored} == {"received", "time_used_in_bucket"}
        for (part, unit), ratios in COMPLETED.items():
            in_buckets = {row["label"]: row["value"] for row in stored
                          if row["family"] == "time_used_in_bucket" and (row["part"], row["unit_code"]) == (part, unit)}
            assert in_buckets == Counter(bucket_of(ratio) for ratio in ratios)  # as the tally now stores them
        assert [row["value"] for row in stored if row["family"] == "received"] == [9.0]
    finally:
        await pool.close()


async def test_a_take_over_carries_over_what_an_instance_older_than_the_migration_wrote(database_url: str) -> None:
    """In a rolling upgrade an old instance keeps writing cumulative rows into its partitions after the migration
    ran; whoever takes a partition over next adds them to the rows per bucket, and leaves the others' alone."""
    pool = await db.create_pool(database_url)
    try:
        await db.migrate(pool, SCHEMA, MIGRATIONS)
        already = [0.3, 1.0]  # counted the new way in partition 0 before the old instance owned it
        rows = [("time_used_in_bucket", 0, "10000", "ho_tich", "online", label, float(n))
                for label, n in Counter(bucket_of(ratio) for ratio in already).items()]
        rows += [("time_used_bucket", part, unit, "ho_tich", "online", label, float(n))
                 for (part, unit), ratios in COMPLETED.items() for label, n in cumulative(ratios).items()]
        await pool.executemany(f"INSERT INTO {SCHEMA}.counters VALUES ($1, $2, $3, $4, $5, $6, $7)", rows)

        async with pool.acquire() as conn, conn.transaction():
            state = await take_over(conn, topics.LIFECYCLE, [0], "upgraded")

        loaded = {(family, label): value for (family, _, _, _, _, label), value in state.counters}
        assert loaded == {("time_used_in_bucket", label): n for label, n in
                          Counter(bucket_of(ratio) for ratio in already + COMPLETED[(0, "10000")]).items()}
        left = await pool.fetch(f"SELECT family, part, unit_code, label, value FROM {SCHEMA}.counters WHERE part = 1")
        assert {(row["unit_code"], row["label"]): row["value"] for row in left} == {
            (unit, label): n for (part, unit), ratios in COMPLETED.items() if part == 1
            for label, n in cumulative(ratios).items()}
        assert {row["family"] for row in left} == {"time_used_bucket"}
    finally:
        await pool.close()
