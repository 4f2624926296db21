"""Notify: tells citizens about their dossiers, once per (dossier, event, channel), retrying failures."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import smtplib
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter

from services.notify.messages import owed, render
from services.notify.settings import NotifySettings
from shared.contract import topics
from shared.contract.events import EventType
from shared.contract.lifecycle import DossierLifecycleEvent
from shared.crypto import Keyring, SealError
from shared.db import ServiceDatabase
from shared.http import service_app
from shared.infra.paths import PROJECT_ROOT
from shared.kafka import Records, batch_subscriber, make_broker
from shared.reference import ReferenceSource

log = logging.getLogger(__name__)
SCHEMA = "notify"
MIGRATIONS = PROJECT_ROOT / "services" / "notify" / "migrations"


class PermanentFailure(Exception):
    """A provider refused the message for good (bad number, unknown template): retrying will not help."""


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(2 ** attempts, 600))


class Deliverer:
    """Sends owed messages. A row is marked `sending` (committed) before the send, so a crash mid-send is
    retried with the same Message-ID: mail systems drop the copy, and nothing is lost."""

    def __init__(self, pool: asyncpg.Pool, settings: NotifySettings, keyring: Keyring,
                 registry: CollectorRegistry) -> None:
        self.pool = pool
        self.settings = settings
        self.keyring = keyring
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.http = httpx.AsyncClient(timeout=10)
        self.outcomes = Counter("tthc_notifications_total", "Notification attempts by channel and outcome",
                                ["channel", "outcome"], registry=registry)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="deliverer")

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.http.aclose()

    async def _run(self) -> None:
        while True:
            try:
                while await self.deliver_due():
                    pass
            except (OSError, asyncpg.PostgresError):
                log.exception("delivery round failed")
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), 1.0)

    async def deliver_due(self) -> int:
        now = datetime.now(UTC)
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                f"UPDATE {SCHEMA}.deliveries d SET status = 'sending', attempts = attempts + 1 "
                f"FROM {SCHEMA}.contacts c WHERE c.dossier_code = d.dossier_code AND (d.dossier_code, d.event_id, "
                f"d.channel) IN (SELECT dossier_code, event_id, channel FROM {SCHEMA}.deliveries "
                "WHERE status IN ('queued', 'temporary-failure') AND next_attempt_at <= $1 "
                "ORDER BY next_attempt_at LIMIT 50 FOR UPDATE SKIP LOCKED) "
                "RETURNING d.dossier_code, d.event_id, d.channel, d.template, d.attempts, d.context, c.sealed",
                now,
            )
        for row in rows:
            await self._send_one(row)
        return len(rows)

    async def _send_one(self, row: asyncpg.Record) -> None:
        key = (row["dossier_code"], row["event_id"], row["channel"])
        channel = row["channel"]
        try:
            applicant = json.loads(self.keyring.open(row["sealed"], row["dossier_code"]))
            context = {**json.loads(row["context"]), "full_name": applicant["full_name"]}
            subject, body = render(row["template"], channel, context, ascii_sms=self.settings.sms_ascii)
            if channel == "email":
                await asyncio.to_thread(self._smtp_send, applicant["email"], subject, body, key)
            else:
                await self._gateway_send(channel, applicant["phone"], body, key, row["template"])
        except (SealError, KeyError, PermanentFailure) as error:
            await self._finish(key, "permanent-failure", f"{type(error).__name__}: cannot deliver the message")
            self.outcomes.labels(channel, "permanent-failure").inc()
            return
        except (OSError, smtplib.SMTPException, httpx.HTTPError) as error:
            failed = row["attempts"] >= self.settings.max_attempts
            status = "permanent-failure" if failed else "temporary-failure"
            await self._finish(key, status, type(error).__name__, retry_in=backoff(row["attempts"]))
            self.outcomes.labels(row["channel"], status).inc()
            return
        await self._finish(key, "delivered", None)
        self.outcomes.labels(row["channel"], "delivered").inc()

    async def _gateway_send(self, channel: str, phone: str, text: str, key: tuple[str, str, str],
                            template: str) -> None:
        """SMS and Zalo ZNS go through HTTP gateways; the idempotency key lets a gateway drop a repeat."""
        url = self.settings.sms_url if channel == "sms" else self.settings.zalo_url
        payload = {"phone": phone, "text": text, "idempotency_key": ":".join(key), "template": template}
        reply = await self.http.post(url, json=payload)
        if reply.status_code == 429 or reply.status_code >= 500:
            reply.raise_for_status()  # temporary: retried with backoff
        if reply.status_code >= 400:
            raise PermanentFailure(f"{channel} gateway refused the message: {reply.status_code}")

    def _smtp_send(self, to: str, subject: str, body: str, key: tuple[str, str, str]) -> None:
        message = EmailMessage()
        message["From"] = self.settings.mail_from
        message["To"] = to
        message["Subject"] = subject
        # Deterministic, so a resend after a crash is recognisably the same message.
        message["Message-ID"] = f"<{':'.join(key)}@tthc.gov.vn>".replace(" ", "")
        message.set_content(body, charset="utf-8")
        with smtplib.SMTP(self.settings.smtp_host, self.settings.smtp_port, timeout=10) as smtp:
            smtp.send_message(message)

    async def _finish(self, key: tuple[str, str, str], status: str, error: str | None,
                      retry_in: timedelta = timedelta(0)) -> None:
        now = datetime.now(UTC)
        await self.pool.execute(
            f"UPDATE {SCHEMA}.deliveries SET status = $4, last_error = $5, next_attempt_at = $6, "
            "delivered_at = CASE WHEN $4 = 'delivered' THEN $7 ELSE delivered_at END "
            "WHERE dossier_code = $1 AND event_id = $2 AND channel = $3",
            *key, status, error, now + retry_in, now,
        )


def build_app(settings: NotifySettings | None = None) -> FastAPI:
    settings = settings or NotifySettings()
    registry = CollectorRegistry()
    broker = make_broker(settings.kafka_bootstrap_servers, registry=registry, app_name="notify")
    reference = ReferenceSource()
    if settings.data_keys is None:
        raise SystemExit("TTHC_DATA_KEYS is required: notify opens sealed contacts to send messages")
    keyring = Keyring.parse(settings.data_keys.get_secret_value())
    state: dict[str, Any] = {}

    database = ServiceDatabase(settings.database_url, SCHEMA, MIGRATIONS)

    async def on_start() -> None:
        # Sends interrupted by a crash are retried (same Message-ID).
        await database.pool.execute(
            f"UPDATE {SCHEMA}.deliveries SET status = 'temporary-failure' WHERE status = 'sending'")
        deliverer = Deliverer(database.pool, settings, keyring, registry)
        deliverer.start()
        state["deliverer"] = deliverer

    async def on_stop() -> None:
        if "deliverer" in state:
            await state["deliverer"].stop()

    app = service_app(title="TTHC notify", description="Citizen notifications and their delivery status.",
                      settings=settings, database=database, broker=broker, registry=registry, reference=reference,
                      on_start=on_start, on_stop=on_stop)

    @batch_subscriber(broker, topics.LIFECYCLE, group_id=settings.consumer_group, max_records=500)
    async def on_lifecycle(records: Records) -> None:
        events = [DossierLifecycleEvent.model_validate_json(r.value) for r in records if r.value]
        now = datetime.now(UTC)
        async with database.pool.acquire() as conn, conn.transaction():
            for event in events:
                if event.event_type is EventType.RECEIVED and event.applicant_sealed:
                    await conn.execute(
                        f"INSERT INTO {SCHEMA}.contacts VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                        event.dossier_code, event.applicant_sealed, event.notify_via,
                    )
                procedure = reference.current.catalog.procedures.get(event.procedure_code)
                for item in owed(event, event.notify_via, procedure.name_vi if procedure else event.procedure_code,
                                 settings.lookup_base_url, settings.survey_base_url):
                    await conn.execute(
                        f"INSERT INTO {SCHEMA}.deliveries (dossier_code, event_id, channel, template, status, "
                        "next_attempt_at, context, created_at) VALUES ($1, $2, $3, $4, 'queued', $5, $6::jsonb, $5) "
                        "ON CONFLICT DO NOTHING",
                        event.dossier_code, event.id, item.channel, item.template, now,
                        json.dumps(item.context, ensure_ascii=False),
                    )
        state["deliverer"].wake.set()

    @app.get("/v1/notifications", summary="Delivery status of a dossier's notifications")
    async def notifications(dossier: str) -> list[dict[str, Any]]:
        rows = await database.pool.fetch(
            f"SELECT event_id, channel, template, status, attempts, created_at, delivered_at "
            f"FROM {SCHEMA}.deliveries WHERE dossier_code = $1 ORDER BY created_at", dossier)
        return [dict(row) for row in rows]

    return app
