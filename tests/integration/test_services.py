"""Intake and resolution, each in-process against the real broker and database."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from fastapi import FastAPI

from services.intake import keys
from services.intake.app import build_app as build_intake
from services.intake.settings import IntakeSettings
from services.resolution.app import build_app as build_resolution
from services.resolution.settings import ResolutionSettings
from shared.contract import topics
from shared.contract.events import EventType
from shared.contract.lifecycle import EventAccepted
from shared.simulator import SOURCE
from tests.conftest import Infra
from tests.support import CATALOG, UNIT, cloudevent, dossier_code, eventually, metric_total, received_data

pytestmark = pytest.mark.integration


async def records(bootstrap: str, topic: str, match: Any, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    """At least `count` JSON records on `topic` for which `match` holds, reading from the beginning."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    found: list[dict[str, Any]] = []
    try:
        async def enough() -> bool:
            for batch in (await consumer.getmany(timeout_ms=300)).values():
                found.extend(value for r in batch if match(value := json.loads(r.value)))
            return len(found) >= count

        await eventually(enough, timeout, what=f"{count} records on {topic}")
        # Read on a little so that an unwanted extra record would be seen too.
        for batch in (await consumer.getmany(timeout_ms=1000)).values():
            found.extend(value for r in batch if match(value := json.loads(r.value)))
        return found
    finally:
        await consumer.stop()


def service_env(infra: Infra, database_url: str, data_keys: str) -> dict[str, object]:
    return {"KAFKA_BOOTSTRAP_SERVERS": infra.bootstrap_servers, "DATABASE_URL": database_url,
            "TTHC_DATA_KEYS": data_keys, "TTHC_TOPIC_PARTITIONS": 3}


@asynccontextmanager
async def in_process(app: FastAPI, name: str) -> AsyncIterator[httpx.AsyncClient]:
    """The service's whole lifespan (broker, database, background tasks) around an HTTP client to it."""
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=f"http://{name}") as client:
        yield client


async def new_key(database_url: str, source: str = SOURCE, units: list[str] | None = None) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        return await keys.create(conn, source, units if units is not None else list(CATALOG.units))
    finally:
        await conn.close()


@pytest.fixture
async def intake(infra: Infra, database_url: str, data_keys: str) -> AsyncIterator[httpx.AsyncClient]:
    """Intake in-process, with a client that sends a key for the local source and every unit."""
    settings = IntakeSettings.model_validate(service_env(infra, database_url, data_keys))
    async with in_process(build_intake(settings), "intake") as client:
        client.headers["authorization"] = f"Bearer {await new_key(database_url)}"
        yield client


CE = {"content-type": "application/cloudevents+json"}


async def test_intake_accepts_once_and_answers_repeats_as_duplicates(intake: httpx.AsyncClient, infra: Infra) -> None:
    code = dossier_code()
    event = cloudevent(EventType.RECEIVED, code, received_data())
    first = await intake.post("/v1/events", json=event, headers=CE)
    again = await intake.post("/v1/events", json=event, headers=CE)
    assert (first.status_code, first.json()["status"]) == (202, "accepted")
    assert (again.status_code, again.json()) == (200, {"status": "duplicate", "id": event["id"], "dossier_code": code})
    passed_on = await records(infra.bootstrap_servers, topics.ACCEPTED, lambda r: r["dossier_code"] == code, 1)
    assert len(passed_on) == 1
    accepted = EventAccepted.model_validate(passed_on[0])
    assert accepted.applicant_sealed
    assert "applicant" not in accepted.data
    assert "001203004567" not in json.dumps(passed_on[0])


async def test_intake_mints_a_code_and_gives_the_same_one_on_retry(intake: httpx.AsyncClient) -> None:
    event = cloudevent(EventType.RECEIVED, None, received_data())
    first = (await intake.post("/v1/events", json=event, headers=CE)).json()
    again = (await intake.post("/v1/events", json=event, headers=CE)).json()
    assert re.fullmatch(r"000\.00\.24\.\d{5}-\d{6}-0001", first["dossier_code"])
    assert again == {"status": "duplicate", "id": event["id"], "dossier_code": first["dossier_code"]}
    second = (await intake.post("/v1/events", json=cloudevent(EventType.RECEIVED, None, received_data()),
                                headers=CE)).json()
    assert second["dossier_code"].endswith("-0002")


