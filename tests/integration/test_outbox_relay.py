"""The outbox relay against the real broker and database: what it takes reaches Kafka in commit order; each take
starts after the last row taken, so rows deleted before cost nothing even while a snapshot keeps a vacuum from
removing them; batches committing at once number their rows in commit order, so none is passed over; and a
relay that loses its connection starts at the head again, and stops when asked.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client import CollectorRegistry

from services.resolution import store
from services.resolution.app import MIGRATIONS
from services.resolution.judge import Verdicts
from services.resolution.relay import RELAY_LOCK, TAKE, OutboxRelay
from services.resolution.store import SCHEMA
from shared.db import create_pool, migrate
from shared.kafka import ensure_topics, make_producer
from tests.conftest import Infra
from tests.support import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url)
    await migrate(pool, SCHEMA, MIGRATIONS)
    yield pool
    await pool.close()


@pytest.fixture
async def producer(infra: Infra) -> AsyncIterator[AIOKafkaProducer]:
    producer = make_producer(infra.bootstrap_servers)
    await producer.start()
    yield producer
    await producer.stop()


async def topic_of_its_own(infra: Infra) -> str:
    topic = f"relay-test-{uuid.uuid4().hex[:8]}"
    await ensure_topics(infra.bootstrap_servers, 1, names=(topic,))
    return topic


async def published(infra: Infra, topic: str, count: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=infra.bootstrap_servers, auto_offset_reset="earliest")
    await consumer.start()
    try:
        seen: list[bytes] = []
        while len(seen) < count:
            batches = await consumer.getmany(timeout_ms=10_000)
            assert batches, f"only {len(seen)} of {count} records reached Kafka"
            seen += [record.value for records in batches.values() for record in records if record.value]
        return seen
    finally:
        await consumer.stop()


async def put(pool: asyncpg.Pool, topic: str, first: int, count: int) -> None:
    """Outbox rows for `topic` whose payloads count from `first`, as if resolution had written them."""
    await pool.executemany(f"INSERT INTO {SCHEMA}.outbox (topic, key, payload) VALUES ($1, 'd', $2)",
                           [(topic, str(n).encode()) for n in range(first, first + count)])


async def take_plan(pool: asyncpg.Pool, rows: int, after: int) -> str:
    """How the relay's take runs to take `rows` rows after row `after` (rolled back: nothing is taken)."""
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            return "\n".join(line[0] for line in await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {TAKE}", rows, after))
        finally:
            await transaction.rollback()


RELAYS_CONNECTIONS = "relay under test"
"""The application name of the connections of a relay whose database a test takes away."""


async def cut_off_the_relay(pool: asyncpg.Pool) -> None:
    await pool.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                       RELAYS_CONNECTIONS)


def rows_visited(plan: str) -> int:
    """Rows the take's index scan looked at in the table, dead ones included."""
    return sum(int(count) for count in re.findall(r"Heap Fetches: (\d+)", plan))


async def test_each_take_starts_after_the_last_row_taken_even_while_a_snapshot_keeps_the_taken_rows(
        infra: Infra, pool: asyncpg.Pool, producer: AIOKafkaProducer) -> None:
    topic = await topic_of_its_own(infra)
    relay = OutboxRelay(pool, producer, CollectorRegistry(), batch=1000)

    # A snapshot older than every take, as a backup's or a forgotten session's: nothing deleted now can be
    # vacuumed away, nor marked dead in the index, until it ends.
    async with pool.acquire() as holder:
        snapshot = holder.transaction(isolation="repeatable_read")
        await snapshot.start()
        try:
            await holder.fetchval("SELECT count(*) FROM pg_class")
            await put(pool, topic, 0, 3000)
            assert [await relay.publish_once() for _ in range(4)] == [1000, 1000, 1000, 0]
            await put(pool, topic, 3000, 10)
            from_the_last = await take_plan(pool, 10, relay.taken_up_to)
            assert "Seq Scan" not in from_the_last, from_the_last
            assert rows_visited(from_the_last) <= 20, from_the_last
            # What every take did before it started after the last row taken: walk the 3,000 dead rows first.
            assert rows_visited(await take_plan(pool, 10, 0)) >= 3000
            assert await relay.publish_once() == 10
        finally:
            await snapshot.rollback()
    assert await pool.fetchval(f"SELECT count(*) FROM {SCHEMA}.outbox") == 0
    assert await published(infra, topic, 3010) == [str(n).encode() for n in range(3010)]


