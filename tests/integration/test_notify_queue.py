"""The delivery queue under a backlog: its rounds, the opt-out sweep and the due-soon cancel read only the rows
they change."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from services.notify.app import CANCEL_DUE_ALERTS, MIGRATIONS
from services.notify.delivery import CLAIM_FOR_CITIZENS, SCHEMA, SET_ASIDE_OPTED_OUT
from shared import db

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(database_url)
    await db.migrate(pool, SCHEMA, MIGRATIONS)
    yield pool
    await pool.close()


async def queue(pool: asyncpg.Pool, channel: str, count: int, oldest: datetime, prefix: str) -> None:
    """`count` queued messages on `channel`, one a second from `oldest`, each for a dossier with a contact."""
    codes = [f"000.00.24.07420-261126-{prefix}{number:06d}" for number in range(count)]
    await pool.execute(
        f"INSERT INTO {SCHEMA}.contacts SELECT code, 'sealed', ARRAY[$2] FROM unnest($1::text[]) AS code "
        "ON CONFLICT DO NOTHING", codes, channel)
    await pool.execute(
        f"INSERT INTO {SCHEMA}.deliveries (dossier_code, event_id, channel, template, status, next_attempt_at, "
        "context, created_at) SELECT code, code || ':1', $2, 'received', 'queued', "
        "$3::timestamptz + make_interval(secs => n), '{}', $3::timestamptz "
        "FROM unnest($1::text[]) WITH ORDINALITY AS t(code, n)", codes, channel, oldest)


def scans(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from scans(child)


async def explained(pool: asyncpg.Pool, statement: str, *arguments: object) -> dict[str, Any]:
    """The plan of `statement` as it ran, its changes undone."""
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            plan = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", *arguments)
        finally:
            await transaction.rollback()
    return dict(json.loads(plan)[0]["Plan"])


def rows_read(root: dict[str, Any], alias: str) -> int:
    """Rows of `deliveries` (under `alias`) the plan read, kept or filtered out."""
    return sum(int(node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0))
               for node in scans(root) if node.get("Relation Name") == "deliveries" and node.get("Alias") == alias)


async def rows_read_by_a_round(pool: asyncpg.Pool, channel: str, room: int) -> tuple[int, int]:
    """(rows of `deliveries` the claim read to choose its messages, messages claimed)."""
    root = await explained(pool, CLAIM_FOR_CITIZENS, datetime.now(UTC), channel, room)
    return rows_read(root, "q"), int(root["Actual Rows"])


async def test_a_round_reads_only_the_messages_it_takes_however_long_the_queue(pool: asyncpg.Pool) -> None:
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    # A rate-limited SMS gateway has left 20,000 messages waiting, older than any email waiting.
    await queue(pool, "sms", 20_000, hour_ago - timedelta(days=1), "SM")
    await queue(pool, "email", 300, hour_ago, "EM")
    await pool.execute(f"ANALYZE {SCHEMA}.deliveries")

    read, claimed = await rows_read_by_a_round(pool, "email", 20)
    assert claimed == 20
    assert read <= 40, f"the email round read {read} rows to take 20 of 300: it reads the backlog, not the oldest due"

    read, claimed = await rows_read_by_a_round(pool, "sms", 20)
    assert claimed == 20
    assert read <= 40, f"the SMS round read {read} rows of its backlog to take 20"


async def test_setting_aside_opted_out_messages_reads_theirs_only(pool: asyncpg.Pool) -> None:
    await queue(pool, "sms", 20_000, datetime.now(UTC) - timedelta(days=1), "SM")
    await pool.execute(f"UPDATE {SCHEMA}.deliveries SET required = false")
    opted_out = [f"000.00.24.07420-261126-SM{number:06d}" for number in (7, 700, 7_000)]
    await pool.executemany(f"INSERT INTO {SCHEMA}.opt_outs VALUES ($1, now())", [(code,) for code in opted_out])
    await pool.execute(f"ANALYZE {SCHEMA}.deliveries; ANALYZE {SCHEMA}.opt_outs")

    root = await explained(pool, SET_ASIDE_OPTED_OUT)
    assert int(root["Actual Rows"]) == 3
    assert rows_read(root, "d") <= 10, "the sweep read the waiting messages, not the opted-out citizens'"


async def test_the_sweep_reads_nothing_while_nobody_has_opted_out_even_without_statistics(pool: asyncpg.Pool) -> None:
    # As a freshly deployed notify runs: no ANALYZE has been made of the deliveries its rounds have queued.
    await queue(pool, "sms", 20_000, datetime.now(UTC) - timedelta(days=1), "SM")
    await pool.execute(f"UPDATE {SCHEMA}.deliveries SET required = false")

    root = await explained(pool, SET_ASIDE_OPTED_OUT)
    assert int(root["Actual Rows"]) == 0
    assert rows_read(root, "d") == 0, "the sweep read the waiting messages with nobody opted out"


async def test_cancelling_due_soon_alerts_reads_only_the_batchs_dossiers_through_a_plan_made_on_the_empty_table(
        pool: asyncpg.Pool, database_url: str) -> None:
    # As the first lifecycle batches of a fresh deployment leave it: PostgreSQL settles on a generic plan after
    # a statement's first five runs when it costs no more than theirs, as it does while the table is empty, and
    # the connection keeps it until an ANALYZE of the grown table.
    conn = await asyncpg.connect(database_url, server_settings={"plan_cache_mode": "force_generic_plan"})
    try:
        await conn.execute(CANCEL_DUE_ALERTS, ["nothing-yet"], [None], ["planned on the empty table"])
        await conn.execute(
            f"INSERT INTO {SCHEMA}.deliveries (dossier_code, event_id, channel, template, status, next_attempt_at, "
            "context, created_at) SELECT 'waiting-' || n, 'due_soon@' || n, 'webhook', 'due_soon', 'queued', "
            "now() + interval '1 day', '{}', now() FROM generate_series(1, 20000) AS n")
        batch = {"closed": "queued", "still-running": "queued", "being-sent": "sending"}
        await conn.executemany(
            f"INSERT INTO {SCHEMA}.deliveries (dossier_code, event_id, channel, template, status, next_attempt_at, "
            "context, created_at) VALUES ($1, $2, $3, 'due_soon', $4, now(), '{}', now())",
            [(code, "due_soon@2026-12-01T01:00:00+00:00", "webhook", status) for code, status in batch.items()]
            + [("closed", "ev-1", "sms", "queued")])
        async with conn.transaction():
            await conn.execute(CANCEL_DUE_ALERTS, list(batch),
                               [None, "due_soon@2026-12-01T01:00:00+00:00", None], ["closed"] * 3)
            read = await conn.fetchrow("SELECT seq_tup_read, idx_tup_fetch FROM pg_stat_xact_user_tables "
                                       "WHERE schemaname = $1 AND relname = 'deliveries'", SCHEMA)
        statuses = {(row["dossier_code"], row["channel"]): row["status"] for row in await conn.fetch(
            f"SELECT dossier_code, channel, status FROM {SCHEMA}.deliveries WHERE dossier_code = ANY($1)",
            list(batch))}
        still_waiting = await conn.fetchval(
            f"SELECT count(*) FROM {SCHEMA}.deliveries WHERE dossier_code LIKE 'waiting-%' AND status = 'queued'")
    finally:
        await conn.close()
    assert statuses == {("closed", "webhook"): "cancelled", ("closed", "sms"): "queued",
                        ("still-running", "webhook"): "queued", ("being-sent", "webhook"): "cancelled"}
    assert still_waiting == 20_000
    assert read is not None
    assert read["seq_tup_read"] + read["idx_tup_fetch"] <= 10, \
        f"cancelling three dossiers' alerts read {dict(read)} rows of the 20,000 other dossiers' waiting alerts"
