"""The public look-up page (tra cứu hồ sơ): a citizen types the dossier code and the last 4 digits of the
applicant's ID number and sees where the dossier stands. Nothing personal is shown beyond what was typed,
and every miss (unknown code, wrong digits, malformed input, too many tries) gets the same answer."""

from __future__ import annotations

import hmac
import json
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from shared.catalog import Catalog
from shared.clock.deadline import vi_instant
from shared.contract.lifecycle import DossierState
from shared.crypto import Keyring, SealError
from shared.dossier import Dossier

_env = Environment(loader=FileSystemLoader(Path(__file__).resolve().parent / "templates"),
                   autoescape=select_autoescape(["html", "j2"]), auto_reload=False)

STATE_VI: dict[DossierState, str] = {
    DossierState.RECEIVED: "Đã tiếp nhận",
    DossierState.PROCESSING: "Đang xử lý",
    DossierState.AWAITING_SUPPLEMENT: "Chờ bổ sung hồ sơ",
    DossierState.AWAITING_FEE: "Chờ thực hiện nghĩa vụ tài chính",
    DossierState.PAUSED: "Tạm dừng xử lý",
    DossierState.RESOLVED: "Đã có kết quả",
    DossierState.REJECTED: "Đã có kết quả (không giải quyết)",
    DossierState.STOPPED: "Dừng xử lý",
    DossierState.WITHDRAWN: "Đã rút hồ sơ",
    DossierState.REFUSED: "Không được tiếp nhận",
    DossierState.RETURNED: "Đã trả kết quả",
}


@dataclass
class RateLimit:
    """At most `limit` tries per key in any `window` seconds (a sliding window, kept in memory)."""

    limit: int
    window: float
    tries: dict[str, deque[float]] = field(default_factory=dict)

    def exhausted(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        recent = self.tries.get(key)
        while recent and recent[0] <= now - self.window:
            recent.popleft()
        return recent is not None and len(recent) >= self.limit

    def record(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.tries.setdefault(key, deque()).append(now)
        if len(self.tries) > 100_000:  # bound the memory an enumeration attempt can take
            self.tries = {k: v for k, v in self.tries.items() if v and v[-1] > now - self.window}

    def allow(self, key: str, now: float | None = None) -> bool:
        """Count a try and say whether it is within the limit."""
        if self.exhausted(key, now):
            return False
        self.record(key, now)
        return True


def id_matches(dossier: Dossier, last_digits: str, keyring: Keyring) -> bool:
    if dossier.applicant_sealed is None or len(last_digits) != 4 or not last_digits.isdigit():
        return False
    try:
        applicant = json.loads(keyring.open(dossier.applicant_sealed, dossier.code))
    except SealError:
        return False
    return hmac.compare_digest(str(applicant.get("id_number", ""))[-4:].encode(), last_digits.encode())


def _local(value: datetime | None) -> str:
    return vi_instant(value) if value is not None else "—"


def view(dossier: Dossier, catalog: Catalog) -> dict[str, Any]:
    """What the citizen may see: no name, no ID number, no contact."""
    procedure = catalog.procedures.get(dossier.procedure_code)
    unit = catalog.units.get(dossier.unit_code)

    def unit_name(code: str) -> str:
        found = catalog.units.get(code)
        return found.name_vi if found else code

    return {
        "code": dossier.code,
        "procedure": procedure.name_vi if procedure else dossier.procedure_code,
        "unit": unit.name_vi if unit else dossier.unit_code,
        "state": STATE_VI[dossier.state],
        "received_at": _local(dossier.received_at),
        "appointment_at": _local(dossier.appointment_at),
        "completed_at": _local(dossier.completed_at) if dossier.completed_at else None,
        "steps": [{"step": step.step, "unit": unit_name(step.unit_code), "started_at": _local(step.started_at),
                   "completed_at": _local(step.completed_at) if step.completed_at else "Đang thực hiện"}
                  for step in dossier.steps.values()],
    }


def render(code: str = "", found: dict[str, Any] | None = None, missed: bool = False) -> str:
    return _env.get_template("tra_cuu.html.j2").render(code=code, found=found, missed=missed)
