"""Intake's schema: which events were passed on, and the daily sequences of minted dossier codes."""

from __future__ import annotations

from datetime import date, datetime

from shared.contract.rejections import RejectionRecorded
from shared.db import Connection, columns

SCHEMA = "intake"


# One primary-key lookup per key. Joined with the keys instead, the plan may hash them and read the whole table,
# which the planner prefers while the table is small. OFFSET 0 keeps the lookup its own step, run once per key;
# planned at each run (shared/db.py, PLANS), it is an index lookup as soon as the table outgrows a page or two
# (tests/integration/test_keyed_plans.py).
ALREADY_ACCEPTED = (
    "SELECT k.source, k.event_id, r.dossier_code FROM unnest($1::text[], $2::text[]) AS k(source, event_id) "
    f"CROSS JOIN LATERAL (SELECT dossier_code FROM {SCHEMA}.received_events r "
    "WHERE r.source = k.source AND r.event_id = k.event_id OFFSET 0) AS r"
)


async def already_accepted(conn: Connection, keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The dossier code of each key that was accepted before."""
    if not keys:
        return {}
    rows = await conn.fetch(ALREADY_ACCEPTED, [key[0] for key in keys], [key[1] for key in keys])
    return {(row["source"], row["event_id"]): row["dossier_code"] for row in rows}


# Concurrent requests lock rows here in one order, so that none waits for another that waits for it (a deadlock,
# which PostgreSQL ends by failing one of them): code sequences by (agency, day) first, then the events' keys,
# then the dossiers' codes, each sorted (tests/integration/test_intake_concurrency.py).


async def reserve_sequences(conn: Connection, wanted: dict[tuple[str, date], int]) -> dict[tuple[str, date], int]:
    """Reserve `wanted[agency, day]` consecutive numbers of each daily sequence; returns the first of each."""
    reserved = {}
    for (agency_id, day), count in sorted(wanted.items()):
        last = await conn.fetchval(
            f"INSERT INTO {SCHEMA}.code_sequences (agency_id, day, last) VALUES ($1, $2, $3) "
            "ON CONFLICT (agency_id, day) DO UPDATE SET last = code_sequences.last + EXCLUDED.last RETURNING last",
            agency_id, day, count,
        )
        reserved[agency_id, day] = int(last) - count + 1
    return reserved


async def record_accepted(
    conn: Connection, rows: list[tuple[str, str, str]], now: datetime
) -> set[tuple[str, str]]:
    """Insert (source, event_id, dossier_code) rows; returns the keys that were new. A key another request
    inserted concurrently is not new: its row lock makes us wait for that request's outcome."""
    if not rows:
        return set()
    rows = sorted(rows)
    inserted = await conn.fetch(
        f"INSERT INTO {SCHEMA}.received_events (source, event_id, dossier_code, accepted_at) "
        "SELECT s, e, c, $4 FROM unnest($1::text[], $2::text[], $3::text[]) AS t(s, e, c) "
        "ON CONFLICT DO NOTHING RETURNING source, event_id",
        [row[0] for row in rows], [row[1] for row in rows], [row[2] for row in rows], now,
    )
    return {(row["source"], row["event_id"]) for row in inserted}


# The unit each dossier was received at, looked up key by key as the dedupe is.
DOSSIER_UNITS = (
    "SELECT u.dossier_code, u.unit_code FROM unnest($1::text[]) AS k(code) CROSS JOIN LATERAL (SELECT "
    f"dossier_code, unit_code FROM {SCHEMA}.dossier_units u WHERE u.dossier_code = k.code OFFSET 0) AS u"
)


async def dossier_units(conn: Connection, codes: list[str]) -> dict[str, str]:
    rows = await conn.fetch(DOSSIER_UNITS, codes)
    return {row["dossier_code"]: row["unit_code"] for row in rows}


async def record_units(conn: Connection, rows: list[tuple[str, str]]) -> None:
    if rows:
        await conn.execute(f"INSERT INTO {SCHEMA}.dossier_units SELECT * FROM unnest($1::text[], $2::text[]) "
                           "ON CONFLICT DO NOTHING", *columns(sorted(rows)))


async def audit(conn: Connection, refusals: list[RejectionRecorded], key_id: str | None) -> None:
    if refusals:
        await conn.executemany(
            f"INSERT INTO {SCHEMA}.auth_audit (at, key_id, source, reason, detail, event_id, subject) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7)",
            [(r.rejected_at, key_id, r.source, r.reason.value, r.detail, r.event_id, r.subject) for r in refusals])
