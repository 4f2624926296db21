"""How far each service's consumer group is behind the end of the topics it reads, for the lag alert."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from shared.kafka import client_options
from shared.settings import CommonSettings

log = logging.getLogger(__name__)


async def consumer_lag(bootstrap_servers: str, groups: Iterable[str],
                       settings: CommonSettings | None = None) -> dict[tuple[str, str], int]:
    """(group, topic) -> records not yet committed by the group, over every partition it has committed in."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **client_options(settings))
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False, **client_options(settings))
    await admin.start()
    await reader.start()
    try:
        committed: dict[str, dict[TopicPartition, int]] = {}
        for group in groups:
            try:
                offsets = await admin.list_consumer_group_offsets(group)
            except KafkaError:  # a group that has not committed yet has no coordinator to ask
                continue
            committed[group] = {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
        partitions = {tp for offsets in committed.values() for tp in offsets}
        ends = await reader.end_offsets(list(partitions)) if partitions else {}
        lag: dict[tuple[str, str], int] = {}
        for group, offsets in committed.items():
            for tp, offset in offsets.items():
                lag[(group, tp.topic)] = lag.get((group, tp.topic), 0) + max(0, ends.get(tp, offset) - offset)
        return lag
    finally:
        await reader.stop()
        await admin.close()
