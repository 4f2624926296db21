"""Resolution: the authoritative dossier state machine, persisted with its outbox in one transaction."""

from __future__ import annotations

import hashlib
import hmac
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from prometheus_client import Counter
from pydantic import ValidationError

from services.resolution import lookup, store
from services.resolution.judge import judge, needs_history
from services.resolution.lookup import RateLimit
from services.resolution.relay import OutboxRelay
from services.resolution.settings import ResolutionSettings
from shared.clock.policy import Policy
from shared.contract import topics
from shared.contract.lifecycle import EventAccepted
from shared.contract.rejections import RejectionReason, RejectionRecorded, Stage
from shared.crypto import keyring_from_settings
from shared.db import ServiceDatabase
from shared.http import metrics_registry, refreshed_or_nan, service_app
from shared.infra.paths import PROJECT_ROOT
from shared.kafka import Records, batch_subscriber, make_broker, make_producer
from shared.reference import ReferenceSource

log = logging.getLogger(__name__)
MIGRATIONS = PROJECT_ROOT / "services" / "resolution" / "migrations"


def build_app(settings: ResolutionSettings | None = None) -> FastAPI:
    settings = settings or ResolutionSettings()
    registry = metrics_registry()
    broker = make_broker(settings.kafka_bootstrap_servers, registry=registry, app_name="resolution", settings=settings)
    reference = ReferenceSource(Policy(supplement_mode=settings.supplement_mode))
    judged = Counter("tthc_resolution_events_total", "Accepted events judged by resolution, by verdict",
                     ["verdict"], registry=registry)
    snapshots = Counter("tthc_resolution_dossier_reads_total", "Stored dossiers a batch needed, by whether this "
                        "instance's cache had them as stored (cached) or their snapshot was read", ["source"],
                        registry=registry)
    cache = store.DossierCache(settings.dossier_cache_size)
    state: dict[str, Any] = {}
    keyring = keyring_from_settings(settings, "the look-up page checks the applicant's ID digits")

    database = ServiceDatabase(settings.database_url, store.SCHEMA, MIGRATIONS, max_size=8)

    async def on_start() -> None:
        producer = make_producer(settings.kafka_bootstrap_servers, settings)
        await producer.start()
        relay = OutboxRelay(database.pool, producer, registry, batch=settings.relay_batch)
        if settings.relay_enabled:
            relay.start()
        state.update(producer=producer, relay=relay)

    async def on_stop() -> None:
        if "relay" in state:
            await state["relay"].stop()
        if "producer" in state:
            await state["producer"].stop()

    async def count_backlog(wanted: frozenset[str] | None) -> None:
        # Only when the scrape asks for it: the benchmark's probe reads one family many times a second.
        if "relay" in state and (wanted is None or "tthc_outbox_pending" in wanted):
            await refreshed_or_nan(state["relay"].pending, state["relay"].count_pending)

    app = service_app(title="TTHC resolution", description="The state of every dossier and why.",
                      settings=settings, database=database, broker=broker, registry=registry, reference=reference,
                      on_start=on_start, on_stop=on_stop, before_scrape=count_backlog)

    @batch_subscriber(broker, topics.ACCEPTED, group_id=settings.consumer_group, max_records=settings.max_batch,
                      consumers=settings.consumers)
    async def on_accepted(records: Records) -> None:
        events: list[EventAccepted] = []
        unreadable: list[bytes] = []
        as_received: dict[tuple[str, str], str] = {}
        for record in records:
            try:
                event = EventAccepted.model_validate_json(record.value or b"")
            except ValidationError:
                unreadable.append(record.value or b"")  # refused below: retrying it would stall the partition
                continue
            events.append(event)
            as_received.setdefault((event.source, event.id), (record.value or b"").decode())
        now = datetime.now(UTC)
        async with database.pool.acquire() as conn, conn.transaction():
            seen = await store.judged_keys(conn, [(e.source, e.id) for e in events])
            fresh = []
            for event in events:
                if (event.source, event.id) not in seen:
                    seen.add((event.source, event.id))
                    fresh.append(event)
            codes = sorted({e.dossier_code for e in fresh})
            dossiers, cached = await store.lock_dossiers(conn, codes, cache)
            late = needs_history(fresh, dossiers)
            histories = await store.histories(conn, sorted(late)) if late else {}
            current = reference.current
            verdicts = judge(fresh, dossiers, histories, catalog=current.catalog, clock_for=current.clock_for, now=now)
            verdicts.outbox.extend((topics.REJECTIONS, "", unreadable_refusal(value, now)) for value in unreadable)
            await store.write(conn, verdicts, now, as_received)
        cache.put(verdicts.dossiers.values(), now)  # committed: what the next batch may take as it stands
        snapshots.labels("cached").inc(cached)
        snapshots.labels("read").inc(len(dossiers) - cached)
        judged.labels("accepted").inc(verdicts.accepted)
        judged.labels("refused").inc(verdicts.refused + len(unreadable))
        judged.labels("duplicate").inc(len(events) - len(fresh))

    @app.get("/v1/dossiers/{code}", summary="A dossier's state, dates and timeline")
    async def get_dossier(code: str, request: Request) -> dict[str, Any]:
        # Commune systems read through intake, which checks their key; this endpoint answers intake.
        if settings.internal_token is not None and not hmac.compare_digest(
                request.headers.get("x-internal-token", "").encode(),
                settings.internal_token.get_secret_value().encode()):
            raise HTTPException(403, "internal endpoint: read dossiers through intake with an API key")
        found = await store.dossier(database.pool, code, with_timeline=True)
        if found is None:
            raise HTTPException(404, f"no dossier {code}")
        view = found.model_dump(mode="json", exclude={"applicant_sealed"})
        current = reference.current
        clock = current.clock_for(found.unit_code)
        view["open_state"] = found.open_state(datetime.now(UTC))
        view["explanation"] = found.explanation(current.catalog, clock)
        return view

    by_client = RateLimit(limit=settings.lookup_per_client_per_minute, window=60.0)
    by_code = RateLimit(limit=settings.lookup_misses_per_code_per_hour, window=3600.0)

    @app.get("/tra-cuu", response_class=HTMLResponse, summary="Public dossier look-up page (Vietnamese)")
    async def lookup_page(request: Request, ma_ho_so: str = "", so_dinh_danh: str = "") -> HTMLResponse:
        code = ma_ho_so.strip()[:64]
        if not code and not so_dinh_danh:
            return HTMLResponse(lookup.render())
        client = request.client.host if request.client else "unknown"
        found = None
        if by_client.allow(client) and not by_code.exhausted(code):
            dossier = await store.dossier(database.pool, code)
            if dossier is not None and lookup.id_matches(dossier, so_dinh_danh.strip(), keyring):
                found = lookup.view(dossier, reference.current.catalog)
            else:
                by_code.record(code)  # wrong digits count against the code, so guessing them is slow
        # One answer for every miss, so the page tells nobody which codes exist.
        return HTMLResponse(lookup.render(code, found, missed=found is None),
                            headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})

    return app


def unreadable_refusal(value: bytes, now: datetime) -> bytes:
    """A record on the accepted topic that is not an accepted event (only intake should write there)."""
    return RejectionRecorded(
        rejection_id=str(uuid.uuid4()), stage=Stage.RESOLUTION, reason=RejectionReason.INVALID_ENVELOPE,
        detail="not an accepted event", payload_sha256=hashlib.sha256(value).hexdigest(), rejected_at=now,
    ).model_dump_json().encode()
