"""Schemathesis against intake's own OpenAPI, in-process against the real broker and database.

The schema is read from the running app (`/openapi.json`), and every operation in it gets requests that schemathesis
generates from it: valid ones (positive mode) and ones that break it (negative mode), with a commune system's key, so
that the authenticated operations are exercised past the door. Each answer must not be a server error, must have a
status and content type the OpenAPI declares, and a body that matches the declared schema.

As in the hypothesis fuzz, hypothesis runs in a worker thread while intake serves on the test's event loop; without
shrinking (it would replay against a server whose state has moved on), collecting every failure with its curl line.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.intake.app import build_app as build_intake
from services.intake.settings import IntakeSettings
from tests.conftest import Infra
from tests.integration.test_services import new_key, service_env

pytestmark = pytest.mark.integration

T = TypeVar("T")
BASE_URL = "http://intake"
# Examples per operation and generation mode (negative only where an operation takes input).
EXAMPLES = 100
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@dataclass
class Intake:
    client: httpx.AsyncClient
    key: str


@pytest.fixture
async def intake(infra: Infra, database_url: str, data_keys: str, topics_ready: None) -> AsyncIterator[Intake]:
    settings_ = IntakeSettings.model_validate(service_env(infra, database_url, data_keys))
    app = build_intake(settings_)
    # A crash must come back as the 500 a client would see, not as an exception in the test.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url=BASE_URL,
                                                                  timeout=60) as client:
        yield Intake(client, await new_key(database_url))


def on_loop(loop: asyncio.AbstractEventLoop, work: Awaitable[T], timeout: float = 60) -> T:
    async def wrapped() -> T:
        return await work

    return asyncio.run_coroutine_threadsafe(wrapped(), loop).result(timeout)


async def send(client: httpx.AsyncClient, kwargs: dict[str, Any]) -> httpx.Response:
    """The requests-style arguments schemathesis prepares, sent with httpx on the test's loop."""
    content = kwargs.get("data")
    if "json" in kwargs:
        content = json.dumps(kwargs["json"]).encode()
    assert not kwargs.get("cookies"), "intake's OpenAPI declares no cookies"
    return await client.request(kwargs["method"], kwargs["url"], params=kwargs.get("params"),
                                headers=kwargs.get("headers"), content=content)


def run_operation(loop: asyncio.AbstractEventLoop, intake: Intake, case_strategy: Any,
                  failures: list[str], counts: dict[int, int]) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case_strategy)
    def check(case: Case[Any]) -> None:
        headers = {"authorization": f"Bearer {intake.key}"}
        kwargs = case.as_transport_kwargs(base_url=BASE_URL, headers=headers)
        reply = on_loop(loop, send(intake.client, kwargs))
        counts[reply.status_code] = counts.get(reply.status_code, 0) + 1
        try:
            case.validate_response(reply, checks=CHECKS, headers=headers)
        except (Failure, FailureGroup) as failure:
            failures.append(f"{case.operation.label}: {failure}\n  {case.as_curl_command(headers)}\n"
                            f"  -> {reply.status_code} {reply.text[:300]}")

    check()


@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
async def test_every_intake_operation_conforms_to_its_openapi(intake: Intake) -> None:
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    raw = (await intake.client.get("/openapi.json")).json()
    schema = schemathesis.openapi.from_dict(raw)
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"intake's OpenAPI does not load: {result.err()}"
        operations.append(result.ok())
    labels = sorted(operation.label for operation in operations)
    assert labels == ["GET /v1/dossiers/{code}", "GET /v1/procedures", "GET /v1/procedures/{code}/deadline",
                      "GET /v1/units", "POST /v1/events"]
    failures: list[str] = []
    counts: dict[int, int] = {}
    no_negative: list[str] = []
    for operation in operations:
        declared = raw["paths"][operation.path][operation.method.lower()]
        # An operation that takes no input has no way to be sent invalid input.
        takes_input = bool(declared.get("parameters") or declared.get("requestBody"))
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)[:2 if takes_input else 1]:
            try:
                await asyncio.to_thread(run_operation, loop, intake, operation.as_strategy(generation_mode=mode),
                                        failures, counts)
            except Unsatisfiable:
                if mode is GenerationMode.POSITIVE:
                    raise
                no_negative.append(operation.label)
    took = time.monotonic() - started
    print(f"\n{sum(counts.values())} requests in {took:.1f} s, by status {sorted(counts.items())}")
    # A path that takes any string cannot be sent an invalid one: schemathesis finds no negative case there.
    assert no_negative == ["GET /v1/dossiers/{code}"]
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:20])
    assert sum(counts.values()) >= len(operations) * 5
