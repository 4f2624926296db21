"""Intake: the one door for commune systems, over HTTP (`POST /v1/events`) and the ingress topic."""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import datetime
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from services.intake import domain, store
from services.intake.ingress import signed_runs
from services.intake.keys import KeyCache
from services.intake.pipeline import IntakeMetrics, IntakePipeline, Item, Outcome, Status
from services.intake.settings import IntakeSettings
from services.intake.store import SCHEMA
from shared.catalog import Procedure
from shared.clock.deadline import LOCAL_ZONE as VN
from shared.contract import topics
from shared.contract.events import CloudEvent
from shared.contract.rejections import EventRefused, RejectionReason
from shared.crypto import keyring_from_settings
from shared.db import ServiceDatabase
from shared.http import metrics_registry, service_app
from shared.infra.paths import PROJECT_ROOT
from shared.kafka import Records, batch_subscriber, make_broker, make_producer
from shared.reference import ReferenceSource

log = logging.getLogger(__name__)
MIGRATIONS = PROJECT_ROOT / "services" / "intake" / "migrations"
BATCH_TYPE = "application/cloudevents-batch+json"

DESCRIPTION = """Commune systems send dossier lifecycle events here as CloudEvents 1.0 (JSON structured mode):
one event as `application/cloudevents+json`, a batch as `application/cloudevents-batch+json`. Each event is
answered on its own: `accepted` (with the dossier code, minted when the commune sent none), `duplicate` (the
same `source` and `id` were accepted before; nothing changes) or `rejected` with a machine-readable reason.
Every rejection is also published on `tthc.rejections.v1`."""


REFUSAL_STATUS = {
    RejectionReason.MALFORMED_JSON: 400,
    RejectionReason.UNAUTHENTICATED: 401,
    RejectionReason.FORGED_SOURCE: 403,
    RejectionReason.FORBIDDEN_UNIT: 403,
    RejectionReason.PAYLOAD_TOO_LARGE: 413,
}


def _answer(outcomes: list[Outcome], batch: bool) -> JSONResponse:
    if batch:
        everything_accepted = all(outcome.status is not Status.REJECTED for outcome in outcomes)
        return JSONResponse({"results": [outcome.as_json() for outcome in outcomes]},
                            status_code=202 if everything_accepted else 207)
    outcome = outcomes[0]
    status = {Status.ACCEPTED: 202, Status.DUPLICATE: 200}.get(outcome.status) or REFUSAL_STATUS.get(
        RejectionReason(outcome.reason or RejectionReason.INVALID_DATA), 422)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(outcome.as_json(), status_code=status, headers=headers)


def procedure_view(procedure: Procedure) -> dict[str, Any]:
    return {"code": procedure.code, "name_vi": procedure.name_vi, "name_en": procedure.name_en,
            "sector": procedure.sector, "sector_vi": procedure.sector_vi, "level": procedure.level,
            "duration": str(procedure.duration), "cutoff": procedure.cutoff.strftime("%H:%M") if procedure.cutoff
            else None, "online_level": procedure.online_level, "source": procedure.source}


