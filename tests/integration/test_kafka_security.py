"""The broker in secure mode: SCRAM principals, least-privilege ACLs, and intake binding an ingress event's
`source` to the commune that signed it. The module starts its own secured broker on ports of its own."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
)

from services.intake import keys
from services.intake.app import build_app as build_intake
from services.intake.ingress import sign
from services.intake.settings import IntakeSettings
from services.metrics.lag import consumer_lag
from services.resolution.app import build_app as build_resolution
from services.resolution.settings import ResolutionSettings
from shared.contract import topics
from shared.contract.events import EventType
from shared.contract.lifecycle import EventAccepted
from shared.infra.kafka import broker_answers
from shared.infra.ports import free_ports
from shared.infra.secure_kafka import ADMIN, SecureLocalKafka, platform_acls
from shared.kafka import client_options, ensure_topics, make_producer
from shared.settings import CommonSettings
from tests.conftest import Infra, fresh_database
from tests.integration.test_services import in_process
from tests.support import CATALOG, UNIT, cloudevent, dossier_code, eventually, received_data

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.environ.get("TEST_INFRA") == "containers", reason="the secured broker runs from jars"),
]

COMMUNE = "xa-test"  # a commune system's Kafka principal
SOURCE = "urn:tthc:xa-test:mot-cua"  # the CloudEvents source its API key speaks for
SERVICES = ("intake", "resolution", "metrics", "notify")
# What each service's principal may do; everything else must be refused.
READS = {"intake": {topics.INGRESS}, "resolution": {topics.ACCEPTED},
         "metrics": {topics.LIFECYCLE, topics.REJECTIONS}, "notify": {topics.LIFECYCLE}}
WRITES = {"intake": {topics.ACCEPTED, topics.REJECTIONS}, "resolution": {topics.LIFECYCLE, topics.REJECTIONS},
          "metrics": set(), "notify": set()}
DENIED = (TopicAuthorizationFailedError, GroupAuthorizationFailedError)


def marker(topic: str) -> bytes:
    """A record for the read checks; on the accepted topic a valid event, since resolution trusts that topic's
    records to be intake's."""
    if topic != topics.ACCEPTED:
        return b'{"marker": true}'
    event = cloudevent(EventType.RECEIVED, dossier_code(), received_data())
    return EventAccepted(id=event["id"], source=event["source"], event_type=EventType.RECEIVED,
                         dossier_code=event["subject"], occurred_at=event["time"], accepted_at=event["time"],
                         data={k: v for k, v in event["data"].items() if k != "applicant"}).model_dump_json().encode()


@pytest.fixture(scope="module")
async def kafka(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SecureLocalKafka]:
    users = {name: secrets.token_urlsafe(16) for name in (COMMUNE, *SERVICES)}
    port, controller_port, internal_port = free_ports(3)
    broker = SecureLocalKafka(tmp_path_factory.mktemp("secure") / "kafka", port, controller_port,
                              internal_port=internal_port, users=users, acls=platform_acls([COMMUNE]))
    broker.start()
    try:
        await broker.wait_ready()
        # The administrator creates the topics and puts a record on each, for the read checks.
        await ensure_topics(broker.bootstrap_servers, 3, settings=broker.settings_for(ADMIN))
        producer = make_producer(broker.bootstrap_servers, broker.settings_for(ADMIN))
        await producer.start()
        try:
            for topic in topics.ALL:
                await producer.send_and_wait(topic, marker(topic))
        finally:
            await producer.stop()
        yield broker
    finally:
        broker.stop()


def options(kafka: SecureLocalKafka, user: str) -> dict[str, Any]:
    return client_options(kafka.settings_for(user))


