"""The due-soon alert to the handling unit's webhook, in-process against the real broker and database, with
the sinks' commune-system stand-in (a real local HTTP server) receiving it: once, signed, not before the
dossier's due_soon_at, and never for a dossier that closed first, even one that closed while its alert was
being sent."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.notify import webhook
from services.notify.app import build_app
from services.notify.settings import NotifySettings
from shared.contract.events import EventType
from shared.contract.lifecycle import DossierLifecycleEvent, DossierState
from shared.infra.sinks import gateway_app, read_webhooks
from tests.conftest import Infra
from tests.integration.test_notify_service import publish, start_at_end, statuses
from tests.integration.test_services import in_process
from tests.support import PROCEDURE, UNIT, dossier_code, eventually, served

pytestmark = pytest.mark.integration
SECRET = "commune-webhook-secret"


@pytest.fixture
async def commune(tmp_path: Path) -> AsyncIterator[tuple[Path, str]]:
    """The sinks' HTTP stand-in, playing the commune's system at /webhook: (its folder, its base URL)."""
    async with served(gateway_app(tmp_path), "the commune-system stand-in") as base:
        yield tmp_path, base


def notify_settings(infra: Infra, database_url: str, data_keys: str, group: str, base: str) -> NotifySettings:
    return NotifySettings.model_validate({
        "KAFKA_BOOTSTRAP_SERVERS": infra.bootstrap_servers, "DATABASE_URL": database_url,
        "TTHC_DATA_KEYS": data_keys, "TTHC_TOPIC_PARTITIONS": 3, "consumer_group": group,
        "survey_base_url": "http://notify/khao-sat", "retry_base_seconds": 0.05, "retry_max_seconds": 0.5,
        "unit_webhooks": {"99999": "http://127.0.0.1:9/never"}, "default_webhook_url": f"{base}/webhook",
        "webhook_secret": SECRET,
    })


class Clock:
    """A dossier's canonical events as resolution publishes them, with the due instants the test chooses."""

    def __init__(self) -> None:
        self.code = dossier_code()
        self.sequence = 0
        self.received_at = datetime.now(UTC)

    def event(self, kind: EventType, state: DossierState, due: datetime | None = None,
              soon: datetime | None = None) -> DossierLifecycleEvent:
        self.sequence += 1
        now = datetime.now(UTC)
        return DossierLifecycleEvent(
            id=f"{self.code}:{self.sequence}", dossier_code=self.code, sequence=self.sequence, event_type=kind,
            occurred_at=now, recorded_at=now, source="urn:test", source_event_id=str(uuid.uuid4()),
            procedure_code=PROCEDURE.code, unit_code=UNIT.code, sector="test", channel="online", state=state,
            status_code=4, received_at=self.received_at, legal_due_at=due,
            due_soon_at=soon, appointment_at=due,
            calendar_version="c", policy_version="p", notify_via=[])


def alerts(folder: Path, code: str) -> list[dict[str, Any]]:
    return [entry for entry in read_webhooks(folder) if entry["payload"]["dossier_code"] == code]


