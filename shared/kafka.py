"""Kafka plumbing shared by the services: brokers, topics, producers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from aiokafka import AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import DefaultPartitioner, murmur2
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from faststream.message import StreamMessage
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, ValidationError

from shared.contract import topics
from shared.settings import CommonSettings

log = logging.getLogger(__name__)

_SASL = {"SCRAM-SHA-512": SASLScram512, "SCRAM-SHA-256": SASLScram256, "PLAIN": SASLPlaintext}


def client_options(settings: CommonSettings | None) -> dict[str, Any]:
    """The aiokafka keyword arguments that authenticate a client as configured; none on a plaintext cluster,
    so every client there is built exactly as without security settings."""
    if settings is None or settings.kafka_security_protocol == "PLAINTEXT":
        return {}
    assert settings.kafka_sasl_password is not None  # the settings refuse SASL without credentials
    options: dict[str, Any] = {
        "security_protocol": settings.kafka_security_protocol, "sasl_mechanism": settings.kafka_sasl_mechanism,
        "sasl_plain_username": settings.kafka_sasl_username,
        "sasl_plain_password": settings.kafka_sasl_password.get_secret_value(),
    }
    if settings.kafka_security_protocol == "SASL_SSL":
        options["ssl_context"] = create_ssl_context()
    return options


def broker_security(settings: CommonSettings | None) -> BaseSecurity | None:
    """The same credentials as FastStream's security object, which it also documents in the AsyncAPI spec."""
    options = client_options(settings)
    if not options:
        return None
    return _SASL[options["sasl_mechanism"]](options["sasl_plain_username"], options["sasl_plain_password"],
                                            ssl_context=options.get("ssl_context"))


def servers(bootstrap_servers: str) -> list[str]:
    """`host:port,host:port` as a list. aiokafka splits such a string itself, but FastStream hands a string
    over as a list of one, which aiokafka then reads as a single host named with every comma."""
    return [server.strip() for server in bootstrap_servers.split(",") if server.strip()]


def make_broker(bootstrap_servers: str, *, registry: CollectorRegistry, app_name: str,
                settings: CommonSettings | None = None) -> KafkaBroker:
    return KafkaBroker(
        servers(bootstrap_servers),
        enable_idempotence=True,
        graceful_timeout=15.0,
        middlewares=(KafkaPrometheusMiddleware(registry=registry, app_name=app_name),),
        logger=log,
        security=broker_security(settings),
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


ModelT = TypeVar("ModelT", bound=BaseModel)


def unreadable_counter(registry: CollectorRegistry) -> Counter:
    return Counter("tthc_unreadable_records_total", "Records skipped because they are not what their topic carries "
                   "(an alert: only the platform's own services write these topics)", ["topic"], registry=registry)


def readable(records: Records, model: type[ModelT], unreadable: Counter) -> list[tuple[int, ModelT]]:
    """Each record's partition and body parsed as `model`, in order. A record that does not parse is skipped,
    counted and logged by its place and digest, never its bytes (they may hold personal data): handed back to
    Kafka it would come again forever and hold up its partition behind it."""
    parsed: list[tuple[int, ModelT]] = []
    for record in records:
        try:
            parsed.append((record.partition, model.model_validate_json(record.value or b"")))
        except ValidationError as error:
            unreadable.labels(record.topic).inc()
            log.error("skipped %s[%d]@%d, not a %s (%d problems; sha256 %s)", record.topic, record.partition,
                      record.offset, model.__name__, error.error_count(),
                      hashlib.sha256(record.value or b"").hexdigest())
    return parsed


IDLE_POLL_MS = 50
"""How long a batch subscriber waits for records before giving up a poll. FastStream then sleeps as long again
before the next poll, and a record arriving meanwhile waits out that sleep: with its default of 200 ms each hop
of the pipeline could hold a quiet dossier's event up to 0.2 s. Records arriving while a poll waits are handed
over at once; an idle consumer wakes 10 times a second. Nearly idle, ingress to counter measured p50 0.11 s and
p95 0.17 s with 20 or 50 ms against 0.17 and 0.43 s with 200 ms; 20 ms cost a few hundredths of a core more
across the services."""


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
                              batch_timeout_ms=IDLE_POLL_MS,
                              auto_offset_reset="earliest", ack_policy=AckPolicy.NACK_ON_ERROR,
                              decoder=_raw_records, listener=listener)(handler)
        return handler

    return register


