"""The public event contract: CloudEvents 1.0 envelopes carrying dossier lifecycle events (DESIGN §3).

Commune systems send these over HTTP and on `tthc.ingress.v1`. `parse_cloudevent` turns one JSON object into
an `IncomingEvent` or raises `EventRefused` with a machine-readable reason; nothing else in the code decides
whether an envelope or its data is well formed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.contract.dossier_code import InvalidDossierCode, validate_dossier_code
from shared.contract.duration import Duration
from shared.contract.rejections import EventRefused, FieldProblem, RejectionReason

TYPE_PREFIX: Final = "vn.gov.tthc.dossier."
SCHEMA_MAJOR: Final = 1
SCHEMA_MINOR: Final = 0
SCHEMA_BASE: Final = "https://schemas.tthc.gov.vn/dossier"


class EventType(StrEnum):
    RECEIVED = "received"
    REFUSED_AT_INTAKE = "refused_at_intake"
    STEP_STARTED = "step_started"
    STEP_COMPLETED = "step_completed"
    SUPPLEMENT_REQUESTED = "supplement_requested"
    SUPPLEMENT_RECEIVED = "supplement_received"
    FEE_REQUESTED = "fee_requested"
    FEE_PAID = "fee_paid"
    PAUSED = "paused"
    RESUMED = "resumed"
    APOLOGY_ISSUED = "apology_issued"
    RESOLVED = "resolved"
    REJECTED = "rejected"
    STOPPED = "stopped"
    WITHDRAWN = "withdrawn"
    RESULT_RETURNED = "result_returned"

    @property
    def cloudevents_type(self) -> str:
        return TYPE_PREFIX + self.value


class Channel(StrEnum):
    DIRECT = "direct"
    ONLINE = "online"
    POSTAL = "postal"


class NotifyChannel(StrEnum):
    SMS = "sms"
    EMAIL = "email"
    ZALO = "zalo"


class PauseReason(StrEnum):
    FEE = "fee"
    INSPECTION = "inspection"
    AWAITING_OPINION = "awaiting_opinion"
    OTHER = "other"


ShortText = Annotated[str, Field(min_length=1, max_length=500)]
Code = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[0-9A-Za-z._-]+$")]


class EventData(BaseModel):
    """Data of one lifecycle event. Fields we do not know are kept, so newer minor versions pass through."""

    model_config = ConfigDict(extra="allow", frozen=True)


class Applicant(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    full_name: Annotated[str, Field(min_length=1, max_length=200)]
    # Citizen ID (CCCD, 12 digits), old ID card (9), or an organisation's tax code (10 or 13 with a dash).
    id_number: Annotated[str, Field(pattern=r"^[0-9]{9,12}$|^[0-9]{10}-[0-9]{3}$")]
    phone: Annotated[str, Field(pattern=r"^\+?[0-9]{9,15}$")] | None = None
    email: Annotated[str, Field(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")] | None = None
    notify_via: list[NotifyChannel] = Field(default_factory=list, max_length=3)


class Received(EventData):
    procedure_code: Code
    unit_code: Code
    channel: Channel
    applicant: Applicant


class StepStarted(EventData):
    step: ShortText
    unit_code: Code
    duration: Duration | None = None
    due_at: AwareDatetime | None = None


class StepCompleted(EventData):
    step: ShortText
    unit_code: Code
    outcome: ShortText | None = None


class SupplementRequested(EventData):
    reason: ShortText
    items: list[ShortText] = Field(default_factory=list, max_length=100)


class Noted(EventData):
    """supplement_received, fee_paid, resumed, result_returned."""

    note: ShortText | None = None


class FeeRequested(EventData):
    amount_vnd: Annotated[int, Field(ge=0, le=10**13)]


class Paused(EventData):
    reason: PauseReason


class ApologyIssued(EventData):
    reason: ShortText
    new_appointment_at: AwareDatetime


class Resolved(EventData):
    reason: ShortText | None = None


class Reasoned(EventData):
    """rejected, stopped, withdrawn, refused_at_intake: the reason is required."""

    reason: ShortText


DATA_MODELS: Final[Mapping[EventType, type[EventData]]] = {
    EventType.RECEIVED: Received,
    EventType.REFUSED_AT_INTAKE: Reasoned,
    EventType.STEP_STARTED: StepStarted,
    EventType.STEP_COMPLETED: StepCompleted,
    EventType.SUPPLEMENT_REQUESTED: SupplementRequested,
    EventType.SUPPLEMENT_RECEIVED: Noted,
    EventType.FEE_REQUESTED: FeeRequested,
    EventType.FEE_PAID: Noted,
    EventType.PAUSED: Paused,
    EventType.RESUMED: Noted,
    EventType.APOLOGY_ISSUED: ApologyIssued,
    EventType.RESOLVED: Resolved,
    EventType.REJECTED: Reasoned,
    EventType.STOPPED: Reasoned,
    EventType.WITHDRAWN: Reasoned,
    EventType.RESULT_RETURNED: Noted,
}


class CloudEvent(BaseModel):
    """The CloudEvents 1.0 envelope in JSON structured mode. Extension attributes are kept."""

    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: Literal["1.0"]
    id: Annotated[str, Field(min_length=1, max_length=128)]
    source: Annotated[str, Field(min_length=1, max_length=256)]
    type: Annotated[str, Field(min_length=1, max_length=128)]
    subject: Annotated[str, Field(max_length=64)] | None = None
    time: AwareDatetime
    datacontenttype: str | None = None
    dataschema: Annotated[str, Field(max_length=256)] | None = None
    data: dict[str, Any]

    @field_validator("datacontenttype")
    @classmethod
    def _json_only(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("application/json"):
            raise ValueError("data must be JSON (datacontenttype application/json)")
        return value


def schema_uri(event_type: EventType) -> str:
    return f"{SCHEMA_BASE}/{event_type.value}/{SCHEMA_MAJOR}.{SCHEMA_MINOR}"


_VERSION = re.compile(r"(?:^|/)v?(\d+)\.(\d+)$")


def schema_version(dataschema: str | None) -> tuple[int, int]:
    """(major, minor) from `dataschema`; an envelope without one is read as 1.0."""
    if dataschema is None:
        return (SCHEMA_MAJOR, SCHEMA_MINOR)
    match = _VERSION.search(dataschema)
    if match is None:
        raise EventRefused(RejectionReason.UNSUPPORTED_SCHEMA_VERSION,
                           f"dataschema {dataschema!r} does not end in a version such as /1.0")
    return (int(match[1]), int(match[2]))


class IncomingEvent(BaseModel):
    """A lifecycle event whose envelope and data are valid. `dossier_code` is None only for a `received`
    event a commune sent without a code, for intake to mint one."""

    model_config = ConfigDict(frozen=True)

    id: str
    source: str
    event_type: EventType
    dossier_code: str | None
    occurred_at: datetime
    schema_version: tuple[int, int]
    data: EventData

    @property
    def key(self) -> tuple[str, str]:
        """Idempotency key: CloudEvents ids are unique per source."""
        return (self.source, self.id)


def _problems(error: ValidationError, prefix: str = "") -> list[FieldProblem]:
    # Only where and what, never the input value: it may be a citizen's name or ID number.
    return [
        FieldProblem(field=prefix + ".".join(str(p) for p in problem["loc"]), problem=problem["msg"])
        for problem in error.errors(include_input=False, include_url=False)
    ]


def parse_cloudevent(raw: Any) -> IncomingEvent:
    """Validate one decoded JSON value as a lifecycle CloudEvent."""
    if not isinstance(raw, dict):
        raise EventRefused(RejectionReason.INVALID_ENVELOPE, "a CloudEvent is a JSON object")
    try:
        envelope = CloudEvent.model_validate(raw)
    except ValidationError as error:
        raise EventRefused(RejectionReason.INVALID_ENVELOPE, "the CloudEvents envelope is not valid",
                           _problems(error)) from None
    if not envelope.type.startswith(TYPE_PREFIX):
        raise EventRefused(RejectionReason.UNKNOWN_TYPE,
                           f"type must start with {TYPE_PREFIX}; got {envelope.type[:80]!r}")
    try:
        event_type = EventType(envelope.type.removeprefix(TYPE_PREFIX))
    except ValueError:
        raise EventRefused(RejectionReason.UNKNOWN_TYPE, f"unknown event type {envelope.type[:80]!r}") from None
    version = schema_version(envelope.dataschema)
    if version[0] != SCHEMA_MAJOR:
        raise EventRefused(RejectionReason.UNSUPPORTED_SCHEMA_VERSION,
                           f"schema major version {version[0]} is not supported (this server reads {SCHEMA_MAJOR}.x)")
    code = envelope.subject
    if code is None and event_type is not EventType.RECEIVED:
        raise EventRefused(RejectionReason.BAD_DOSSIER_CODE, "subject (the dossier code) is required")
    if code is not None:
        try:
            validate_dossier_code(code)
        except InvalidDossierCode as error:
            raise EventRefused(RejectionReason.BAD_DOSSIER_CODE, f"subject: {error}") from None
    try:
        data = DATA_MODELS[event_type].model_validate(envelope.data)
    except ValidationError as error:
        raise EventRefused(RejectionReason.INVALID_DATA, f"data of a {event_type.value} event is not valid",
                           _problems(error, "data.")) from None
    return IncomingEvent(
        id=envelope.id, source=envelope.source, event_type=event_type, dossier_code=code,
        occurred_at=envelope.time, schema_version=version, data=data,
    )