async def test_intake_refuses_with_reasons_on_http_and_the_rejections_topic(
        intake: httpx.AsyncClient, infra: Infra) -> None:
    code = dossier_code()
    bad = cloudevent(EventType.REJECTED, code, {})
    answer = await intake.post("/v1/events", json=bad, headers=CE)
    assert answer.status_code == 422
    assert answer.json()["reason"] == "invalid_data"
    assert answer.json()["problems"] == [{"field": "data.reason", "problem": "Field required"}]
    malformed = await intake.post("/v1/events", content=b"{oops", headers=CE)
    assert (malformed.status_code, malformed.json()["reason"]) == (400, "malformed_json")
    huge = await intake.post("/v1/events", content=b"[" + b" " * (5 * 1024 * 1024) + b"]", headers=CE)
    assert (huge.status_code, huge.json()["reason"]) == (413, "payload_too_large")
    batch = [cloudevent(EventType.RECEIVED, code, received_data()), {"specversion": "1.0"}]
    mixed = await intake.post("/v1/events", json=batch, headers={"content-type": "application/cloudevents-batch+json"})
    assert mixed.status_code == 207
    assert [item["status"] for item in mixed.json()["results"]] == ["accepted", "rejected"]
    refused = await records(infra.bootstrap_servers, topics.REJECTIONS, lambda r: r.get("subject") == code, 1)
    assert refused[0]["reason"] == "invalid_data"
    assert refused[0]["stage"] == "intake"


