"""A province's commune systems sending a realistic stream of dossier lifecycles, for `make run` and demos.

Dossiers are received for real units and procedures, some backdated so that deadlines pass and a share
finish late; they move through steps, supplement requests, fees, pauses, the odd apology, and end resolved,
rejected or withdrawn, then returned. Events go to intake over HTTP in small batches; applicants are
invented (no real person), with an email address at example.vn so notify's messages land in the sink.
"""

from __future__ import annotations

import asyncio
import random
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from shared.catalog import Catalog
from shared.clock.deadline import LOCAL_ZONE as VN
from shared.contract.events import EventType, schema_uri
from shared.text import without_diacritics

SOURCE = "urn:tthc:bac-ninh:mot-cua"
"""The simulated province's one-stop system: the source of every simulated event and of its API key."""
FAMILY = ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Vũ", "Đặng", "Bùi", "Đỗ", "Ngô"]
MIDDLE = ["Văn", "Thị", "Đức", "Minh", "Thu", "Ngọc", "Quang", "Hữu"]
GIVEN = ["An", "Bình", "Chi", "Dũng", "Hà", "Hùng", "Lan", "Mai", "Nam", "Phương", "Quân", "Thảo", "Tuấn", "Yến"]


@dataclass(eq=False)  # taken off the open list by identity: comparing fields was 1/20 of the load generator
class Simulated:
    code: str
    unit_code: str
    plan: list[tuple[EventType, dict[str, Any]]]
    clock: datetime
    sent: int = 0


@dataclass
class Simulator:
    catalog: Catalog
    rng: random.Random = field(default_factory=random.Random)
    open: list[Simulated] = field(default_factory=list)
    day_sequence: dict[tuple[str, str], int] = field(default_factory=dict)

    def _code(self, unit_code: str, received: datetime) -> str:
        key = (unit_code, received.astimezone(VN).strftime("%y%m%d"))
        self.day_sequence[key] = self.day_sequence.get(key, 0) + 1
        return f"000.00.24.{unit_code}-{key[1]}-{self.day_sequence[key]:04d}"

    def _applicant(self) -> dict[str, Any]:
        family, middle, given = (self.rng.choice(FAMILY), self.rng.choice(MIDDLE), self.rng.choice(GIVEN))
        handle = f"{given}.{family}{self.rng.randrange(1000)}".lower()
        handle = without_diacritics(handle)
        via = ["email"] + (["sms"] if self.rng.random() < 0.5 else [])
        return {"full_name": f"{family} {middle} {given}", "id_number": f"0{self.rng.randrange(10**11):011d}",
                "phone": f"09{self.rng.randrange(10**8):08d}", "email": f"{handle}@example.vn", "notify_via": via}

    def new_dossier(self, now: datetime) -> Simulated:
        procedure = self.rng.choice(list(self.catalog.procedures.values()))
        unit = self.rng.choice([u for u in self.catalog.units.values() if u.level == "commune"])
        # Backdated up to 12 days: long-running dossiers pass their deadlines and some finish late.
        received = now - timedelta(days=self.rng.uniform(0, 12) if self.rng.random() < 0.6 else 0)
        code = self._code(unit.code, received)
        plan: list[tuple[EventType, dict[str, Any]]] = [
            (EventType.RECEIVED, {"procedure_code": procedure.code, "unit_code": unit.code,
                                  "channel": self.rng.choice(["direct", "online", "online", "postal"]),
                                  "applicant": self._applicant()}),
            (EventType.STEP_STARTED, {"step": "thẩm định", "unit_code": unit.code, "duration": "1 working_days"}),
        ]
        roll = self.rng.random()
        if roll < 0.1:
            plan += [(EventType.SUPPLEMENT_REQUESTED, {"reason": "Thiếu bản sao giấy tờ", "items": ["Bản sao CCCD"]}),
                     (EventType.SUPPLEMENT_RECEIVED, {})]
        elif roll < 0.18:
            plan += [(EventType.FEE_REQUESTED, {"amount_vnd": 50000}), (EventType.FEE_PAID, {})]
        elif roll < 0.22:
            plan += [(EventType.PAUSED, {"reason": "awaiting_opinion"}), (EventType.RESUMED, {})]
        plan.append((EventType.STEP_COMPLETED, {"step": "thẩm định", "unit_code": unit.code, "outcome": "đạt"}))
        end = self.rng.random()
        if end < 0.85:
            plan += [(EventType.RESOLVED, {}), (EventType.RESULT_RETURNED, {})]
        elif end < 0.95:
            plan += [(EventType.REJECTED, {"reason": "Không đủ điều kiện theo quy định"}),
                     (EventType.RESULT_RETURNED, {})]
        else:
            plan.append((EventType.WITHDRAWN, {"reason": "Công dân xin rút hồ sơ"}))
        return Simulated(code, unit.code, plan, received)

    def next_events(self, now: datetime, count: int) -> list[dict[str, Any]]:
        """`count` events: new dossiers and the next step of open ones, each in time order per dossier."""
        events = []
        for _ in range(count):
            if not self.open or (len(self.open) < 500 and self.rng.random() < 0.35):
                self.open.append(self.new_dossier(now))
            dossier = self.rng.choice(self.open)
            kind, data = dossier.plan[dossier.sent]
            if dossier.sent > 0:
                remaining = len(dossier.plan) - dossier.sent
                dossier.clock = min(now, dossier.clock + (now - dossier.clock) / max(remaining, 1))
            dossier.sent += 1
            if dossier.sent == len(dossier.plan):
                self.open.remove(dossier)
            events.append({
                "specversion": "1.0", "id": str(uuid.uuid4()), "source": SOURCE,
                "type": kind.cloudevents_type, "subject": dossier.code, "time": dossier.clock.isoformat(),
                "datacontenttype": "application/json", "dataschema": schema_uri(kind), "data": data,
            })
        return events


async def simulate(intake_url: str, rate: float, duration: float | None = None, seed: int | None = None,
                   headers: dict[str, str] | None = None) -> int:
    """Send about `rate` events per second to intake until `duration` seconds pass (forever when None)."""
    simulator = Simulator(Catalog.load(), random.Random(seed))
    sent = 0
    started = asyncio.get_running_loop().time()
    async with httpx.AsyncClient(base_url=intake_url, timeout=30, headers=headers or {}) as client:
        while duration is None or asyncio.get_running_loop().time() - started < duration:
            batch = simulator.next_events(datetime.now(UTC), max(1, round(rate)))
            try:
                reply = await client.post("/v1/events", json=batch,
                                          headers={"content-type": "application/cloudevents-batch+json"})
                sent += len(batch)
                if reply.status_code not in (202, 207):
                    print(f"intake answered {reply.status_code}: {reply.text[:300]}", file=sys.stderr, flush=True)
            except httpx.HTTPError as error:
                print(f"intake unreachable ({type(error).__name__}); retrying", file=sys.stderr, flush=True)
            await asyncio.sleep(1.0)
    return sent
