"""Kafka plumbing shared by the services: brokers, topics, producers."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from faststream.message import StreamMessage
from prometheus_client import CollectorRegistry

from shared.contract import topics

log = logging.getLogger(__name__)


def make_broker(bootstrap_servers: str, *, registry: CollectorRegistry, app_name: str) -> KafkaBroker:
    return KafkaBroker(
        bootstrap_servers,
        enable_idempotence=True,
        graceful_timeout=15.0,
        middlewares=(KafkaPrometheusMiddleware(registry=registry, app_name=app_name),),
        logger=log,
    )


if TYPE_CHECKING:
    Records = tuple[ConsumerRecord[bytes, bytes], ...]
else:
    # FastStream validates a handler's arguments by their annotations; raw records need none, so at run time
    # the annotation is Any.
    Records = Any
BatchHandler = Callable[[Records], Awaitable[None]]


async def _raw_records(message: StreamMessage[Any]) -> Records:
    raw = message.raw_message
    return raw if isinstance(raw, tuple) else (raw,)


def batch_subscriber(broker: KafkaBroker, topic: str, *, group_id: str, max_records: int,
                     consumers: int = 1, listener: ConsumerRebalanceListener | None = None,
                     ) -> Callable[[BatchHandler], BatchHandler]:
    """A consumer-group subscriber handed each batch as the raw records, committed only after the handler
    returns (a failure seeks back and redelivers). Bodies stay bytes: handlers parse them with the contract's
    models, so a malformed record reaches the handler to be refused instead of failing a generic decoder, and
    no time goes to decoding twice.

    Several `consumers` in one process split the partitions between them, so one batch's database round
    trips overlap another batch's processing. A `listener` hears of partitions assigned and revoked."""

    def register(handler: BatchHandler) -> BatchHandler:
        for _ in range(consumers):
            broker.subscriber(topic, group_id=group_id, batch=True, max_records=max_records,
                              auto_offset_reset="earliest", ack_policy=AckPolicy.NACK_ON_ERROR,
                              decoder=_raw_records, listener=listener)(handler)
        return handler

    return register


def make_producer(bootstrap_servers: str) -> AIOKafkaProducer:
    """An idempotent producer: a retried send is written once, and per-partition order holds."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, enable_idempotence=True, linger_ms=5,
        max_batch_size=256 * 1024,
    )


async def ensure_topics(
    bootstrap_servers: str, partitions: int, replication: int = 1, names: tuple[str, ...] = topics.ALL
) -> None:
    """Create the contract's topics where they are missing; existing ones are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(name, partitions, replication) for name in names if name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another instance created them first
                await admin.create_topics(missing)
    finally:
        await admin.close()