def build_app(settings: IntakeSettings | None = None) -> FastAPI:
    settings = settings or IntakeSettings()
    registry = metrics_registry()
    broker = make_broker(settings.kafka_bootstrap_servers, registry=registry, app_name="intake", settings=settings)
    metrics = IntakeMetrics(registry)
    reference = ReferenceSource()
    keyring = keyring_from_settings(settings, "intake seals applicants' personal data")
    state: dict[str, Any] = {}

    def pipeline() -> IntakePipeline:
        return state["pipeline"]  # type: ignore[no-any-return]

    database = ServiceDatabase(settings.database_url, SCHEMA, MIGRATIONS)

    async def on_start() -> None:
        producer = make_producer(settings.kafka_bootstrap_servers, settings)
        await producer.start()
        state["producer"] = producer
        state["keys"] = KeyCache(database.pool)
        token = settings.internal_token.get_secret_value() if settings.internal_token else ""
        state["resolution"] = httpx.AsyncClient(base_url=settings.resolution_url, timeout=10,
                                                headers={"x-internal-token": token} if token else {})
        state["pipeline"] = IntakePipeline(pool=database.pool, producer=producer, reference=reference, keyring=keyring,
                                           metrics=metrics)

    async def on_stop() -> None:
        if "resolution" in state:
            await state["resolution"].aclose()
        if "producer" in state:
            await state["producer"].stop()

    app = service_app(title="TTHC intake", description=DESCRIPTION, settings=settings, database=database,
                      broker=broker, registry=registry, reference=reference, on_start=on_start,
                      on_stop=on_stop)

    @batch_subscriber(broker, topics.INGRESS, group_id=settings.consumer_group, max_records=500)
    async def on_ingress(records: Records) -> None:
        # Bytes as the commune sent them: a malformed record must be refused with a reason, not crash the
        # decoder and stall the partition.
        for principal, items in await signed_runs(state["keys"], records, settings.require_signed_ingress):
            await pipeline().process(items, channel="kafka", principal=principal)

    @app.post(
        "/v1/events",
        summary="Send one lifecycle event or a batch",
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/cloudevents+json": {"schema": CloudEvent.model_json_schema()},
            BATCH_TYPE: {"schema": {"type": "array", "items": CloudEvent.model_json_schema()}},
        }}},
        responses={202: {"description": "accepted"}, 200: {"description": "duplicate"},
                   207: {"description": "a batch with some events rejected"}, 400: {"description": "not JSON"},
                   413: {"description": "too large"}, 422: {"description": "rejected, with the reason"}},
    )
    async def post_events(request: Request) -> Response:
        principal = await state["keys"].authenticate(request.headers.get("authorization"))

        async def answer(items: list[Item], batch: bool) -> JSONResponse:
            return _answer(await pipeline().process(items, channel="http", principal=principal), batch)

        if principal is None and settings.require_api_key:
            return await answer([Item(b"", refusal=EventRefused(
                RejectionReason.UNAUTHENTICATED, "send a commune system's API key as `Authorization: Bearer <key>`"))],
                False)
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_body_bytes:
                return await answer([Item(bytes(body[:1024]), refusal=EventRefused(
                    RejectionReason.PAYLOAD_TOO_LARGE, f"the body may have at most {settings.max_body_bytes} bytes"))],
                    False)
        try:
            value = domain.decode_json(bytes(body))
        except EventRefused as refusal:
            return await answer([Item(bytes(body), refusal=refusal)], False)
        if content_type == BATCH_TYPE or isinstance(value, list):
            values = value if isinstance(value, list) else [value]
            if not 1 <= len(values) <= domain.MAX_BATCH_EVENTS:
                # Refused as one input, so that it is counted and published like every other refusal.
                return await answer([Item(bytes(body), refusal=EventRefused(
                    RejectionReason.INVALID_ENVELOPE, f"a batch holds 1 to {domain.MAX_BATCH_EVENTS} events"))],
                    False)
            return await answer([Item.from_value(v) for v in values], True)
        return await answer([Item.from_value(value)], False)

    @app.get("/v1/dossiers/{code}", summary="A dossier's state, dates and timeline, for the commune system that "
             "owns it", responses={401: {"description": "no valid key"}, 404: {"description": "no such dossier "
                                                                                        "among the key's units"}})
    async def get_dossier(code: str, request: Request) -> Response:
        principal = await state["keys"].authenticate(request.headers.get("authorization"))
        if principal is None:
            return JSONResponse({"reason": "unauthenticated"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        async with database.pool.acquire() as conn:
            unit = (await store.dossier_units(conn, [code])).get(code)
        # Another unit's dossier answers exactly like a missing one: a key cannot probe which codes exist.
        if unit is None or unit not in principal.units:
            return JSONResponse({"detail": f"no dossier {code}"}, status_code=404)
        reply = await state["resolution"].get(f"/v1/dossiers/{code}")
        return Response(reply.content, status_code=reply.status_code, media_type="application/json")

    @app.get("/v1/units", summary="The unit registry: every unit events may name")
    async def units() -> dict[str, Any]:
        catalog = reference.current.catalog
        return {"version": catalog.units_version, "units": [
            {"code": u.code, "name_vi": u.name_vi, "kind": u.kind, "level": u.level, "province_code": u.province_code,
             "agency_id": u.agency_id, "office_hours": u.office_hours} for u in catalog.units.values()]}

    @app.get("/v1/procedures", summary="The procedure catalog with legal durations")
    async def procedures() -> dict[str, Any]:
        catalog = reference.current.catalog
        return {"version": catalog.procedures_version,
                "procedures": [procedure_view(p) for p in catalog.procedures.values()]}

    @app.get("/v1/procedures/{code}/deadline",
             summary="The appointment a counter prints for a receipt instant, with the explanation",
             responses={404: {"description": "no such procedure or unit"}})
    async def deadline(code: str, received_at: datetime, unit: str | None = None) -> dict[str, Any]:
        current = reference.current
        procedure = current.catalog.procedures.get(code)
        if procedure is None:
            raise HTTPException(404, f"unknown procedure {code!r}")
        if unit is not None and unit not in current.catalog.units:
            raise HTTPException(404, f"unknown unit {unit!r}")
        if received_at.tzinfo is None:
            raise HTTPException(422, "received_at needs an offset, e.g. 2026-02-12T09:00:00+07:00")
        found = current.clock_for(unit or "").due(received_at, procedure.duration, procedure.cutoff)
        due_local = found.due_at.astimezone(VN)
        return {
            "procedure": procedure_view(procedure), "unit": unit, "received_at": received_at.isoformat(),
            "due_at": found.due_at.isoformat(),
            "appointment_vi": f"{due_local:%H} giờ {due_local:%M} phút, ngày {due_local:%d/%m/%Y}",
            "calendar_version": found.calendar_version, "policy_version": found.policy_version,
            "explanation": [asdict(step) for step in found.explanation],
        }

    return app
