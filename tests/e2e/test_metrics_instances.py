"""Two metrics instances in one consumer group: they split the partitions, their sum is the truth, and when one
is killed the other takes its partitions over with their state. `tthc reconcile` is the judge."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import datetime, timedelta

import httpx
import pytest

from services.metrics.reconcile import Difference, reconcile
from shared.contract import topics
from shared.contract.events import EventType
from shared.infra.paths import PROJECT_ROOT
from shared.infra.ports import free_port
from shared.infra.stack import Stack
from tests.e2e.test_faults import send
from tests.support import VN, cloudevent, dossier_code, eventually, metric_total, received_data

pytestmark = pytest.mark.e2e
SECOND = "metrics-2"


def traffic(count: int) -> list[dict[str, object]]:
    """Dossiers left open, resolved on time, and long overdue, so every family has something to agree on."""
    events = []
    for n in range(count):
        code = dossier_code()
        received_at = datetime.now(VN) - (timedelta(days=40) if n % 3 == 2 else timedelta(minutes=5))
        events.append(cloudevent(EventType.RECEIVED, code, received_data(channel=("online", "direct")[n % 2]),
                                 at=received_at))
        if n % 3 == 1:
            events.append(cloudevent(EventType.RESOLVED, code, {}, at=received_at + timedelta(minutes=1)))
    return events


async def owned(port: int) -> float:
    async with httpx.AsyncClient(timeout=10) as client:
        try:
            text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        except httpx.ConnectError:
            return 0.0  # still starting
    return metric_total(text, "tthc_metrics_partitions_owned", topic=topics.LIFECYCLE)


async def agreed(stack: Stack, ports: list[int], dossiers: int) -> bool:
    """No difference left, once every dossier sent has reached resolution (counted first, so that the
    comparison that follows sees them all)."""
    if await stack_received(stack) < dossiers:
        return False
    return not await reconcile(stack.database_url, [f"http://127.0.0.1:{port}/metrics" for port in ports])


async def stack_received(stack: Stack) -> int:
    import asyncpg

    conn = await asyncpg.connect(stack.database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM resolution.dossiers"))
    finally:
        await conn.close()


async def test_two_instances_split_the_partitions_and_one_survives_the_others_kill(stack: Stack) -> None:
    second = free_port()
    stack.spawn(SECOND, "-m", "services.metrics", env={"METRICS_PORT": str(second)})
    try:
        first = stack.ports.metrics

        async def split() -> bool:
            mine, theirs = await owned(first), await owned(second)
            return mine > 0 and theirs > 0 and mine + theirs == stack.partitions

        await eventually(split, 120, what="both instances owning lifecycle partitions")
        before = await stack_received(stack)
        await send(stack, traffic(60))
        await eventually(lambda: agreed(stack, [first, second], before + 60), 120,
                         what="both instances' sum equal to resolution's truth")

        # A burst in flight when the second instance dies without a word.
        burst = asyncio.create_task(send(stack, traffic(90)))
        await eventually(lambda: _at_least(stack, before + 75), 60, what="the burst under way")
        stack.kill_process(SECOND)
        await burst

        async def alone() -> bool:
            return await owned(first) == stack.partitions

        await eventually(alone, 120, what="the survivor owning every partition")
        await eventually(lambda: agreed(stack, [first], before + 150), 120,
                         what="the survivor alone equal to the truth")
    finally:
        if SECOND in stack.processes:
            stack.stop_process(SECOND)

    command = [sys.executable, "-m", "shared.cli", "reconcile", "--database-url", stack.database_url,
               "--metrics-url", f"http://127.0.0.1:{stack.ports.metrics}/metrics"]
    check = await asyncio.to_thread(subprocess.run, command, cwd=PROJECT_ROOT, capture_output=True, text=True,
                                    timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    assert json.loads(check.stdout) == {"differences": []}


async def _at_least(stack: Stack, dossiers: int) -> bool:
    return await stack_received(stack) >= dossiers


async def test_reconcile_names_a_difference_when_metrics_lost_a_dossier(stack: Stack) -> None:
    """The judge can fail: an open dossier erased from metrics' progress shows up by code and in the totals."""
    import asyncpg

    before = await stack_received(stack)
    await send(stack, traffic(3))
    await eventually(lambda: agreed(stack, [stack.ports.metrics], before + 3), 120, what="metrics caught up")
    conn = await asyncpg.connect(stack.database_url)
    try:
        row = await conn.fetchrow("SELECT code, unit_code FROM metrics.dossier_progress "
                                  "WHERE open_kind IS NOT NULL LIMIT 1")
        assert row is not None
        code, unit = row["code"], row["unit_code"]
        await conn.execute("DELETE FROM metrics.dossier_progress WHERE code = $1", code)
    finally:
        await conn.close()
    differences = await reconcile(stack.database_url, [])
    assert [d for d in differences if d.what == "dossier"] == [Difference("dossier", code, (1, True, None), None)]
    open_difference = next(d for d in differences if d.what == "stored" and d.key == f"open/{unit}")
    assert open_difference.metrics == int(str(open_difference.truth)) - 1