def make_producer(bootstrap_servers: str, settings: CommonSettings | None = None) -> AIOKafkaProducer:
    """An idempotent producer: a retried send is written once, and per-partition order holds."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, enable_idempotence=True, linger_ms=5,
        max_batch_size=256 * 1024, partitioner=partition_by_key, **client_options(settings),
    )


@functools.lru_cache(maxsize=1 << 16)
def _key_hash(key: bytes) -> int:
    return int(murmur2(key)) & 0x7FFFFFFF


def partition_by_key(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """Kafka's default partitioning (the Java client's murmur2 of the key), with each key's hash remembered:
    aiokafka computes it in pure Python for every record, and a dossier's events all carry its code as key."""
    if key is None:
        return int(DefaultPartitioner()(key, all_partitions, available))
    return all_partitions[_key_hash(key) % len(all_partitions)]


Message = tuple[str, bytes | None, bytes]
"""(topic, key, value) of a record to produce."""
NO_HEADERS: list[tuple[str, bytes]] = []  # aiokafka's record batches take headers as a list, and only read it


async def send_batched(producer: AIOKafkaProducer, messages: Iterable[Message],
                       headers: Sequence[list[tuple[str, bytes]]] = ()) -> Awaitable[Any]:
    """Hands `messages` to `producer` as record batches built here, one per partition (more when one fills),
    in their order within each partition, each with its `headers` (by position; none if not given). The
    returned awaitable completes when Kafka has them all.

    aiokafka's `send` spends tens of microseconds of Python on each record (a partition lookup, a future, the
    accumulator's bookkeeping); appending to a batch costs a fraction of that, and at thousands of records
    a second that difference is most of a producer's CPU. Partitioning is `partition_by_key`'s, as `send`'s."""
    partitions_of: dict[str, list[int]] = {}
    open_batches: dict[tuple[str, int], Any] = {}
    delivered: list[Awaitable[Any]] = []
    for index, (topic, key, value) in enumerate(messages):
        partitions = partitions_of.get(topic)
        if partitions is None:
            partitions = partitions_of[topic] = sorted(await producer.partitions_for(topic))
        partition = partition_by_key(key, partitions, partitions)
        record_headers = headers[index] if headers else NO_HEADERS
        batch = open_batches.get((topic, partition))
        if batch is None or batch.append(timestamp=None, key=key, value=value, headers=record_headers) is None:
            if batch is not None:  # full: it goes now, and the record starts the partition's next batch
                delivered.append(await producer.send_batch(batch, topic, partition=partition))
            # A fresh batch takes its first record whatever its size (the broker judges a record too large).
            batch = open_batches[(topic, partition)] = producer.create_batch()
            batch.append(timestamp=None, key=key, value=value, headers=record_headers)
    for (topic, partition), batch in open_batches.items():
        delivered.append(await producer.send_batch(batch, topic, partition=partition))
    return asyncio.gather(*delivered)


async def ensure_topics(
    bootstrap_servers: str, partitions: int, replication: int = 1, names: tuple[str, ...] = topics.ALL,
    settings: CommonSettings | None = None,
) -> None:
    """Create the contract's topics where they are missing; existing ones are left as they are.

    On a secured cluster a service's principal may not create topics (nor see those it does not use): the
    broker refuses those creations in its answer, which is not an error here, since the cluster's
    administrator creates the topics."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **client_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(name, partitions, replication) for name in names if name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another instance created them first
                await admin.create_topics(missing)
    finally:
        await admin.close()
