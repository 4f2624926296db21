"""`tthc replay`: rebuild dossiers from their history in a fresh schema, report differences, apply on request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from services.resolution import store
from services.resolution.app import MIGRATIONS
from services.resolution.judge import judge
from services.resolution.replay import REPLAY_SCHEMA, replay
from shared import db
from shared.clock.policy import Policy, SupplementMode
from shared.contract.events import EventType
from shared.reference import Reference
from tests.unit.test_dossier import MONDAY, event, received

pytestmark = pytest.mark.integration
RESTART = Reference.load(Policy())
SUBTRACT = Reference.load(Policy(supplement_mode=SupplementMode.SUBTRACT))


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(database_url)
    await db.migrate(pool, store.SCHEMA, MIGRATIONS)
    yield pool
    await pool.close()


async def test_replay_reports_differences_and_applies_only_on_request(pool: asyncpg.Pool) -> None:
    supplemented = [received(), event(EventType.SUPPLEMENT_REQUESTED, MONDAY + timedelta(days=1), reason="Thiếu"),
                    event(EventType.SUPPLEMENT_RECEIVED, MONDAY + timedelta(days=2))]
    plain = [e.model_copy(update={"dossier_code": e.dossier_code[:-4] + "0002"})
             for e in (received(), event(EventType.RESOLVED, MONDAY + timedelta(hours=3)))]
    now = datetime.now(UTC)
    verdicts = judge(supplemented + plain, {}, {}, catalog=RESTART.catalog, clock_for=RESTART.clock_for, now=now)
    async with pool.acquire() as conn, conn.transaction():
        await store.write(conn, verdicts, now)

    assert await replay(pool, RESTART) == []
    assert await pool.fetchval(f"SELECT count(*) FROM {REPLAY_SCHEMA}.dossiers") == 2
    assert await pool.fetchval(f"SELECT count(*) FROM {REPLAY_SCHEMA}.timeline") == len(supplemented + plain)

    what_if = await replay(pool, SUBTRACT)
    assert {(d.dossier_code, d.field) for d in what_if} >= {(supplemented[0].dossier_code, "legal_due_at")}
    assert all(d.dossier_code == supplemented[0].dossier_code or d.field == "policy_version" for d in what_if)

    await pool.execute(f"UPDATE {store.SCHEMA}.dossiers SET snapshot = jsonb_set(snapshot, '{{state}}', "
                       "'\"withdrawn\"') WHERE code = $1", plain[0].dossier_code)
    tampered = await replay(pool, RESTART)
    assert [(d.dossier_code, d.field, d.live, d.rebuilt) for d in tampered] == [
        (plain[0].dossier_code, "state", "withdrawn", "resolved")]
    assert (await store.dossier(pool, plain[0].dossier_code)).state.value == "withdrawn"  # type: ignore[union-attr]

    await pool.execute(f"DELETE FROM {store.SCHEMA}.timeline WHERE dossier_code = $1 AND sequence = 2",
                       plain[0].dossier_code)
    assert await replay(pool, RESTART, apply=True) == tampered
    assert await replay(pool, RESTART) == []
    # Applied, the dossier's timeline is the rebuilt one too.
    applied = await store.dossier(pool, plain[0].dossier_code, with_timeline=True)
    assert applied is not None
    assert [e.event_type for e in applied.timeline] == [EventType.RECEIVED, EventType.RESOLVED]


async def test_the_cli_prints_a_what_if(pool: asyncpg.Pool, database_url: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio
    import json

    from shared.cli import main

    now = datetime.now(UTC)
    history = [received(), event(EventType.SUPPLEMENT_REQUESTED, MONDAY + timedelta(days=1), reason="Thiếu"),
               event(EventType.SUPPLEMENT_RECEIVED, MONDAY + timedelta(days=2))]
    verdicts = judge(history, {}, {}, catalog=RESTART.catalog, clock_for=RESTART.clock_for, now=now)
    async with pool.acquire() as conn, conn.transaction():
        await store.write(conn, verdicts, now)
    code = await asyncio.to_thread(main, ["replay", "--database-url", database_url, "--supplement-mode", "subtract"])
    assert code == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["applied"] is False
    assert "legal_due_at" in {d["field"] for d in answer["differences"]}
