"""Every trigger reaches the citizen on every channel they chose, once, in Vietnamese."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from shared.contract.events import EventType
from shared.infra.sinks import read_mail
from shared.infra.stack import Stack
from tests.e2e.conftest import intake_client
from tests.support import UNIT, VN, cloudevent, dossier_code, eventually, received_data

pytestmark = pytest.mark.e2e


def gateway_messages(stack: Stack, code: str) -> list[dict[str, Any]]:
    log = stack.outbox_dir / "gateway.jsonl"
    if not log.exists():
        return []
    entries = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line]
    return [entry for entry in entries if code in entry["payload"]["text"]]


async def test_each_trigger_is_delivered_once_on_each_chosen_channel(stack: Stack) -> None:
    code = dossier_code()
    data = received_data()
    data["applicant"]["notify_via"] = ["email", "sms", "zalo"]
    start = datetime.now(VN) - timedelta(hours=1)
    events = [
        cloudevent(EventType.RECEIVED, code, data, at=start),
        cloudevent(EventType.SUPPLEMENT_REQUESTED, code, {"reason": "Thiếu bản sao giấy khai sinh",
                                                          "items": ["Bản sao giấy khai sinh"]},
                   at=start + timedelta(minutes=10)),
        cloudevent(EventType.SUPPLEMENT_RECEIVED, code, {}, at=start + timedelta(minutes=20)),
        cloudevent(EventType.RESOLVED, code, {}, at=start + timedelta(minutes=30)),
        cloudevent(EventType.RESULT_RETURNED, code, {}, at=start + timedelta(minutes=40)),
    ]
    async with intake_client(stack) as intake:
        reply = await intake.post("/v1/events", json=events)
        assert reply.status_code == 202, reply.text
        # A commune resending the same events changes nothing downstream.
        assert (await intake.post("/v1/events", json=events)).status_code == 202

    mail_dir = stack.outbox_dir / "mail"

    async def all_sent() -> bool:
        mails = [m for m in read_mail(mail_dir) if code in m["subject"]] if mail_dir.exists() else []
        return len(mails) >= 4 and len(gateway_messages(stack, code)) >= 8

    await eventually(all_sent, what="4 emails and 8 SMS/Zalo messages")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.ports.notify}", timeout=30) as notify:
        async def settled() -> list[dict[str, Any]] | None:
            rows = (await notify.get("/v1/notifications", params={"dossier": code})).json()
            return rows if len(rows) == 12 and all(r["status"] == "delivered" for r in rows) else None

        rows = await eventually(settled, what="12 deliveries recorded as delivered")
    assert {(r["template"], r["channel"]) for r in rows} == {
        (template, channel) for template in ("received", "supplement_requested", "resolved", "result_returned")
        for channel in ("email", "sms", "zalo")}

    mails = [m for m in read_mail(mail_dir) if code in m["subject"]]
    assert len(mails) == 4  # exactly once each, despite the resent events
    supplement = next(m for m in mails if "cần bổ sung" in m["subject"])
    assert "Bản sao giấy khai sinh" in supplement["body"]
    assert "Kính gửi ông/bà Nguyễn Văn An" in supplement["body"]
    texts = gateway_messages(stack, code)
    assert len(texts) == 8
    assert {entry["channel"] for entry in texts} == {"sms", "zalo"}
    assert all(entry["payload"]["phone"] == "0912345678" for entry in texts)
    assert any(f"Hồ sơ {code} đã được tiếp nhận" in entry["payload"]["text"] for entry in texts)


async def test_the_last_message_links_to_a_survey_that_takes_one_answer_and_feeds_the_metric(stack: Stack) -> None:
    code = dossier_code()
    start = datetime.now(VN) - timedelta(hours=1)
    events = [
        cloudevent(EventType.RECEIVED, code, received_data(), at=start),
        cloudevent(EventType.RESOLVED, code, {}, at=start + timedelta(minutes=30)),
        cloudevent(EventType.RESULT_RETURNED, code, {}, at=start + timedelta(minutes=40)),
    ]
    async with intake_client(stack) as intake:
        assert (await intake.post("/v1/events", json=events)).status_code == 202
    mail_dir = stack.outbox_dir / "mail"

    async def survey_mail() -> dict[str, Any] | None:
        mails = read_mail(mail_dir) if mail_dir.exists() else []
        return next((m for m in mails if code in m["subject"] and "hài lòng" in m["subject"]), None)

    body = (await eventually(survey_mail, what="the result-returned email"))["body"]
    base = f"http://127.0.0.1:{stack.ports.notify}"
    found = re.search(rf"{re.escape(base)}(/khao-sat/\S+)", body)
    assert found, body
    async with httpx.AsyncClient(base_url=base, timeout=30) as notify:
        form = await notify.get(found.group(1))
        assert form.status_code == 200
        assert all(text in form.text for text in ("Hài lòng", "Bình thường", "Không hài lòng"))
        answer = await notify.post(found.group(1), data={"rating": "neutral", "comment": "Chờ hơi lâu"})
        assert answer.status_code == 200
        assert (await notify.post(found.group(1), data={"rating": "satisfied"})).status_code == 409
        assert (await notify.get(f"/khao-sat/{code}/{'x' * 22}")).status_code == 404
        scraped = (await notify.get("/metrics")).text
    line = f'tthc_satisfaction_answers_total{{rating="neutral",unit="{UNIT.code}"}}'
    assert any(row.startswith(line) and float(row.rsplit(" ", 1)[1]) >= 1 for row in scraped.splitlines())
    assert code not in scraped
