"""The outbox relay: publishes committed outbox rows to Kafka with an idempotent producer, then deletes them.

One relay publishes at a time (an advisory lock), so per-dossier order on Kafka is commit order. A crash
between the send and the delete publishes the rows again; consumers dedupe on the canonical event id.

Each take starts after the last row the relay took, not at the head of the outbox's index. The rows taken before
lie dead there until a vacuum removes them, and a vacuum cannot while any snapshot older than their deletion
lives: a backup, a long report, an idle transaction in someone's session. Taken from the head, every take walked
all of them. With a snapshot held through a run as fast as intake takes, the relay fell behind at about 600
events a second and resolution's PostgreSQL spent three times its CPU (docs/performance.md, fourteenth series).
Starting after the last row is exact because outbox rows are numbered in commit order
(services/resolution/store.py, OUTBOX_WRITER_LOCK): no row can appear behind one already taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter as Tally

import asyncpg
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry, Counter, Gauge

from services.resolution.store import OUTBOX_CHANNEL, SCHEMA
from shared.db import Connection
from shared.kafka import send_batched

log = logging.getLogger(__name__)
RELAY_LOCK = 0x7474_6863  # "tthc": one relay across every resolution instance
SESSION_LOST = (asyncpg.InterfaceError, asyncpg.PostgresError, OSError)

# Up to $1 rows after row $2, oldest first. The rows are found by their ids in the index: as a join (`id IN
# (SELECT …)`), the plan read the whole outbox to delete them once the table had few rows by its statistics.
TAKE_FROM = ("DELETE FROM {schema}.outbox WHERE id = ANY(ARRAY(SELECT id FROM {schema}.outbox WHERE id > $2 "
             "ORDER BY id LIMIT $1)) RETURNING id, topic, key, payload")
TAKE = TAKE_FROM.format(schema=SCHEMA)


class OutboxRelay:
    def __init__(self, pool: asyncpg.Pool, producer: AIOKafkaProducer, registry: CollectorRegistry,
                 batch: int = 1000, idle_poll: float = 0.5) -> None:
        self.pool = pool
        self.producer = producer
        self.batch = batch
        self.idle_poll = idle_poll
        self.taken_up_to = 0
        """The id of the last row this relay took (0 before its first take: then it starts at the head)."""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.published = Counter("tthc_outbox_published_total", "Outbox rows published to Kafka", ["topic"],
                                 registry=registry)
        self.pending = Gauge("tthc_outbox_pending", "Outbox rows not yet published (every instance counts them all)",
                             registry=registry)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        # Said as well as cancelled: Python 3.11's wait_for drops a cancel that lands as its wait ends, and the
        # relay would go on waiting.
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while not self._stopping:
            try:
                async with self.pool.acquire() as session:
                    # Another instance relays; poll for its lock so this one takes over when it goes.
                    while not await session.fetchval(  # noqa: ASYNC110
                            "SELECT pg_try_advisory_lock($1)", RELAY_LOCK):
                        await asyncio.sleep(1.0)
                    try:
                        await session.add_listener(OUTBOX_CHANNEL, self._notified)
                        # From the head again: another instance may have relayed meanwhile, or the database may
                        # be back from a backup and numbering rows from below where this relay was.
                        self.taken_up_to = 0
                        await self._drain_forever(session)
                    finally:
                        # The connection may be gone, and the lock with it; an error here must not hide why the
                        # relay stopped (a cancel, above all: stop() waits for it), nor leave the listener on a
                        # connection going back to the pool.
                        with contextlib.suppress(*SESSION_LOST):
                            await session.remove_listener(OUTBOX_CHANNEL, self._notified)
                        with contextlib.suppress(*SESSION_LOST):
                            await session.execute("SELECT pg_advisory_unlock($1)", RELAY_LOCK)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay failed; retrying")
                await asyncio.sleep(1.0)

    def _notified(self, *_: object) -> None:
        self._wake.set()

    async def _drain_forever(self, session: Connection) -> None:
        # Every take runs on the session that holds the relay's lock: if the connection goes, so does the lock,
        # and the take fails instead of going on beside another instance's relay.
        while not self._stopping:
            self._wake.clear()
            while await self._publish(session):
                pass
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.idle_poll)

    async def count_pending(self) -> None:
        """The rows waiting in the outbox, into the gauge: read when scraped, as counting them on every take would
        cost a scan of the backlog each time."""
        self.pending.set(await self.pool.fetchval(f"SELECT count(*) FROM {SCHEMA}.outbox"))

    async def publish_once(self) -> int:
        """One take, on a connection of the pool (the running relay takes on its lock's session instead)."""
        async with self.pool.acquire() as conn:
            return await self._publish(conn)

    async def _publish(self, conn: Connection) -> int:
        # Taken out of the outbox and sent in one transaction: if the send fails, the rollback puts the rows
        # back; if this process dies after the send, they were never deleted and go again (consumers dedupe).
        async with conn.transaction():
            taken = await conn.fetch(TAKE, self.batch, self.taken_up_to)
            if not taken:
                return 0
            rows = sorted(taken, key=lambda row: row["id"])  # RETURNING keeps no order; Kafka gets commit order
            await (await send_batched(self.producer, [
                (row["topic"], row["key"].encode() if row["key"] else None, row["payload"]) for row in rows]))
        self.taken_up_to = rows[-1]["id"]
        for topic, count in Tally(row["topic"] for row in rows).items():
            self.published.labels(topic).inc(count)
        return len(rows)
