"""The reads each batch makes by key (intake's and resolution's dedupe, intake's units of the batch's dossiers,
resolution's and metrics' locks on them) go through the table's index however small the table was when the
statement was first run.

A fresh deployment's tables grow from nothing, and autovacuum analyzes them early and then seldom. A
connection keeps a statement's plan after its fifth run, until the next ANALYZE: one made on a table of a few
rows read all of it, for every key or for every batch, as the table grew (shared/db.py, PLANS). And a batch's
keys are looked up one by one: as `code = ANY($1)` or a join, the planner read 20,000 rows for 500 keys. Here
each statement runs seven times on an analyzed table of one row, through a service's own pool, and then once
more for a batch's keys after 20,000 rows have come in."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services.intake import store as intake_store
from services.intake.app import MIGRATIONS as INTAKE_MIGRATIONS
from services.metrics import store as metrics_store
from services.metrics.app import MIGRATIONS as METRICS_MIGRATIONS
from services.resolution import store as resolution_store
from services.resolution.app import MIGRATIONS as RESOLUTION_MIGRATIONS
from shared import db

pytestmark = pytest.mark.integration

SOURCE = "https://motcua.example.vn"
STORED = 20_000
BATCH = 500


def event_keys(numbers: Sequence[int]) -> tuple[list[str], list[str]]:
    return [SOURCE] * len(numbers), [f"e{n}" for n in numbers]


@dataclass(frozen=True)
class KeyedRead:
    schema: str
    table: str
    migrations: Path
    fill: str
    """Rows numbered $1 to $2, each keyed by its number."""
    statement: str
    arguments: Callable[[Sequence[int]], tuple[Any, ...]]
    """The statement's arguments asking for the rows with these numbers."""
    key: str
    """The column of a row found that names it: e<number> or code-<number>."""


READS = {
    "intake's dedupe": KeyedRead(
        intake_store.SCHEMA, "received_events", INTAKE_MIGRATIONS,
        f"INSERT INTO {intake_store.SCHEMA}.received_events SELECT '{SOURCE}', 'e' || n, 'code-' || n, now() "
        "FROM generate_series($1::int, $2::int) AS n",
        intake_store.ALREADY_ACCEPTED, event_keys, "event_id"),
    "intake's dossier units": KeyedRead(
        intake_store.SCHEMA, "dossier_units", INTAKE_MIGRATIONS,
        f"INSERT INTO {intake_store.SCHEMA}.dossier_units SELECT 'code-' || n, 'u' "
        "FROM generate_series($1::int, $2::int) AS n",
        intake_store.DOSSIER_UNITS, lambda numbers: ([f"code-{n}" for n in numbers],), "dossier_code"),
    "resolution's dedupe": KeyedRead(
        resolution_store.SCHEMA, "events", RESOLUTION_MIGRATIONS,
        f"INSERT INTO {resolution_store.SCHEMA}.events SELECT '{SOURCE}', 'e' || n, 'code-' || n, 1, now(), '{{}}', "
        "NULL, now() FROM generate_series($1::int, $2::int) AS n",
        resolution_store.JUDGED_KEYS, event_keys, "event_id"),
    "resolution's dossier locks": KeyedRead(
        resolution_store.SCHEMA, "dossiers", RESOLUTION_MIGRATIONS,
        f"INSERT INTO {resolution_store.SCHEMA}.dossiers SELECT 'code-' || n, 'received', 'u', '{{}}', now() "
        "FROM generate_series($1::int, $2::int) AS n",
        resolution_store.LOCK_DOSSIERS,
        lambda numbers: ([f"code-{n}" for n in numbers], [None] * len(numbers)), "code"),
    "metrics' dossier locks": KeyedRead(
        metrics_store.SCHEMA, "dossier_progress", METRICS_MIGRATIONS,
        f"INSERT INTO {metrics_store.SCHEMA}.dossier_progress (code, part, last_sequence, unit_code, sector, "
        "channel, received_on, received_at) SELECT 'code-' || n, 0, 1, 'u', 's', 'c', current_date, now() "
        "FROM generate_series($1::int, $2::int) AS n",
        metrics_store.LAST_SEQUENCES, lambda numbers: ([f"code-{n}" for n in numbers],), "code"),
}


@pytest.mark.parametrize("name", READS)
async def test_a_keyed_read_uses_the_index_after_the_table_grew_under_it(database_url: str, name: str) -> None:
    read = READS[name]
    pool = await db.create_pool(database_url, max_size=1)  # one connection: the one that planned before
    try:
        await db.migrate(pool, read.schema, read.migrations)
        async with pool.acquire() as conn:
            await conn.execute(read.fill, 1, 1)
            await conn.execute(f"ANALYZE {read.schema}.{read.table}")
            for _ in range(7):
                async with conn.transaction():
                    assert len(await conn.fetch(read.statement, *read.arguments([1]))) == 1
            await conn.execute(read.fill, 2, STORED)
            # A batch's keys, one not stored, sorted as the services sort them: the locks are taken in this order.
            asked = sorted([*range(7, STORED, STORED // BATCH), STORED + 1], key=lambda n: f"code-{n}")
            scans = (f"SELECT seq_scan, idx_scan FROM pg_stat_xact_user_tables "
                     f"WHERE schemaname = '{read.schema}' AND relname = '{read.table}'")
            async with conn.transaction():
                before = await conn.fetchrow(scans)
                rows = await conn.fetch(read.statement, *read.arguments(asked))
                after = await conn.fetchrow(scans)
    finally:
        await pool.close()
    prefix = "e" if read.key == "event_id" else "code-"
    assert [row[read.key] for row in rows] == [f"{prefix}{n}" for n in asked if n <= STORED]
    assert before is not None
    assert after is not None
    assert after["seq_scan"] == before["seq_scan"], f"{name} read all {STORED} rows of {read.table}"
    assert after["idx_scan"] > before["idx_scan"]
