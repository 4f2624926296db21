"""The whole stack as processes, shared by the end-to-end tests of one module."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from shared.infra.ports import free_ports
from shared.infra.stack import Ports, Stack
from tests.conftest import Infra, fresh_database


@pytest.fixture(scope="module")
async def stack(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    ports = Ports(*free_ports(9))
    # A broker of its own: exact counts must not see other tiers' traffic (containers share theirs).
    shared_broker = infra.bootstrap_servers if os.environ.get("TEST_INFRA") == "containers" else ""
    running = Stack(tmp_path_factory.mktemp("stack"), ports=ports, simulator=False, partitions=3,
                    bootstrap_servers=shared_broker, database_url=await fresh_database(infra))
    try:
        await running.start()
        yield running
    finally:
        running.stop()




def intake_client(stack: Stack, key: str | None = None) -> httpx.AsyncClient:
    """A commune system's client: intake's address and an API key (the stack's own, for every unit)."""
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.ports.intake}", timeout=60,
                             headers={"authorization": f"Bearer {key or stack.api_key}"})


async def stack_key(stack: Stack, units: list[str], source: str = "urn:tthc:test:other") -> str:
    from services.intake import keys

    conn = await asyncpg.connect(stack.database_url)
    try:
        return await keys.create(conn, source, units)
    finally:
        await conn.close()
