"""The public look-up page, served by resolution and rendered by a real browser."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from shared.contract.events import EventType
from shared.infra.stack import Stack
from tests.conftest import ARTIFACTS
from tests.e2e.conftest import intake_client
from tests.support import PROCEDURE, UNIT, cloudevent, dossier_code, eventually, received_data

pytestmark = pytest.mark.e2e
MISS = "Không tìm thấy hồ sơ phù hợp"


def screenshot(url: str, path: Path, extra: list[str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={path.parent / 'chromium-profile'}", "--window-size=1100,900",
         f"--screenshot={path}", *(extra or []), url],
        check=True, capture_output=True, timeout=120,
    )


async def recorded(client: httpx.AsyncClient, code: str, state: str) -> bool:
    reply = await client.get(f"/v1/dossiers/{code}")
    return reply.status_code == 200 and reply.json()["state"] == state


async def test_a_citizen_looks_up_a_dossier(stack: Stack) -> None:
    code = dossier_code()
    base = f"http://127.0.0.1:{stack.ports.resolution}"
    async with intake_client(stack) as intake:
        for event in (cloudevent(EventType.RECEIVED, code, received_data()),
                      cloudevent(EventType.STEP_STARTED, code, {"step": "Thẩm định hồ sơ", "unit_code": UNIT.code,
                                                                "duration": "1 working_days"})):
            assert (await intake.post("/v1/events", json=event)).status_code == 202

    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        async with intake_client(stack) as intake:
            await eventually(lambda: recorded(intake, code, "processing"), what="the step recorded")
        # Waiting happens on the operators' API: the look-up page's per-client limit must not be spent on it.
        found = (await client.get("/tra-cuu", params={"ma_ho_so": code, "so_dinh_danh": "4567"})).text
        assert "Thẩm định hồ sơ" in found
        assert "Đang xử lý" in found
        assert PROCEDURE.name_vi in found
        assert UNIT.name_vi in found
        for personal in ("Nguyễn Văn An", "001203004567", "0912345678", "nguyen.van.an@example.vn"):
            assert personal not in found

        wrong_digits = (await client.get("/tra-cuu", params={"ma_ho_so": code, "so_dinh_danh": "0000"})).text
        unknown_code = (await client.get("/tra-cuu", params={"ma_ho_so": code[:-4] + "9999",
                                                             "so_dinh_danh": "4567"})).text
        assert MISS in wrong_digits
        assert PROCEDURE.name_vi not in wrong_digits
        # Identical but for the code the citizen typed, which the form shows back.
        assert wrong_digits.replace(code, "") == unknown_code.replace(code[:-4] + "9999", "")

    shot = ARTIFACTS / "tra-cuu.png"
    screenshot(f"{base}/tra-cuu?ma_ho_so={code}&so_dinh_danh=4567", shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000


async def test_guessing_the_digits_is_rate_limited(stack: Stack) -> None:
    code = dossier_code()
    async with intake_client(stack) as intake:
        assert (await intake.post("/v1/events", json=cloudevent(EventType.RECEIVED, code,
                                                                received_data()))).status_code == 202
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.ports.resolution}", timeout=30) as client:
        async with intake_client(stack) as intake:
            await eventually(lambda: recorded(intake, code, "received"), what="the dossier recorded")
        for guess in range(10):
            reply = await client.get("/tra-cuu", params={"ma_ho_so": code, "so_dinh_danh": f"{guess:04d}"})
            assert MISS in reply.text
        # The right digits, once the code has had its ten misses this hour, get the same miss.
        blocked = await client.get("/tra-cuu", params={"ma_ho_so": code, "so_dinh_danh": "4567"})
        assert MISS in blocked.text
        assert PROCEDURE.name_vi not in blocked.text
