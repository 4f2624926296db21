"""Notify in-process against the real broker and database, with real local providers: aiosmtpd for mail and
the gateway stand-in (shared/infra/sinks.py) for SMS and Zalo, made to fail, time out and rate-limit."""

from __future__ import annotations

import itertools
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiosmtpd.controller import Controller

from services.notify.app import build_app
from services.notify.settings import NotifySettings
from shared.contract import topics
from shared.contract.events import EventType
from shared.contract.lifecycle import DossierLifecycleEvent, DossierState, Timeliness
from shared.crypto import Keyring
from shared.infra.ports import free_port
from shared.infra.sinks import MailDirHandler, gateway_app, read_mail
from tests.conftest import Infra
from tests.integration.test_services import in_process
from tests.support import PROCEDURE, UNIT, dossier_code, eventually, served

pytestmark = pytest.mark.integration
NOTIFY = "http://notify"


@dataclass
class Providers:
    folder: Path
    smtp_port: int
    http: httpx.AsyncClient

    @property
    def gateway(self) -> str:
        return str(self.http.base_url).rstrip("/")

    def mails(self, code: str) -> list[dict[str, Any]]:
        folder = self.folder / "mail"
        return [m for m in read_mail(folder) if code in m["subject"]] if folder.exists() else []

    def texts(self, code: str) -> list[dict[str, Any]]:
        log = self.folder / "gateway.jsonl"
        entries = [json.loads(line) for line in log.read_text("utf-8").splitlines()] if log.exists() else []
        return [entry for entry in entries if code in entry["payload"]["text"]]

    async def attempts(self, channel: str) -> list[float]:
        """When each request for `channel` reached the gateway, failed ones included."""
        times: list[float] = (await self.http.get("/api/attempts")).json().get(channel, [])
        return times


@pytest.fixture
async def providers(tmp_path: Path) -> AsyncIterator[Providers]:
    smtp = Controller(MailDirHandler(tmp_path / "mail"), hostname="127.0.0.1", port=free_port())
    smtp.start()
    try:
        async with served(gateway_app(tmp_path), "the gateway stand-in") as base, \
                httpx.AsyncClient(base_url=base, timeout=30) as http:
            yield Providers(tmp_path, smtp.port, http)
    finally:
        smtp.stop()


