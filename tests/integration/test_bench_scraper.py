"""The end-to-end benchmark's scraper: kept-alive GETs of a service's `/metrics`, served here by uvicorn over
real sockets, as the services serve it."""

from __future__ import annotations

from typing import Annotated

import pytest
from fastapi import FastAPI, Query, Response

from bench.end_to_end import Scraper
from tests.support import served

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

    async with served(app, "uvicorn") as base:
        scraper = Scraper(int(base.rsplit(":", 1)[1]))
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
    with pytest.raises(ConnectionError, match="no exposition"):
        await scraper.get("a_total")  # nobody listens any more
