"""The whole stack carries citizens' personal data to them and nowhere else (DESIGN §5, docs/security.md).

Applicants with distinctive names, ID numbers, phones and emails go through intake's HTTP API, accepted and
refused every way there is, until the citizen has every message. Then every log the stack wrote, every record
on every Kafka topic (internal ones included), every service's /metrics and operator-facing pages, and every
row of every table are searched for that data: as sent, without diacritics, JSON-escaped, URL-encoded and
inside base64. Only the citizen's own mailbox and SMS/Zalo gateway (the providers' stand-ins) may hold it,
and the sealed columns must open to it.

The scan cannot pass by looking nowhere: it must find a marker that travels in a non-personal field on the
topics, in the database and in the mail, and the personal data in the providers' stand-ins.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import secrets
import unicodedata
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.contract.events import EventType
from shared.crypto import Keyring
from shared.infra.sinks import read_mail
from shared.infra.stack import SERVICES, Stack
from shared.simulator import SOURCE
from shared.text import without_diacritics
from tests.e2e.conftest import intake_client, stack_key
from tests.support import PROCEDURE, UNIT, VN, cloudevent, dossier_code, eventually, metric_total

pytestmark = pytest.mark.e2e

NAMES = ("Trịnh Thị Thuỷ Tiên", "Đoàn Quốc Khánh Hưng", "Lê Nguyễn Bảo Ngọc")
CHANNELS = ("email", "sms", "zalo")
TEMPLATES = ("received", "supplement_requested", "resolved", "result_returned")


@dataclass(frozen=True)
class Applicant:
    full_name: str
    id_number: str
    phone: str
    email: str

    @classmethod
    def fresh(cls, name: str) -> Applicant:
        # Digits and an address no other test uses, so that anything found came from this run.
        digits = "".join(secrets.choice("0123456789") for _ in range(11))
        local = without_diacritics(name).lower().replace(" ", ".")
        return cls(name, "0" + digits, "09" + digits[:8], f"{local}.{secrets.token_hex(3)}@example.vn")

    def data(self) -> dict[str, Any]:
        return {"procedure_code": PROCEDURE.code, "unit_code": UNIT.code, "channel": "online",
                "applicant": {"full_name": self.full_name, "id_number": self.id_number, "phone": self.phone,
                              "email": self.email, "notify_via": list(CHANNELS)}}


# ------------------------------------------------------------------------------------------------ the scanner


def spellings(value: str) -> set[str]:
    """The ways `value` may be written down, case folded: as is (NFC and NFD), without diacritics, JSON-escaped
    (\\uXXXX), URL-encoded."""
    forms = {unicodedata.normalize("NFC", value), unicodedata.normalize("NFD", value), without_diacritics(value)}
    forms |= {json.dumps(form)[1:-1] for form in list(forms)}
    forms |= {urllib.parse.quote(form) for form in list(forms)} | {urllib.parse.quote_plus(value)}
    return {form.casefold() for form in forms}


@dataclass
class Needle:
    label: str
    forms: set[str]


def needles_for(applicant: Applicant, index: int) -> list[Needle]:
    local = applicant.email.split("@")[0]
    phone = applicant.phone
    return [
        Needle(f"applicant {index} name", spellings(applicant.full_name)),
        Needle(f"applicant {index} ID number", {applicant.id_number}),
        Needle(f"applicant {index} phone", {phone, "+84" + phone[1:], "84" + phone[1:]}),
        Needle(f"applicant {index} email", spellings(applicant.email) | {local.casefold()}),
    ]


BASE64 = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}")


def _unwrapped(text: str) -> Iterator[str]:
    """`text`, and whatever base64 inside it decodes to: encoding is not encryption."""
    yield text
    for token in BASE64.findall(text):
        for decode in (base64.urlsafe_b64decode, base64.b64decode):
            try:
                yield decode(token + "=" * (-len(token) % 4)).decode("utf-8", "replace")
            except ValueError:
                continue


@dataclass
class Finding:
    where: str
    label: str
    context: str


@dataclass
class Scanner:
    needles: list[Needle]
    findings: list[Finding] = field(default_factory=list)
    scanned: dict[str, int] = field(default_factory=dict)

    def find(self, where: str, content: str | bytes) -> list[Finding]:
        text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
        self.scanned[where.split(":")[0]] = self.scanned.get(where.split(":")[0], 0) + len(text)
        found = []
        for piece in _unwrapped(unicodedata.normalize("NFC", text)):
            haystack = piece.casefold()
            for needle in self.needles:
                for form in needle.forms:
                    at = haystack.find(form)
                    if at >= 0:
                        found.append(Finding(where, needle.label, piece[max(0, at - 60):at + len(form) + 60]))
                        break
        return found

    def scan(self, where: str, content: str | bytes) -> None:
        self.findings += self.find(where, content)

    def report(self) -> str:
        return "\n".join(f"{f.label} in {f.where}: …{f.context!r}…" for f in self.findings[:20])


def check_scanner(needles: list[Needle], name: str) -> None:
    """The scanner finds a name however it is disguised; else a clean scan would prove nothing."""
    scanner = Scanner(needles)
    folded = without_diacritics(name)
    for disguise in (name, unicodedata.normalize("NFD", name), folded.upper(), json.dumps({"n": name}),
                     json.dumps({"n": unicodedata.normalize("NFD", name)}), urllib.parse.quote(name),
                     base64.b64encode(f"{{\"full_name\": \"{name}\"}}".encode()).decode(),
                     base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")):
        assert scanner.find("self-test", f"xx {disguise} yy"), f"the scanner misses {disguise!r}"
    assert not scanner.find("self-test", "Nguyễn Văn An 001203004567 0912345678 nguyen.van.an@example.vn")


# ------------------------------------------------------------------------------------------------- sources


def log_files(stack: Stack, basetemp: Path) -> Iterable[Path]:
    """Every log the stack and its infrastructure write. The sinks stand in for the mail and SMS providers,
    whose business is the citizen's address; the test's own PostgreSQL server logs too."""
    skipped = {stack.outbox_dir, stack.run_dir / "kafka" / "data"}
    for path in sorted(stack.run_dir.rglob("*")):
        if path.is_file() and not any(part in skipped for part in path.parents) and path.name != "sinks.log" \
                and (path.suffix == ".log" or "logs" in path.parts):
            yield path
    yield from sorted({path.resolve() for path in basetemp.glob("infra*/postgres/postgres.log")})


async def topic_records(bootstrap: str) -> list[tuple[str, bytes]]:
    """Every record of every topic the broker has, internal ones included, from the beginning."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                exclude_internal_topics=False)
    await consumer.start()
    found: list[tuple[str, bytes]] = []
    try:
        cluster = await consumer._client.fetch_all_metadata()  # the public calls need a subscription first
        partitions = [TopicPartition(topic, p) for topic in cluster.topics(exclude_internal_topics=False)
                      for p in cluster.partitions_for_topic(topic) or ()]
        ends = await consumer.end_offsets(partitions)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        pending = {tp for tp in partitions if ends[tp] > 0}

        async def read_all() -> bool:
            for tp, batch in (await consumer.getmany(timeout_ms=500)).items():
                for record in batch:
                    headers = b" ".join(key.encode() + b"=" + (value or b"") for key, value in record.headers or ())
                    found.append((f"topic {tp.topic}", (record.key or b"") + b" " + (record.value or b"") + b" "
                                  + headers))
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
            return not pending

        await eventually(read_all, 60, what="every topic read to its end")
        assert {topic for topic, _ in found} >= {"topic tthc.accepted.v1", "topic tthc.dossier-lifecycle.v1",
                                                 "topic tthc.rejections.v1"}
        return found
    finally:
        await consumer.stop()


