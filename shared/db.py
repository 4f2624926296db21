"""PostgreSQL access: a pool per service and versioned migrations in the service's own schema."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# asyncpg's classes are generic only in its stubs, so the alias is spelled for the type checker alone.
Connection: TypeAlias = "PoolConnectionProxy[asyncpg.Record] | asyncpg.Connection[asyncpg.Record]"
"""A connection, acquired from a pool or made on its own."""

_MIGRATION = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def columns(rows: Iterable[Sequence[Any]]) -> list[list[Any]]:
    """Rows as one list per column: the arrays of an `INSERT … SELECT FROM unnest($1, $2, …)`, one statement for
    a batch instead of one per row. At least one row: with none there are no columns to pass."""
    return [list(column) for column in zip(*rows, strict=True)]


PLANS = {"plan_cache_mode": "force_custom_plan"}
"""Every statement planned at each run, for the table as it is then. A connection otherwise keeps a statement's
generic plan after its fifth run, until an ANALYZE of one of its tables: one made while a table held a handful
of rows reads all of it, by key or for a whole batch's keys, as it grows to millions between autovacuum's
visits (tests/integration/test_keyed_plans.py). Planning a statement over a batch of 500 again costs
PostgreSQL 0.07-0.4 ms (docs/performance.md, thirteenth series), under a microsecond per event."""


async def create_pool(database_url: str, *, min_size: int = 1, max_size: int = 10,
                      application_name: str | None = None) -> asyncpg.Pool:
    """`application_name` tells the server who is connected (pg_stat_activity, logs)."""
    settings = PLANS | ({"application_name": application_name} if application_name else {})
    pool = await asyncpg.create_pool(database_url, min_size=min_size, max_size=max_size, command_timeout=60,
                                     server_settings=settings)
    assert pool is not None
    return pool


async def migrate(pool: asyncpg.Pool, schema: str, migrations: Path) -> list[str]:
    """Apply the service's pending migrations in order, each in its own transaction; returns those applied.

    An advisory lock per schema lets several instances start at once without racing.
    """
    files = sorted(path for path in migrations.iterdir() if _MIGRATION.match(path.name))  # noqa: ASYNC240 - a few files at start
    applied: list[str] = []
    async with pool.acquire() as conn:
        # The lock first: two `CREATE SCHEMA IF NOT EXISTS` at once can both find it missing, and one fails.
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", schema)
        try:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
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


OLDEST_SNAPSHOT_AGE = (
    "SELECT coalesce(extract(epoch FROM clock_timestamp() - min(xact_start)), 0)::float8 FROM pg_stat_activity "
    "WHERE datname = current_database() AND backend_xmin IS NOT NULL AND pid <> pg_backend_pid()")
"""How long the oldest transaction holding a snapshot in this database has run (0 if none)."""


class ServiceDatabase:
    """A service's own schema: the pool is opened and migrated at start, pinged for readiness, closed at stop."""

    def __init__(self, database_url: str, schema: str, migrations: Path, *, max_size: int = 10) -> None:
        self.database_url = database_url
        self.schema = schema
        self.migrations = migrations
        self.max_size = max_size
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError(f"the {self.schema} database is not open")
        return self._pool

    async def open(self) -> asyncpg.Pool:
        pool = await create_pool(self.database_url, max_size=self.max_size, application_name=self.schema)
        await migrate(pool, self.schema, self.migrations)
        self._pool = pool
        return pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def oldest_snapshot_seconds(self) -> float:
        """See OLDEST_SNAPSHOT_AGE. While that transaction lives PostgreSQL removes no row changed since it began,
        and scans walk them. Only sessions this role may see count: others' need pg_read_all_stats."""
        return float(await self.pool.fetchval(OLDEST_SNAPSHOT_AGE))

    async def ready(self) -> bool:
        if self._pool is None:
            return False
        try:
            await self._pool.fetchval("SELECT 1")
        except (OSError, asyncpg.PostgresError):
            return False
        return True
