"""Notify's templates: every trigger renders on every channel, in Vietnamese with its diacritics intact."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest

from services.notify.delivery import mail
from services.notify.messages import CHANNELS, TEMPLATE_FOR, owed, render, required
from shared.contract.events import EventType
from shared.contract.lifecycle import DossierLifecycleEvent, DossierState, Timeliness

pytestmark = pytest.mark.unit
AT = datetime(2026, 2, 10, 2, 0, tzinfo=UTC)
DETAILS = {
    EventType.SUPPLEMENT_REQUESTED: {"reason": "Thiếu giấy tờ", "items": ["Bản sao căn cước công dân"]},
    EventType.FEE_REQUESTED: {"amount_vnd": 1250000},
    EventType.APOLOGY_ISSUED: {"reason": "Chờ ý kiến cơ quan liên quan", "new_appointment_at": "2026-02-27"},
}


LINKS = {"survey_url": "https://x/khao-sat/000.00.24.07420-260210-0001/tok",
         "opt_out_url": "https://x/huy-nhan-tin/000.00.24.07420-260210-0001/tok"}


def event(kind: EventType, timeliness: Timeliness = Timeliness.EARLY) -> DossierLifecycleEvent:
    return DossierLifecycleEvent(
        id="x:1", dossier_code="000.00.24.07420-260210-0001", sequence=1, event_type=kind, occurred_at=AT,
        recorded_at=AT, source="urn:test", source_event_id="e1", procedure_code="1.001193", unit_code="07420",
        sector="ho_tich", channel="online", state=DossierState.RESOLVED, status_code=9, received_at=AT,
        legal_due_at=AT, appointment_at=AT, timeliness=timeliness, reason="Không đủ điều kiện",
        details=DETAILS.get(kind, {}), calendar_version="c", policy_version="p")


@pytest.mark.parametrize("kind", list(TEMPLATE_FOR))
@pytest.mark.parametrize("channel", CHANNELS)
def test_every_trigger_renders_on_every_channel(kind: EventType, channel: str) -> None:
    [message] = owed(event(kind), [channel], "Thủ tục đăng ký khai sinh", "https://x/tra-cuu")
    subject, body = render(message.template, channel, {**message.context, **LINKS, "full_name": "Nguyễn Thị Ánh Tuyết"})
    assert "000.00.24.07420-260210-0001" in subject + body
    text = subject + body
    assert unicodedata.is_normalized("NFC", text)
    assert any(ord(c) > 127 for c in text)  # Vietnamese, not a stripped fallback
    if channel == "email":
        assert subject
        assert "Nguyễn Thị Ánh Tuyết" in body
    else:
        assert len(body) <= 320  # two SMS segments at most
        assert "\n" not in body


def test_sms_without_diacritics_where_the_gateway_needs_it() -> None:
    [message] = owed(event(EventType.FEE_REQUESTED), ["sms"], "Đăng ký khai sinh", "u")
    _, body = render(message.template, "sms", {**message.context, **LINKS, "full_name": "x"}, ascii_sms=True)
    assert body.isascii()
    assert body.startswith("Ho so 000.00.24.07420-260210-0001: vui long nop phi, le phi 1.250.000 dong")


def test_only_the_chosen_channels_and_only_triggers_owe_messages() -> None:
    assert [m.channel for m in owed(event(EventType.RESOLVED), ["sms", "email", "sms"], "p", "u")] == [
        "sms", "email"]
    assert owed(event(EventType.STEP_STARTED), ["email"], "p", "u") == []


def test_the_notices_the_law_requires_survive_an_opt_out() -> None:
    needed = {kind for kind in TEMPLATE_FOR if required(event(kind, Timeliness.ON_TIME))}
    assert needed == {EventType.RECEIVED, EventType.SUPPLEMENT_REQUESTED, EventType.APOLOGY_ISSUED,
                      EventType.REJECTED}
    assert required(event(EventType.RESOLVED, Timeliness.EARLY))  # an early result is announced (Đ20.4)
    assert [m.required for m in owed(event(EventType.FEE_REQUESTED), ["email", "sms"], "p", "u")] == [False, False]


def test_the_survey_link_is_in_the_last_message_and_the_opt_out_link_in_emails_and_zalo_messages() -> None:
    def email(kind: EventType) -> str:
        [message] = owed(event(kind), ["email"], "p", "u")
        return render(message.template, "email", {**message.context, **LINKS, "full_name": "x"})[1]

    def short(kind: EventType, channel: str) -> str:
        [message] = owed(event(kind), [channel], "p", "u")
        return render(message.template, channel, {**message.context, **LINKS, "full_name": "x"})[1]

    assert LINKS["survey_url"] in email(EventType.RESULT_RETURNED)
    assert all(LINKS["survey_url"] in short(EventType.RESULT_RETURNED, c) for c in ("sms", "zalo"))
    for kind in (EventType.RECEIVED, EventType.FEE_REQUESTED, EventType.RESOLVED):
        assert f"từ chối tại: {LINKS['opt_out_url']}" in email(kind)
        assert "pháp luật quy định" in email(kind)
    assert LINKS["opt_out_url"] not in email(EventType.REJECTED)
    for kind in (EventType.RECEIVED, EventType.FEE_REQUESTED, EventType.RESOLVED):
        assert f"Từ chối tin không bắt buộc: {LINKS['opt_out_url']}" in short(kind, "zalo")
        assert LINKS["opt_out_url"] not in short(kind, "sms")
    assert LINKS["opt_out_url"] not in short(EventType.SUPPLEMENT_REQUESTED, "zalo")


def test_an_email_reads_back_exactly_in_any_mail_reader() -> None:
    subject = "Hồ sơ 000.00.24.07420-260210-0001 đã được tiếp nhận — thông báo dài hơn một dòng tiêu đề thư"
    body = "Kính gửi ông/bà Nguyễn Thị Ánh Tuyết,\n\nTrung tâm Phục vụ hành chính công đã tiếp nhận hồ sơ.\n"
    sender = "Trung tâm Phục vụ hành chính công <khong-tra-loi@tthc.gov.vn>"
    long_id = "<000.00.24.07420-260210-TS000123/000.00.24.07420-260210-TS000123+1/email@tthc.gov.vn>"
    raw = mail(sender, "tuyet@example.vn", subject, body, long_id)
    assert raw.isascii()  # headers as encoded words and the body base64: any relay carries it
    assert b"\n" not in raw.replace(b"\r\n", b"")  # SMTP's line ends only
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    read = message_from_bytes(raw, policy=policy.default)
    assert isinstance(read, EmailMessage)
    assert not read.defects
    assert (read["Subject"], read["From"], read["To"], read["Message-ID"]) == (
        subject, sender, "tuyet@example.vn", long_id)
    assert read["Date"].datetime is not None
    assert read.get_content() == body


@pytest.mark.parametrize("subject", [
    "Hồ sơ đã được tiếp nhận",  # one encoded word
    "Đ" * 22 + "ữ" * 40,  # the first word ends inside a three-byte character, the rest on their edges
    "Ho so 000.00.24.07420-260210-0001 da duoc tiep nhan",  # plain ASCII stays as it is
])
def test_every_subject_reads_back_whole(subject: str) -> None:
    raw = mail("Một cửa <mot-cua@example.vn>", "a@example.vn", subject, "Nội dung\n", "<id@tthc.gov.vn>")

    read = message_from_bytes(raw, policy=policy.default)

    assert read["Subject"] == subject
    assert read["From"] == "Một cửa <mot-cua@example.vn>"


def test_an_internationalised_address_goes_as_utf8_and_only_it() -> None:
    raw = mail("Một cửa <mot-cua@example.vn>", "ánh@thư.vn", "Tiêu đề", "Nội dung\n", "<id@tthc.gov.vn>")

    read = message_from_bytes(raw, policy=policy.default)

    assert read["To"] == "ánh@thư.vn"
    assert (read["Subject"], read.get_content()) == ("Tiêu đề", "Nội dung\n")
    assert raw.replace("ánh@thư.vn".encode(), b"").isascii()


@pytest.mark.parametrize(("to", "message_id"), [
    ("a@example.vn\r\nBcc: b@example.vn", "<id@tthc.gov.vn>"),
    ("a@example.vn", "<id@tthc.gov.vn>\nBcc: b@example.vn"),
    ("a@example.vn", "<mã@tthc.gov.vn>"),
])
def test_an_address_or_id_that_cannot_go_in_a_header_as_it_is_is_refused(to: str, message_id: str) -> None:
    with pytest.raises(ValueError, match="cannot go in a header"):
        mail("Một cửa <mot-cua@example.vn>", to, "Tiêu đề", "Nội dung\n", message_id)
