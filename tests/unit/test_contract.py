"""The event contract: every model, every class of bad input, dossier codes, sealing."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

import pytest

from services.intake import domain
from shared.contract.dossier_code import InvalidDossierCode, mint_dossier_code, validate_dossier_code
from shared.contract.duration import Duration, DurationUnit
from shared.contract.events import DATA_MODELS, EventType, parse_cloudevent, schema_version
from shared.contract.rejections import EventRefused, RejectionReason
from shared.crypto import Keyring, SealError, new_key_spec
from tests.support import CATALOG, cloudevent, dossier_code, received_data

pytestmark = pytest.mark.unit

VALID_DATA: dict[EventType, dict[str, Any]] = {
    EventType.RECEIVED: received_data(),
    EventType.REFUSED_AT_INTAKE: {"reason": "Hồ sơ không đúng thẩm quyền"},
    EventType.STEP_STARTED: {"step": "thẩm định", "unit_code": "07420", "duration": "2 working_days"},
    EventType.STEP_COMPLETED: {"step": "thẩm định", "unit_code": "07420", "outcome": "đạt"},
    EventType.SUPPLEMENT_REQUESTED: {"reason": "Thiếu giấy tờ", "items": ["Bản sao CCCD"]},
    EventType.SUPPLEMENT_RECEIVED: {},
    EventType.FEE_REQUESTED: {"amount_vnd": 50000},
    EventType.FEE_PAID: {"note": "đã nộp"},
    EventType.PAUSED: {"reason": "inspection"},
    EventType.RESUMED: {},
    EventType.APOLOGY_ISSUED: {"reason": "Chờ xác minh", "new_appointment_at": "2026-12-01T17:00:00+07:00"},
    EventType.RESOLVED: {},
    EventType.REJECTED: {"reason": "Không đủ điều kiện"},
    EventType.STOPPED: {"reason": "Theo yêu cầu của cơ quan có thẩm quyền"},
    EventType.WITHDRAWN: {"reason": "Công dân xin rút"},
    EventType.RESULT_RETURNED: {},
}


def test_every_event_type_has_a_data_model_and_an_example() -> None:
    assert set(DATA_MODELS) == set(EventType) == set(VALID_DATA)


@pytest.mark.parametrize("kind", list(EventType))
def test_every_event_type_parses(kind: EventType) -> None:
    code = dossier_code()
    event = parse_cloudevent(cloudevent(kind, code, VALID_DATA[kind]))
    assert event.event_type is kind
    assert event.dossier_code == code
    assert event.schema_version == (1, 0)
    assert isinstance(event.data, DATA_MODELS[kind])


def test_extra_fields_and_newer_minor_versions_are_kept() -> None:
    raw = cloudevent(EventType.RESOLVED, dossier_code(), {"reason": None, "signed_by": "Chủ tịch UBND"})
    raw["dataschema"] = "https://schemas.tthc.gov.vn/dossier/resolved/1.7"
    raw["traceparent"] = "00-abc"
    event = parse_cloudevent(raw)
    assert event.schema_version == (1, 7)
    assert event.data.model_dump()["signed_by"] == "Chủ tịch UBND"


def refusal(raw: Any) -> EventRefused:
    with pytest.raises(EventRefused) as caught:
        parse_cloudevent(raw)
    return caught.value


def test_wrong_types_name_the_field_but_not_the_value() -> None:
    raw = cloudevent(EventType.RECEIVED, dossier_code(), received_data())
    raw["data"]["applicant"]["id_number"] = "not-a-number-001203004567"
    raw["data"]["channel"] = 7
    refused = refusal(raw)
    assert refused.reason is RejectionReason.INVALID_DATA
    fields = {problem.field for problem in refused.problems}
    assert fields == {"data.channel", "data.applicant.id_number"}
    assert "001203004567" not in json.dumps([p.model_dump() for p in refused.problems])


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda e: e.pop("specversion"), RejectionReason.INVALID_ENVELOPE),
        (lambda e: e.update(specversion="0.3"), RejectionReason.INVALID_ENVELOPE),
        (lambda e: e.update(time="2026-11-25T09:00:00"), RejectionReason.INVALID_ENVELOPE),
        (lambda e: e.pop("id"), RejectionReason.INVALID_ENVELOPE),
        (lambda e: e.update(type="vn.gov.tthc.dossier.teleported"), RejectionReason.UNKNOWN_TYPE),
        (lambda e: e.update(type="com.example.order.created"), RejectionReason.UNKNOWN_TYPE),
        (lambda e: e.update(dataschema="https://schemas.tthc.gov.vn/dossier/resolved/2.0"),
         RejectionReason.UNSUPPORTED_SCHEMA_VERSION),
        (lambda e: e.update(subject="HS-2026-1"), RejectionReason.BAD_DOSSIER_CODE),
        (lambda e: e.pop("subject"), RejectionReason.BAD_DOSSIER_CODE),
        (lambda e: e.update(data={"reason": ""}), RejectionReason.INVALID_DATA),
        (lambda e: e.update(datacontenttype="application/xml"), RejectionReason.INVALID_ENVELOPE),
    ],
)
def test_bad_envelopes_are_refused_with_a_reason(mutate: Any, reason: RejectionReason) -> None:
    raw = cloudevent(EventType.REJECTED, dossier_code(), {"reason": "Không đủ điều kiện"})
    mutate(raw)
    assert refusal(raw).reason is reason


def test_missing_required_data_fields() -> None:
    raw = cloudevent(EventType.RECEIVED, dossier_code(), {"procedure_code": "1.001193"})
    refused = refusal(raw)
    assert refused.reason is RejectionReason.INVALID_DATA
    assert {"data.unit_code", "data.channel", "data.applicant"} <= {p.field for p in refused.problems}


def test_a_received_event_may_come_without_a_code() -> None:
    event = parse_cloudevent(cloudevent(EventType.RECEIVED, None, received_data()))
    assert event.dossier_code is None


def test_malformed_json_and_oversized_bytes() -> None:
    with pytest.raises(EventRefused) as caught:
        domain.screen_bytes(b'{"specversion": ', CATALOG)
    assert caught.value.reason is RejectionReason.MALFORMED_JSON
    with pytest.raises(EventRefused) as caught:
        domain.screen_bytes(b"\xff\xfe", CATALOG)
    assert caught.value.reason is RejectionReason.MALFORMED_JSON
    big = json.dumps(cloudevent(EventType.RESOLVED, dossier_code(), {"note": "x" * 100, "pad": "y" * 70000}))
    with pytest.raises(EventRefused) as caught:
        domain.screen_bytes(big.encode(), CATALOG)
    assert caught.value.reason is RejectionReason.PAYLOAD_TOO_LARGE
    with pytest.raises(EventRefused) as caught:
        domain.screen_bytes(b"[1, 2]", CATALOG)
    assert caught.value.reason is RejectionReason.INVALID_ENVELOPE


def test_unknown_procedure_and_unit_are_refused() -> None:
    data = received_data()
    data["procedure_code"] = "9.999999"
    with pytest.raises(EventRefused) as caught:
        domain.screen(cloudevent(EventType.RECEIVED, dossier_code(), data), CATALOG)
    assert caught.value.reason is RejectionReason.UNKNOWN_PROCEDURE
    data = received_data()
    data["unit_code"] = "99999"
    with pytest.raises(EventRefused) as caught:
        domain.screen(cloudevent(EventType.RECEIVED, dossier_code(), data), CATALOG)
    assert caught.value.reason is RejectionReason.UNKNOWN_UNIT


@pytest.mark.parametrize("code", ["000.00.01.H56-250101-0001", "H56.123.45-260125-AB000123",
                                  "000.00.24.07420-261125-9999", "G22.12.34-240229-120001"])
def test_official_dossier_codes_are_accepted(code: str) -> None:
    assert validate_dossier_code(code) == code


@pytest.mark.parametrize("code", ["000.00.01.H56-250101-001", "000.00.01.H56-251301-0001", "H56-250101-0001",
                                  "000.00.01.h56-250101-0001", "000.00.01.H56-250230-0001", "x" * 70, ""])
def test_malformed_dossier_codes_are_refused(code: str) -> None:
    with pytest.raises(InvalidDossierCode):
        validate_dossier_code(code)


def test_minted_codes_follow_circular_01_2018() -> None:
    assert mint_dossier_code("000.00.24.07420", date(2026, 11, 25), 7) == "000.00.24.07420-261125-0007"
    with pytest.raises(ValueError, match="4 digits"):
        mint_dossier_code("000.00.24.07420", date(2026, 11, 25), 10000)


@pytest.mark.parametrize(("text", "amount", "unit"), [
    ("3 working_days", 3, DurationUnit.WORKING_DAYS), ("1 working_day", 1, DurationUnit.WORKING_DAYS),
    ("4 working_hours", 4, DurationUnit.WORKING_HOURS), ("30 calendar_days", 30, DurationUnit.CALENDAR_DAYS),
    ("same_day", 0, DurationUnit.SAME_DAY), ("0 working_days", 0, DurationUnit.SAME_DAY),
])
def test_durations_parse(text: str, amount: int, unit: DurationUnit) -> None:
    parsed = Duration.parse(text)
    assert (parsed.amount, parsed.unit) == (amount, unit)
    assert Duration.parse(str(parsed)) == parsed


@pytest.mark.parametrize("text", ["3 days", "three working_days", "-1 working_days", "", "3 working_weeks"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        Duration.parse(text)


def test_schema_version_without_dataschema_is_1_0() -> None:
    assert schema_version(None) == (1, 0)
    with pytest.raises(EventRefused):
        schema_version("https://example.org/no-version")


def test_accepted_events_carry_no_plaintext_personal_data() -> None:
    keyring = Keyring.parse(new_key_spec("k1"))
    code = dossier_code()
    event = parse_cloudevent(cloudevent(EventType.RECEIVED, code, received_data()))
    accepted = domain.accept(event, code, minted=False, keyring=keyring, now=datetime.now(UTC))
    wire = accepted.model_dump_json()
    for secret in ("Nguyễn Văn An", "Nguy\\u1ec5n", "001203004567", "0912345678", "nguyen.van.an@example.vn"):
        assert secret not in wire
    assert accepted.applicant_sealed is not None
    opened = json.loads(keyring.open(accepted.applicant_sealed, code))
    assert opened["id_number"] == "001203004567"
    assert accepted.notify_via == ["email"]


def test_sealed_values_are_bound_to_their_dossier_and_survive_rotation() -> None:
    old = new_key_spec("old")
    sealed = Keyring.parse(old).seal(b"0912345678", "A-1")
    rotated = Keyring.parse(f"{new_key_spec('new')},{old}")
    assert rotated.open(sealed, "A-1") == b"0912345678"
    assert rotated.seal(b"x", "A-1").startswith("v1.new.")
    with pytest.raises(SealError):
        rotated.open(sealed, "B-2")
    with pytest.raises(SealError):
        Keyring.parse(new_key_spec("other")).open(sealed, "A-1")


@pytest.mark.parametrize("raw", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 40 + b"1" + b"}" * 40])
def test_deeply_nested_json_is_refused_not_crashed(raw: bytes) -> None:
    with pytest.raises(EventRefused) as caught:
        domain.decode_json(raw)
    assert caught.value.reason is RejectionReason.MALFORMED_JSON
    assert "nested deeper" in caught.value.detail


def test_ordinary_nesting_passes_the_depth_check() -> None:
    assert domain.decode_json(json.dumps(cloudevent(EventType.RECEIVED, dossier_code(), received_data())).encode())
