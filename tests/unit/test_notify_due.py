"""The due-soon alert to the handling unit's webhook: what each event schedules or cancels at `now`, the
payload (no personal data, Vietnamese message) and its signature."""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.notify import due, webhook
from shared.contract.events import EventType
from shared.contract.lifecycle import DossierLifecycleEvent, DossierState

pytestmark = pytest.mark.unit
NOW = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)
DUE = NOW + timedelta(days=3)
SOON = NOW + timedelta(days=2)
SECRET = b"commune-shared-secret"


def event(state: DossierState = DossierState.PROCESSING, legal_due_at: datetime | None = DUE,
          due_soon_at: datetime | None = SOON, kind: EventType = EventType.STEP_STARTED) -> DossierLifecycleEvent:
    return DossierLifecycleEvent(
        id="000.00.24.07420-260302-0001:2", dossier_code="000.00.24.07420-260302-0001", sequence=2,
        event_type=kind, occurred_at=NOW, recorded_at=NOW, source="urn:test", source_event_id="e2",
        procedure_code="1.001193", unit_code="07420", sector="ho_tich", channel="online", state=state,
        status_code=4, received_at=NOW - timedelta(days=1), legal_due_at=legal_due_at, due_soon_at=due_soon_at,
        appointment_at=legal_due_at, calendar_version="c", policy_version="p",
        applicant_sealed="sealed-contact", notify_via=["email"])


@pytest.mark.parametrize("state", [DossierState.RECEIVED, DossierState.PROCESSING])
def test_a_running_dossier_schedules_one_alert_for_its_due_instant_not_before_due_soon(state: DossierState) -> None:
    plan = due.plan(event(state), NOW, "Đăng ký khai sinh")
    assert plan.schedule is not None
    assert plan.schedule.event_id == "due_soon@2026-03-05T03:00:00+00:00"
    assert plan.schedule.not_before == SOON
    assert plan.keep == plan.schedule.event_id
    assert plan.schedule.context["unit_code"] == "07420"
    assert plan.schedule.context["legal_due_at"] == DUE.isoformat()


def test_the_key_names_the_due_instant_whatever_the_zone_it_came_in() -> None:
    local = DUE.astimezone(ZoneInfo("Asia/Ho_Chi_Minh"))
    assert due.alert_id(local) == due.alert_id(DUE)
    moved = due.plan(event(legal_due_at=DUE + timedelta(days=2), due_soon_at=SOON + timedelta(days=2)), NOW, "x")
    assert moved.keep != due.plan(event(), NOW, "x").keep  # a moved due instant: the old alert is cancelled


@pytest.mark.parametrize("state", [DossierState.AWAITING_SUPPLEMENT, DossierState.AWAITING_FEE, DossierState.PAUSED,
                                   DossierState.RESOLVED, DossierState.REJECTED, DossierState.RETURNED,
                                   DossierState.WITHDRAWN, DossierState.STOPPED, DossierState.REFUSED])
def test_a_stopped_clock_or_a_closed_dossier_schedules_nothing_and_cancels_what_waits(state: DossierState) -> None:
    plan = due.plan(event(state), NOW, "x")
    assert plan.schedule is None
    assert plan.keep is None


def test_no_due_instant_or_already_overdue_schedules_nothing() -> None:
    assert due.plan(event(legal_due_at=None, due_soon_at=None), NOW, "x").schedule is None
    assert due.plan(event(due_soon_at=None), NOW, "x").schedule is None
    assert due.plan(event(), DUE, "x").schedule is None
    assert due.plan(event(), DUE + timedelta(hours=1), "x").schedule is None


def test_inside_the_due_soon_window_the_alert_is_due_at_once() -> None:
    later = SOON + timedelta(hours=3)
    plan = due.plan(event(), later, "x")
    assert plan.schedule is not None
    assert plan.schedule.not_before <= later


def test_the_payload_has_the_machine_fields_a_vietnamese_message_and_no_personal_data() -> None:
    plan = due.plan(event(), NOW, "Đăng ký khai sinh")
    assert plan.schedule is not None
    body = webhook.payload(due.TEMPLATE, plan.schedule.context, "k")
    assert body["event_type"] == "due_soon"
    assert {body[f] for f in ("dossier_code", "unit_code", "procedure_code", "state")} == {
        "000.00.24.07420-260302-0001", "07420", "1.001193", "processing"}
    assert (body["legal_due_at"], body["due_soon_at"]) == (DUE.isoformat(), SOON.isoformat())
    message = body["message"]
    assert message.startswith("Hồ sơ 000.00.24.07420-260302-0001 (Đăng ký khai sinh) sắp đến hạn giải quyết")
    assert "10:00 ngày 05/03/2026" in message  # Vietnam time
    assert "\n" not in message
    assert unicodedata.is_normalized("NFC", message)
    text = json.dumps(body, ensure_ascii=False)
    assert "sealed-contact" not in text
    assert "last_event_id" not in body


def test_the_signature_verifies_with_the_secret_only_over_the_exact_body_and_recent_timestamp() -> None:
    raw, headers = webhook.request(SECRET, 1_772_420_400, {"idempotency_key": "k", "message": "Hồ sơ"})
    signature, stamp = headers[webhook.SIGNATURE_HEADER], headers[webhook.TIMESTAMP_HEADER]
    assert signature.startswith("sha256=")
    assert headers[webhook.IDEMPOTENCY_HEADER] == "k"
    assert json.loads(raw)["message"] == "Hồ sơ"
    assert webhook.verify(SECRET, stamp, raw, signature, now=1_772_420_410)
    assert not webhook.verify(b"another secret", stamp, raw, signature, now=1_772_420_410)
    assert not webhook.verify(SECRET, stamp, raw.replace("Hồ".encode(), b"Ho"), signature, now=1_772_420_410)
    assert not webhook.verify(SECRET, str(int(stamp) + 1), raw, signature, now=1_772_420_410)
    assert not webhook.verify(SECRET, stamp, raw, signature, now=1_772_420_400 + 3600)  # replayed later
    assert not webhook.verify(SECRET, "not a number", raw, signature, now=1_772_420_410)
