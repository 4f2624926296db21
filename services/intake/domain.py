"""Intake's pure core: turn bytes from a commune system into an accepted event or a refusal with a reason."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.catalog import Catalog
from shared.contract.dossier_code import InvalidDossierCode, validate_dossier_code
from shared.contract.events import (
    EventType,
    IncomingEvent,
    Received,
    StepCompleted,
    StepStarted,
    parse_cloudevent,
)
from shared.contract.lifecycle import EventAccepted
from shared.contract.rejections import EventRefused, FieldProblem, RejectionReason, RejectionRecorded, Stage
from shared.crypto import Keyring

MAX_EVENT_BYTES = 64 * 1024
MAX_BATCH_EVENTS = 1000


MAX_JSON_DEPTH = 32
TOO_DEEP = f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
# json.loads lets U+0000 and unpaired surrogates through (as \u escapes, and surrogates even UTF-8-encoded, which
# it decodes with "surrogatepass"), but PostgreSQL's text and jsonb refuse U+0000 and UTF-8 cannot encode a lone
# surrogate: neither may travel on. Only a body with such bytes (or in UTF-16 or -32, whose bytes hold zeros)
# can hold one, so other bodies skip the look at every string.
UNSTORABLE = "JSON strings may not hold U+0000 or an unpaired surrogate (\\ud800-\\udfff)"
_SUSPECT = re.compile(rb"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})|\xed[\xa0-\xbf]|\x00")


def _unstorable(text: str) -> bool:
    if "\x00" in text:
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def _check_tree(value: Any, limit: int, strings: bool) -> None:
    """Nesting within `limit` levels and, when `strings`, every key and string storable."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                raise EventRefused(RejectionReason.MALFORMED_JSON, TOO_DEEP)
            if strings and isinstance(item, dict) and any(_unstorable(key) for key in item):
                raise EventRefused(RejectionReason.MALFORMED_JSON, UNSTORABLE)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
        elif strings and isinstance(item, str) and _unstorable(item):
            raise EventRefused(RejectionReason.MALFORMED_JSON, UNSTORABLE)


def decode_json(raw: bytes) -> Any:
    """JSON with at most MAX_JSON_DEPTH levels of nesting (a batch adds one) whose strings can be stored."""
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EventRefused(RejectionReason.MALFORMED_JSON, f"not JSON: {error}") from None
    except RecursionError:
        raise EventRefused(RejectionReason.MALFORMED_JSON, TOO_DEEP) from None
    except ValueError:
        # Python refuses to convert integers of more than sys.get_int_max_str_digits() digits (CVE-2020-10735).
        raise EventRefused(RejectionReason.MALFORMED_JSON, "a JSON number has too many digits") from None
    _check_tree(value, MAX_JSON_DEPTH + 1, strings=_SUSPECT.search(raw) is not None)
    return value


def check_references(event: IncomingEvent, catalog: Catalog) -> None:
    """Procedures and units must be ones the platform knows, or no deadline can be computed for them."""
    data = event.data
    if isinstance(data, Received) and data.procedure_code not in catalog.procedures:
        raise EventRefused(RejectionReason.UNKNOWN_PROCEDURE, f"unknown procedure {data.procedure_code!r}")
    if isinstance(data, Received | StepStarted | StepCompleted) and data.unit_code not in catalog.units:
        raise EventRefused(RejectionReason.UNKNOWN_UNIT, f"unknown unit {data.unit_code!r}")


# Dossier codes carry the receipt day as YYMMDD of 20YY; an instant outside those years is a typo or an attack,
# and near the ends of what a datetime holds, date arithmetic (minting a code, a deadline) would overflow.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
OUT_OF_RANGE = "must fall within the years 2000 to 2099"


def check_times(event: IncomingEvent) -> None:
    if not EARLIEST <= event.occurred_at < LATEST:
        raise EventRefused(RejectionReason.INVALID_ENVELOPE, f"time {OUT_OF_RANGE}",
                           [FieldProblem(field="time", problem=OUT_OF_RANGE)])
    for name, value in event.data:
        if isinstance(value, datetime) and not EARLIEST <= value < LATEST:
            raise EventRefused(RejectionReason.INVALID_DATA, f"data.{name} {OUT_OF_RANGE}",
                               [FieldProblem(field=f"data.{name}", problem=OUT_OF_RANGE)])