async def start_at_end(bootstrap: str, group: str) -> None:
    """A new consumer group that starts after what is already on the lifecycle topic: other tests' dossiers
    (sealed under the same session keys) are not this test's business."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        numbers = await producer.partitions_for(topics.LIFECYCLE)
    finally:
        await producer.stop()
    partitions = [TopicPartition(topics.LIFECYCLE, p) for p in numbers]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        await consumer.commit({tp: await consumer.position(tp) for tp in partitions})
    finally:
        await consumer.stop()


@dataclass
class Env:
    infra: Infra
    database_url: str
    data_keys: str
    providers: Providers
    group: str

    def settings(self, **overrides: Any) -> NotifySettings:
        values: dict[str, Any] = {
            "KAFKA_BOOTSTRAP_SERVERS": self.infra.bootstrap_servers, "DATABASE_URL": self.database_url,
            "TTHC_DATA_KEYS": self.data_keys, "TTHC_TOPIC_PARTITIONS": 3, "consumer_group": self.group,
            "smtp_port": self.providers.smtp_port, "survey_base_url": f"{NOTIFY}/khao-sat",
            "sms_url": f"{self.providers.gateway}/sms", "zalo_url": f"{self.providers.gateway}/zalo",
            "retry_base_seconds": 0.05, "retry_max_seconds": 0.5, "callback_secret": "callback-secret",
        }
        return NotifySettings.model_validate({**values, **overrides})

    def notify(self, **overrides: Any) -> AbstractAsyncContextManager[httpx.AsyncClient]:
        return in_process(build_app(self.settings(**overrides)), "notify")


@pytest.fixture
async def env(infra: Infra, database_url: str, data_keys: str, providers: Providers,
              topics_ready: None) -> Env:
    group = f"notify-test-{uuid.uuid4().hex[:8]}"
    await start_at_end(infra.bootstrap_servers, group)
    return Env(infra, database_url, data_keys, providers, group)


class Dossier:
    """Publishes a dossier's canonical lifecycle events as resolution would."""

    def __init__(self, data_keys: str, notify_via: list[str], email: str = "hong.nhung@example.vn") -> None:
        self.code = dossier_code()
        self.notify_via = notify_via
        applicant = {"full_name": "Trần Thị Hồng Nhung", "id_number": "001203004567", "email": email,
                     "phone": "0987654321"}
        self.sealed = Keyring.parse(data_keys).seal(json.dumps(applicant).encode(), self.code)
        self.sequence = 0

    def event(self, kind: EventType, details: dict[str, Any] | None = None,
              timeliness: Timeliness | None = None, reason: str | None = None) -> DossierLifecycleEvent:
        self.sequence += 1
        now = datetime.now(UTC)
        return DossierLifecycleEvent(
            id=f"{self.code}:{self.sequence}", dossier_code=self.code, sequence=self.sequence, event_type=kind,
            occurred_at=now, recorded_at=now, source="urn:test", source_event_id=str(uuid.uuid4()),
            procedure_code=PROCEDURE.code, unit_code=UNIT.code, sector="test", channel="online",
            state=DossierState.PROCESSING, status_code=4, received_at=now, legal_due_at=now + timedelta(days=5),
            appointment_at=now + timedelta(days=5), timeliness=timeliness, reason=reason, details=details or {},
            calendar_version="c", policy_version="p", notify_via=self.notify_via,
            applicant_sealed=self.sealed if kind is EventType.RECEIVED else None)


async def publish(infra: Infra, *events: DossierLifecycleEvent) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=infra.bootstrap_servers)
    await producer.start()
    try:
        for event in events:
            await producer.send_and_wait(topics.LIFECYCLE, event.model_dump_json().encode(),
                                         key=event.dossier_code.encode())
    finally:
        await producer.stop()


async def statuses(notify: httpx.AsyncClient, code: str) -> list[dict[str, Any]]:
    reply = await notify.get("/v1/notifications", params={"dossier": code})
    assert reply.status_code == 200, reply.text
    rows: list[dict[str, Any]] = reply.json()
    return rows


async def settled(notify: httpx.AsyncClient, code: str, count: int,
                  done: Callable[[dict[str, Any]], bool] = lambda r: r["status"] == "delivered",
                  timeout: float = 60) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]] | None:
        rows = await statuses(notify, code)
        return rows if len(rows) == count and all(done(r) for r in rows) else None

    return await eventually(check, timeout, what=f"{count} deliveries of {code} settled")


def link(body: str, path: str) -> str:
    found = re.search(rf"{NOTIFY}(/{path}/\S+)", body)
    assert found, f"no /{path}/ link in {body!r}"
    return found.group(1)


