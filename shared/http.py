"""The HTTP face every service shares: health, readiness, Prometheus metrics, and the broker's lifetime."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any, Protocol

import asyncpg
import uvicorn
from fastapi import FastAPI, Query, Response
from faststream.kafka import KafkaBroker
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from shared.db import ServiceDatabase
from shared.kafka import ensure_topics
from shared.logs import configure_logging
from shared.reference import ReferenceCollector, ReferenceSource
from shared.settings import CommonSettings

Hook = Callable[[], Awaitable[None]]
ScrapeHook = Callable[[frozenset[str] | None], Awaitable[None]]
"""Called before `/metrics` exports, with the sample names the scrape asks for (None: all of them)."""


def metrics_registry() -> CollectorRegistry:
    """A service's Prometheus registry. Some custom collectors (the reference data's, notify's counts) declare no
    names up front, so a restricted export (`/metrics?name[]=...`) must still ask them and keep the samples
    named; metrics' collectors name their families and are asked only for those."""
    return CollectorRegistry(support_collectors_without_names=True)


class WritesItsText(Protocol):
    """A metric family that writes itself in the Prometheus text format, only the samples named in `wanted` when
    it is given (services/metrics/series.py: a large family costs a fraction of prometheus_client's formatting)."""

    def exposition(self, wanted: Collection[str] | None = None) -> str: ...


SNAPSHOT_AGE = "tthc_database_oldest_snapshot_seconds"


async def _nothing() -> None:
    return None


async def _nothing_to_refresh(_: frozenset[str] | None) -> None:
    return None


DATABASE_AWAY = (OSError, RuntimeError, asyncpg.PostgresError, asyncpg.InterfaceError)
"""What asking the database raises while it cannot answer (RuntimeError: the service's pool is not open)."""


async def refreshed_or_nan(gauge: Gauge, refresh: Hook) -> None:
    """Run `refresh`, which sets `gauge` from the database; while the database cannot be asked, the gauge says
    NaN, not its last value, and the scrape goes on."""
    try:
        await refresh()
    except DATABASE_AWAY:
        gauge.set(float("nan"))


def service_app(
    *,
    title: str,
    description: str,
    settings: CommonSettings,
    database: ServiceDatabase,
    broker: KafkaBroker,
    registry: CollectorRegistry,
    reference: ReferenceSource | None = None,
    on_start: Hook = _nothing,
    on_stop: Hook = _nothing,
    before_scrape: ScrapeHook = _nothing_to_refresh,
    exports: Sequence[WritesItsText] = (),
) -> FastAPI:
    """A FastAPI app whose lifespan makes sure the topics exist, opens and migrates the service's schema, starts
    the service's own resources, then its broker; and stops them in reverse (the broker first, so in-flight
    handlers finish while the database is still there). Ready while the database answers. /metrics exports the
    registry, then `exports` (families that write their own text, kept out of the registry), after
    `before_scrape` has brought up to date the values read from elsewhere that the scrape asks for. Every service
    exports how long the oldest snapshot in its database has been held, read when a scrape asks for it."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await ensure_topics(settings.kafka_bootstrap_servers, settings.topic_partitions, settings.topic_replication,
                            settings=settings)
        await database.open()
        try:
            await on_start()
            await broker.start()
            watch = asyncio.create_task(reference.watch()) if reference is not None else None
            try:
                yield
            finally:
                if watch is not None:
                    watch.cancel()
                await broker.stop()
                await on_stop()
        finally:
            await database.close()

    if reference is not None:
        registry.register(ReferenceCollector(reference))
    oldest_snapshot = Gauge(
        SNAPSHOT_AGE, "Seconds the oldest transaction holding a snapshot in the service's database has run (0 if "
        "none, NaN while the database does not answer). While it lives PostgreSQL removes no dead rows: the outbox "
        "relay, notify's queue and hot counters slow down (a pg_dump on the primary, a long report, a session idle "
        "in a transaction)", registry=registry)

    async def read_snapshot_age() -> None:
        oldest_snapshot.set(await database.oldest_snapshot_seconds())

    app = FastAPI(title=title, description=description, version="1.0", lifespan=lifespan)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(response: Response) -> dict[str, str]:
        if await database.ready():
            return {"status": "ready"}
        response.status_code = 503
        return {"status": "not ready"}

    @app.get("/metrics", include_in_schema=False)
    async def metrics(names: Annotated[list[str] | None, Query(alias="name[]")] = None) -> Response:
        # `?name[]=family_total` exports only those samples, as Prometheus' own handler allows: a watcher
        # polling one counter many times a second must not cost a full export each time.
        wanted = frozenset(names) if names else None
        if wanted is None or SNAPSHOT_AGE in wanted:
            await refreshed_or_nan(oldest_snapshot, read_snapshot_age)
        await before_scrape(wanted)
        source = registry.restricted_registry(names) if names else registry
        written = "".join(export.exposition(wanted) for export in exports)
        return Response(generate_latest(source) + written.encode(), media_type=CONTENT_TYPE_LATEST)

    return app


class ServiceSettings(Protocol):
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def log_level(self) -> str: ...


def run_service(name: str, settings: ServiceSettings, build_app: Callable[[Any], FastAPI]) -> None:
    """Run a service until SIGINT or SIGTERM, then shut down gracefully through the lifespan."""
    configure_logging(name, settings.log_level)
    app = build_app(settings)
    tune_garbage_collector()
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                access_log=False)


GC_THRESHOLDS = (50_000, 20, 100)
"""The cyclic garbage collector's generation thresholds for a service (CPython's defaults are 700, 10, 10).

Measured in resolution's benchmark: with the defaults a service allocating tens of objects per event spent a
quarter to a third of its CPU in the collector (thousands of young-generation passes and a full pass every
few seconds over every dossier, record and model in memory). A young generation of 50,000 objects makes
collections rare and a full pass happen only after 100 passes of the middle one, while the reference cycles
the services do create (mostly exceptions' tracebacks) are still collected."""


def tune_garbage_collector() -> None:
    """Move everything built at start-up (modules, the app, the catalog) out of the collector's sight, since
    it lives as long as the process, and collect less often (GC_THRESHOLDS)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
