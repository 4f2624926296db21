"""Resolution killed with SIGKILL: nothing lost, nothing counted twice."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from shared.contract import topics
from shared.contract.events import EventType
from shared.infra.stack import Stack
from tests.e2e.conftest import intake_client
from tests.support import VN, cloudevent, dossier_code, eventually, metric_total, received_data

pytestmark = pytest.mark.e2e


def lifecycle_of(codes: list[str]) -> list[dict[str, object]]:
    events = []
    for code in codes:
        received_at = datetime.now(VN) - timedelta(minutes=5)
        events.append(cloudevent(EventType.RECEIVED, code, received_data(), at=received_at))
        events.append(cloudevent(EventType.RESOLVED, code, {}, at=received_at + timedelta(minutes=1)))
    return events


async def send(stack: Stack, events: list[dict[str, object]], batch: int = 50) -> None:
    async with intake_client(stack) as client:
        for start in range(0, len(events), batch):
            reply = await client.post("/v1/events", json=events[start:start + batch],
                                      headers={"content-type": "application/cloudevents-batch+json"})
            assert reply.status_code == 202, reply.text


async def canonical_sequences(stack: Stack, codes: set[str], expected: int) -> Counter[tuple[str, int]]:
    """Every canonical event for `codes` on the lifecycle topic, counted, once `expected` distinct ones are seen."""
    consumer = AIOKafkaConsumer(topics.LIFECYCLE, bootstrap_servers=stack.bootstrap_servers,
                                auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    seen: Counter[tuple[str, int]] = Counter()
    try:
        async def complete() -> bool:
            for records in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                for record in records:
                    event = json.loads(record.value)
                    if event["dossier_code"] in codes:
                        seen[(event["dossier_code"], event["sequence"])] += 1
            return len(seen) >= expected

        await eventually(complete, timeout=120, what=f"{expected} canonical events")
        return seen
    finally:
        await consumer.stop()


async def count_resolved(stack: Stack, codes: list[str]) -> int:
    conn = await asyncpg.connect(stack.database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM resolution.dossiers WHERE code = ANY($1::text[]) "
                                       "AND state = 'resolved'", codes))
    finally:
        await conn.close()


def resolved(stack: Stack, codes: list[str], enough: Callable[[int], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return enough(await count_resolved(stack, codes))

    return check


async def test_killed_between_commit_and_publish_loses_nothing(stack: Stack) -> None:
    codes = [dossier_code() for _ in range(40)]
    # A resolution whose relay is off commits state and outbox rows but publishes nothing: exactly the
    # window between the commit and the publish, held open.
    stack.stop_process("resolution")
    stack.start_service("resolution", env={"RESOLUTION_RELAY_ENABLED": "false"})
    await stack.wait_ready("resolution")
    await send(stack, lifecycle_of(codes))
    await eventually(resolved(stack, codes, lambda n: n == len(codes)), what="all committed")
    conn = await asyncpg.connect(stack.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM resolution.outbox") >= 2 * len(codes)
    finally:
        await conn.close()
    stack.kill_process("resolution")
    stack.start_service("resolution")
    await stack.wait_ready("resolution")

    seen = await canonical_sequences(stack, set(codes), 2 * len(codes))
    assert set(seen) == {(code, sequence) for code in codes for sequence in (1, 2)}


async def test_killed_during_a_burst_every_event_counts_once(stack: Stack) -> None:
    codes = [dossier_code() for _ in range(300)]
    events = lifecycle_of(codes)
    metrics = f"http://127.0.0.1:{stack.ports.metrics}/metrics"
    async with httpx.AsyncClient(timeout=30) as client:
        before = (await client.get(metrics)).text
        burst = asyncio.create_task(send(stack, events, batch=20))
        await eventually(resolved(stack, codes, lambda n: n >= 20), what="the burst under way")
        stack.kill_process("resolution")
        stack.start_service("resolution")
        await stack.wait_ready("resolution")
        await burst

        await eventually(resolved(stack, codes, lambda n: n == len(codes)), timeout=120,
                         what="every dossier resolved after the restart")
        seen = await canonical_sequences(stack, set(codes), 2 * len(codes))
        assert set(seen) == {(code, sequence) for code in codes for sequence in (1, 2)}

        def grew(text: str, name: str) -> float:
            return metric_total(text, name) - metric_total(before, name)

        async def counted() -> bool:
            text = (await client.get(metrics)).text
            return grew(text, "tthc_dossiers_received_total") == len(codes) and \
                grew(text, "tthc_dossiers_completed_total") == len(codes)

        await eventually(counted, what="metrics counting each dossier once")
        # Redeliveries after the kill may repeat canonical events on the topic; the counters must not.
        text = (await client.get(metrics)).text
        assert grew(text, "tthc_dossiers_received_total") == len(codes)
