"""A dossier's timeline is stored entry by entry beside its snapshot, and read back whole."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from services.resolution import store
from services.resolution.app import MIGRATIONS
from services.resolution.judge import judge
from shared import db
from shared.contract.events import EventType
from shared.contract.lifecycle import EventAccepted
from shared.dossier import Dossier, fold
from tests.support import CATALOG
from tests.unit.test_dossier import MONDAY, RESTART, event, received

pytestmark = pytest.mark.integration
NOW = datetime(2025, 1, 10, tzinfo=UTC)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(database_url)
    yield pool
    await pool.close()


def history() -> list[EventAccepted]:
    return [received(), event(EventType.PAUSED, MONDAY + timedelta(hours=2), reason="other"),
            event(EventType.RESUMED, MONDAY + timedelta(hours=4))]


async def test_the_migration_moves_stored_timelines_out_of_the_snapshots(pool: asyncpg.Pool, tmp_path: Path) -> None:
    earlier = tmp_path / "migrations"
    earlier.mkdir()
    shutil.copy(MIGRATIONS / "0001_dossiers.sql", earlier)
    await db.migrate(pool, store.SCHEMA, earlier)
    dossier = fold(history(), CATALOG, RESTART)
    assert len(dossier.timeline) == 3
    await pool.execute(f"INSERT INTO {store.SCHEMA}.dossiers VALUES ($1, $2, $3, $4::jsonb, $5)",
                       dossier.code, dossier.state.value, dossier.unit_code, dossier.model_dump_json(), NOW)

    assert await db.migrate(pool, store.SCHEMA, MIGRATIONS) == ["0002_timeline.sql"]

    assert not await pool.fetchval(f"SELECT snapshot ? 'timeline' FROM {store.SCHEMA}.dossiers")
    assert await store.dossier(pool, dossier.code, with_timeline=True) == dossier
    assert await store.dossier(pool, dossier.code) == dossier.model_copy(update={"timeline": []})


async def test_batches_add_entries_and_a_refold_rewrites_them(pool: asyncpg.Pool) -> None:
    await db.migrate(pool, store.SCHEMA, MIGRATIONS)
    first, paused, resumed = history()

    async def judge_and_write(events: list[EventAccepted], stored: dict[str, Dossier],
                              histories: dict[str, list[EventAccepted]]) -> Dossier:
        verdicts = judge(events, stored, histories, catalog=CATALOG, clock_for=RESTART, now=NOW)
        assert verdicts.refused == 0
        async with pool.acquire() as conn, conn.transaction():
            await store.write(conn, verdicts, NOW)
        [dossier] = verdicts.dossiers.values()
        return dossier

    code = first.dossier_code
    await judge_and_write([first, paused], {}, {})
    read = await store.dossier(pool, code)
    assert read is not None
    assert read.timeline == []
    await judge_and_write([resumed], {code: read}, {})
    whole = await store.dossier(pool, code, with_timeline=True)
    assert whole == fold([first, paused, resumed], CATALOG, RESTART)

    # A step that started before the pause arrives last: the history is refolded, every entry after it moves.
    late_step = event(EventType.STEP_STARTED, MONDAY + timedelta(hours=1), step="s", unit_code=whole.unit_code)
    read = await store.dossier(pool, code)
    assert read is not None
    await judge_and_write([late_step], {code: read}, {code: [first, paused, resumed]})
    refolded = await store.dossier(pool, code, with_timeline=True)
    assert refolded is not None
    assert [e.event_type for e in refolded.timeline] == [EventType.RECEIVED, EventType.STEP_STARTED,
                                                          EventType.PAUSED, EventType.RESUMED]
    assert refolded.timeline == fold([first, late_step, paused, resumed], CATALOG, RESTART).timeline