@pytest.fixture
async def resolution(infra: Infra, database_url: str, data_keys: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = ResolutionSettings.model_validate(service_env(infra, database_url, data_keys))
    async with in_process(build_resolution(settings), "resolution") as client:
        yield client


async def test_resolution_reports_the_outbox_rows_waiting_while_its_relay_is_off(
        infra: Infra, database_url: str, data_keys: str) -> None:
    settings = ResolutionSettings.model_validate({**service_env(infra, database_url, data_keys),
                                                  "relay_enabled": False})
    code = dossier_code()
    async with in_process(build_resolution(settings), "resolution") as client:
        producer = AIOKafkaProducer(bootstrap_servers=infra.bootstrap_servers)
        await producer.start()
        try:
            await producer.send_and_wait(topics.ACCEPTED, accepted(EventType.RECEIVED, code, received_data()),
                                         key=code.encode())
        finally:
            await producer.stop()

        async def waiting() -> float:
            scraped = await client.get("/metrics", params={"name[]": "tthc_outbox_pending"})
            return metric_total(scraped.text, "tthc_outbox_pending")

        # The event judged, its lifecycle event waits in the outbox (other tests' events may wait there too).
        assert await eventually(waiting, timeout=60, what="the outbox rows counted") >= 1


def accepted(kind: EventType, code: str, data: dict[str, Any], **extra: Any) -> bytes:
    event = cloudevent(kind, code, data, **extra)
    data = dict(event["data"])
    data.pop("applicant", None)
    return EventAccepted(id=event["id"], source=event["source"], event_type=kind, dossier_code=code,
                         occurred_at=event["time"], accepted_at=event["time"], data=data).model_dump_json().encode()


async def test_a_service_reports_how_long_a_snapshot_has_been_held_in_its_database(
        resolution: httpx.AsyncClient, database_url: str) -> None:
    async def oldest() -> float:
        scraped = await resolution.get("/metrics", params={"name[]": "tthc_database_oldest_snapshot_seconds"})
        return metric_total(scraped.text, "tthc_database_oldest_snapshot_seconds")

    async def held_over_a_second() -> bool:
        return await oldest() >= 1

    async def none_held() -> bool:
        return await oldest() < 1

    holder = await asyncpg.connect(database_url)  # as a backup or a long report would, beside the service
    try:
        async with holder.transaction(isolation="repeatable_read"):
            await holder.fetchval("SELECT 1")  # takes the transaction's snapshot, kept until it ends
            await eventually(held_over_a_second, timeout=30, what="the held snapshot's age reported")
        await eventually(none_held, timeout=30, what="the gauge back under a second once the snapshot is gone")
    finally:
        await holder.close()


async def test_resolution_folds_dedupes_refuses_and_publishes(resolution: httpx.AsyncClient, infra: Infra) -> None:
    code = dossier_code()
    received = accepted(EventType.RECEIVED, code, received_data())
    producer = AIOKafkaProducer(bootstrap_servers=infra.bootstrap_servers)
    await producer.start()
    try:
        for payload in (b"{not an accepted event", received, received,  # a redelivery changes nothing
                        accepted(EventType.APOLOGY_ISSUED, code, {"reason": "Chờ xác minh",
                                                                   "new_appointment_at": "2099-01-01T17:00:00+07:00"}),
                        accepted(EventType.RESULT_RETURNED, code, {}),  # not resolved yet: impossible
                        accepted(EventType.RESOLVED, code, {})):
            await producer.send_and_wait(topics.ACCEPTED, payload, key=code.encode())
    finally:
        await producer.stop()

    async def resolved() -> dict[str, Any] | None:
        reply = await resolution.get(f"/v1/dossiers/{code}")
        return reply.json() if reply.status_code == 200 and reply.json()["state"] == "resolved" else None

    dossier = await eventually(resolved, what="the dossier resolved")
    assert [e["event_type"] for e in dossier["timeline"]] == ["received", "apology_issued", "resolved"]
    assert any(step["kind"] == "counted_day" for step in dossier["explanation"])
    assert dossier["apology_issued"]
    assert dossier["appointment_at"].startswith("2099-01-01")
    canonical = await records(infra.bootstrap_servers, topics.LIFECYCLE, lambda r: r["dossier_code"] == code, 3)
    assert [c["sequence"] for c in canonical] == [1, 2, 3]
    assert canonical[0]["legal_due_at"] == canonical[2]["legal_due_at"]  # the apology moves only the appointment
    refused = await records(infra.bootstrap_servers, topics.REJECTIONS,
                            lambda r: r.get("subject") == code and r["stage"] == "resolution", 1)
    assert len(refused) == 1
    assert refused[0]["reason"] == "impossible_transition"
    assert refused[0]["dossier_state"] == "received"
    # The unreadable record ahead of them on the partition was refused, not retried for ever.
    digest = hashlib.sha256(b"{not an accepted event").hexdigest()
    unreadable = await records(infra.bootstrap_servers, topics.REJECTIONS,
                               lambda r: r.get("payload_sha256") == digest, 1)
    assert unreadable[0]["reason"] == "invalid_envelope"
    assert unreadable[0]["stage"] == "resolution"
    assert (await resolution.get("/v1/dossiers/000.00.24.07420-261125-0000")).status_code == 404


async def test_intake_lists_units_and_procedures_and_answers_deadlines(intake: httpx.AsyncClient) -> None:
    units = (await intake.get("/v1/units")).json()
    procedures = (await intake.get("/v1/procedures")).json()
    assert len(units["units"]) == 100
    assert units["version"]
    assert len(procedures["procedures"]) >= 30
    civil = next(p for p in procedures["procedures"] if p["cutoff"] == "15:00")
    # Friday 7 February 2025, 16:00: after the 15:00 cutoff, so counted from Monday 10 February.
    answer = await intake.get(f"/v1/procedures/{civil['code']}/deadline",
                              params={"received_at": "2025-02-07T16:00:00+07:00", "unit": units["units"][1]["code"]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["due_at"] == "2025-02-10T17:00:00+07:00"
    assert body["appointment_vi"] == "17 giờ 00 phút, ngày 10/02/2025"
    assert any(step["kind"] == "cutoff" for step in body["explanation"])
    assert (await intake.get("/v1/procedures/9.999999/deadline",
                             params={"received_at": "2025-02-07T16:00:00+07:00"})).status_code == 404
    naive = await intake.get(f"/v1/procedures/{civil['code']}/deadline", params={"received_at": "2025-02-07T16:00:00"})
    assert naive.status_code == 422


async def test_only_a_valid_key_speaks_and_only_for_its_units(
        intake: httpx.AsyncClient, infra: Infra, database_url: str) -> None:
    code, other_unit = dossier_code(), next(u for u in CATALOG.units if u != UNIT.code and u != "24")
    event = cloudevent(EventType.RECEIVED, code, received_data())
    unauthenticated = await intake.post("/v1/events", json=event, headers={**CE, "authorization": "Bearer nope"})
    assert (unauthenticated.status_code, unauthenticated.json()["reason"]) == (401, "unauthenticated")
    assert unauthenticated.headers["www-authenticate"] == "Bearer"
    forged = await intake.post("/v1/events", json=cloudevent(EventType.RECEIVED, code, received_data(),
                                                            source="urn:tthc:somebody-else"), headers=CE)
    assert (forged.status_code, forged.json()["reason"]) == (403, "forged_source")

    # A key for one other unit: it may not open a dossier at UNIT, nor touch one opened there...
    narrow = {**CE, "authorization": f"Bearer {await new_key(database_url, units=[other_unit])}"}
    assert (await intake.post("/v1/events", json=event, headers=narrow)).json()["reason"] == "forbidden_unit"
    assert (await intake.post("/v1/events", json=event, headers=CE)).status_code == 202
    resolved = cloudevent(EventType.RESOLVED, code, {})
    refused = await intake.post("/v1/events", json=resolved, headers=narrow)
    assert (refused.status_code, refused.json()["reason"]) == (403, "forbidden_unit")
    # ... but as a liên thông unit it may report the step it handles on that dossier.
    step = cloudevent(EventType.STEP_STARTED, code, {"step": "xác minh", "unit_code": other_unit})
    assert (await intake.post("/v1/events", json=step, headers=narrow)).status_code == 202

    conn = await asyncpg.connect(database_url)
    try:
        audited = [row["reason"] for row in await conn.fetch("SELECT reason FROM intake.auth_audit ORDER BY id")]
    finally:
        await conn.close()
    assert audited == ["unauthenticated", "forged_source", "forbidden_unit", "forbidden_unit"]
    refusals = await records(infra.bootstrap_servers, topics.REJECTIONS,
                            lambda r: r.get("subject") == code and r["reason"] == "forbidden_unit", 2)
    assert {r["stage"] for r in refusals} == {"intake"}


async def test_rotated_and_revoked_keys_stop_working(intake: httpx.AsyncClient, database_url: str) -> None:
    source = "urn:tthc:xa-test:rotation"
    old = {**CE, "authorization": f"Bearer {await new_key(database_url, source)}"}

    def post(headers: dict[str, str]) -> Any:
        return intake.post("/v1/events", headers=headers,
                           json=cloudevent(EventType.RECEIVED, dossier_code(), received_data(), source=source))

    assert (await post(old)).status_code == 202
    conn = await asyncpg.connect(database_url)
    try:
        new = {**CE, "authorization": f"Bearer {await keys.rotate(conn, source)}"}
        assert (await post(new)).status_code == 202

        async def old_refused() -> bool:
            return bool((await post(old)).status_code == 401)

        await eventually(old_refused, timeout=15, what="the rotated-out key refused")
        assert await keys.revoke(conn, source) == 1

        async def new_refused() -> bool:
            return bool((await post(new)).status_code == 401)

        await eventually(new_refused, timeout=15, what="the revoked key refused")
    finally:
        await conn.close()


async def test_a_dossier_received_and_resolved_in_one_batch_is_authorised(intake: httpx.AsyncClient) -> None:
    code = dossier_code()
    batch = [cloudevent(EventType.RECEIVED, code, received_data()), cloudevent(EventType.RESOLVED, code, {})]
    answer = await intake.post("/v1/events", json=batch,
                               headers={"content-type": "application/cloudevents-batch+json"})
    assert answer.status_code == 202, answer.text
    assert [item["status"] for item in answer.json()["results"]] == ["accepted", "accepted"]


async def test_resolution_takes_dossiers_from_its_cache_only_while_the_database_agrees(
        resolution: httpx.AsyncClient, infra: Infra, database_url: str) -> None:
    code = dossier_code()
    producer = AIOKafkaProducer(bootstrap_servers=infra.bootstrap_servers)
    await producer.start()

    async def send(payload: bytes) -> None:
        await producer.send_and_wait(topics.ACCEPTED, payload, key=code.encode())

    async def dossier_in(state: str) -> dict[str, Any] | None:
        reply = await resolution.get(f"/v1/dossiers/{code}")
        return reply.json() if reply.status_code == 200 and reply.json()["state"] == state else None

    async def reads(source: str) -> float:
        return metric_total((await resolution.get("/metrics")).text, "tthc_resolution_dossier_reads_total",
                            source=source)

    try:
        await send(accepted(EventType.RECEIVED, code, received_data()))
        await eventually(lambda: dossier_in("received"), what="the dossier received")
        await send(accepted(EventType.STEP_STARTED, code, {"step": "thẩm định", "unit_code": UNIT.code}))
        await eventually(lambda: dossier_in("processing"), what="the step started")
        assert await reads("cached") == 1  # the batch of the step took the dossier as this instance wrote it
        assert await reads("read") == 0

        # Someone else changes the dossier (another instance, a replay): the cached copy must not be used.
        conn = await asyncpg.connect(database_url)
        try:
            snapshot = json.loads(await conn.fetchval(
                "SELECT snapshot FROM resolution.dossiers WHERE code = $1", code))
            snapshot |= {"state": "paused", "stopped_since": snapshot["last_occurred_at"]}
            await conn.execute("UPDATE resolution.dossiers SET state = 'paused', snapshot = $2::jsonb, "
                               "updated_at = now() WHERE code = $1", code, json.dumps(snapshot))
        finally:
            await conn.close()
        await send(accepted(EventType.RESUMED, code, {}))  # possible only from the database's state

        async def resumed() -> dict[str, Any] | None:
            found = await dossier_in("processing")
            return found if found and found["timeline"][-1]["event_type"] == "resumed" else None

        await eventually(resumed, what="the dossier resumed")
    finally:
        await producer.stop()
    assert await reads("read") == 1
    canonical = await records(infra.bootstrap_servers, topics.LIFECYCLE, lambda r: r["dossier_code"] == code, 3)
    assert [c["event_type"] for c in canonical] == ["received", "step_started", "resumed"]
    refused = await records(infra.bootstrap_servers, topics.REJECTIONS, lambda r: r.get("subject") == code, 0)
    assert refused == []
