"""`send_batched` against the real broker: every record lands once, with its headers, on the partition Kafka's
default partitioner gives its key, in the order sent within each key, however many batches it takes."""

from __future__ import annotations

import uuid
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shared.kafka import Message, ensure_topics, partition_by_key, send_batched
from tests.conftest import Infra
from tests.support import eventually

pytestmark = pytest.mark.integration


async def test_records_sent_in_batches_arrive_once_in_order_on_their_keys_partitions(infra: Infra) -> None:
    names = (f"test.batches.{uuid.uuid4().hex[:8]}", f"test.batches.{uuid.uuid4().hex[:8]}")
    await ensure_topics(infra.bootstrap_servers, 3, names=names)
    # A small batch size, so that one call fills several batches per partition.
    producer = AIOKafkaProducer(bootstrap_servers=infra.bootstrap_servers, enable_idempotence=True,
                                max_batch_size=16 * 1024)
    await producer.start()
    sent: list[Message] = [(names[n % 2], f"dossier-{n % 40}".encode(), f"{n:06d}".encode() + b"x" * 300)
                           for n in range(3000)]
    sent.append((names[0], None, b"no key"))
    headers = [[("n", str(n).encode())] * (n % 3) for n in range(len(sent))]  # none, one or two each
    try:
        await (await send_batched(producer, sent, headers))
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(*names, bootstrap_servers=infra.bootstrap_servers, auto_offset_reset="earliest",
                                group_id=None)
    await consumer.start()
    received: dict[tuple[str, bytes | None], list[tuple[bytes, list[tuple[str, bytes]]]]] = defaultdict(list)
    partitions: dict[tuple[str, bytes | None], set[int]] = defaultdict(set)
    try:
        async def all_in() -> bool:
            for tp, batch in (await consumer.getmany(timeout_ms=300)).items():
                for record in batch:
                    received[(tp.topic, record.key)].append((record.value or b"", list(record.headers)))
                    partitions[(tp.topic, record.key)].add(tp.partition)
            return sum(map(len, received.values())) >= len(sent)

        await eventually(all_in, 30, what="every record sent in batches")
    finally:
        await consumer.stop()

    expected: dict[tuple[str, bytes | None], list[tuple[bytes, list[tuple[str, bytes]]]]] = defaultdict(list)
    for (topic, key, value), record_headers in zip(sent, headers, strict=True):
        expected[(topic, key)].append((value, record_headers))
    assert received == expected  # each exactly once, and in the order sent within each key
    for (_topic, keyed), seen_on in partitions.items():
        if keyed is not None:
            assert seen_on == {partition_by_key(keyed, [0, 1, 2], [0, 1, 2])}

