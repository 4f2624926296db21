"""Refusals: why an input was not accepted, as published on `tthc.rejections.v1` and answered over HTTP."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class RejectionReason(StrEnum):
    MALFORMED_JSON = "malformed_json"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    INVALID_ENVELOPE = "invalid_envelope"
    UNKNOWN_TYPE = "unknown_type"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    BAD_DOSSIER_CODE = "bad_dossier_code"
    INVALID_DATA = "invalid_data"
    UNKNOWN_PROCEDURE = "unknown_procedure"
    UNKNOWN_UNIT = "unknown_unit"
    UNAUTHENTICATED = "unauthenticated"
    FORGED_SOURCE = "forged_source"
    FORBIDDEN_UNIT = "forbidden_unit"
    IMPOSSIBLE_TRANSITION = "impossible_transition"
    OUT_OF_ORDER = "out_of_order"


class FieldProblem(BaseModel):
    model_config = ConfigDict(frozen=True)

    field: str
    problem: str


class EventRefused(Exception):
    """Raised by validation; carries what the sender is told."""

    def __init__(self, reason: RejectionReason, detail: str, problems: list[FieldProblem] | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.problems = problems or []


class Stage(StrEnum):
    INTAKE = "intake"
    RESOLUTION = "resolution"


class RejectionRecorded(BaseModel):
    """One refused input. It names the input by source, id and subject and a digest of its bytes; it never
    copies the payload, which may hold personal data."""

    model_config = ConfigDict(frozen=True)

    schema_version: str = "1.0"
    rejection_id: str
    stage: Stage
    reason: RejectionReason
    detail: str
    problems: list[FieldProblem] = []
    event_id: str | None = None
    source: str | None = None
    subject: str | None = None
    event_type: str | None = None
    dossier_state: str | None = None
    payload_sha256: str | None = None
    rejected_at: datetime
