"""Metrics: live timeliness counters from the canonical lifecycle topic, exported for Prometheus.

Counter values and each dossier's progress live in metrics' schema and change in the transaction that counts
each batch, so a redelivered event changes nothing and a restart resumes from the stored values. Memory holds
a copy for the partitions this instance owns: loaded when Kafka assigns them (fenced by an epoch in the
database), updated after each commit, and timers flip open dossiers to due soon and overdue at their instant.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiokafka import ConsumerRebalanceListener, TopicPartition
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from pydantic import ValidationError

from services.metrics import liveboard, store
from services.metrics.lag import consumer_lag
from services.metrics.liveboard import LIVEBOARD_HTML
from services.metrics.series import ExportedState, ProvinceOf, Totals
from services.metrics.settings import MetricsSettings
from services.metrics.store import SCHEMA, OwnershipMoved, PartitionState
from services.metrics.timers import run_timers
from services.metrics.tracker import OpenDossiers
from shared.contract import topics
from shared.contract.lifecycle import DossierLifecycleEvent
from shared.contract.rejections import RejectionRecorded
from shared.db import Connection, ServiceDatabase
from shared.http import metrics_registry, service_app
from shared.infra.paths import PROJECT_ROOT
from shared.kafka import Records, batch_subscriber, make_broker, readable, unreadable_counter
from shared.reference import ReferenceSource

log = logging.getLogger(__name__)
MIGRATIONS = PROJECT_ROOT / "services" / "metrics" / "migrations"
T = TypeVar("T")


class Ownership(ConsumerRebalanceListener):  # type: ignore[misc]
    """The partitions of one topic this instance counts, with the epoch it took each at."""

    def __init__(self, topic: str, take: Callable[[str, list[int]], Any], drop: Callable[[str, set[int]], None]):
        self.topic = topic
        self.epochs: dict[int, int] = {}
        self.unsure: set[int] = set()
        """Partitions whose last batch failed after reaching the database: its commit may have happened with the
        answer lost (PostgreSQL restarting), and the redelivered records would then count as repeats, so memory
        reloads these partitions from the database with the next batch."""
        self.untaken: set[int] = set()
        """Partitions Kafka assigned whose take-over failed (the database away during the rebalance): taken
        before their next batch, which would otherwise be refused as another instance's until the next
        rebalance."""
        self._take = take
        self._drop = drop
        self._taking = asyncio.Lock()  # a batch's retry and a rebalance's take-over never load the same part twice
        self._revocations = 0

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        parts = {tp.partition for tp in revoked if tp.topic == self.topic}
        for part in parts:
            self.epochs.pop(part, None)  # first, so that a batch committing now leaves memory alone
        self.unsure -= parts
        self.untaken -= parts
        self._revocations += 1
        self._drop(self.topic, parts)

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        parts = {tp.partition for tp in assigned if tp.topic == self.topic}
        if parts:
            self.untaken |= parts
            try:
                await self.take_untaken(parts)
            except Exception:  # Kafka only logs a listener's failure; the next batch tries again
                log.exception("could not take %s partitions %s; their next batch tries again",
                              self.topic, sorted(parts))

    async def take_untaken(self, parts: set[int]) -> None:
        """Take those of `parts` not taken yet (their take-over failed); raises while that still fails."""
        async with self._taking:
            pending = parts & self.untaken
            if not pending:
                return
            revocations = self._revocations
            epochs = await self._take(self.topic, sorted(pending))
            if self._revocations != revocations:
                # A rebalance moved partitions while this took them over: what was loaded may be another
                # instance's now. Unloaded again; those still assigned stay untaken for their next batch.
                self._drop(self.topic, pending)
                return
            self.epochs.update(epochs)
            self.untaken -= pending
            self.unsure -= pending

    def expected(self, parts: set[int]) -> dict[int, int | None]:
        return {part: self.epochs.get(part) for part in parts}

    def still(self, seen: dict[int, int | None]) -> bool:
        return all(self.epochs.get(part) == epoch for part, epoch in seen.items())


def track_open(tracker: OpenDossiers, province_of: ProvinceOf, code: str, part: int, unit: str, sector: str,
               kind: str, received: datetime, due_soon: datetime | None, due: datetime | None, now: float) -> None:
    """An open dossier into the tracker, placed by province, unit and sector, its instants as the timers keep
    them."""
    tracker.put(code, part, (province_of(unit), unit, sector), kind, received.timestamp(),
                due_soon.timestamp() if due_soon else None, due.timestamp() if due else None, now)


def track_stored(tracker: OpenDossiers, province_of: ProvinceOf, rows: Iterable[store.OpenRow], now: float) -> None:
    """Open dossiers read back from the database into the tracker (a take-over, a reload)."""
    for row in rows:
        track_open(tracker, province_of, row.code, row.part, row.unit_code, row.sector, row.kind, row.received_at,
                   row.due_soon_at, row.due_at, now)


def build_app(settings: MetricsSettings | None = None) -> FastAPI:
    settings = settings or MetricsSettings()
    registry = metrics_registry()
    unreadable = unreadable_counter(registry)
    broker = make_broker(settings.kafka_bootstrap_servers, registry=registry, app_name="metrics", settings=settings)
    reference = ReferenceSource()
    database = ServiceDatabase(settings.database_url, SCHEMA, MIGRATIONS)
    instance = f"metrics-{uuid.uuid4().hex[:8]}"

    def province_of(unit_code: str) -> str:
        unit = reference.current.catalog.units.get(unit_code)
        return unit.province_code if unit else ""

    tracker = OpenDossiers()
    totals = Totals(province_of)
    exported = ExportedState(totals, tracker, time.time)
    rejections_by_part: dict[int, dict[tuple[str, str], float]] = {}
    wake = asyncio.Event()

    def export_rejections() -> None:
        summed: dict[tuple[str, str], float] = {}
        for counts in rejections_by_part.values():
            for key, value in counts.items():
                summed[key] = summed.get(key, 0.0) + value
        exported.rejections = summed

    def put_open(rows: list[store.OpenRow]) -> None:
        track_stored(tracker, province_of, rows, time.time())

    def load(topic: str, state: PartitionState) -> None:
        """Memory for the partitions in `state` from what was stored (the open dossiers unless they went
        straight into the tracker as they were read)."""
        for key, value in state.counters:
            totals.add(key, value)
        put_open(state.open)
        for part, stage, reason, value in state.rejections:
            rejections_by_part.setdefault(part, {})[(stage, reason)] = value
        if topic == topics.REJECTIONS:
            export_rejections()
        wake.set()

    async def take(topic: str, parts: list[int]) -> dict[int, int]:
        drop(topic, set(parts))  # whatever an earlier ownership left behind
        try:
            async with database.pool.acquire() as conn, conn.transaction():
                state: PartitionState = await store.take_over(conn, topic, parts, instance, put_open)
        except BaseException:
            drop(topic, set(parts))  # nothing half-loaded stays for partitions this instance did not take
            raise
        load(topic, state)
        log.info("took %s partitions %s (%d open dossiers)", topic, parts, state.open_count)
        return state.epochs

    async def commit_batch(owner: Ownership, parts: set[int],
                           write: Callable[[Connection, dict[int, int]], Awaitable[T]]) -> T | None:
        """Run `write` in one transaction fenced by this instance's epochs (handed the partitions' stored next
        offsets); returns what it returned, or None when memory must not apply it because ownership moved
        meanwhile. Unsure partitions are reloaded from the same transaction's view first."""
        await owner.take_untaken(parts)
        seen = owner.expected(parts | owner.unsure)
        reloading = {part: epoch for part, epoch in seen.items() if part in owner.unsure and epoch is not None}
        try:
            async with database.pool.acquire() as conn, conn.transaction():
                offsets = await store.check_epochs(conn, owner.topic, seen)
                reloaded = await store.load_state(conn, owner.topic, reloading) if reloading else None
                written = await write(conn, offsets)
        except OwnershipMoved as moved:
            log.info("%s; the batch goes back to Kafka", moved)
            raise
        except BaseException:
            owner.unsure.update(parts)
            raise
        if not owner.still(seen):
            return None  # a rebalance began while committing: the next owner loads what was just written
        if reloaded:
            drop(owner.topic, set(reloaded.epochs))  # whatever the failed batch left behind
            load(owner.topic, reloaded)
            owner.unsure -= set(reloaded.epochs)
        return written

    def drop(topic: str, parts: set[int]) -> None:
        if topic == topics.REJECTIONS:
            for part in parts:
                rejections_by_part.pop(part, None)
            export_rejections()
        else:
            totals.drop_partitions(parts)
            tracker.drop_partitions(parts)

    owners = {topic: Ownership(topic, take, drop) for topic in (topics.LIFECYCLE, topics.REJECTIONS)}
    exported.owned = {topic: owner.epochs for topic, owner in owners.items()}

    timers: list[asyncio.Task[None]] = []

    async def watch_lag() -> None:
        while True:
            try:
                exported.lag = await consumer_lag(settings.kafka_bootstrap_servers, settings.lag_groups, settings)
            except Exception:  # the broker may be restarting: the next round tries again
                log.warning("could not read consumer lag", exc_info=True)
            await asyncio.sleep(settings.lag_seconds)

    async def start_timers() -> None:
        timers.append(asyncio.create_task(run_timers(tracker, wake, settings.sweep_seconds)))
        timers.append(asyncio.create_task(watch_lag()))

    async def stop_timers() -> None:
        for task in timers:
            task.cancel()

    app = service_app(title="TTHC metrics", description="Live timeliness counters for the dashboards.",
                      settings=settings, database=database, broker=broker, registry=registry, reference=reference,
                      on_start=start_timers, on_stop=stop_timers, exports=exported.families())

    @batch_subscriber(broker, topics.LIFECYCLE, group_id=settings.consumer_group, max_records=1000,
                      listener=owners[topics.LIFECYCLE])
    async def on_lifecycle(records: Records) -> None:
        events = readable(records, DossierLifecycleEvent, unreadable)
        applied = await commit_batch(owners[topics.LIFECYCLE], {part for part, _ in events},
                                     lambda conn, _: store.record_lifecycle(conn, events))
        if applied is None:
            return
        for key, value in applied.deltas.items():
            totals.add(key, value)
        now = time.time()
        for event, part, kind in applied.progress:
            if kind is None:
                tracker.remove(event.dossier_code)
            else:
                track_open(tracker, province_of, event.dossier_code, part, event.unit_code, event.sector, kind,
                           event.received_at, event.due_soon_at, event.legal_due_at, now)
        wake.set()

    @batch_subscriber(broker, topics.REJECTIONS, group_id=settings.consumer_group, max_records=1000,
                      listener=owners[topics.REJECTIONS])
    async def on_rejection(records: Records) -> None:
        batch = [(record.partition, record.offset, _refusal(record.value)) for record in records]
        deltas = await commit_batch(owners[topics.REJECTIONS], {part for part, _, _ in batch},
                                    lambda conn, offsets: store.record_rejections(conn, topics.REJECTIONS, batch,
                                                                                  offsets))
        if deltas is None:
            return
        for (part, stage, reason), value in deltas.items():
            counts = rejections_by_part.setdefault(part, {})
            counts[(stage, reason)] = counts.get((stage, reason), 0.0) + value
        export_rejections()

    @app.get("/liveboard", response_class=HTMLResponse, include_in_schema=False)
    async def liveboard_page() -> str:
        return LIVEBOARD_HTML

    @app.get("/liveboard/data", summary="Today's numbers per unit, for the wall screen")
    async def liveboard_data() -> dict[str, Any]:
        return await liveboard.today(database.pool, datetime.now(UTC), reference.current.catalog)

    return app


def _refusal(value: bytes | None) -> RejectionRecorded | None:
    try:
        return RejectionRecorded.model_validate_json(value or b"")
    except ValidationError:
        return None