async def test_batches_committing_at_once_number_their_rows_in_commit_order(
        infra: Infra, pool: asyncpg.Pool, producer: AIOKafkaProducer) -> None:
    topic = await topic_of_its_own(infra)
    relay = OutboxRelay(pool, producer, CollectorRegistry())
    now = datetime.now(UTC)

    def batch(name: str) -> Verdicts:
        return Verdicts(outbox=[(topic, f"{name}{n}", f"{name}{n}".encode()) for n in range(3)])

    async def write_and_commit(verdicts: Verdicts) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await store.write(conn, verdicts, now)

    async def second_is_waiting() -> bool:
        return bool(await pool.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = $1",
            store.OUTBOX_WRITER_LOCK))

    async with pool.acquire() as first:
        transaction = first.transaction()
        await transaction.start()
        await store.write(first, batch("a"), now)
        # The second batch writes while the first has not committed: without the lock its rows would take later
        # numbers, commit first, and be taken first, and the relay would then be past the first batch's rows.
        second = asyncio.create_task(write_and_commit(batch("b")))
        await eventually(second_is_waiting, timeout=30, what="the second batch waiting for the first to commit")
        assert await relay.publish_once() == 0  # nothing committed yet
        await transaction.commit()
    await second
    assert await relay.publish_once() == 6
    assert await published(infra, topic, 6) == [b"a0", b"a1", b"a2", b"b0", b"b1", b"b2"]


async def test_outbox_rows_are_written_only_inside_a_transaction(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="transaction"):
            await store.write(conn, Verdicts(outbox=[("t", "k", b"v")]), datetime.now(UTC))
    assert await pool.fetchval(f"SELECT count(*) FROM {SCHEMA}.outbox") == 0


async def test_after_losing_its_database_the_relay_starts_at_the_head_again(
        infra: Infra, database_url: str, pool: asyncpg.Pool, producer: AIOKafkaProducer) -> None:
    topic = await topic_of_its_own(infra)
    relays_pool = await create_pool(database_url, application_name=RELAYS_CONNECTIONS)
    relay = OutboxRelay(relays_pool, producer, CollectorRegistry(), idle_poll=0.1)

    async def outbox_empty() -> bool:
        return bool(await pool.fetchval(f"SELECT count(*) FROM {SCHEMA}.outbox") == 0)

    relay.start()
    try:
        await put(pool, topic, 0, 5)
        await eventually(outbox_empty, timeout=30, what="the first rows published")
        # The database comes back from a backup taken before those rows: it numbers new rows from 1 again.
        await pool.execute(f"ALTER SEQUENCE {SCHEMA}.outbox_id_seq RESTART")
        await cut_off_the_relay(pool)
        await put(pool, topic, 5, 5)
        await eventually(outbox_empty, timeout=30, what="the rows numbered again published")
    finally:
        await relay.stop()
        await relays_pool.close()
    assert await published(infra, topic, 10) == [str(n).encode() for n in range(10)]


async def test_the_relay_stops_when_asked_even_after_its_connection_is_gone(
        database_url: str, pool: asyncpg.Pool, producer: AIOKafkaProducer) -> None:
    relays_pool = await create_pool(database_url, application_name=RELAYS_CONNECTIONS)
    relay = OutboxRelay(relays_pool, producer, CollectorRegistry(), idle_poll=600)  # waits for a notification

    async def relaying() -> bool:
        return bool(await pool.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                                        "AND objid = $1", RELAY_LOCK))

    relay.start()
    try:
        await eventually(relaying, timeout=30, what="the relay holding its lock")
        await cut_off_the_relay(pool)
        # Giving up the lock on the lost connection fails; the stop must still go through.
        stopping = asyncio.create_task(relay.stop())
        done, _ = await asyncio.wait({stopping}, timeout=30)
        assert done, "the relay did not stop"
    finally:
        relays_pool.terminate()  # closing would wait for a relay that did not stop


async def test_the_relay_counts_the_rows_waiting_when_asked(
        infra: Infra, pool: asyncpg.Pool, producer: AIOKafkaProducer) -> None:
    topic = await topic_of_its_own(infra)
    registry = CollectorRegistry()
    relay = OutboxRelay(pool, producer, registry, batch=5)
    await put(pool, topic, 0, 7)
    await relay.count_pending()
    assert registry.get_sample_value("tthc_outbox_pending") == 7
    assert await relay.publish_once() == 5
    await relay.count_pending()
    assert registry.get_sample_value("tthc_outbox_pending") == 2