async def read_one(kafka: SecureLocalKafka, user: str, topic: str, group: str | None) -> bool:
    """Whether `user` reads a record of `topic` (as consumer group `group`, or by partition when None);
    the broker's refusal is raised."""
    # A topic the principal may not even describe looks to a consumer like one that does not exist (it
    # would wait, not fail); READ implies DESCRIBE, so the broker's refusal to describe it is a refusal to read.
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers, **options(kafka, user))
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described["error_code"] == TopicAuthorizationFailedError.errno:
        raise TopicAuthorizationFailedError(topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, group_id=group,
                                auto_offset_reset="earliest", enable_auto_commit=False, **options(kafka, user))
    await consumer.start()
    try:
        if group is None:
            consumer.assign([TopicPartition(topic, partition) for partition in range(3)])
        else:
            consumer.subscribe([topic])

        async def got() -> bool:
            return any((await consumer.getmany(timeout_ms=300)).values())

        return await eventually(got, timeout=60, what=f"{user} reading {topic}")
    finally:
        await consumer.stop()


async def test_a_commune_may_only_write_the_ingress_topic(kafka: SecureLocalKafka) -> None:
    producer = make_producer(kafka.bootstrap_servers, kafka.settings_for(COMMUNE))
    await producer.start()
    try:
        assert (await producer.send_and_wait(topics.INGRESS, b"{}")).offset >= 0
        for topic in (topics.ACCEPTED, topics.LIFECYCLE, topics.REJECTIONS):
            with pytest.raises(TopicAuthorizationFailedError):
                await producer.send_and_wait(topic, b"{}")
    finally:
        await producer.stop()
    # It may describe the ingress topic (to produce), not read it: neither by partition nor in any group.
    with pytest.raises(TopicAuthorizationFailedError):
        await read_one(kafka, COMMUNE, topics.INGRESS, None)
    for topic in topics.ALL:
        with pytest.raises(DENIED):
            await read_one(kafka, COMMUNE, topic, COMMUNE)
    for group in (COMMUNE, "intake"):
        with pytest.raises(GroupAuthorizationFailedError):
            await read_one(kafka, COMMUNE, topics.INGRESS, group)


async def test_a_wrong_password_or_no_credentials_are_refused_at_authentication(kafka: SecureLocalKafka) -> None:
    host, port = kafka.bootstrap_servers.split(":")
    right = options(kafka, COMMUNE)
    (await create_conn(host, int(port), **right)).close()
    for wrong in ({**right, "sasl_plain_password": right["sasl_plain_password"] + "x"},
                  {**right, "sasl_plain_username": "xa-unknown"},
                  {**right, "sasl_plain_username": ADMIN}):
        with pytest.raises(SaslAuthenticationFailed):
            await create_conn(host, int(port), **wrong)
    # A client without SASL (the default settings) gets no answer from the secured listener at all.
    assert client_options(CommonSettings.model_validate({})) == {}
    assert not await broker_answers(kafka.bootstrap_servers)
    assert await broker_answers(kafka.bootstrap_servers, **options(kafka, ADMIN))


@pytest.mark.parametrize("service", SERVICES)
async def test_each_service_may_do_its_own_work_and_nothing_else(kafka: SecureLocalKafka, service: str) -> None:
    producer = make_producer(kafka.bootstrap_servers, kafka.settings_for(service))
    await producer.start()
    try:
        for topic in topics.ALL:
            if topic in WRITES[service]:
                assert (await producer.send_and_wait(topic, marker(topic))).offset >= 0
            else:
                with pytest.raises(TopicAuthorizationFailedError):
                    await producer.send_and_wait(topic, b"{}")
    finally:
        await producer.stop()
    for topic in topics.ALL:
        if topic in READS[service]:
            assert await read_one(kafka, service, topic, service)
            other = next(s for s in SERVICES if s != service and s not in ("metrics",))
            with pytest.raises(GroupAuthorizationFailedError):  # only in its own consumer group
                await read_one(kafka, service, topic, other)
        else:
            with pytest.raises(DENIED):
                await read_one(kafka, service, topic, service)


