"""Kafka plumbing shared by the services: brokers, topics, producers."""

from __future__ import annotations

import contextlib
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from faststream.kafka import KafkaBroker
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
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
