"""The due-soon alert to the handling unit's webhook: what a lifecycle event means for it, decided purely.

While a dossier runs, one alert waits in the delivery queue, keyed by the due instant it warns about and not
sent before the dossier's due_soon_at. Every later event of the dossier cancels the waiting alert unless it
still stands for the same due instant: a closed dossier, a stopped clock or a moved due instant all end it,
and a still-running dossier with a new due instant gets a new one. The key makes a resent event a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.contract.lifecycle import DossierLifecycleEvent, DossierState

KIND = "due_soon"
PREFIX = f"{KIND}@"
TEMPLATE = "due_soon"
# The clock runs only in these states; a paused or closed dossier is never about to be late.
RUNNING = frozenset({DossierState.RECEIVED, DossierState.PROCESSING})


@dataclass(frozen=True)
class DueAlert:
    """A due-soon alert to queue: its event id in the delivery key, not to be sent before `not_before`."""

    event_id: str
    not_before: datetime
    context: dict[str, Any]


@dataclass(frozen=True)
class DuePlan:
    """`schedule` (if any) is upserted; every other pending due-soon alert of the dossier is cancelled."""

    schedule: DueAlert | None

    @property
    def keep(self) -> str | None:
        return self.schedule.event_id if self.schedule else None


def alert_id(legal_due_at: datetime) -> str:
    return PREFIX + legal_due_at.astimezone(UTC).isoformat()


def plan(event: DossierLifecycleEvent, now: datetime, procedure_name: str) -> DuePlan:
    """What `event`, consumed at `now`, does to the dossier's due-soon alert. A dossier already past its due
    instant is overdue, not due soon: no alert. One already within its due-soon window is alerted at once."""
    due, soon = event.legal_due_at, event.due_soon_at
    if event.state not in RUNNING or due is None or soon is None or due <= now:
        return DuePlan(None)
    context = {
        "kind": KIND,
        "dossier_code": event.dossier_code,
        "unit_code": event.unit_code,
        "procedure_code": event.procedure_code,
        "procedure_name": procedure_name,
        "sector": event.sector,
        "state": event.state.value,
        "status_code": event.status_code,
        "received_at": event.received_at.astimezone(UTC).isoformat(),
        "legal_due_at": due.astimezone(UTC).isoformat(),
        "due_soon_at": soon.astimezone(UTC).isoformat(),
        "appointment_at": event.appointment_at.astimezone(UTC).isoformat() if event.appointment_at else None,
        "last_event_type": event.event_type.value,
        "last_event_id": event.id,
    }
    return DuePlan(DueAlert(alert_id(due), soon, context))