def screen(value: Any, catalog: Catalog) -> IncomingEvent:
    """One decoded JSON value, checked as a lifecycle event against the contract and the catalog."""
    event = parse_cloudevent(value)
    check_times(event)
    check_references(event, catalog)
    return event


def check_size(raw: bytes) -> bytes:
    if len(raw) > MAX_EVENT_BYTES:
        raise EventRefused(RejectionReason.PAYLOAD_TOO_LARGE, f"an event may have at most {MAX_EVENT_BYTES} bytes")
    return raw


def screen_bytes(raw: bytes, catalog: Catalog) -> IncomingEvent:
    return screen(decode_json(check_size(raw)), catalog)


def authorize(event: IncomingEvent, source: str, units: frozenset[str], dossier_unit: str | None) -> None:
    """A key speaks only as its own source and only for dossiers of its units; a liên thông unit may also
    report the steps it handles on another unit's dossier."""
    if event.source != source:
        raise EventRefused(RejectionReason.FORGED_SOURCE,
                           f"this key speaks for source {source!r}, not {event.source[:100]!r}")
    data = event.data
    if isinstance(data, Received):
        allowed = data.unit_code in units
    elif isinstance(data, StepStarted | StepCompleted):
        allowed = data.unit_code in units or dossier_unit in units
    else:
        allowed = dossier_unit in units
    if not allowed:
        raise EventRefused(RejectionReason.FORBIDDEN_UNIT,
                           "this key does not speak for the unit of this dossier" if dossier_unit or isinstance(
                               data, Received) else "no dossier with this code was received from this key's units")


def minting_unit(event: IncomingEvent) -> str | None:
    """The unit whose agency id a new dossier code takes, when the commune sent none."""
    if event.dossier_code is None and isinstance(event.data, Received):
        return event.data.unit_code
    return None


def accept(event: IncomingEvent, dossier_code: str, *, minted: bool, keyring: Keyring, now: datetime) -> EventAccepted:
    """The event as it travels on: the applicant sealed to this dossier, nothing personal in plaintext."""
    data = event.data.model_dump(mode="json")
    sealed = None
    notify_via: list[str] = []
    if event.event_type is EventType.RECEIVED:
        applicant = data.pop("applicant")
        notify_via = list(applicant.get("notify_via", []))
        sealed = keyring.seal(json.dumps(applicant, ensure_ascii=False).encode(), dossier_code)
    return EventAccepted(
        id=event.id, source=event.source, event_type=event.event_type, dossier_code=dossier_code,
        code_minted=minted, occurred_at=event.occurred_at, accepted_at=now, data=data,
        applicant_sealed=sealed, notify_via=notify_via,
    )


@dataclass(frozen=True)
class Envelope:
    """What can be read of an input's envelope even when it is invalid, to name it in a rejection."""

    event_id: str | None
    source: str | None
    subject: str | None
    event_type: str | None

    @classmethod
    def of(cls, value: Any) -> Envelope:
        if not isinstance(value, dict):
            return cls(None, None, None, None)

        def text(name: str) -> str | None:
            item = value.get(name)
            return item[:256] if isinstance(item, str) else None

        return cls(text("id"), text("source"), _dossier_code(value.get("subject")), text("type"))


def _dossier_code(subject: Any) -> str | None:
    """`subject` when it is a dossier code. Anything else may be what a commune typed into the wrong field (an
    ID number, a name), which must not travel on in the refusal, nor key it on the rejections topic."""
    try:
        return validate_dossier_code(subject) if isinstance(subject, str) else None
    except InvalidDossierCode:
        return None


def rejection(refusal: EventRefused, *, payload: bytes, envelope: Envelope, now: datetime,
              stage: Stage = Stage.INTAKE) -> RejectionRecorded:
    return RejectionRecorded(
        rejection_id=str(uuid.uuid4()), stage=stage, reason=refusal.reason, detail=refusal.detail,
        problems=refusal.problems, event_id=envelope.event_id, source=envelope.source,
        subject=envelope.subject, event_type=envelope.event_type,
        payload_sha256=hashlib.sha256(payload).hexdigest(), rejected_at=now,
    )
