"""Notify: tells citizens about their dossiers, once per (dossier, event, channel), retrying failures; takes
their satisfaction answers and opt-outs, and providers' delivery reports."""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from services.notify import due, pages, stats
from services.notify.delivery import Deliverer, connections_needed, queue_owed
from services.notify.guard import BreakerState
from services.notify.links import LinkSigner, Purpose
from services.notify.messages import CHANNELS, WEBHOOK, owed
from services.notify.settings import NotifySettings
from shared.contract import topics
from shared.contract.events import EventType
from shared.contract.lifecycle import DossierLifecycleEvent
from shared.crypto import keyring_from_settings
from shared.db import ServiceDatabase, columns
from shared.http import DATABASE_AWAY, metrics_registry, service_app
from shared.infra.paths import PROJECT_ROOT
from shared.kafka import Records, batch_subscriber, make_broker, readable, unreadable_counter
from shared.reference import ReferenceSource

log = logging.getLogger(__name__)
SCHEMA = "notify"
MIGRATIONS = PROJECT_ROOT / "services" / "notify" / "migrations"
# Pages reached through a link that acts for a dossier: the link must not leak onwards or stay in caches.
PRIVATE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}


# Cancels each listed dossier's due-soon alerts, waiting or being sent, but the one it keeps ($1 codes, $2 kept
# alert ids, $3 reasons); a sender keeps "cancelled" unless the unit's system took the alert
# (services/notify/delivery.py, _finish). Each dossier's alerts are found by the primary key (OFFSET 0 keeps
# that lookup its own step, once per dossier) and the status is checked on the row found, not in the lookup:
# otherwise the plan PostgreSQL caches while `deliveries` is nearly empty walks the queue's partial index,
# every waiting alert of every dossier, on each batch (tests/integration/test_notify_queue.py). An alert a
# sender claims meanwhile is left to that sender. Nothing else changes an alert and leaves its status while
# this runs (another batch with the same dossier waits on its clock row), so the row found is the row to cancel.
CANCEL_DUE_ALERTS = (
    f"UPDATE {SCHEMA}.deliveries AS d SET status = 'cancelled', last_error = c.reason "
    "FROM unnest($1::text[], $2::text[], $3::text[]) AS c(code, keep, reason) "
    f"CROSS JOIN LATERAL (SELECT a.ctid AS found FROM {SCHEMA}.deliveries AS a WHERE a.dossier_code = c.code "
    f"AND a.channel = '{WEBHOOK}' AND a.event_id LIKE '{due.PREFIX}%' AND a.event_id IS DISTINCT FROM c.keep "
    "OFFSET 0) AS k WHERE d.ctid = k.found AND d.status IN ('queued', 'temporary-failure', 'sending')")


class DeliveryReport(BaseModel):
    """A provider's report on a message it took: its id for the message and what became of it."""

    message_id: str = Field(min_length=1, max_length=200)
    status: Literal["delivered", "failed"]
    error: str | None = Field(default=None, max_length=200)