async def test_a_running_dossier_alerts_its_unit_once_signed_after_due_soon_and_a_closed_one_never(
        infra: Infra, database_url: str, data_keys: str, topics_ready: None, commune: tuple[Path, str]) -> None:
    folder, base = commune
    group = f"notify-webhook-{uuid.uuid4().hex[:8]}"
    await start_at_end(infra.bootstrap_servers, group)
    settings = notify_settings(infra, database_url, data_keys, group, base)
    conn = await asyncpg.connect(database_url)

    async def decided(code: str, sequence: int) -> bool:
        return bool(await conn.fetchval("SELECT true FROM notify.due_alert_clocks WHERE dossier_code = $1 "
                                        "AND sequence >= $2", code, sequence))

    try:
        async with in_process(build_app(settings), "notify") as notify:
            # The consumer is live before the clocks below start: a closing event must beat its due_soon_at.
            warm = Clock()
            await publish(infra, warm.event(EventType.RECEIVED, DossierState.RESOLVED))
            await eventually(lambda: decided(warm.code, 1), what="notify consuming")

            start = datetime.now(UTC)
            due, soon = start + timedelta(hours=1), start + timedelta(seconds=3)
            earlier = start + timedelta(seconds=2)
            running, resolved, moved = Clock(), Clock(), Clock()
            received = running.event(EventType.RECEIVED, DossierState.RECEIVED, due, soon)
            await publish(
                infra,
                resolved.event(EventType.RECEIVED, DossierState.RECEIVED, due, earlier),
                resolved.event(EventType.RESOLVED, DossierState.RESOLVED, due),
                received, received,  # a resend schedules nothing new
                running.event(EventType.STEP_STARTED, DossierState.PROCESSING, due, soon),  # same due: kept
                moved.event(EventType.RECEIVED, DossierState.RECEIVED, due, earlier),
                # An extension moves the due instant: the waiting alert gives way to one for the new instant.
                moved.event(EventType.APOLOGY_ISSUED, DossierState.PROCESSING, due + timedelta(hours=1), soon),
            )

            async def delivered(code: str) -> list[dict[str, Any]] | None:
                return alerts(folder, code) or None

            [alert] = await eventually(lambda: delivered(running.code), what="the due-soon alert")
            [moved_alert] = await eventually(lambda: delivered(moved.code), what="the moved dossier's alert")

            # Not before the instant, exactly once, machine fields and a Vietnamese message, signed.
            arrived = datetime.fromisoformat(alert["received_at"])
            assert arrived >= soon
            payload = alert["payload"]
            assert payload["event_type"] == "due_soon"
            assert (payload["unit_code"], payload["procedure_code"]) == (UNIT.code, PROCEDURE.code)
            assert payload["state"] == "processing"
            assert payload["legal_due_at"] == due.isoformat()
            assert payload["message"].startswith(f"Hồ sơ {running.code} (")
            assert "sắp đến hạn giải quyết" in payload["message"]
            headers = alert["headers"]
            assert headers["idempotency-key"] == f"{running.code}:due_soon@{due.isoformat()}:webhook"
            raw = alert["raw"].encode()
            now = datetime.now(UTC).timestamp()
            assert webhook.verify(SECRET.encode(), headers["x-tthc-timestamp"], raw, headers["x-tthc-signature"],
                                  now=now)
            assert not webhook.verify(b"wrong", headers["x-tthc-timestamp"], raw, headers["x-tthc-signature"],
                                      now=now)
            # The moved due instant: the first alert was cancelled, the one for the new instant sent.
            assert moved_alert["payload"]["legal_due_at"] == (due + timedelta(hours=1)).isoformat()
            moved_rows = await conn.fetch("SELECT event_id, status FROM notify.deliveries WHERE dossier_code = $1",
                                          moved.code)
            by_instant = {r["event_id"]: r["status"] for r in moved_rows}
            assert by_instant.pop(f"due_soon@{(due + timedelta(hours=1)).astimezone(UTC).isoformat()}") == "delivered"
            # Never sent: cancelled, or never queued at all when both events came in one batch (only a
            # dossier's newest event of a batch decides).
            assert by_instant in ({f"due_soon@{due.astimezone(UTC).isoformat()}": "cancelled"}, {})

            # A dossier resolved before its due_soon_at (which is earlier than the others'): nothing sent.
            assert alerts(folder, resolved.code) == []
            assert await statuses(notify, resolved.code) == []
            rows = await conn.fetch("SELECT status FROM notify.deliveries WHERE dossier_code = $1", resolved.code)
            # Cancelled, or never queued when its two events came in one batch.
            assert [r["status"] for r in rows] in (["cancelled"], [])

            # Resent once more after the alert went out, then a later event behind it on the same partition:
            # when that one is decided, the resend was consumed too, and nothing new was sent.
            await publish(infra, received, running.event(EventType.RESOLVED, DossierState.RESOLVED, due))
            await eventually(lambda: decided(running.code, 3), what="the resend consumed")
            assert len(alerts(folder, running.code)) == 1
            [row] = await statuses(notify, running.code)
            assert (row["channel"], row["template"], row["status"], row["attempts"]) == (
                "webhook", "due_soon", "delivered", 1)
    finally:
        await conn.close()


async def test_an_alert_whose_dossier_closes_while_it_is_being_sent_is_not_sent_again_when_that_send_fails(
        infra: Infra, database_url: str, data_keys: str, topics_ready: None) -> None:
    # The unit's system holds its answer to the first alert until the test lets it go, then fails it (503); any
    # later attempt it would accept.
    asked, answer = asyncio.Event(), asyncio.Event()
    received: list[dict[str, Any]] = []
    system = FastAPI()

    @system.post("/webhook")
    async def hold_then_fail(request: Request) -> JSONResponse:
        received.append(await request.json())
        if len(received) > 1:
            return JSONResponse({"status": "accepted"})
        asked.set()
        await answer.wait()
        return JSONResponse({"error": "down for maintenance"}, status_code=503)

    async def being_asked() -> bool:
        return asked.is_set()

    group = f"notify-webhook-{uuid.uuid4().hex[:8]}"
    await start_at_end(infra.bootstrap_servers, group)
    conn = await asyncpg.connect(database_url)

    async def alert(code: str) -> asyncpg.Record | None:
        return await conn.fetchrow("SELECT status, last_error FROM notify.deliveries WHERE dossier_code = $1 "
                                   "AND channel = 'webhook'", code)

    async def decided(code: str, sequence: int) -> bool:
        return bool(await conn.fetchval("SELECT true FROM notify.due_alert_clocks WHERE dossier_code = $1 "
                                        "AND sequence >= $2", code, sequence))

    try:
        async with served(system, "the unit's system") as base, \
                in_process(build_app(notify_settings(infra, database_url, data_keys, group, base)), "notify"):
            dossier = Clock()
            due = datetime.now(UTC) + timedelta(hours=1)
            await publish(infra, dossier.event(EventType.RECEIVED, DossierState.RECEIVED, due,
                                               datetime.now(UTC) + timedelta(seconds=1)))
            await eventually(being_asked, what="the due-soon alert at the unit's system")
            sending = await alert(dossier.code)
            assert sending is not None
            assert sending["status"] == "sending"

            await publish(infra, dossier.event(EventType.RESOLVED, DossierState.RESOLVED, due))
            await eventually(lambda: decided(dossier.code, 2), what="the resolved event consumed")
            answer.set()

            async def failure_recorded() -> asyncpg.Record | None:
                row = await alert(dossier.code)
                return row if row is not None and "unavailable (503)" in (row["last_error"] or "") else None

            row = await eventually(failure_recorded, what="the failed send recorded")
    finally:
        await conn.close()
    assert row["status"] == "cancelled", "the alert would be sent again for a dossier already resolved"
    assert row["last_error"].startswith(f"cancelled by {dossier.code}:2 (resolved)")
    assert len(received) == 1
