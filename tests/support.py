"""Helpers the test tiers share: event builders and waiting for a condition (never a fixed sleep)."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import asyncpg
import uvicorn
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from shared.catalog import Catalog
from shared.contract.events import EventType, schema_uri
from shared.infra.ports import free_port
from shared.simulator import SOURCE

VN = timezone(timedelta(hours=7))
T = TypeVar("T")
CATALOG = Catalog.load()
PROCEDURE = next(p for p in CATALOG.procedures.values() if p.duration.amount >= 3)
UNIT = next(u for u in CATALOG.units.values() if u.level == "commune")


# Unique within a test session (a random start so that sessions sharing a broker rarely meet).
_SEQUENCE = itertools.count(random.randrange(1, 10**5))


def dossier_code(day: datetime | None = None) -> str:
    """A fresh dossier code in the Circular 04/2025 shape (two-character prefix, a sequence of 6+ digits)."""
    day = day or datetime.now(VN)
    return f"000.00.24.{UNIT.code}-{day:%y%m%d}-TS{next(_SEQUENCE):06d}"


def cloudevent(kind: EventType, code: str | None, data: dict[str, Any], *, at: datetime | None = None,
               source: str = SOURCE, event_id: str | None = None) -> dict[str, Any]:
    event = {
        "specversion": "1.0", "id": event_id or str(uuid.uuid4()), "source": source,
        "type": kind.cloudevents_type, "time": (at or datetime.now(VN)).isoformat(),
        "datacontenttype": "application/json", "dataschema": schema_uri(kind), "data": data,
    }
    if code is not None:
        event["subject"] = code
    return event


def received_data(email: str = "nguyen.van.an@example.vn", channel: str = "direct") -> dict[str, Any]:
    return {
        "procedure_code": PROCEDURE.code, "unit_code": UNIT.code, "channel": channel,
        "applicant": {"full_name": "Nguyễn Văn An", "id_number": "001203004567", "email": email,
                      "phone": "0912345678", "notify_via": ["email"]},
    }


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = 60.0, what: str = "",
                     interval: float = 0.2) -> T:
    """Poll `check` every `interval` seconds until it returns something truthy; fail with `what` after `timeout`
    seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check}; last value {last!r}")


@asynccontextmanager
async def served(app: FastAPI, what: str = "the local server") -> AsyncIterator[str]:
    """`app` listening on a free local port, in this event loop, until the block ends: its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())

    async def started() -> bool:
        return bool(server.started)

    try:
        await eventually(started, 30, what=f"{what} listening")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving


def metric_total(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples in Prometheus text whose labels include `labels`."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def waiting_for_a_lock(database: asyncpg.Connection | asyncpg.Pool) -> bool:
    """Whether a session of this database waits for a lock another holds."""
    return bool(await database.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                        "AND wait_event_type = 'Lock'"))