def build_app(settings: NotifySettings | None = None) -> FastAPI:
    settings = settings or NotifySettings()
    registry = metrics_registry()
    unreadable = unreadable_counter(registry)
    broker = make_broker(settings.kafka_bootstrap_servers, registry=registry, app_name="notify", settings=settings)
    reference = ReferenceSource()
    keyring = keyring_from_settings(settings, "notify opens sealed contacts to send messages")
    if (settings.unit_webhooks or settings.default_webhook_url) and settings.webhook_secret is None:
        raise SystemExit("NOTIFY_WEBHOOK_SECRET is required: webhooks are signed so that communes can verify them")
    signer = LinkSigner(keyring)
    state: dict[str, Any] = {"snapshot": stats.Snapshot()}

    def breakers() -> dict[str, BreakerState]:
        deliverer: Deliverer | None = state.get("deliverer")
        if deliverer is None:
            return {}
        now = time.monotonic()
        return {channel: guard.breaker.state(now) for channel, guard in deliverer.guards.items()}

    registry.register(stats.NotifyCollector(lambda: state["snapshot"], breakers))
    database = ServiceDatabase(settings.database_url, SCHEMA, MIGRATIONS, max_size=connections_needed(settings))

    async def on_start() -> None:
        # Sends interrupted by a crash are retried (same Message-ID).
        await database.pool.execute(
            f"UPDATE {SCHEMA}.deliveries SET status = 'temporary-failure' WHERE status = 'sending'")
        deliverer = Deliverer(database.pool, settings, keyring, signer, registry)
        deliverer.start()
        state["deliverer"] = deliverer

    async def on_stop() -> None:
        if "deliverer" in state:
            await state["deliverer"].stop()

    async def read_counts(wanted: frozenset[str] | None) -> None:
        if wanted is None or wanted & stats.READ_FROM_THE_SCHEMA:
            # While the database cannot answer the last counts stay: counters read better stale than NaN.
            with contextlib.suppress(*DATABASE_AWAY):
                async with database.pool.acquire() as conn:
                    state["snapshot"] = await stats.read(conn)

    app = service_app(title="TTHC notify", description="Citizen notifications and their delivery status.",
                      settings=settings, database=database, broker=broker, registry=registry, reference=reference,
                      on_start=on_start, on_stop=on_stop, before_scrape=read_counts)

    async def schedule_due_alerts(conn: Any, events: list[DossierLifecycleEvent], now: datetime,
                                  names: dict[str, str]) -> None:
        """Upsert or cancel each dossier's waiting due-soon alert (services/notify/due.py). Only a dossier's
        newest event decides, so within a batch its last event does, and only if it is newer than the last one
        stored: a repeat or a replayed older event changes nothing. (Its earlier events in the batch could only
        have queued alerts the last one cancels or takes over, all inside this transaction.)"""
        newest: dict[str, DossierLifecycleEvent] = {}
        for event in events:
            if event.sequence > getattr(newest.get(event.dossier_code), "sequence", 0):
                newest[event.dossier_code] = event
        if not newest:
            return
        deciding = {row["dossier_code"] for row in await conn.fetch(
            f"INSERT INTO {SCHEMA}.due_alert_clocks AS c SELECT * FROM unnest($1::text[], $2::int[]) "
            "ON CONFLICT (dossier_code) DO UPDATE SET sequence = EXCLUDED.sequence "
            "WHERE c.sequence < EXCLUDED.sequence RETURNING dossier_code",
            list(newest), [event.sequence for event in newest.values()])}
        plans = {code: due.plan(newest[code], now, names[code]) for code in sorted(deciding)}
        await conn.execute(
            CANCEL_DUE_ALERTS, list(plans), [plan.keep for plan in plans.values()],
            [f"cancelled by {newest[code].id} ({newest[code].event_type.value})" for code in plans])
        # A waiting alert takes the dossier as it now stands; a cancelled one for this same due instant comes
        # back (the due instant moved there again); one sent or being sent stays as it is: once only.
        alerts = [(code, plan.schedule.event_id, plan.schedule.not_before,
                   json.dumps(plan.schedule.context, ensure_ascii=False))
                  for code, plan in plans.items()
                  if plan.schedule is not None and settings.webhook_url(newest[code].unit_code) is not None]
        if not alerts:
            return
        # One statement (a dossier has one alert here, so no row is hit twice): the counting triggers run once.
        await conn.execute(
            f"INSERT INTO {SCHEMA}.deliveries AS d (dossier_code, event_id, channel, template, status, "
            "next_attempt_at, context, created_at, required) "
            f"SELECT code, event_id, '{WEBHOOK}', $5, 'queued', not_before, context::jsonb, $6, true "
            "FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[]) "
            "AS t(code, event_id, not_before, context) "
            "ON CONFLICT (dossier_code, event_id, channel) DO UPDATE SET context = EXCLUDED.context, "
            "status = CASE WHEN d.status = 'cancelled' THEN 'queued' ELSE d.status END, "
            "attempts = CASE WHEN d.status = 'cancelled' THEN 0 ELSE d.attempts END, "
            "last_error = CASE WHEN d.status = 'cancelled' THEN NULL ELSE d.last_error END, "
            "next_attempt_at = CASE WHEN d.status = 'cancelled' THEN EXCLUDED.next_attempt_at "
            "ELSE d.next_attempt_at END "
            "WHERE d.status IN ('cancelled', 'queued', 'temporary-failure')",
            *columns(alerts), due.TEMPLATE, now)

    @batch_subscriber(broker, topics.LIFECYCLE, group_id=settings.consumer_group, max_records=500)
    async def on_lifecycle(records: Records) -> None:
        events = [event for _, event in readable(records, DossierLifecycleEvent, unreadable)]
        now = datetime.now(UTC)
        contacts, surveys, deliveries = [], [], []
        names: dict[str, str] = {}
        for event in events:
            if event.event_type is EventType.RECEIVED and event.applicant_sealed:
                contacts.append((event.dossier_code, event.applicant_sealed, event.notify_via))
            if event.event_type is EventType.RESULT_RETURNED:
                # The survey link goes out with this message; the row says the dossier may be rated.
                surveys.append((event.dossier_code, event.unit_code))
            procedure = reference.current.catalog.procedures.get(event.procedure_code)
            names[event.dossier_code] = procedure_name = procedure.name_vi if procedure else event.procedure_code
            deliveries += [(event.dossier_code, event.id, item.channel, item.template,
                            json.dumps(item.context, ensure_ascii=False), item.required)
                           for item in owed(event, event.notify_via, procedure_name, settings.lookup_base_url)]
        # A few statements for the whole batch; a repeated row changes nothing (each is written once).
        async with database.pool.acquire() as conn, conn.transaction():
            await schedule_due_alerts(conn, events, now, names)
            await conn.executemany(f"INSERT INTO {SCHEMA}.contacts VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                                   contacts)
            # One statement each rather than one per row: the counting triggers (migration 0007) run once.
            if surveys:
                await conn.execute(f"INSERT INTO {SCHEMA}.surveys (dossier_code, unit_code, invited_at) "
                                   "SELECT *, $3 FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING",
                                   *columns(surveys), now)
            await queue_owed(conn, deliveries, now)
        state["deliverer"].wake.set()

    @app.get("/v1/notifications", summary="Delivery status of a dossier's notifications")
    async def notifications(dossier: str) -> list[dict[str, Any]]:
        rows = await database.pool.fetch(
            f"SELECT event_id, channel, template, status, required, attempts, created_at, delivered_at, "
            f"provider_status, provider_reported_at, next_attempt_at FROM {SCHEMA}.deliveries "
            # A cancelled due-soon alert was never owed: the dossier closed or its due instant moved first.
            "WHERE dossier_code = $1 AND status <> 'cancelled' ORDER BY created_at, channel", dossier)
        return [dict(row) for row in rows]

    @app.post("/v1/notifications/callbacks/{channel}", summary="A provider reports what became of a message")
    async def callback(channel: str, report: DeliveryReport, request: Request) -> dict[str, Any]:
        secret = settings.callback_secret
        if secret is None:
            raise HTTPException(403, "delivery callbacks are not enabled (NOTIFY_CALLBACK_SECRET is unset)")
        sent = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(sent.encode(), secret.get_secret_value().encode()):
            raise HTTPException(401, "wrong or missing callback secret", headers={"WWW-Authenticate": "Bearer"})
        if channel not in CHANNELS:
            raise HTTPException(404, "unknown channel")
        now = datetime.now(UTC)
        if report.status == "delivered":
            # Also settles a send whose answer was lost (timeout): it reached the citizen, so no retry.
            rows = await database.pool.fetch(
                f"UPDATE {SCHEMA}.deliveries SET status = 'delivered', provider_status = 'delivered', "
                "provider_reported_at = $3, delivered_at = COALESCE(delivered_at, $3), last_error = NULL "
                "WHERE channel = $1 AND provider_message_id = $2 RETURNING status", channel, report.message_id, now)
        else:
            rows = await database.pool.fetch(
                f"UPDATE {SCHEMA}.deliveries SET status = 'permanent-failure', provider_status = 'failed', "
                "provider_reported_at = $3, last_error = $4 "
                "WHERE channel = $1 AND provider_message_id = $2 RETURNING status", channel, report.message_id, now,
                f"provider reported it undeliverable: {report.error or 'no reason given'}")
        if not rows:
            raise HTTPException(404, "no message with this id on this channel")
        return {"message_id": report.message_id, "status": rows[0]["status"]}

    def html(body: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(body, status_code=status, headers=PRIVATE)

    async def survey_row(code: str, token: str) -> Any:
        if not signer.verify(Purpose.SURVEY, code, token):
            return None
        return await database.pool.fetchrow(
            f"SELECT unit_code, rating FROM {SCHEMA}.surveys WHERE dossier_code = $1", code)

    def unit_name(unit_code: str) -> str:
        unit = reference.current.catalog.units.get(unit_code)
        return unit.name_vi if unit else ""

    @app.get("/khao-sat/{code}/{token}", response_class=HTMLResponse, include_in_schema=False)
    async def survey_form(code: str, token: str) -> HTMLResponse:
        row = await survey_row(code, token)
        if row is None:
            return html(pages.survey_page("invalid"), 404)
        outcome = "already" if row["rating"] else "form"
        return html(pages.survey_page(outcome, code, unit_name(row["unit_code"]), settings.survey_comment_max_chars))

    @app.post("/khao-sat/{code}/{token}", response_class=HTMLResponse, include_in_schema=False)
    async def survey_answer(code: str, token: str, request: Request) -> HTMLResponse:
        row = await survey_row(code, token)
        if row is None:
            return html(pages.survey_page("invalid"), 404)
        body = await request.body()
        try:
            fields = pages.form_fields(body) if len(body) <= pages.MAX_FORM_BYTES else {}
        except ValueError:
            fields = {}
        rating = fields.get("rating", "")
        unit = unit_name(row["unit_code"])
        if rating not in pages.RATINGS:
            return html(pages.survey_page("missing", code, unit, settings.survey_comment_max_chars), 422)
        comment = fields.get("comment", "").strip()[:settings.survey_comment_max_chars]
        # Free text a citizen may put anything in: sealed at rest, never logged.
        sealed = keyring.seal(comment.encode(), f"survey:{code}") if comment else None
        answered = await database.pool.fetchval(
            f"UPDATE {SCHEMA}.surveys SET rating = $2, comment_sealed = $3, answered_at = $4 "
            "WHERE dossier_code = $1 AND rating IS NULL RETURNING true", code, rating, sealed, datetime.now(UTC))
        if not answered:
            return html(pages.survey_page("already", code, unit), 409)
        return html(pages.survey_page("recorded", code, unit))

    async def opt_out_known(code: str, token: str) -> bool:
        if not signer.verify(Purpose.OPT_OUT, code, token):
            return False
        return bool(await database.pool.fetchval(
            f"SELECT true FROM {SCHEMA}.contacts WHERE dossier_code = $1", code))

    async def opted_out(code: str) -> bool:
        return bool(await database.pool.fetchval(
            f"SELECT true FROM {SCHEMA}.opt_outs WHERE dossier_code = $1", code))

    @app.get("/huy-nhan-tin/{code}/{token}", response_class=HTMLResponse, include_in_schema=False)
    async def opt_out_form(code: str, token: str) -> HTMLResponse:
        # Showing the page changes nothing: mail scanners open links, only the citizen's button press counts.
        if not await opt_out_known(code, token):
            return html(pages.opt_out_page("invalid"), 404)
        return html(pages.opt_out_page("form", code, await opted_out(code)))

    @app.post("/huy-nhan-tin/{code}/{token}", response_class=HTMLResponse, include_in_schema=False)
    async def opt_out_change(code: str, token: str, request: Request) -> HTMLResponse:
        if not await opt_out_known(code, token):
            return html(pages.opt_out_page("invalid"), 404)
        body = await request.body()
        try:
            action = pages.form_fields(body).get("action", "stop") if len(body) <= pages.MAX_FORM_BYTES else ""
        except ValueError:
            action = ""
        if action == "stop":
            async with database.pool.acquire() as conn, conn.transaction():
                await conn.execute(f"INSERT INTO {SCHEMA}.opt_outs VALUES ($1, $2) ON CONFLICT DO NOTHING",
                                   code, datetime.now(UTC))
                await conn.execute(
                    f"UPDATE {SCHEMA}.deliveries SET status = 'opted-out' WHERE dossier_code = $1 AND NOT required "
                    "AND status IN ('queued', 'temporary-failure')", code)
            return html(pages.opt_out_page("stopped", code, True))
        if action == "resume":
            await database.pool.execute(f"DELETE FROM {SCHEMA}.opt_outs WHERE dossier_code = $1", code)
            return html(pages.opt_out_page("resumed", code, False))
        return html(pages.opt_out_page("form", code, await opted_out(code)), 422)

    return app
