"""All four services as processes against a real broker and database: a dossier from commune to citizen."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shared.contract import topics
from shared.contract.events import EventType
from shared.infra.sinks import read_mail
from shared.infra.stack import Stack
from tests.e2e.conftest import intake_client, stack_key
from tests.support import cloudevent, dossier_code, eventually, metric_total, received_data

pytestmark = pytest.mark.e2e


def mails_to(folder: Path, code: str) -> list[dict[str, Any]]:
    return [mail for mail in read_mail(folder) if code in mail["subject"]] if folder.exists() else []


async def test_dossiers_flow_from_commune_to_citizen(stack: Stack) -> None:
    resolution = f"http://127.0.0.1:{stack.ports.resolution}"
    metrics = f"http://127.0.0.1:{stack.ports.metrics}/metrics"
    by_http, by_kafka = dossier_code(), dossier_code()
    malformed = b'{"specversion": "1.0", "id": broken'

    async with httpx.AsyncClient(timeout=30) as client, intake_client(stack) as commune:
        answer = await commune.post("/v1/events", json=cloudevent(EventType.RECEIVED, by_http, received_data()),
                                   headers={"content-type": "application/cloudevents+json"})
        assert answer.status_code == 202, answer.text
        assert answer.json() == {"status": "accepted", "id": answer.json()["id"], "dossier_code": by_http}
        answer = await commune.post("/v1/events", json=[cloudevent(EventType.RESOLVED, by_http, {})],
                                   headers={"content-type": "application/cloudevents-batch+json"})
        assert answer.status_code == 202, answer.text

        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap_servers)
        await producer.start()
        try:
            key = by_kafka.encode()
            await producer.send_and_wait(topics.INGRESS, json.dumps(
                cloudevent(EventType.RECEIVED, by_kafka, received_data("tran.thi.binh@example.vn", "online"))).encode(),
                key=key)
            # A malformed record on the same partition must be refused without stalling what follows it.
            await producer.send_and_wait(topics.INGRESS, malformed, key=key)
            await producer.send_and_wait(topics.INGRESS, json.dumps(
                cloudevent(EventType.RESOLVED, by_kafka, {})).encode(), key=key)
        finally:
            await producer.stop()

        async def resolved(code: str) -> dict[str, Any] | None:
            reply = await commune.get(f"/v1/dossiers/{code}")
            return reply.json() if reply.status_code == 200 and reply.json()["state"] == "resolved" else None

        for code in (by_http, by_kafka):
            dossier = await eventually(lambda c=code: resolved(c), what=f"{code} resolved")  # type: ignore[misc]
            assert dossier["timeliness"] in ("early", "on_time")
            assert [entry["event_type"] for entry in dossier["timeline"]] == ["received", "resolved"]
            assert dossier["legal_due_at"] > dossier["received_at"]
            assert "applicant_sealed" not in dossier
        # Resolution answers only intake; a key for other units learns nothing about these dossiers.
        assert (await client.get(f"{resolution}/v1/dossiers/{by_http}")).status_code == 403
        async with intake_client(stack, await stack_key(stack, units=["99999"])) as stranger:
            assert (await stranger.get(f"/v1/dossiers/{by_http}")).status_code == 404
        assert (await commune.get(f"/v1/dossiers/{by_http}",
                                  headers={"authorization": "Bearer tthc_x_y"})).status_code == 401

        async def counted() -> str | None:
            text = (await client.get(metrics)).text
            done = metric_total(text, "tthc_dossiers_completed_total") == 2
            return text if done and metric_total(text, "tthc_dossiers_received_total") == 2 else None

        text = await eventually(counted, what="metrics counting 2 received and 2 completed")
        assert metric_total(text, "tthc_dossiers_received_total", channel="online") == 1
        assert metric_total(text, "tthc_dossiers_completed_total", timeliness="late") == 0

    mail = stack.outbox_dir / "mail"
    messages = await eventually(_async(lambda: len(mails_to(mail, by_http)) == 2 and mails_to(mail, by_http)),
                                what="receipt and result emails")
    assert {m["subject"] for m in messages} == {f"Hồ sơ {by_http} đã được tiếp nhận", f"Hồ sơ {by_http} đã có kết quả"}
    assert all("Kính gửi ông/bà Nguyễn Văn An" in m["body"] and m["to"] == "nguyen.van.an@example.vn"
               for m in messages)
    # Sent in its own round, maybe after the HTTP dossier's two: waited for, not assumed.
    await eventually(_async(lambda: len(mails_to(mail, by_kafka)) >= 1), what="the Kafka dossier's receipt email")

    rejection = await _find_rejection(stack.bootstrap_servers, hashlib.sha256(malformed).hexdigest())
    assert rejection["reason"] == "malformed_json"
    assert rejection["stage"] == "intake"


def _async(check: Any) -> Any:
    async def wrapped() -> Any:
        return check()
    return wrapped


async def _find_rejection(bootstrap: str, digest: str) -> dict[str, Any]:
    consumer = AIOKafkaConsumer(topics.REJECTIONS, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        async def look() -> dict[str, Any] | None:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    found = json.loads(record.value)
                    if found.get("payload_sha256") == digest:
                        return dict(found)
            return None

        return await eventually(look, what="the malformed record's rejection")
    finally:
        await consumer.stop()
