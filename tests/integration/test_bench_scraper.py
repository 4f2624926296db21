"""The end-to-end benchmark's scraper: kept-alive GETs of a service's `/metrics`, served here by uvicorn over
real sockets, as the services serve it."""

from __future__ import annotations

import asyncio
from typing import Annotated

import pytest
import uvicorn
from fastapi import FastAPI, Query, Response

from bench.end_to_end import Scraper
from shared.infra.ports import free_port
from tests.support import eventually

pytestmark = pytest.mark.integration


async def test_the_scraper_keeps_one_connection_and_says_when_there_is_no_exposition() -> None:
    app = FastAPI()
    peers: list[tuple[str, int]] = []
    answers = {"status": 200}

    @app.get("/metrics")
    async def metrics(request_names: Annotated[list[str], Query(alias="name[]")]) -> Response:
        return Response("".join(f"{name} 1.0\n" for name in request_names), status_code=answers["status"])

    @app.middleware("http")
    async def remember_peer(request, call_next):  # type: ignore[no-untyped-def]
        assert request.client is not None
        peers.append((request.client.host, request.client.port))
        return await call_next(request)

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())

    async def started() -> bool | None:
        return server.started or None

    await eventually(started, timeout=30, what="uvicorn listening")
    scraper = Scraper(port)
    try:
        assert await scraper.get("a_total", "b_total") == "a_total 1.0\nb_total 1.0\n"
        assert await scraper.get("a_total") == "a_total 1.0\n"
        assert len(set(peers)) == 1  # both over one connection
        answers["status"] = 503
        with pytest.raises(ConnectionError, match="503"):
            await scraper.get("a_total")
        answers["status"] = 200
        assert await scraper.get("a_total") == "a_total 1.0\n"  # a new connection after the failure
        assert len(set(peers)) == 2
    finally:
        await scraper.close()
        server.should_exit = True
        await serving
    with pytest.raises(ConnectionError, match="no exposition"):
        await scraper.get("a_total")  # nobody listens any more
