"""The wall screen: today's numbers per unit, refreshing itself, rendered by a real browser."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from shared.contract.events import EventType
from shared.infra.stack import Stack
from tests.conftest import ARTIFACTS
from tests.e2e.conftest import intake_client
from tests.e2e.test_lookup import screenshot
from tests.support import UNIT, VN, cloudevent, dossier_code, eventually, received_data

pytestmark = pytest.mark.e2e


async def test_the_liveboard_shows_today_per_unit(stack: Stack) -> None:
    now = datetime.now(VN)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    # Received and resolved today in Vietnam whatever the hour the suite runs at, just after midnight included.
    received_at, resolved_at = midnight + (now - midnight) / 3, midnight + (now - midnight) * 2 / 3
    overdue, early = dossier_code(), dossier_code()
    async with intake_client(stack) as intake:
        events = [
            # Received three weeks ago and still open: overdue whatever the procedure.
            cloudevent(EventType.RECEIVED, overdue, received_data(), at=now - timedelta(days=21)),
            cloudevent(EventType.RECEIVED, early, received_data(), at=received_at),
            cloudevent(EventType.RESOLVED, early, {}, at=resolved_at),
        ]
        reply = await intake.post("/v1/events", json=events)
        assert reply.status_code == 202, reply.text

    base = f"http://127.0.0.1:{stack.ports.metrics}"
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        async def board() -> dict[str, Any] | None:
            data = (await client.get("/liveboard/data")).json()
            row = next((u for u in data["units"] if u["unit_code"] == UNIT.code), None)
            return data if row and row["early"] >= 1 and row["overdue"] >= 1 else None

        data = await eventually(board, what="the liveboard counting both dossiers")
        row = next(u for u in data["units"] if u["unit_code"] == UNIT.code)
        assert row["unit"] == UNIT.name_vi
        assert row["received"] >= 1  # the early one was received today; the overdue one was not
        assert data["totals"]["overdue"] >= 1
        assert data["day"] == now.date().isoformat()
        page = (await client.get("/liveboard")).text
        assert "Tình hình giải quyết hồ sơ hôm nay" in page
        assert "setInterval(refresh" in page

    shot = ARTIFACTS / "liveboard.png"
    screenshot(f"{base}/liveboard", shot, extra=["--virtual-time-budget=5000"])
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
