"""A service's database: its schema migrated once however many instances start, its connections named."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shared.db import ServiceDatabase

pytestmark = pytest.mark.integration


async def test_instances_starting_together_migrate_once_and_name_their_connections(database_url: str,
                                                                                   tmp_path: Path) -> None:
    (tmp_path / "0001_things.sql").write_text("CREATE TABLE things (id integer PRIMARY KEY);")
    (tmp_path / "0002_more.sql").write_text("ALTER TABLE things ADD COLUMN name text;")
    instances = [ServiceDatabase(database_url, "sample", tmp_path) for _ in range(3)]
    try:
        await asyncio.gather(*(database.open() for database in instances))
        pool = instances[0].pool
        assert await pool.fetchval("SELECT count(*) FROM sample.schema_migrations") == 2
        await pool.execute("INSERT INTO sample.things VALUES (1, 'one')")
        # pg_stat_activity and the server's log say which service a connection works for.
        assert await pool.fetchval("SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()") \
            == "sample"
    finally:
        await asyncio.gather(*(database.close() for database in instances))
