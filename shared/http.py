"""The HTTP face every service shares: health, readiness, Prometheus metrics, and the broker's lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Response
from faststream.kafka import KafkaBroker
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Hook = Callable[[], Awaitable[None]]
Check = Callable[[], Awaitable[bool]]


def service_app(
    *,
    title: str,
    description: str,
    broker: KafkaBroker,
    registry: CollectorRegistry,
    on_start: Hook,
    on_stop: Hook,
    ready: Check,
) -> FastAPI:
    """A FastAPI app whose lifespan starts the service's resources, then its broker, and stops them in reverse
    (the broker first, so in-flight handlers finish while the database is still there)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await on_start()
        await broker.start()
        try:
            yield
        finally:
            await broker.stop()
            await on_stop()

    app = FastAPI(title=title, description=description, version="1.0", lifespan=lifespan)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(response: Response) -> dict[str, str]:
        if await ready():
            return {"status": "ready"}
        response.status_code = 503
        return {"status": "not ready"}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def serve(app: FastAPI, host: str, port: int, log_level: str) -> None:
    """Run until SIGINT or SIGTERM, then shut down gracefully through the lifespan."""
    uvicorn.run(app, host=host, port=port, log_level=log_level.lower(), access_log=False)
