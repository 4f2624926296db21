"""Metrics: live timeliness counters from the canonical lifecycle topic, exported for Prometheus.

Counter values live in metrics' schema and change in the same transaction that records each dossier's
progress, so a redelivered event changes nothing and a restart resumes from the stored values. The exported
families are read from that state at scrape time (a custom collector), never from process memory.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from services.metrics import liveboard
from services.metrics.liveboard import LIVEBOARD_HTML
from services.metrics.settings import MetricsSettings
from services.metrics.tally import RATIO_BUCKETS, CounterKey, open_kind, tally
from shared.clock.deadline import LOCAL_ZONE as VN
from shared.contract import topics
from shared.contract.lifecycle import DossierLifecycleEvent
from shared.db import ServiceDatabase
from shared.http import service_app
from shared.infra.paths import PROJECT_ROOT
from shared.kafka import Records, batch_subscriber, make_broker
from shared.reference import ReferenceSource

log = logging.getLogger(__name__)
SCHEMA = "metrics"
MIGRATIONS = PROJECT_ROOT / "services" / "metrics" / "migrations"
LABELS = ["unit", "sector", "channel"]


class Snapshot:
    """The latest values read from the database, which the collector exports."""

    def __init__(self) -> None:
        self.counters: dict[CounterKey, float] = {}
        self.open: dict[tuple[str, str, str, str], int] = {}


class StoredCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        totals: dict[tuple[str, str, str, str, str], float] = defaultdict(float)
        for (family, _part, unit, sector, channel, label), value in self.snapshot.counters.items():
            totals[(family, unit, sector, channel, label)] += value
        received = CounterMetricFamily("tthc_dossiers_received", "Dossiers received", labels=LABELS)
        completed = CounterMetricFamily("tthc_dossiers_completed", "Dossiers completed, by timeliness",
                                        labels=[*LABELS, "timeliness"])
        supplements = CounterMetricFamily("tthc_supplement_requests", "Supplement requests", labels=LABELS)
        apologies = CounterMetricFamily("tthc_apologies", "Apologies issued, late when less than a working day "
                                        "before the due instant", labels=[*LABELS, "timing"])
        buckets: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
        sums: dict[tuple[str, str, str], float] = defaultdict(float)
        for (family, unit, sector, channel, label), value in sorted(totals.items()):
            where = [unit, sector, channel]
            if family == "received":
                received.add_metric(where, value)
            elif family == "completed":
                completed.add_metric([*where, label], value)
            elif family == "supplements":
                supplements.add_metric(where, value)
            elif family == "apologies":
                apologies.add_metric([*where, label], value)
            elif family == "time_used_bucket":
                buckets[(unit, sector, channel)][label] = value
            elif family == "time_used_sum":
                sums[(unit, sector, channel)] = value
        ratio = HistogramMetricFamily("tthc_working_time_used_ratio",
                                      "Working time used relative to the legal time, at completion", labels=LABELS)
        for group, by_bound in sorted(buckets.items()):
            ordered = [(str(bound), by_bound.get(str(bound), 0.0)) for bound in RATIO_BUCKETS]
            ordered.append(("+Inf", by_bound.get("+Inf", 0.0)))
            ratio.add_metric(list(group), ordered, sums[group])
        open_gauge = GaugeMetricFamily("tthc_dossiers_open", "Open dossiers by state", labels=[*LABELS, "state"])
        for (unit, sector, channel, state), count in sorted(self.snapshot.open.items()):
            open_gauge.add_metric([unit, sector, channel, state], count)
        yield from (received, completed, supplements, apologies, ratio, open_gauge)


def build_app(settings: MetricsSettings | None = None) -> FastAPI:
    settings = settings or MetricsSettings()
    registry = CollectorRegistry()
    broker = make_broker(settings.kafka_bootstrap_servers, registry=registry, app_name="metrics")
    reference = ReferenceSource()
    snapshot = Snapshot()
    registry.register(StoredCollector(snapshot))
    database = ServiceDatabase(settings.database_url, SCHEMA, MIGRATIONS)

    async def refresh() -> None:
        pool = database.pool
        rows = await pool.fetch(f"SELECT family, part, unit_code, sector, channel, label, value FROM {SCHEMA}.counters")
        snapshot.counters = {(r["family"], r["part"], r["unit_code"], r["sector"], r["channel"], r["label"]):
                             r["value"] for r in rows}
        now = datetime.now(UTC)
        open_rows = await pool.fetch(
            f"SELECT unit_code, sector, channel, CASE WHEN open_kind <> 'running' THEN open_kind "
            "WHEN due_at < $1 THEN 'overdue' WHEN due_soon_at <= $1 THEN 'due_soon' ELSE 'on_track' END AS state, "
            f"count(*) AS n FROM {SCHEMA}.dossier_progress WHERE open_kind IS NOT NULL GROUP BY 1, 2, 3, 4", now,
        )
        snapshot.open = {(r["unit_code"], r["sector"], r["channel"], r["state"]): int(r["n"]) for r in open_rows}

    app = service_app(title="TTHC metrics", description="Live timeliness counters for the dashboards.",
                      settings=settings, database=database, broker=broker, registry=registry, reference=reference,
                      on_start=refresh)

    @app.middleware("http")
    async def fresh_values_on_scrape(request: Any, call_next: Any) -> Any:
        if request.url.path == "/metrics" and await database.ready():
            await refresh()
        return await call_next(request)

    @batch_subscriber(broker, topics.LIFECYCLE, group_id=settings.consumer_group, max_records=1000)
    async def on_lifecycle(records: Records) -> None:
        events = [(record.partition, DossierLifecycleEvent.model_validate_json(record.value))
                  for record in records if record.value]
        async with database.pool.acquire() as conn, conn.transaction():
            codes = sorted({event.dossier_code for _, event in events})
            rows = await conn.fetch(f"SELECT code, last_sequence FROM {SCHEMA}.dossier_progress "
                                    "WHERE code = ANY($1::text[]) FOR UPDATE", codes)
            last = {row["code"]: row["last_sequence"] for row in rows}
            deltas: dict[CounterKey, float] = {}
            progress: dict[str, tuple[Any, ...]] = {}
            for part, event in events:
                if event.sequence <= last.get(event.dossier_code, 0):
                    continue  # a repeat: redelivery or a second publish from the outbox
                last[event.dossier_code] = event.sequence
                tally(event, part, deltas)
                kind = open_kind(event)
                due_soon = event.due_soon_at if kind else None
                completed_on = event.completed_at.astimezone(VN).date() if event.completed_at else None
                progress[event.dossier_code] = (
                    event.dossier_code, part, event.sequence, event.unit_code, event.sector, event.channel, kind,
                    event.legal_due_at, due_soon, event.received_at.astimezone(VN).date(), completed_on,
                    event.timeliness.value if event.timeliness else None)
            if progress:
                await conn.executemany(
                    f"INSERT INTO {SCHEMA}.dossier_progress VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) "
                    "ON CONFLICT (code) DO UPDATE SET part = EXCLUDED.part, last_sequence = EXCLUDED.last_sequence, "
                    "unit_code = EXCLUDED.unit_code, sector = EXCLUDED.sector, channel = EXCLUDED.channel, "
                    "open_kind = EXCLUDED.open_kind, due_at = EXCLUDED.due_at, due_soon_at = EXCLUDED.due_soon_at, "
                    "received_on = EXCLUDED.received_on, completed_on = EXCLUDED.completed_on, "
                    "timeliness = EXCLUDED.timeliness",
                    list(progress.values()),
                )
            if deltas:
                await conn.executemany(
                    f"INSERT INTO {SCHEMA}.counters VALUES ($1, $2, $3, $4, $5, $6, $7) "
                    "ON CONFLICT (family, part, unit_code, sector, channel, label) "
                    "DO UPDATE SET value = counters.value + EXCLUDED.value",
                    [(*key, value) for key, value in deltas.items()],
                )

    @app.get("/liveboard", response_class=HTMLResponse, include_in_schema=False)
    async def liveboard_page() -> str:
        return LIVEBOARD_HTML

    @app.get("/liveboard/data", summary="Today's numbers per unit, for the wall screen")
    async def liveboard_data() -> dict[str, Any]:
        return await liveboard.today(database.pool, datetime.now(UTC), reference.current.catalog)

    return app
