"""The outbox relay against the real broker and database: what it takes reaches Kafka in commit order, and it
vacuums the outbox itself once it has taken enough rows, so that takes do not walk ever more dead rows."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client import CollectorRegistry

from services.resolution.app import MIGRATIONS
from services.resolution.relay import OutboxRelay
from services.resolution.store import SCHEMA
from shared.db import create_pool, migrate
from shared.kafka import ensure_topics, make_producer
from tests.conftest import Infra
from tests.support import eventually

pytestmark = pytest.mark.integration


async def outbox_vacuums(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT vacuum_count FROM pg_stat_user_tables "
                                   "WHERE schemaname = $1 AND relname = 'outbox'", SCHEMA))


async def test_the_relay_publishes_in_order_and_vacuums_the_outbox_after_enough_rows(
        infra: Infra, database_url: str) -> None:
    topic = f"relay-test-{uuid.uuid4().hex[:8]}"
    await ensure_topics(infra.bootstrap_servers, 1, names=(topic,))
    pool = await create_pool(database_url)
    producer = make_producer(infra.bootstrap_servers)
    await producer.start()
    relay = OutboxRelay(pool, producer, CollectorRegistry(), batch=10, vacuum_every=25)
    try:
        await migrate(pool, SCHEMA, MIGRATIONS)

        async def put(first: int, count: int) -> None:
            await pool.executemany(f"INSERT INTO {SCHEMA}.outbox (topic, key, payload) VALUES ($1, 'd', $2)",
                                   [(topic, str(n).encode()) for n in range(first, first + count)])

        await put(0, 20)
        assert [await relay.publish_once() for _ in range(3)] == [10, 10, 0]
        assert await outbox_vacuums(pool) == 0  # 20 taken: under the threshold

        await put(20, 10)
        assert await relay.publish_once() == 10
        assert await eventually(lambda: outbox_vacuums(pool), timeout=30, what="the outbox vacuumed") == 1
        assert await pool.fetchval(f"SELECT count(*) FROM {SCHEMA}.outbox") == 0

        consumer = AIOKafkaConsumer(topic, bootstrap_servers=infra.bootstrap_servers, auto_offset_reset="earliest")
        await consumer.start()
        try:
            seen: list[bytes] = []
            while len(seen) < 30:
                batches = await consumer.getmany(timeout_ms=10_000)
                assert batches, f"only {len(seen)} of 30 records reached Kafka"
                seen += [record.value for records in batches.values() for record in records if record.value]
        finally:
            await consumer.stop()
        assert seen == [str(n).encode() for n in range(30)]
    finally:
        await relay.stop()  # its vacuum task too, before the pool it uses closes
        await producer.stop()
        await pool.close()
