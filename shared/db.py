"""PostgreSQL access: a pool per service and versioned migrations in the service's own schema."""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg

_MIGRATION = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


async def create_pool(database_url: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(database_url, min_size=min_size, max_size=max_size, command_timeout=60)
    assert pool is not None
    return pool


async def migrate(pool: asyncpg.Pool, schema: str, migrations: Path) -> list[str]:
    """Apply the service's pending migrations in order, each in its own transaction; returns those applied.

    An advisory lock per schema lets several instances start at once without racing.
    """
    files = sorted(path for path in migrations.iterdir() if _MIGRATION.match(path.name))  # noqa: ASYNC240 - a few files at start
    applied: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", schema)
        try:
            await conn.execute(
                f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations ('
                "version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row["version"] for row in await conn.fetch(f'SELECT version FROM "{schema}".schema_migrations')}
            for path in files:
                if path.name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(f'SET LOCAL search_path TO "{schema}"')
                    await conn.execute(path.read_text())
                    await conn.execute(f'INSERT INTO "{schema}".schema_migrations (version) VALUES ($1)', path.name)
                applied.append(path.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", schema)
    return applied
