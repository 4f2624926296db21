"""Rebuild every dossier from its accepted events into a fresh schema and compare with the live state.

A what-if by default: under new reference data or another policy the rebuilt dates may differ, and each
difference is reported; the live state changes only when asked (`apply`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from services.resolution.store import SCHEMA, write_timeline
from shared.contract.lifecycle import EventAccepted
from shared.dossier import Dossier, fold
from shared.reference import Reference

REPLAY_SCHEMA = "resolution_replay"
COMPARED = ("state", "legal_due_at", "appointment_at", "timeliness", "completed_at", "supplement_count",
            "apology_issued", "apology_late", "steps", "calendar_version", "policy_version")


@dataclass(frozen=True)
class Difference:
    dossier_code: str
    field: str
    live: Any
    rebuilt: Any


def compare(live: Dossier | None, rebuilt: Dossier) -> list[Difference]:
    if live is None:
        return [Difference(rebuilt.code, "dossier", None, "rebuilt")]
    left, right = live.model_dump(mode="json"), rebuilt.model_dump(mode="json")
    return [Difference(rebuilt.code, name, left[name], right[name]) for name in COMPARED if left[name] != right[name]]


def rebuild(events: list[EventAccepted], reference: Reference) -> Dossier:
    # Time order, arrival order among equal times: the order the live fold judged them in (docs/adr/0002).
    ordered = sorted(events, key=lambda event: event.occurred_at)
    return fold(ordered, reference.catalog, reference.clock_for)


async def replay(pool: asyncpg.Pool, reference: Reference, *, apply: bool = False) -> list[Difference]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(f"SELECT dossier_code, payload FROM {SCHEMA}.events WHERE sequence IS NOT NULL "
                                "ORDER BY dossier_code, sequence")
        histories: dict[str, list[EventAccepted]] = {}
        for row in rows:
            histories.setdefault(row["dossier_code"], []).append(EventAccepted.model_validate_json(row["payload"]))
        snapshots = [Dossier.model_validate_json(row["snapshot"])
                     for row in await conn.fetch(f"SELECT snapshot FROM {SCHEMA}.dossiers")]
        live = {dossier.code: dossier for dossier in snapshots}
        rebuilt = {code: rebuild(events, reference) for code, events in histories.items()}
        differences = [d for code, dossier in sorted(rebuilt.items()) for d in compare(live.get(code), dossier)]
        async with conn.transaction():
            await conn.execute(f"DROP SCHEMA IF EXISTS {REPLAY_SCHEMA} CASCADE")
            await conn.execute(f"CREATE SCHEMA {REPLAY_SCHEMA}")
            for table in ("dossiers", "timeline"):
                await conn.execute(f"CREATE TABLE {REPLAY_SCHEMA}.{table} (LIKE {SCHEMA}.{table} INCLUDING ALL)")
            await conn.executemany(
                f"INSERT INTO {REPLAY_SCHEMA}.dossiers (code, state, unit_code, snapshot, updated_at) "
                "VALUES ($1, $2, $3, $4::jsonb, now())",
                [(d.code, d.state.value, d.unit_code, d.snapshot_json()) for d in rebuilt.values()],
            )
            await write_timeline(conn, {code: d.timeline for code, d in rebuilt.items()}, REPLAY_SCHEMA)
            if apply and differences:
                changed = sorted({difference.dossier_code for difference in differences})
                await conn.executemany(
                    f"UPDATE {SCHEMA}.dossiers SET state = $2, snapshot = $3::jsonb, updated_at = now() "
                    "WHERE code = $1",
                    [(code, rebuilt[code].state.value, rebuilt[code].snapshot_json()) for code in changed],
                )
                await write_timeline(conn, {code: rebuilt[code].timeline for code in changed}, replacing=changed)
    return differences
