"""What flows between the services after intake: accepted events and canonical lifecycle events."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from shared.contract.events import EventType


class EventAccepted(BaseModel):
    """An incoming event intake validated, on `tthc.accepted.v1`. The applicant is sealed; `data` has none of
    the applicant's personal data in plaintext."""

    model_config = ConfigDict(frozen=True)

    schema_version: str = "1.0"
    id: str
    source: str
    event_type: EventType
    dossier_code: str
    code_minted: bool = False
    occurred_at: datetime
    accepted_at: datetime
    data: dict[str, Any]
    applicant_sealed: str | None = None
    notify_via: list[str] = []


class DossierState(StrEnum):
    """Where a dossier stands; national status codes in `STATUS_CODES`."""

    RECEIVED = "received"
    PROCESSING = "processing"
    AWAITING_SUPPLEMENT = "awaiting_supplement"
    AWAITING_FEE = "awaiting_fee"
    PAUSED = "paused"
    RESOLVED = "resolved"
    REJECTED = "rejected"
    STOPPED = "stopped"
    WITHDRAWN = "withdrawn"
    REFUSED = "refused"
    RETURNED = "returned"


STATUS_CODES: dict[DossierState, int] = {
    DossierState.RECEIVED: 2,
    DossierState.REFUSED: 3,
    DossierState.PROCESSING: 4,
    DossierState.AWAITING_SUPPLEMENT: 5,
    DossierState.AWAITING_FEE: 6,
    DossierState.PAUSED: 4,
    DossierState.WITHDRAWN: 7,
    DossierState.STOPPED: 8,
    DossierState.RESOLVED: 9,
    DossierState.REJECTED: 9,
    DossierState.RETURNED: 10,
}


class OpenState(StrEnum):
    ON_TRACK = "on_track"
    DUE_SOON = "due_soon"
    OVERDUE = "overdue"
    PAUSED = "paused"
    AWAITING_SUPPLEMENT = "awaiting_supplement"


class Timeliness(StrEnum):
    EARLY = "early"
    ON_TIME = "on_time"
    LATE = "late"


class StepView(BaseModel):
    model_config = ConfigDict(frozen=True)

    step: str
    unit_code: str
    started_at: datetime | None = None
    due_at: datetime | None = None
    completed_at: datetime | None = None
    timeliness: Timeliness | None = None


class DossierLifecycleEvent(BaseModel):
    """Canonical event on `tthc.dossier-lifecycle.v1`, one per accepted lifecycle event, key = dossier code.

    `id` is stable (dossier code and sequence), so a consumer that sees it twice knows it is a repeat.
    """

    model_config = ConfigDict(frozen=True)

    schema_version: str = "1.0"
    id: str
    dossier_code: str
    sequence: int
    event_type: EventType
    occurred_at: datetime
    recorded_at: datetime
    source: str
    source_event_id: str
    procedure_code: str
    unit_code: str
    sector: str
    channel: str
    state: DossierState
    status_code: int
    received_at: datetime
    legal_due_at: datetime | None
    due_soon_at: datetime | None = None
    appointment_at: datetime | None
    open_state: OpenState | None = None
    timeliness: Timeliness | None = None
    completed_at: datetime | None = None
    time_used_ratio: float | None = None
    supplement_count: int = 0
    apology_issued: bool = False
    apology_late: bool = False
    step: StepView | None = None
    reason: str | None = None
    details: dict[str, Any] = {}
    """The event's own data (what is missing, the fee, the new appointment...); never personal data."""
    calendar_version: str
    policy_version: str
    applicant_sealed: str | None = None
    notify_via: list[str] = []