async def table_rows(database_url: str) -> list[tuple[str, str]]:
    """Every row of every table in the services' database, each value as text (bytes decoded)."""
    conn = await asyncpg.connect(database_url)
    found: list[tuple[str, str]] = []
    try:
        tables = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
            "AND table_schema NOT IN ('pg_catalog', 'information_schema')")
        for table in tables:
            name = f'"{table["table_schema"]}"."{table["table_name"]}"'
            for row in await conn.fetch(f"SELECT * FROM {name}"):
                values = [value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
                          for value in row.values()]
                found.append((f"table {name}", " | ".join(values)))
        assert len(tables) >= 8, [t["table_name"] for t in tables]
        return found
    finally:
        await conn.close()


async def _fail_a_statement_with(database_url: str, text: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        with contextlib.suppress(asyncpg.DataError):
            await conn.execute(f"SELECT '{text}'::integer")
    finally:
        await conn.close()


def _async(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def wrapped() -> bool:
        return check()

    return wrapped


# ---------------------------------------------------------------------------------------------------- test


async def send_traffic(stack: Stack, applicants: list[Applicant], marker: str) -> list[str]:
    """Every applicant's dossier from receipt to result, plus each way intake refuses personal data."""
    start = datetime.now(VN) - timedelta(hours=2)
    codes: list[str] = []
    ce = {"content-type": "application/cloudevents+json"}
    async with intake_client(stack) as intake:
        for index, applicant in enumerate(applicants):
            code = dossier_code() if index else None  # the first gets a minted code
            received = cloudevent(EventType.RECEIVED, code, applicant.data(), at=start)
            reply = await intake.post("/v1/events", json=received, headers=ce)
            assert reply.status_code == 202, reply.text
            code = reply.json()["dossier_code"]
            codes.append(code)
            assert (await intake.post("/v1/events", json=received, headers=ce)).status_code == 200  # a repeat
            later = [
                cloudevent(EventType.SUPPLEMENT_REQUESTED, code, {"reason": marker, "items": [marker]},
                           at=start + timedelta(minutes=10)),
                cloudevent(EventType.SUPPLEMENT_RECEIVED, code, {}, at=start + timedelta(minutes=20)),
                cloudevent(EventType.RESOLVED, code, {}, at=start + timedelta(minutes=30)),
                cloudevent(EventType.RESULT_RETURNED, code, {}, at=start + timedelta(minutes=40)),
            ]
            reply = await intake.post("/v1/events", json=later)
            assert reply.status_code == 202, reply.text

        # Refused, each carrying an applicant's data: none of it may travel on in the refusal.
        applicant = applicants[0]

        def with_applicant(**changes: Any) -> dict[str, Any]:
            data = applicant.data()
            data["applicant"] |= changes.pop("applicant", {})
            return cloudevent(EventType.RECEIVED, dossier_code(), data | changes)

        refusals = {
            "invalid_data": with_applicant(applicant={"phone": applicant.full_name}),
            "unknown_procedure": with_applicant(procedure_code="9.999999"),
            "unknown_unit": with_applicant(unit_code="99999"),
            "bad_dossier_code": with_applicant() | {"subject": applicant.id_number},
            "forged_source": cloudevent(EventType.RECEIVED, dossier_code(), applicant.data(), source="urn:tthc:forged"),
            "payload_too_large": with_applicant(applicant={"note": applicant.full_name * 5000}),
        }
        for reason, event in refusals.items():
            reply = await intake.post("/v1/events", json=event, headers=ce)
            assert reply.json()["reason"] == reason, reply.text
        body = json.dumps(with_applicant(), ensure_ascii=False).encode()
        assert (await intake.post("/v1/events", content=body[:-5], headers=ce)).json()["reason"] == "malformed_json"
        batch = [with_applicant(), with_applicant(applicant={"id_number": applicant.email})]
        assert (await intake.post("/v1/events", json=batch)).status_code == 207
        narrow = await stack_key(stack, units=["99999"], source=SOURCE)
        reply = await intake.post("/v1/events", json=with_applicant(), headers={**ce, "authorization":
                                                                                 f"Bearer {narrow}"})
        assert reply.json()["reason"] == "forbidden_unit"
        reply = await intake.post("/v1/events", json=with_applicant(), headers={**ce, "authorization": "Bearer x"})
        assert reply.json()["reason"] == "unauthenticated"
    return codes


async def test_personal_data_reaches_the_citizen_and_appears_nowhere_else(
        stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> None:
    applicants = [Applicant.fresh(name) for name in NAMES]
    needles = [needle for index, a in enumerate(applicants) for needle in needles_for(a, index)]
    check_scanner(needles, applicants[1].full_name)
    # A marker in a non-personal field (the supplement's reason) travels everywhere the data would.
    marker = f"Bổ sung giấy tờ MKR{secrets.token_hex(4)}"
    codes = await send_traffic(stack, applicants, marker)

    notify = f"http://127.0.0.1:{stack.ports.notify}"
    metrics = f"http://127.0.0.1:{stack.ports.metrics}"
    async with httpx.AsyncClient(timeout=30) as client, intake_client(stack) as intake:
        async def delivered() -> bool:
            for code in codes:
                rows = (await client.get(f"{notify}/v1/notifications", params={"dossier": code})).json()
                if len(rows) != len(TEMPLATES) * len(CHANNELS) or any(r["status"] != "delivered" for r in rows):
                    return False
            return True

        await eventually(delivered, 120, what="every message delivered on every channel")

        async def counted() -> bool:
            text = (await client.get(f"{metrics}/metrics")).text
            return all(metric_total(text, name) >= len(codes) for name in ("tthc_dossiers_received_total",
                                                                           "tthc_dossiers_completed_total"))

        await eventually(counted, 60, what="metrics counting every dossier")

        scanner = Scanner(needles)
        # What operators see: every service's metrics, the wall screen, dossiers and delivery statuses.
        for service in ("intake", "resolution", "metrics", "notify"):
            text = (await client.get(f"http://127.0.0.1:{stack.ports.of(service)}/metrics")).text
            assert "# TYPE" in text
            scanner.scan(f"metrics:{service}", text)
        scanner.scan("page:liveboard", (await client.get(f"{metrics}/liveboard")).text)
        for code in codes:
            dossier = await intake.get(f"/v1/dossiers/{code}")
            assert dossier.status_code == 200, dossier.text
            assert dossier.json()["state"] == "returned", dossier.text
            scanner.scan(f"page:dossier {code}", dossier.text)
            scanner.scan(f"page:notifications {code}",
                         (await client.get(f"{notify}/v1/notifications", params={"dossier": code})).text)

    records = await topic_records(stack.bootstrap_servers)
    for where, value in records:
        scanner.scan(where, value)
    rows = await table_rows(stack.database_url)
    for where, text in rows:
        scanner.scan(where, text)
    logs = list(log_files(stack, tmp_path_factory.getbasetemp()))
    server_log = next((path for path in logs if path.name == "postgres.log"), None)
    if server_log is not None:
        # PostgreSQL logs a failing statement with its text: the marker must then be found in the logs.
        await _fail_a_statement_with(stack.database_url, marker)
        await eventually(_async(lambda: marker.encode() in server_log.read_bytes()), 15,
                         what="PostgreSQL logging the failed statement")
    for path in logs:
        scanner.scan(f"log:{path.relative_to(path.parents[1])}", path.read_bytes())
    for service in SERVICES:  # the services' own logs were among them, written while they ran
        assert b"Started server process" in (stack.logs / f"{service}.log").read_bytes()
    print(f"\nscanned (characters): {scanner.scanned}")
    assert not scanner.findings, f"personal data found:\n{scanner.report()}"

    # The scan looked where the data would be: the marker is on the topics, in the tables and in the mail.
    probe = Scanner([Needle("marker", spellings(marker))])
    if server_log is not None:
        assert probe.find("log", server_log.read_bytes()), "the scan of the logs would not find the marker"
    for label, haystack in (("topics", records), ("tables", rows)):
        assert any(probe.find(where, content) for where, content in haystack), f"the marker is not in the {label}"
    # And the data did go in: sealed where it is kept, in plaintext only at the citizen's providers.
    keyring = Keyring.parse(stack.data_keys())
    conn = await asyncpg.connect(stack.database_url)
    try:
        sealed = {row["dossier_code"]: row["sealed"]
                  for row in await conn.fetch("SELECT dossier_code, sealed FROM notify.contacts")}
    finally:
        await conn.close()
    for code, applicant in zip(codes, applicants, strict=True):
        opened = json.loads(keyring.open(sealed[code], code))
        assert (opened["full_name"], opened["id_number"]) == (applicant.full_name, applicant.id_number)
    outbox = Scanner(needles)
    mails = read_mail(stack.outbox_dir / "mail")
    for mail in mails:
        outbox.scan(f"mail:{mail['file']}", json.dumps(mail, ensure_ascii=False))
    outbox.scan("gateway", (stack.outbox_dir / "gateway.jsonl").read_bytes())
    reached = {finding.label for finding in outbox.findings}
    assert {f"applicant {i} {what}" for i in range(len(applicants)) for what in ("name", "phone", "email")} <= \
        reached, reached
    assert any(probe.find("mail", mail["body"]) for mail in mails), "the marker is not in the mail"

