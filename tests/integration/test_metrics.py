"""Metrics in-process against the real broker and database: timers flipping with no event, and counts that
neither reset nor double on a restart that reads every topic again."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from functools import partial

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.metrics.app import build_app
from services.metrics.settings import MetricsSettings
from shared.contract import topics
from shared.contract.events import EventType
from shared.contract.lifecycle import DossierLifecycleEvent, DossierState, Timeliness
from shared.contract.rejections import RejectionReason, RejectionRecorded, Stage
from shared.kafka import ensure_topics
from tests.conftest import Infra
from tests.faults import CommitAnswerLost
from tests.integration.test_services import in_process, service_env
from tests.support import eventually, metric_total

pytestmark = pytest.mark.integration


def canonical(code: str, unit: str, sequence: int, event_type: EventType, state: DossierState, *,
              due_soon_at: datetime | None, due_at: datetime | None,
              timeliness: Timeliness | None = None) -> DossierLifecycleEvent:
    now = datetime.now(UTC)
    return DossierLifecycleEvent(
        id=f"{code}:{sequence}", dossier_code=code, sequence=sequence, event_type=event_type, occurred_at=now,
        recorded_at=now, source="urn:tthc:test", source_event_id=str(uuid.uuid4()), procedure_code="1.001",
        unit_code=unit, sector="ho_tich", channel="direct", state=state, status_code=2, received_at=now,
        legal_due_at=due_at, due_soon_at=due_soon_at, appointment_at=due_at, timeliness=timeliness,
        completed_at=now if timeliness else None, calendar_version="test", policy_version="test")


async def publish(bootstrap: str, topic: str, values: list[tuple[str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for key, value in values:
            await producer.send(topic, value, key=key.encode())
        await producer.flush()
    finally:
        await producer.stop()


def settings_for(infra: Infra, database_url: str, data_keys: str, group: str) -> MetricsSettings:
    # Field names, not environment names: model_validate reads only the common settings by their env aliases.
    return MetricsSettings.model_validate({**service_env(infra, database_url, data_keys),
                                           "consumer_group": group, "lag_groups": [group], "lag_seconds": 2})


async def test_open_dossiers_turn_due_soon_then_overdue_with_no_event(infra: Infra, database_url: str,
                                                                      data_keys: str) -> None:
    unit = f"U{uuid.uuid4().hex[:8]}"  # a unit of its own: other tests' traffic shares this broker
    settings = settings_for(infra, database_url, data_keys, f"metrics-{uuid.uuid4().hex[:6]}")
    async with in_process(build_app(settings), "metrics") as client:
        async def owning() -> bool:
            text = (await client.get("/metrics")).text
            return metric_total(text, "tthc_metrics_partitions_owned", topic=topics.LIFECYCLE) == 3

        await eventually(owning, 60, what="the lifecycle partitions assigned")
        start = datetime.now(UTC)
        soon, due = start + timedelta(seconds=10), start + timedelta(seconds=16)
        events = [canonical(f"F{n}-{unit}", unit, 1, EventType.RECEIVED, DossierState.RECEIVED,
                            due_soon_at=soon, due_at=due) for n in range(3)]
        await publish(infra.bootstrap_servers, topics.LIFECYCLE,
                      [(event.dossier_code, event.model_dump_json().encode()) for event in events])

        async def in_state(state: str) -> str | None:
            text = (await client.get("/metrics")).text
            return text if metric_total(text, "tthc_dossiers_open", unit=unit, state=state) == 3 else None

        # Each state is seen only at or after its instant: nothing but the clock moved it.
        await eventually(lambda: in_state("on_track"), 60, what="three on-track dossiers")
        text = await eventually(lambda: in_state("due_soon"), 60, what="the flip to due soon")
        assert datetime.now(UTC) >= soon
        assert metric_total(text, "tthc_dossiers_open", unit=unit, state="on_track") == 0
        await eventually(lambda: in_state("overdue"), 60, what="the flip to overdue")
        assert datetime.now(UTC) > due
        assert metric_total(text, "tthc_oldest_open_dossier_age_seconds", unit=unit) > 0


async def test_a_restart_reading_every_topic_again_counts_nothing_twice(infra: Infra, database_url: str,
                                                                        data_keys: str) -> None:
    unit = f"U{uuid.uuid4().hex[:8]}"
    open_for_long = datetime.now(UTC) + timedelta(days=30)
    lifecycle = []
    for n in range(20):
        code = f"R{n}-{unit}"
        lifecycle.append(canonical(code, unit, 1, EventType.RECEIVED, DossierState.RECEIVED,
                                   due_soon_at=open_for_long, due_at=open_for_long))
        if n % 2:
            lifecycle.append(canonical(code, unit, 2, EventType.RESOLVED, DossierState.RESOLVED,
                                       due_soon_at=None, due_at=open_for_long, timeliness=Timeliness.EARLY))
    lifecycle += lifecycle[:5]  # resent: resolution's outbox may publish an event twice
    await ensure_topics(infra.bootstrap_servers, 3)
    marker = f"unreadable-{unit}"
    refusals = [RejectionRecorded(rejection_id=str(uuid.uuid4()), stage=Stage.INTAKE,
                                  reason=RejectionReason.UNKNOWN_UNIT, detail=marker,
                                  rejected_at=datetime.now(UTC)) for _ in range(4)]
    await publish(infra.bootstrap_servers, topics.LIFECYCLE,
                  [(event.dossier_code, event.model_dump_json().encode()) for event in lifecycle])
    await publish(infra.bootstrap_servers, topics.REJECTIONS,
                  [(unit, refusal.model_dump_json().encode()) for refusal in refusals])
    rejections_on_topic = await count_rejections(infra.bootstrap_servers)

    async def counted(client_text: str) -> bool:
        return (metric_total(client_text, "tthc_dossiers_received_total", unit=unit) == 20
                and metric_total(client_text, "tthc_dossiers_completed_total", unit=unit, timeliness="early") == 10
                and metric_total(client_text, "tthc_dossiers_open", unit=unit) == 10
                and metric_total(client_text, "tthc_rejections_total", reason="unknown_unit")
                >= rejections_on_topic["unknown_unit"])

    async def settled(client: httpx.AsyncClient, group: str) -> str | None:
        text = (await client.get("/metrics")).text
        caught_up = "tthc_consumer_lag{" in text and metric_total(text, "tthc_consumer_lag", group=group) == 0
        return text if caught_up and await counted(text) else None

    first: dict[str, float] = {}
    for round_ in range(2):
        # A new consumer group each time: the second instance reads both topics from the beginning again.
        settings = settings_for(infra, database_url, data_keys, f"metrics-{uuid.uuid4().hex[:6]}")
        assert settings.consumer_group.startswith("metrics-")
        async with in_process(build_app(settings), "metrics") as client:
            text = await eventually(partial(settled, client, settings.consumer_group), 90,
                                    what="every record counted")
            totals = {reason.value: metric_total(text, "tthc_rejections_total", reason=reason.value)
                      for reason in RejectionReason}
            if round_ == 0:
                first = totals
            else:
                assert totals == first
            assert metric_total(text, "tthc_dossiers_received_total", unit=unit) == 20
            assert metric_total(text, "tthc_dossiers_completed_total", unit=unit) == 10
            # Only the families asked for, with the same values as the full export.
            chosen = (await client.get("/metrics", params={"name[]": "tthc_dossiers_received_total"})).text
            samples = [line for line in chosen.splitlines() if line and not line.startswith("#")]
            assert samples
            assert all(line.startswith("tthc_dossiers_received_total{") for line in samples)
            assert metric_total(chosen, "tthc_dossiers_received_total", unit=unit) == 20


async def count_rejections(bootstrap: str) -> Counter[str]:
    consumer = AIOKafkaConsumer(topics.REJECTIONS, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=None)
    await consumer.start()
    found: Counter[str] = Counter()
    try:
        while batches := await consumer.getmany(timeout_ms=1000):
            for records in batches.values():
                found.update(json.loads(record.value)["reason"] for record in records)
        return found
    finally:
        await consumer.stop()


async def test_a_batch_committed_with_its_answer_lost_shows_once_in_the_live_numbers(
        infra: Infra, database_url: str, data_keys: str) -> None:
    """PostgreSQL restarting at the wrong instant: the batch's transaction commits, metrics sees an error, Kafka
    redelivers the batch and the database calls every record a repeat. The live export must still show it."""
    unit = f"U{uuid.uuid4().hex[:8]}"
    open_for_long = datetime.now(UTC) + timedelta(days=30)
    group = f"metrics-{uuid.uuid4().hex[:6]}"
    await ensure_topics(infra.bootstrap_servers, 3)
    async with CommitAnswerLost(database_url).running() as proxy, \
            in_process(build_app(settings_for(infra, proxy.url, data_keys, group)), "metrics") as client:
        # One record on each topic first, and everything up to them consumed: the next commit is the batch's.
        warm_up = canonical(f"W-{unit}", unit, 1, EventType.RECEIVED, DossierState.RECEIVED,
                            due_soon_at=open_for_long, due_at=open_for_long)
        await publish(infra.bootstrap_servers, topics.LIFECYCLE,
                      [(warm_up.dossier_code, warm_up.model_dump_json().encode())])
        await publish(infra.bootstrap_servers, topics.REJECTIONS, [(unit, RejectionRecorded(
            rejection_id=str(uuid.uuid4()), stage=Stage.INTAKE, reason=RejectionReason.UNKNOWN_UNIT, detail=unit,
            rejected_at=datetime.now(UTC)).model_dump_json().encode())])

        async def caught_up(received: int) -> str | None:
            text = (await client.get("/metrics")).text
            lags = [f'group="{group}",topic="{topic}"' in text for topic in (topics.LIFECYCLE, topics.REJECTIONS)]
            idle = all(lags) and metric_total(text, "tthc_consumer_lag", group=group) == 0
            counted = metric_total(text, "tthc_dossiers_received_total", unit=unit) >= received
            return text if idle and counted else None

        await eventually(partial(caught_up, 1), 90, what="metrics caught up with both topics")
        proxy.arm()
        events = [canonical(f"L{n}-{unit}", unit, 1, EventType.RECEIVED, DossierState.RECEIVED,
                            due_soon_at=open_for_long, due_at=open_for_long) for n in range(12)]
        await publish(infra.bootstrap_servers, topics.LIFECYCLE,
                      [(event.dossier_code, event.model_dump_json().encode()) for event in events])
        await asyncio.wait_for(proxy.cut.wait(), 60)

        text = await eventually(partial(caught_up, 13), 90, what="the twelve dossiers in the live export")
        assert metric_total(text, "tthc_dossiers_received_total", unit=unit) == 13
        assert metric_total(text, "tthc_dossiers_open", unit=unit) == 13
    conn = await asyncpg.connect(database_url)
    try:
        stored = await conn.fetchval("SELECT sum(value) FROM metrics.counters WHERE family = 'received' "
                                     "AND unit_code = $1", unit)
    finally:
        await conn.close()
    assert stored == 13


async def test_an_unreadable_record_is_skipped_and_counted_and_holds_nothing_up(
        infra: Infra, database_url: str, data_keys: str, topics_ready: None) -> None:
    """Only resolution writes the lifecycle topic, but a record there that is not a canonical event (a bug, a
    stray producer) must not stall its partition: handed back to Kafka it would come again forever."""
    unit = f"U{uuid.uuid4().hex[:8]}"
    code = f"P1-{unit}"
    after = canonical(code, unit, 1, EventType.RECEIVED, DossierState.RECEIVED,
                      due_soon_at=datetime.now(UTC) + timedelta(days=3), due_at=datetime.now(UTC) + timedelta(days=4))
    # The same key: the unreadable record stands right before the event in its partition. JSON naming the
    # dossier, as other tests read this shared topic as JSON objects, but nothing a canonical event needs.
    await publish(infra.bootstrap_servers, topics.LIFECYCLE,
                  [(code, b'{"dossier_code": "' + code.encode() + b'"}'), (code, after.model_dump_json().encode())])
    settings = settings_for(infra, database_url, data_keys, f"metrics-{uuid.uuid4().hex[:6]}")
    async with in_process(build_app(settings), "metrics") as client:
        async def counted() -> str | None:
            text = (await client.get("/metrics")).text
            return text if metric_total(text, "tthc_dossiers_received_total", unit=unit) == 1 else None

        text = await eventually(counted, 90, what="the event after the unreadable record counted")
        assert metric_total(text, "tthc_unreadable_records_total", topic=topics.LIFECYCLE) >= 1
        assert metric_total(text, "tthc_dossiers_open", unit=unit) == 1
