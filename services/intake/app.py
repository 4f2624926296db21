"""Intake: the one door for commune systems, over HTTP (`POST /v1/events`) and the ingress topic."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from faststream import AckPolicy
from faststream.kafka import KafkaMessage
from prometheus_client import CollectorRegistry

from services.intake import domain
from services.intake.pipeline import IntakeMetrics, IntakePipeline, Item, Outcome, Status
from services.intake.settings import IntakeSettings
from services.intake.store import SCHEMA
from shared.catalog import Catalog
from shared.contract import topics
from shared.contract.events import CloudEvent
from shared.contract.rejections import EventRefused, RejectionReason
from shared.crypto import Keyring
from shared.db import ServiceDatabase
from shared.http import service_app
from shared.infra.paths import PROJECT_ROOT
from shared.kafka import make_broker, make_producer

log = logging.getLogger(__name__)
MIGRATIONS = PROJECT_ROOT / "services" / "intake" / "migrations"
BATCH_TYPE = "application/cloudevents-batch+json"

DESCRIPTION = """Commune systems send dossier lifecycle events here as CloudEvents 1.0 (JSON structured mode):
one event as `application/cloudevents+json`, a batch as `application/cloudevents-batch+json`. Each event is
answered on its own: `accepted` (with the dossier code, minted when the commune sent none), `duplicate` (the
same `source` and `id` were accepted before; nothing changes) or `rejected` with a machine-readable reason.
Every rejection is also published on `tthc.rejections.v1`."""


def _answer(outcomes: list[Outcome], batch: bool) -> JSONResponse:
    if batch:
        everything_accepted = all(outcome.status is not Status.REJECTED for outcome in outcomes)
        return JSONResponse({"results": [outcome.as_json() for outcome in outcomes]},
                            status_code=202 if everything_accepted else 207)
    outcome = outcomes[0]
    status = {Status.ACCEPTED: 202, Status.DUPLICATE: 200}.get(outcome.status)
    if status is None:
        status = 413 if outcome.reason == RejectionReason.PAYLOAD_TOO_LARGE else 422
        if outcome.reason == RejectionReason.MALFORMED_JSON:
            status = 400
    return JSONResponse(outcome.as_json(), status_code=status)


def build_app(settings: IntakeSettings | None = None) -> Any:
    settings = settings or IntakeSettings()
    registry = CollectorRegistry()
    broker = make_broker(settings.kafka_bootstrap_servers, registry=registry, app_name="intake")
    metrics = IntakeMetrics(registry)
    catalog = Catalog.load()
    if settings.data_keys is None:
        raise SystemExit("TTHC_DATA_KEYS is required: intake seals applicants' personal data")
    keyring = Keyring.parse(settings.data_keys.get_secret_value())
    state: dict[str, Any] = {}

    def pipeline() -> IntakePipeline:
        return state["pipeline"]  # type: ignore[no-any-return]

    database = ServiceDatabase(settings.database_url, SCHEMA, MIGRATIONS)

    async def on_start() -> None:
        producer = make_producer(settings.kafka_bootstrap_servers)
        await producer.start()
        state["producer"] = producer
        state["pipeline"] = IntakePipeline(pool=database.pool, producer=producer, catalog=catalog, keyring=keyring,
                                           metrics=metrics)

    async def on_stop() -> None:
        if "producer" in state:
            await state["producer"].stop()

    app = service_app(title="TTHC intake", description=DESCRIPTION, settings=settings, database=database,
                      broker=broker, registry=registry, on_start=on_start, on_stop=on_stop)

    @broker.subscriber(topics.INGRESS, group_id=settings.consumer_group, batch=True, max_records=500,
                       auto_offset_reset="earliest", ack_policy=AckPolicy.NACK_ON_ERROR)
    async def on_ingress(_: Any, message: KafkaMessage) -> None:
        # Bytes as the commune sent them: a malformed record must be refused with a reason, not crash the
        # decoder and stall the partition.
        records = message.raw_message if isinstance(message.raw_message, tuple) else (message.raw_message,)
        await pipeline().process([Item.from_bytes(record.value or b"") for record in records], channel="kafka")

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
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_body_bytes:
                refusal = EventRefused(RejectionReason.PAYLOAD_TOO_LARGE,
                                       f"the body may have at most {settings.max_body_bytes} bytes")
                outcomes = await pipeline().process([Item(bytes(body[:1024]), refusal=refusal)], channel="http")
                return _answer(outcomes, batch=False)
        try:
            value = domain.decode_json(bytes(body))
        except EventRefused as refusal:
            return _answer(await pipeline().process([Item(bytes(body), refusal=refusal)], channel="http"), False)
        if content_type == BATCH_TYPE or isinstance(value, list):
            values = value if isinstance(value, list) else [value]
            if not 1 <= len(values) <= domain.MAX_BATCH_EVENTS:
                return JSONResponse({"status": "rejected", "reason": RejectionReason.INVALID_ENVELOPE.value,
                                     "detail": f"a batch holds 1 to {domain.MAX_BATCH_EVENTS} events"},
                                    status_code=422)
            return _answer(await pipeline().process([Item.from_value(v) for v in values], channel="http"), True)
        return _answer(await pipeline().process([Item.from_value(value)], channel="http"), batch=False)

    return app