async def records(kafka: SecureLocalKafka, topic: str, match: Callable[[dict[str, Any]], bool],
                  count: int) -> list[dict[str, Any]]:
    """At least `count` JSON records on `topic` for which `match` holds, read as the administrator."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka.bootstrap_servers, group_id=None,
                                auto_offset_reset="earliest", **options(kafka, ADMIN))
    await consumer.start()
    found: list[dict[str, Any]] = []
    try:
        async def enough() -> bool:
            for batch in (await consumer.getmany(timeout_ms=300)).values():
                found.extend(value for r in batch if isinstance(value := json.loads(r.value or b"null"), dict)
                             and match(value))
            return len(found) >= count

        await eventually(enough, 60, what=f"{count} records on {topic}")
        return found
    finally:
        await consumer.stop()


async def test_intake_accepts_a_communes_signed_events_over_kafka_and_binds_their_source(
        kafka: SecureLocalKafka, infra: Infra, data_keys: str) -> None:
    database_url = await fresh_database(infra)
    common = {"DATABASE_URL": database_url, "TTHC_DATA_KEYS": data_keys, "TTHC_TOPIC_PARTITIONS": 3}
    intake = build_intake(IntakeSettings.model_validate(
        {**kafka.env_for("intake"), **common, "require_signed_ingress": True}))
    resolution = build_resolution(ResolutionSettings.model_validate({**kafka.env_for("resolution"), **common}))
    other_unit = next(u for u in CATALOG.units if u != UNIT.code)
    good, unsigned, forged, tampered, foreign = (dossier_code() for _ in range(5))

    async with in_process(intake, "intake"), in_process(resolution, "resolution") as resolution_client:
        conn = await asyncpg.connect(database_url)
        try:
            api_key = await keys.create(conn, SOURCE, [UNIT.code])
        finally:
            await conn.close()

        def event(code: str, source: str = SOURCE, unit: str = UNIT.code) -> bytes:
            data = received_data() | {"unit_code": unit}
            return json.dumps(cloudevent(EventType.RECEIVED, code, data, source=source)).encode()

        producer = make_producer(kafka.bootstrap_servers, kafka.settings_for(COMMUNE))
        await producer.start()
        try:
            sends: list[tuple[str, bytes, list[tuple[str, bytes]] | None]] = [
                (good, event(good), None), (unsigned, event(unsigned), []),
                # Signed with the commune's own key, but claiming another commune's source.
                (forged, event(forged, source="urn:tthc:xa-khac:mot-cua"), None),
                (foreign, event(foreign, unit=other_unit), None)]
            for code, payload, headers in sends:
                await producer.send_and_wait(topics.INGRESS, payload, key=code.encode(),
                                             headers=sign(api_key, payload) if headers is None else headers)
            # Signed, then altered on the way: the signature no longer covers what arrives.
            original = event(tampered)
            altered = original.replace(b"nguyen.van.an@example.vn", b"someone.else@example.vn")
            assert altered != original
            await producer.send_and_wait(topics.INGRESS, altered, key=tampered.encode(),
                                         headers=sign(api_key, original))
        finally:
            await producer.stop()

        accepted = await records(kafka, topics.ACCEPTED, lambda r: r.get("dossier_code") == good, 1)
        assert accepted[0]["source"] == SOURCE

        async def received() -> bool:
            return (await resolution_client.get(f"/v1/dossiers/{good}")).status_code == 200

        await eventually(received, 60, what="resolution folding the accepted event")
        refused = {r["subject"]: r["reason"] for r in await records(
            kafka, topics.REJECTIONS, lambda r: r.get("subject") in {unsigned, forged, tampered, foreign}, 4)}
        assert refused == {unsigned: "unauthenticated", forged: "forged_source", tampered: "unauthenticated",
                           foreign: "forbidden_unit"}
        conn = await asyncpg.connect(database_url)
        try:
            assert not await conn.fetchval("SELECT count(*) FROM intake.received_events WHERE dossier_code = ANY($1)",
                                           [unsigned, forged, tampered, foreign])
            audited = {row["subject"]: row["reason"] for row in await conn.fetch(
                "SELECT subject, reason FROM intake.auth_audit WHERE subject IS NOT NULL")}
        finally:
            await conn.close()
        assert audited == refused

        # Metrics' principal measures intake's lag on a topic it may not read.
        async def caught_up() -> bool:
            lag = await consumer_lag(kafka.bootstrap_servers, ["intake", "resolution"],
                                     kafka.settings_for("metrics"))
            return lag.get(("intake", topics.INGRESS)) == 0 and ("resolution", topics.ACCEPTED) in lag

        await eventually(caught_up, 60, what="intake's and resolution's lag measured by metrics")