def metric(text: str, name: str, **labels: str) -> float | None:
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_the_survey_link_takes_one_answer_per_dossier_and_counts_it_across_a_restart(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    dossier = Dossier(env.data_keys, ["email"])
    async with env.notify() as notify:
        await publish(env.infra, dossier.event(EventType.RECEIVED), dossier.event(EventType.RESULT_RETURNED))
        await settled(notify, dossier.code, 2)
        [last] = [m for m in env.providers.mails(dossier.code) if "hài lòng" in m["subject"]]
        survey = link(last["body"], "khao-sat")
        assert survey.startswith(f"/khao-sat/{dossier.code}/")

        form = await notify.get(survey)
        assert form.status_code == 200
        assert form.headers["cache-control"] == "no-store"
        assert form.headers["referrer-policy"] == "no-referrer"
        for text in ("Đánh giá mức độ hài lòng", "Hài lòng", "Bình thường", "Không hài lòng",
                     "Góp ý (không bắt buộc)", dossier.code, UNIT.name_vi):
            assert text in form.text

        # Nobody answers for a dossier without its own link: not with a made-up token, not with another
        # dossier's token, not with a token for another purpose.
        stranger = Dossier(env.data_keys, ["email"])
        token = survey.rsplit("/", 1)[1]
        for forged in (f"/khao-sat/{dossier.code}/{'A' * 22}", f"/khao-sat/{stranger.code}/{token}"):
            for reply in (await notify.get(forged), await notify.post(forged, data={"rating": "dissatisfied"})):
                assert reply.status_code == 404
                assert "Liên kết không hợp lệ" in reply.text

        missing = await notify.post(survey, data={"comment": "x"})
        assert (missing.status_code, "Vui lòng chọn một mức độ hài lòng" in missing.text) == (422, True)
        comment = "Cán bộ tận tình; số của tôi 0987654321"
        answered = await notify.post(survey, data={"rating": "satisfied", "comment": comment})
        assert answered.status_code == 200
        assert "Trân trọng cảm ơn ông/bà đã đánh giá" in answered.text
        again = await notify.post(survey, data={"rating": "dissatisfied"})
        assert again.status_code == 409
        assert "chỉ được đánh giá một lần" in again.text
        assert "đã được đánh giá" in (await notify.get(survey)).text

        scraped = (await notify.get("/metrics")).text
        assert metric(scraped, "tthc_satisfaction_answers_total", unit=UNIT.code, rating="satisfied") == 1
        assert metric(scraped, "tthc_satisfaction_answers_total", unit=UNIT.code, rating="dissatisfied") is None
        assert metric(scraped, "tthc_satisfaction_surveys_total", unit=UNIT.code) == 1
        assert dossier.code not in scraped

    conn = await asyncpg.connect(env.database_url)
    try:
        row = await conn.fetchrow("SELECT rating, comment_sealed FROM notify.surveys WHERE dossier_code = $1",
                                  dossier.code)
    finally:
        await conn.close()
    assert row is not None
    assert row["rating"] == "satisfied"
    assert "tận tình" not in row["comment_sealed"]
    assert Keyring.parse(env.data_keys).open(row["comment_sealed"], f"survey:{dossier.code}").decode() == comment
    assert "tận tình" not in caplog.text
    assert "0987654321" not in caplog.text

    async with env.notify() as restarted:  # counts come from the database, not from the process
        # A scrape asking for one family is read from the database too (Prometheus' `name[]` filter).
        scraped = (await restarted.get("/metrics", params={"name[]": "tthc_satisfaction_answers_total"})).text
        assert metric(scraped, "tthc_satisfaction_answers_total", unit=UNIT.code, rating="satisfied") == 1


async def test_an_internationalised_address_goes_through_a_relay_that_takes_smtputf8_and_waits_for_one(
        env: Env, tmp_path: Path) -> None:
    address = "hồng.nhung@thư-viện.vn"
    taken = Dossier(env.data_keys, ["email"], email=address)
    async with env.notify() as notify:  # the providers' relay takes SMTPUTF8
        await publish(env.infra, taken.event(EventType.RECEIVED))
        await settled(notify, taken.code, 1)
    [mail] = env.providers.mails(taken.code)
    assert mail["to"] == address
    assert "Trần Thị Hồng Nhung" in mail["body"]

    ascii_relay = Controller(MailDirHandler(tmp_path / "ascii-mail"), hostname="127.0.0.1", port=free_port(),
                             enable_SMTPUTF8=False)
    ascii_relay.start()
    try:
        refused = Dossier(env.data_keys, ["email"], email=address)
        async with env.notify(smtp_port=ascii_relay.port) as notify:
            await publish(env.infra, refused.event(EventType.RECEIVED))
            # Refused like any provider's refusal: retried, not dropped.
            [row] = await settled(notify, refused.code, 1, done=lambda r: r["attempts"] >= 2)
        assert row["status"] in ("temporary-failure", "queued", "sending")
        assert read_mail(tmp_path / "ascii-mail") == []
    finally:
        ascii_relay.stop()


async def test_opt_out_stops_optional_notices_and_never_those_the_law_requires(env: Env) -> None:
    dossier = Dossier(env.data_keys, ["email", "sms"])
    async with env.notify() as notify:
        await publish(env.infra, dossier.event(EventType.RECEIVED))
        await settled(notify, dossier.code, 2)
        [receipt] = env.providers.mails(dossier.code)
        opt_out = link(receipt["body"], "huy-nhan-tin")

        page = await notify.get(opt_out)
        assert page.status_code == 200
        assert "Xác nhận không nhận thông báo không bắt buộc" in page.text
        assert "vẫn được gửi" in page.text
        forged = await notify.post(f"/huy-nhan-tin/{dossier.code}/{'B' * 22}", data={"action": "stop"})
        assert forged.status_code == 404
        survey_token = opt_out.rsplit("/", 1)[1]
        assert (await notify.post(f"/khao-sat/{dossier.code}/{survey_token}", data={"rating": "neutral"})
                ).status_code == 404  # an opt-out link does not answer the survey either
        stopped = await notify.post(opt_out, data={"action": "stop"})
        assert stopped.status_code == 200
        assert "Đã ghi nhận" in stopped.text
        assert "Nhận lại thông báo" in stopped.text
        assert (await notify.post(opt_out, data={"action": "stop"})).status_code == 200  # idempotent

        await publish(env.infra,
                      dossier.event(EventType.FEE_REQUESTED, {"amount_vnd": 50000}),
                      dossier.event(EventType.SUPPLEMENT_REQUESTED, {"reason": "Thiếu tờ khai", "items": []}),
                      dossier.event(EventType.APOLOGY_ISSUED, {"reason": "Chờ xác minh"}),
                      dossier.event(EventType.RESOLVED, timeliness=Timeliness.ON_TIME))
        rows = await settled(notify, dossier.code, 10, lambda r: r["status"] in {"delivered", "opted-out"})
        by_template = {(r["template"], r["channel"]): (r["status"], r["required"]) for r in rows}
        for channel in ("email", "sms"):
            assert by_template[("fee_requested", channel)] == ("opted-out", False)
            assert by_template[("resolved", channel)] == ("opted-out", False)
            for template in ("received", "supplement_requested", "apology_issued"):
                assert by_template[(template, channel)] == ("delivered", True)
        subjects = [m["subject"] for m in env.providers.mails(dossier.code)]
        assert len(subjects) == 3
        assert not any("tài chính" in s or "đã có kết quả" in s for s in subjects)
        assert len(env.providers.texts(dossier.code)) == 3

        resumed = await notify.post(opt_out, data={"action": "resume"})
        assert "sẽ nhận lại đầy đủ thông báo" in resumed.text
        await publish(env.infra, dossier.event(EventType.RESULT_RETURNED))
        rows = await settled(notify, dossier.code, 12, lambda r: r["status"] in {"delivered", "opted-out"})
        assert {r["status"] for r in rows if r["template"] == "result_returned"} == {"delivered"}
        scraped = (await notify.get("/metrics")).text
        assert metric(scraped, "tthc_notification_deliveries", channel="sms", status="opted-out") == 2


async def test_a_failing_gateway_opens_the_circuit_and_the_queue_waits_until_it_is_back(env: Env) -> None:
    cool_down = 1.0
    await env.providers.http.post("/api/faults", json={"channel": "sms", "status": 503, "times": 10_000})
    dossiers = [Dossier(env.data_keys, ["sms"]) for _ in range(3)]
    # One sender, so that the tries are counted exactly: with several, those already in flight when the circuit
    # opens still reach the gateway.
    async with env.notify(breaker_threshold=2, breaker_cool_down_seconds=cool_down, max_attempts=1000,
                          senders_per_channel=1) as notify:
        await publish(env.infra, *(d.event(EventType.RECEIVED) for d in dossiers))

        async def circuit_open() -> bool:
            scraped = (await notify.get("/metrics")).text
            return metric(scraped, "tthc_notify_provider_circuit_open", channel="sms") == 1

        await eventually(circuit_open, what="the SMS circuit open")

        async def probed_twice() -> list[float] | None:
            times = await env.providers.attempts("sms")
            return times if len(times) >= 4 else None

        # Two failures open the circuit (the third message is not tried); then, instead of a call at every
        # message's 50 ms backoff, one probe per cool-down.
        times = await eventually(probed_twice, what="two half-open probes")
        assert times[1] - times[0] < cool_down
        assert [later - earlier >= cool_down for earlier, later in itertools.pairwise(times[1:4])] == [True, True]
        for d in dossiers:
            [row] = await statuses(notify, d.code)
            assert row["status"] in {"queued", "temporary-failure", "sending"}
        assert not any(env.providers.texts(d.code) for d in dossiers)

        await env.providers.http.delete("/api/faults")
        for d in dossiers:
            await settled(notify, d.code, 1)
            assert len(env.providers.texts(d.code)) == 1
        scraped = (await notify.get("/metrics")).text
        assert metric(scraped, "tthc_notify_provider_circuit_open", channel="sms") == 0
        assert (metric(scraped, "tthc_notifications_total", channel="sms", outcome="temporary-failure") or 0) >= 2


async def test_a_slow_provider_gets_as_many_messages_at_once_as_there_are_senders_and_no_more(env: Env) -> None:
    hold = 1.0
    await env.providers.http.post("/api/faults", json={"channel": "sms", "delay": hold, "times": 4})
    dossiers = [Dossier(env.data_keys, ["sms"]) for _ in range(4)]
    # Published before notify starts, so that it queues all four in one batch and one round claims them.
    await publish(env.infra, *(d.event(EventType.RECEIVED) for d in dossiers))
    async with env.notify(senders_per_channel=2) as notify:
        for d in dossiers:
            await settled(notify, d.code, 1)
            assert len(env.providers.texts(d.code)) == 1
    arrived = sorted(await env.providers.attempts("sms"))
    assert len(arrived) == 4
    # Two reach the gateway before it has answered either; the third only once one of them has its answer.
    assert arrived[1] - arrived[0] < hold
    assert arrived[2] - arrived[0] >= hold


async def test_timeouts_and_429s_are_retried_within_each_providers_rate_limit(env: Env) -> None:
    rate = 4.0
    # The gateway answers the first SMS after the caller gave up, and refuses the first Zalo message as too many.
    await env.providers.http.post("/api/faults", json={"channel": "sms", "status": 503, "delay": 2, "times": 1})
    await env.providers.http.post("/api/faults", json={"channel": "zalo", "status": 429, "times": 1})
    dossiers = [Dossier(env.data_keys, ["sms", "zalo"]) for _ in range(6)]
    async with env.notify(gateway_timeout_seconds=0.5, rate_per_second={"sms": rate, "zalo": 50.0},
                          rate_burst={"sms": 1, "zalo": 50}) as notify:
        await publish(env.infra, *(d.event(EventType.RECEIVED) for d in dossiers))
        rows = [row for d in dossiers for row in await settled(notify, d.code, 2)]
        assert max(r["attempts"] for r in rows if r["channel"] == "sms") == 2
        assert max(r["attempts"] for r in rows if r["channel"] == "zalo") == 2
        texts = [t for d in dossiers for t in env.providers.texts(d.code)]
        assert len(texts) == 12  # each once, despite the retries
        sms_times = sorted(datetime.fromisoformat(t["received_at"]) for t in texts if t["channel"] == "sms")
        # Six SMS at four a second with no burst: the last one at least 1.25 s after the first.
        assert (sms_times[-1] - sms_times[0]).total_seconds() >= (len(sms_times) - 1) / rate * 0.95
        scraped = (await notify.get("/metrics")).text
        for channel in ("sms", "zalo"):
            assert metric(scraped, "tthc_notifications_total", channel=channel, outcome="temporary-failure") == 1
            assert metric(scraped, "tthc_notification_deliveries", channel=channel, status="delivered") == 6


async def test_provider_callbacks_settle_deliveries_only_with_the_shared_secret(env: Env) -> None:
    dossier = Dossier(env.data_keys, ["email", "zalo"])
    async with env.notify() as notify:
        await publish(env.infra, dossier.event(EventType.RECEIVED))
        await settled(notify, dossier.code, 2)
        [text] = env.providers.texts(dossier.code)
        [mail] = env.providers.mails(dossier.code)
        good = {"authorization": "Bearer callback-secret"}
        zalo = "/v1/notifications/callbacks/zalo"
        report = {"message_id": text["message_id"], "status": "delivered"}

        assert (await notify.post(zalo, json=report)).status_code == 401
        assert (await notify.post(zalo, json=report, headers={"authorization": "Bearer nope"})).status_code == 401
        assert (await notify.post(zalo, json={**report, "message_id": "unknown"}, headers=good)).status_code == 404
        assert (await notify.post("/v1/notifications/callbacks/sms", json=report, headers=good)).status_code == 404
        assert (await notify.post(zalo, json={**report, "status": "read"}, headers=good)).status_code == 422

        for _ in range(2):  # providers repeat callbacks; the answer stays the same
            reply = await notify.post(zalo, json=report, headers=good)
            assert reply.json() == {"message_id": text["message_id"], "status": "delivered"}
        bounce = {"message_id": mail["message_id"], "status": "failed", "error": "mailbox unavailable"}
        reply = await notify.post("/v1/notifications/callbacks/email", json=bounce, headers=good)
        assert reply.json()["status"] == "permanent-failure"

        rows = {r["channel"]: r for r in await statuses(notify, dossier.code)}
        assert (rows["zalo"]["status"], rows["zalo"]["provider_status"]) == ("delivered", "delivered")
        assert (rows["email"]["status"], rows["email"]["provider_status"]) == ("permanent-failure", "failed")
        scraped = (await notify.get("/metrics", params={"name[]": "tthc_notification_deliveries"})).text
        assert metric(scraped, "tthc_notification_deliveries", channel="email", status="permanent-failure") == 1
        assert metric(scraped, "tthc_notification_deliveries", channel="zalo", status="delivered") == 1

    unconfigured = build_app(env.settings(callback_secret=None))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=unconfigured), base_url=NOTIFY) as client:
        reply = await client.post(zalo, json=report, headers=good)
        assert reply.status_code == 403  # no secret configured: nobody may report


async def test_an_unreadable_record_is_skipped_and_counted_and_holds_nothing_up(env: Env) -> None:
    dossier = Dossier(env.data_keys, ["email"])
    async with env.notify() as notify:
        producer = AIOKafkaProducer(bootstrap_servers=env.infra.bootstrap_servers)
        await producer.start()
        # The same key: the unreadable record stands right before the event in its partition. JSON naming the
        # dossier, as other tests read this shared topic as JSON objects, but nothing a canonical event needs.
        unreadable_record = json.dumps({"dossier_code": dossier.code}).encode()
        try:
            await producer.send_and_wait(topics.LIFECYCLE, unreadable_record, key=dossier.code.encode())
        finally:
            await producer.stop()
        await publish(env.infra, dossier.event(EventType.RECEIVED))
        await settled(notify, dossier.code, 1)
        assert [mail["to"] for mail in env.providers.mails(dossier.code)] == ["hong.nhung@example.vn"]
        unreadable = metric((await notify.get("/metrics")).text, "tthc_unreadable_records_total",
                            topic=topics.LIFECYCLE)
        assert unreadable == 1
