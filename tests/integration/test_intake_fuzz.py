"""Intake under hypothesis-generated input, in-process against the real broker and database.

Well-formed CloudEvents, the same events broken one way each (wrong types, missing fields, bad dossier codes,
unknown procedures and units, forged sources, huge strings, deep nesting, invalid UTF-8, numbers and strings
that no JSON consumer downstream can hold), random bytes, and wrong content types and keys, over HTTP and the
ingress topic, while a commune system sends valid traffic alongside. Nothing may crash (no 5xx, no stalled
partition), every refusal says why, and the valid traffic is accepted and passed on exactly once.

Hypothesis drives each run from a worker thread, one example being a batch of inputs sent concurrently, while
intake and the valid traffic run on the test's event loop.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import hashlib
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from services.intake import keys
from services.intake.app import REFUSAL_STATUS
from services.intake.app import build_app as build_intake
from services.intake.domain import MAX_EVENT_BYTES
from services.intake.settings import IntakeSettings
from shared.contract import topics
from shared.contract.events import DATA_MODELS, TYPE_PREFIX, Channel, EventType, PauseReason, schema_uri
from shared.contract.rejections import RejectionReason, RejectionRecorded
from tests.conftest import Infra
from tests.integration.test_services import service_env
from tests.support import CATALOG, cloudevent, dossier_code, eventually, received_data

pytestmark = pytest.mark.integration

T = TypeVar("T")
Json = Any
CE = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
PROCEDURES = sorted(CATALOG.procedures)
UNITS = sorted(CATALOG.units)
NARROW_UNIT = UNITS[0]
ENVELOPE_FIELDS = ("specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema", "data")
REASONS = {reason.value for reason in RejectionReason}
OUTCOMES = ("accepted", "duplicate", "rejected")
# Examples of PER_EXAMPLE inputs each, sent concurrently: 10,000 over HTTP, 1,500 on the ingress topic.
EXAMPLES = 200
INGRESS_EXAMPLES = 30
PER_EXAMPLE = 50


# ---------------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Sources:
    """The CloudEvents sources of one run: the fuzzer's own, and the commune sending valid traffic."""

    fuzz: str
    valid: str


@dataclass(frozen=True)
class Event:
    """One JSON value meant as a CloudEvent; `must_refuse` when it is broken in a way intake must catch."""

    value: Json
    must_refuse: bool
    what: str


@dataclass(frozen=True)
class Input:
    """One HTTP request (or one ingress record: `body` only)."""

    body: bytes
    content_type: str | None
    auth: str  # fuzz, none, garbage, unknown, revoked, narrow
    must_refuse: bool
    what: str
    batch: tuple[Event, ...] | None = None  # the events of a well-formed batch, in order
    garbage_header: str = ""

    def describe(self) -> str:
        body = self.body[:300]
        return f"{self.what} (auth {self.auth}, content-type {self.content_type!r}, {len(self.body)} bytes: {body!r})"

    def __repr__(self) -> str:  # hypothesis prints failing examples: bodies run to megabytes
        return f"Input<{self.describe()}>"


# Strategies are built once: hypothesis spends most of its time validating strategies built anew per draw.
ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Text as commune systems type it: Vietnamese letters included, never U+0000 (which intake refuses).
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=24)
VI_TEXT = st.sampled_from(["Thiếu bản sao giấy khai sinh", "Chờ ý kiến Sở Tư pháp", "Đã trả kết quả", "xác minh",
                           "Hồ sơ không đủ điều kiện", "Nộp phí thẩm định"])
SHORT = st.one_of(VI_TEXT, TEXT)
ZONES = st.sampled_from([timezone(timedelta(hours=7)), UTC, timezone(timedelta(hours=-5)),
                         timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=14))])
TIMES = st.builds(lambda moment, zone: moment.replace(tzinfo=zone).isoformat(),
                  st.datetimes(datetime(2024, 1, 1), datetime(2026, 12, 31)), ZONES)
# Any instant an AwareDatetime can hold, the edges of year 1 and 9999 included: intake must answer, not crash.
ANY_TIMES = st.one_of(
    st.sampled_from(["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-05:00", "1999-12-31T23:59:59+07:00",
                     "2099-12-31T23:59:59-12:00", "1970-01-01T00:00:00Z"]),
    st.builds(lambda moment, zone: moment.replace(tzinfo=zone).isoformat(),
              st.datetimes(datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59)), ZONES))


def digits(low: int, high: int) -> st.SearchStrategy[str]:
    return st.text("0123456789", min_size=low, max_size=high)


DOSSIER_CODES = st.builds(
    lambda agency, day, sequence: f"{agency}-{day:%y%m%d}-{sequence}",
    st.lists(st.text(ALNUM, min_size=1, max_size=6), min_size=2, max_size=5).map(".".join),
    st.dates(date(2000, 1, 1), date(2099, 12, 31)),
    st.one_of(digits(4, 4), st.builds(str.__add__, st.text(ALNUM, min_size=2, max_size=2), digits(4, 8))),
)
# Codes in no official shape, each for a reason that does not depend on chance.
BAD_DOSSIER_CODES = st.one_of(
    DOSSIER_CODES.map(lambda code: code.lower() + "x"),  # agency ids are capitals
    DOSSIER_CODES.map(lambda code: code.replace("-", " ", 1)),
    DOSSIER_CODES.map(lambda code: code + "-" + "9" * 70),  # too long
    st.builds(lambda agency, day: f"{agency}-{day}-0001", st.sampled_from(["000.00.24.H56", "H56.1"]),
              st.sampled_from(["251301", "250230", "250000", "2501", "25010a"])),
    TEXT.map(lambda text: f"Hồ sơ {text}"),
    st.just(""),
)
KEYS = st.text(max_size=8).map(lambda key: "x_" + key)  # never one of the contract's field names
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)),
    max_leaves=5)
# Extra fields (kept and passed on) now and then: most events have none.
EXTRAS = st.one_of(st.just({}), st.dictionaries(KEYS, JSON_VALUES, min_size=1, max_size=2))
EXTENSIONS = st.one_of(st.just({}), st.dictionaries(st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=12)
                                                    .filter(lambda key: key not in ENVELOPE_FIELDS), JSON_VALUES,
                                                    min_size=1, max_size=2))
IDS = st.one_of(st.uuids().map(str), TEXT)
UNIT_CODES = st.sampled_from(UNITS)
APPLICANTS = st.fixed_dictionaries(
    {"full_name": st.one_of(st.sampled_from(["Nguyễn Thị Hồng Nhung", "Đặng Văn Lâm"]), TEXT),
     "id_number": st.one_of(digits(9, 12), st.builds(lambda a, b: f"{a}-{b}", digits(10, 10), digits(3, 3))),
     "notify_via": st.lists(st.sampled_from(["sms", "email", "zalo"]), max_size=3)},
    optional={"phone": st.builds(str.__add__, st.sampled_from(["", "+"]), digits(9, 15)),
              "email": st.builds(lambda user, host: f"{user}@{host}.vn",
                                 st.text("abcdefghijklmnopqrstuvwxyz0123456789._", min_size=1, max_size=20),
                                 st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=10))},
)


def _event_data(kind: EventType) -> st.SearchStrategy[dict[str, Any]]:
    reason = {"reason": SHORT}
    shapes: dict[EventType, tuple[dict[str, Any], dict[str, Any]]] = {
        EventType.RECEIVED: ({"procedure_code": st.sampled_from(PROCEDURES), "unit_code": UNIT_CODES,
                              "channel": st.sampled_from([c.value for c in Channel]), "applicant": APPLICANTS}, {}),
        EventType.STEP_STARTED: ({"step": SHORT, "unit_code": UNIT_CODES},
                                 {"duration": st.sampled_from(["3 working_days", "4 working_hours", "same_day"]),
                                  "due_at": TIMES}),
        EventType.STEP_COMPLETED: ({"step": SHORT, "unit_code": UNIT_CODES}, {"outcome": SHORT}),
        EventType.SUPPLEMENT_REQUESTED: (reason, {"items": st.lists(SHORT, max_size=5)}),
        EventType.FEE_REQUESTED: ({"amount_vnd": st.integers(0, 10**13)}, {}),
        EventType.PAUSED: ({"reason": st.sampled_from([r.value for r in PauseReason])}, {}),
        EventType.APOLOGY_ISSUED: ({"reason": SHORT, "new_appointment_at": TIMES}, {}),
        EventType.RESOLVED: ({}, reason),
    }
    for noted in (EventType.SUPPLEMENT_RECEIVED, EventType.FEE_PAID, EventType.RESUMED, EventType.RESULT_RETURNED):
        shapes[noted] = ({}, {"note": SHORT})
    for reasoned in (EventType.REJECTED, EventType.STOPPED, EventType.WITHDRAWN, EventType.REFUSED_AT_INTAKE):
        shapes[reasoned] = (reason, {})
    required, optional = shapes[kind]
    return st.builds(lambda data, extra: {**extra, **data}, st.fixed_dictionaries(required, optional=optional),
                     EXTRAS)


EVENT_DATA = {kind: _event_data(kind) for kind in EventType}
ANY_KIND = st.sampled_from(list(EventType))
RECEIVED = st.just(EventType.RECEIVED)
DATA_SCHEMAS = {kind: st.sampled_from([schema_uri(kind), schema_uri(kind).replace("1.0", "1.7")]) for kind in EventType}
JSON_CONTENT = st.sampled_from(["application/json", "application/json; charset=utf-8"])


@st.composite
def valid_events(draw: st.DrawFn, source: str, kinds: st.SearchStrategy[EventType] = ANY_KIND) -> dict[str, Any]:
    """A CloudEvent the contract accepts (whether the key may send it is another matter)."""
    kind = draw(kinds)
    event: dict[str, Any] = {"specversion": "1.0", "id": draw(IDS), "source": source, "type": kind.cloudevents_type,
                             "time": draw(TIMES), "data": draw(EVENT_DATA[kind])}
    if kind is not EventType.RECEIVED or draw(st.booleans()):
        event["subject"] = draw(DOSSIER_CODES)
    if draw(st.booleans()):
        event["datacontenttype"] = draw(JSON_CONTENT)
    if draw(st.booleans()):
        event["dataschema"] = draw(DATA_SCHEMAS[kind])
    return {**draw(EXTENSIONS), **event}


WRONG_TYPED = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.lists(st.integers(), max_size=2),
                        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), TEXT)
NOT_OBJECTS = st.one_of(SCALARS, st.lists(SCALARS, max_size=3))
UNKNOWN_CODES = st.text("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz._-", min_size=1, max_size=64)
BAD_TIMES = st.one_of(
    st.datetimes(datetime(2000, 1, 1), datetime(2030, 1, 1)).map(datetime.isoformat),  # no offset
    st.sampled_from(["", "hôm qua", "2025-13-01T10:00:00+07:00", "2025-02-30T10:00:00+07:00", "25/12/2025 10:00",
                     "2025-01-01T25:00:00Z"]))
UNKNOWN_TYPES = st.one_of(
    st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=20).map(lambda name: TYPE_PREFIX + "x" + name),
    TEXT.filter(lambda name: not name.startswith(TYPE_PREFIX)))
WRONG_SCHEMAS = st.one_of(
    st.integers(2, 10**6).map(lambda major: f"https://schemas.tthc.gov.vn/dossier/received/{major}.0"),
    st.just("https://schemas.tthc.gov.vn/dossier"), st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=20))
RANDOM_BYTES = st.binary(min_size=1, max_size=100)
GARBAGE_HEADERS = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=80)


def pool(strategy: st.SearchStrategy[T]) -> st.SearchStrategy[tuple[T, ...]]:
    return st.lists(strategy, min_size=1, max_size=3).map(tuple)


@dataclass(frozen=True)
class Material:
    """What one example's inputs are made from: valid events and odd values drawn by hypothesis, and a random
    generator hypothesis seeds for the many cheap choices that break them. Drawing a rich event costs
    hypothesis milliseconds, so each example draws a few and breaks them in many ways."""

    rng: random.Random
    events: tuple[dict[str, Any], ...]
    received: dict[str, Any]
    texts: tuple[str, ...]
    codes: tuple[str, ...]
    bad_codes: tuple[str, ...]
    wrong_typed: tuple[Json, ...]
    not_objects: tuple[Json, ...]
    unknown_codes: tuple[str, ...]
    unknown_types: tuple[str, ...]
    wrong_schemas: tuple[str, ...]
    any_times: tuple[str, ...]
    bad_times: tuple[str, ...]
    raw_bytes: tuple[bytes, ...]
    headers: tuple[str, ...]

    def event(self) -> dict[str, Any]:
        return copy.deepcopy(self.rng.choice(self.events))

    def received_event(self) -> dict[str, Any]:
        return copy.deepcopy(self.received)

    def pick(self, values: tuple[T, ...] | list[T]) -> T:
        return self.rng.choice(values)

    def coin(self) -> bool:
        return self.rng.random() < 0.5


def materials(source: str) -> st.SearchStrategy[Material]:
    return st.builds(
        Material, st.randoms(use_true_random=True), st.lists(valid_events(source), min_size=3, max_size=3).map(tuple),
        valid_events(source, RECEIVED), pool(TEXT), pool(DOSSIER_CODES), pool(BAD_DOSSIER_CODES), pool(WRONG_TYPED),
        pool(NOT_OBJECTS), pool(UNKNOWN_CODES), pool(UNKNOWN_TYPES), pool(WRONG_SCHEMAS), pool(ANY_TIMES),
        pool(BAD_TIMES), pool(RANDOM_BYTES), pool(GARBAGE_HEADERS))


HOW_BROKEN = ("missing envelope field", "wrong envelope type", "bad dossier code", "no dossier code", "unknown type",
              "schema major version", "not JSON data", "naive or garbage time", "bad data", "huge string",
              "deep nesting", "long text", "wrong specversion")


def broken(m: Material, event: dict[str, Any]) -> Event:
    """`event` (a valid one) broken in exactly one way the contract forbids, whoever sends it."""
    kind = EventType(event["type"].removeprefix(TYPE_PREFIX))
    data = event["data"]
    how = m.pick(HOW_BROKEN)
    if how == "missing envelope field":
        del event[m.pick(["specversion", "id", "source", "type", "time", "data"])]
    elif how == "wrong envelope type":
        name = m.pick(["id", "source", "type", "subject", "dataschema", "datacontenttype", "data", "time"])
        if name == "data":
            event[name] = m.pick([m.pick(m.not_objects), m.pick(m.texts), None])
        elif name == "time":  # a number would be read as a Unix time
            event[name] = m.pick([True, False, None, [2025, 1, 1], {"year": 2025}])
        else:
            event[name] = m.pick(m.wrong_typed)
    elif how == "bad dossier code":
        event["subject"] = m.pick(m.bad_codes)
    elif how == "no dossier code":
        if kind is EventType.RECEIVED:
            event["type"] = EventType.RESOLVED.cloudevents_type
        event.pop("subject", None)
        event.pop("dataschema", None)
    elif how == "unknown type":
        event["type"] = m.pick(m.unknown_types)
    elif how == "schema major version":
        event["dataschema"] = m.pick(m.wrong_schemas)
    elif how == "not JSON data":
        event["datacontenttype"] = m.pick(["text/xml", "application/xml", "text/plain", "image/png"])
    elif how == "naive or garbage time":
        event["time"] = m.pick(m.bad_times)
    elif how == "bad data":
        event["data"] = broken_data(m, kind, data)
    elif how == "huge string":
        # Over 64 KiB however it is encoded: 3 bytes in UTF-8, 6 as a \u escape.
        huge = "ế" * m.rng.randint(MAX_EVENT_BYTES // 3 + 10, MAX_EVENT_BYTES // 2)
        where = m.pick(["id", "xhuge", "data"])
        if where == "data":
            event["data"] = {**data, "x_huge": huge}
        else:
            event[where] = huge
    elif how == "deep nesting":
        nested: Json = m.pick(m.not_objects)
        for level in range(m.rng.randint(34, 400)):
            nested = [nested] if level % 2 else {"x": nested}
        event["data"] = {**data, "x_deep": nested}
    elif how == "long text":
        event[m.pick(["id", "source", "type", "dataschema"])] = m.pick(m.texts)[:1] * m.rng.randint(257, 2000)
    else:
        event["specversion"] = m.pick(["1", "0.3", "2.0", "1.0 ", " 1.0", 1.0, 1, None])
    return Event(event, True, how)


BAD_APPLICANT_FIELDS: dict[str, list[Json]] = {
    "id_number": ["12345678", "1234567890123", "00120300456A", "001 203 004 567", "", 1203004567],
    "phone": ["09123", "0912 345 678", "+84-912345678", "không có", "1" * 16, 912345678],
    "email": ["an.example.vn", "an@", "@example.vn", "an @example.vn", "a" * 255, ["an@example.vn"]],
    "full_name": ["", "N" * 201, None, ["Nguyễn", "Văn", "An"]],
    "notify_via": [["fax"], ["sms", "email", "zalo", "sms"], "email", [None]],
}


def broken_data(m: Material, kind: EventType, data: dict[str, Any]) -> Json:
    required = [name for name, info in DATA_MODELS[kind].model_fields.items() if info.is_required()]
    choices = ["not an object"] + (["missing field", "wrong field type"] if required else [])
    if kind is EventType.RECEIVED:
        choices += ["bad applicant", "bad channel", "bad code"]
    how = m.pick(choices)
    if how == "not an object":
        return m.pick([m.pick(m.not_objects), m.pick(m.texts), None])
    if how == "missing field":
        del data[m.pick(required)]
    elif how == "wrong field type":
        data[m.pick(required)] = m.pick([[1, 2], {"a": 1}, [], {}])
    elif how == "bad channel":
        data["channel"] = m.pick(["fax", "", "DIRECT", "trực tiếp", 1])
    elif how == "bad code":
        data[m.pick(["procedure_code", "unit_code"])] = m.pick(["", "9" * 65, "a b", "xã/phường", "1;2", 1])
    else:
        applicant = data["applicant"]
        name = m.pick([*BAD_APPLICANT_FIELDS, "missing"])
        if name == "missing":
            del applicant[m.pick(["full_name", "id_number"])]
        else:
            applicant[name] = m.pick(BAD_APPLICANT_FIELDS[name])
    return data


def unknown_reference(m: Material, received: dict[str, Any]) -> Event:
    """`received` made to name a procedure or unit the registry does not know."""
    kind = m.pick([EventType.RECEIVED, EventType.STEP_STARTED, EventType.STEP_COMPLETED])
    unknown = m.pick(m.unknown_codes)
    if kind is EventType.RECEIVED and m.coin() and unknown not in CATALOG.procedures:
        received["data"]["procedure_code"] = unknown
        return Event(received, True, "unknown procedure")
    if kind is not EventType.RECEIVED:
        received.pop("dataschema", None)
        received |= {"type": kind.cloudevents_type, "subject": received.get("subject") or m.pick(m.codes),
                     "data": {"step": m.pick(m.texts)}}
    received["data"]["unit_code"] = unknown if unknown not in CATALOG.units else unknown + "x"
    return Event(received, True, "unknown unit")


def encode(value: Json, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode()


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except ValueError:
        return False
    return True


HOW_UNDECODABLE = ("random bytes", "invalid UTF-8", "truncated", "huge integer", "lone surrogate", "NUL character",
                   "not JSON at all", "empty")


def undecodable(m: Material, event: dict[str, Any]) -> tuple[bytes, str]:
    """Bytes that are not JSON any consumer downstream could hold, each refused by intake's decoder."""
    raw = encode(event, False)
    how = m.pick(HOW_UNDECODABLE)
    if how == "random bytes":
        junk = m.pick(m.raw_bytes)
        return (junk if not _is_json(junk) else b"{" + junk), how
    if how == "invalid UTF-8":
        at = raw.index(b'"specversion"') + 1
        return raw[:at] + m.pick([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"]) + \
            raw[at:], how
    if how == "truncated":  # a proper prefix of an object is never JSON
        return raw[:m.rng.randint(1, len(raw) - 1)], how
    if how == "huge integer":  # more digits than Python converts
        digits = b"9" * m.rng.randint(4301, 20000)
        return raw.replace(b'"specversion"', b'"x_big": ' + digits + b', "specversion"', 1), how
    if how == "lone surrogate":
        escape = m.pick([b"\\ud800", b"\\uDFFF", b"\\udbff", b"\\ude00\\ud83d"])
        if m.coin():  # in a value, or in a key
            return raw.replace(b'"id": "', b'"id": "' + escape, 1), how
        return raw.replace(b'"specversion": ', b'"x_' + escape + b'": 1, "specversion": ', 1), how
    if how == "NUL character":
        return raw.replace(b'"id": "', b'"id": "\\u0000', 1), how
    if how == "not JSON at all":
        return m.pick([b"<event/>", b"specversion=1.0&id=1", b"{'id': 1}", b"{", b"]", b"nul", b"\xef\xbb\xbf{}x"]), how
    return b"", how


CONTENT_TYPES = (CE, CE, CE, "application/json", "text/plain", "application/xml", "multipart/form-data; boundary=x",
                 "application/cloudevents+json; charset=utf-8", "application/x-www-form-urlencoded", "", None)
HTTP_KINDS = ("valid", "broken", "broken", "unknown reference", "forged source", "undecodable", "json value",
              "batch", "auth", "too large batch", "any time")


def http_input(m: Material, sources: Sources) -> Input:
    ascii_only = m.coin()
    content_type = m.pick(CONTENT_TYPES)
    kind = m.pick(HTTP_KINDS)
    if kind == "valid":
        # Accepted, a duplicate, or (for a later event of a dossier the key's units never received) forbidden.
        return Input(encode(m.event(), ascii_only), content_type, "fuzz", False, "valid event")
    if kind == "any time":
        event = m.received_event() | {"time": m.pick(m.any_times)}
        return Input(encode(event, ascii_only), content_type, "fuzz", False, "any instant")
    if kind == "broken":
        refused = broken(m, m.event())
        return Input(encode(refused.value, ascii_only), content_type, "fuzz", True, refused.what)
    if kind == "unknown reference":
        refused = unknown_reference(m, m.received_event())
        return Input(encode(refused.value, ascii_only), content_type, "fuzz", True, refused.what)
    if kind == "forged source":
        # The valid commune's source among them: a fuzzer's key must not speak for it.
        source = m.pick([sources.valid, m.pick(m.texts)])
        event = m.event() | {"source": source if source != sources.fuzz else sources.valid}
        return Input(encode(event, ascii_only), content_type, "fuzz", True, "forged source")
    if kind == "undecodable":
        raw, how = undecodable(m, m.event())
        return Input(raw, content_type, "fuzz", True, how)
    if kind == "json value":
        return Input(encode(m.pick(m.not_objects), ascii_only), content_type, "fuzz", True, "not a CloudEvent")
    if kind == "too large batch":
        size = m.pick([0, 1001, 1500])
        return Input(encode([{}] * size, True), BATCH, "fuzz", True, f"batch of {size}")
    if kind == "auth":
        auth = m.pick(["none", "garbage", "unknown", "revoked", "narrow"])
        event = m.received_event()
        if auth == "narrow" and event["data"]["unit_code"] == NARROW_UNIT:
            event["data"]["unit_code"] = UNITS[1]
        return Input(encode(event, ascii_only), content_type, auth, True, f"{auth} key",
                     garbage_header=m.pick(m.headers))
    events = []
    for _ in range(m.rng.randint(1, 8)):
        element = m.pick(["valid", "broken", "unknown reference", "not an object"])
        if element == "valid":
            events.append(Event(m.event(), False, "valid"))
        elif element == "broken":
            events.append(broken(m, m.event()))
        elif element == "unknown reference":
            events.append(unknown_reference(m, m.received_event()))
        else:
            events.append(Event(m.pick(m.not_objects), True, "not a CloudEvent"))
    return Input(encode([e.value for e in events], ascii_only), m.pick([BATCH, CE, None]), "fuzz",
                 any(e.must_refuse for e in events), "batch", batch=tuple(events))


def http_examples(sources: Sources) -> st.SearchStrategy[list[Input]]:
    return materials(sources.fuzz).map(lambda m: [http_input(m, sources) for _ in range(PER_EXAMPLE)])


def ingress_record(m: Material) -> tuple[bytes, str]:
    """What may arrive on the ingress topic that intake must refuse (the broker, not a key, vouches for the
    sender there, so forged sources and foreign units are not among them)."""
    kind = m.pick(["broken", "unknown reference", "undecodable", "json value"])
    if kind in ("broken", "unknown reference"):
        refused = broken(m, m.event()) if kind == "broken" else unknown_reference(m, m.received_event())
        return encode(refused.value, m.coin()), refused.what
    if kind == "undecodable":
        return undecodable(m, m.event())
    return encode(m.pick(m.not_objects), True), "not a CloudEvent"


def ingress_examples(sources: Sources) -> st.SearchStrategy[list[tuple[bytes, str]]]:
    return materials(sources.fuzz).map(lambda m: [ingress_record(m) for _ in range(PER_EXAMPLE)])


# ------------------------------------------------------------------------------------------------ the runs


@dataclass
class Keys:
    fuzz: str
    valid: str
    narrow: str
    revoked: str


@dataclass
class Tally:
    """What the answers said, to compare with intake's counters and topics afterwards."""

    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    inputs: int = 0


async def create_keys(database_url: str, sources: Sources) -> Keys:
    conn = await asyncpg.connect(database_url)
    try:
        revoked_source = f"{sources.fuzz}:revoked"
        made = Keys(fuzz=await keys.create(conn, sources.fuzz, UNITS),
                    valid=await keys.create(conn, sources.valid, UNITS),
                    narrow=await keys.create(conn, sources.fuzz, [NARROW_UNIT]),
                    revoked=await keys.create(conn, revoked_source, UNITS))
        await keys.revoke(conn, revoked_source)
        return made
    finally:
        await conn.close()


def headers_for(item: Input, made: Keys) -> dict[str, str]:
    headers = {"content-type": item.content_type} if item.content_type is not None else {}
    bearer = {"fuzz": made.fuzz, "narrow": made.narrow, "revoked": made.revoked,
              "unknown": f"tthc_{uuid.uuid4().hex[:12]}_{uuid.uuid4().hex}"}.get(item.auth)
    if bearer is not None:
        headers["authorization"] = f"Bearer {bearer}"
    elif item.auth == "garbage":
        headers["authorization"] = item.garbage_header
    return headers


def check_answer(item: Input, reply: httpx.Response) -> list[str]:
    """The problems with one answer; counts its outcomes."""
    where = f"{reply.status_code} {reply.text[:300]!r} for {item.describe()}"
    if reply.status_code >= 500:
        return [f"server error: {where}"]
    try:
        body = reply.json()
    except ValueError:
        return [f"answer is not JSON: {where}"]
    problems = []

    def refusal_explained(answer: dict[str, Any]) -> bool:
        return answer.get("status") == "rejected" and answer.get("reason") in REASONS and bool(answer.get("detail"))

    if isinstance(body, dict) and "results" in body:
        results = body["results"]
        if reply.status_code != (207 if any(r.get("status") == "rejected" for r in results) else 202):
            problems.append(f"batch status does not match its results: {where}")
        if item.batch is not None and len(results) != len(item.batch):
            problems.append(f"{len(results)} results for {len(item.batch)} events: {where}")
        for index, result in enumerate(results):
            if result.get("status") not in OUTCOMES:
                problems.append(f"result {index} has no status: {where}")
            elif result["status"] == "rejected" and not refusal_explained(result):
                problems.append(f"result {index} refused without a reason: {where}")
            elif item.batch is not None and item.batch[index].must_refuse and result["status"] != "rejected":
                problems.append(f"event {index} ({item.batch[index].what}) was not refused: {where}")
        return problems
    if not isinstance(body, dict):
        return [f"answer is not an object: {where}"]
    if 400 <= reply.status_code < 500:
        if not refusal_explained(body):
            problems.append(f"refused without a reason: {where}")
        elif reply.status_code != REFUSAL_STATUS.get(RejectionReason(body["reason"]), 422):
            problems.append(f"status does not match the reason: {where}")
    elif (reply.status_code, body.get("status")) not in ((202, "accepted"), (200, "duplicate")):
        problems.append(f"unexpected answer: {where}")
    if item.must_refuse and reply.status_code < 400:
        problems.append(f"not refused: {where}")
    if item.batch is not None and item.auth == "fuzz" and reply.status_code < 400:
        problems.append(f"a batch answered as one event: {where}")
    return problems


def outcomes_of(reply: httpx.Response) -> list[str]:
    body = reply.json()
    if "results" in body:
        return [result["status"] for result in body["results"]]
    return [body["status"]]


def run_hypothesis(test: Callable[[], None]) -> Awaitable[None]:
    """Run a @given function in a worker thread, so that the event loop serves intake meanwhile."""
    return asyncio.to_thread(test)


def on_loop(loop: asyncio.AbstractEventLoop, work: Awaitable[T], timeout: float = 120) -> T:
    async def wrapped() -> T:
        return await work

    return asyncio.run_coroutine_threadsafe(wrapped(), loop).result(timeout)


async def end_offsets(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        cluster = await consumer._client.fetch_all_metadata()  # the public calls need a subscription first
        partitions = [TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic) or ())]
        assert partitions, f"no partitions for {topic}"
        return dict(await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()


async def records_between(bootstrap: str, start: dict[TopicPartition, int],
                          end: dict[TopicPartition, int]) -> list[bytes]:
    """Every record of the partitions in `start` from there up to `end` (exclusive)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    values: list[bytes] = []
    try:
        wanted = [tp for tp in start if end[tp] > start[tp]]
        consumer.assign(wanted)
        for tp in wanted:
            consumer.seek(tp, start[tp])

        async def done() -> bool:
            for tp, batch in (await consumer.getmany(*wanted, timeout_ms=500)).items():
                values.extend(record.value for record in batch if record.offset < end[tp])
            return all([await consumer.position(tp) >= end[tp] for tp in wanted])

        await eventually(done, 30, what="reading the records written during the run")
        return values
    finally:
        await consumer.stop()


async def start_group_at_end(bootstrap: str, group: str, topic: str) -> None:
    """Commit `group`'s offsets at the end of `topic`, so that intake reads only what this test produces."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await end_offsets(bootstrap, topic)
        consumer.assign(list(ends))
        await consumer.commit(ends)
    finally:
        await consumer.stop()


def metric_values(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


@dataclass
class Intake:
    app: FastAPI
    client: httpx.AsyncClient
    keys: Keys
    sources: Sources
    database_url: str


@pytest.fixture
async def intake(infra: Infra, database_url: str, data_keys: str, topics_ready: None) -> AsyncIterator[Intake]:
    sources = Sources(fuzz=f"urn:tthc:fuzz:{uuid.uuid4().hex[:8]}", valid=f"urn:tthc:valid:{uuid.uuid4().hex[:8]}")
    group = f"intake-fuzz-{uuid.uuid4().hex[:8]}"
    await start_group_at_end(infra.bootstrap_servers, group, topics.INGRESS)
    settings = IntakeSettings.model_validate({**service_env(infra, database_url, data_keys), "consumer_group": group})
    app = build_intake(settings)
    # A crash must come back as the 500 a client would see, not as an exception in the test.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://intake",
                                                                  timeout=60) as client:
        yield Intake(app, client, await create_keys(database_url, sources), sources, database_url)


class ValidTraffic:
    """A commune system going about its day while the fuzzer runs: each event must be accepted, once."""

    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self.sent: list[str] = []
        self.problems: list[str] = []
        self.stop = asyncio.Event()

    async def post(self, body: Json, content_type: str) -> httpx.Response:
        return await self.intake.client.post("/v1/events", content=json.dumps(body).encode(), headers={
            "content-type": content_type, "authorization": f"Bearer {self.intake.keys.valid}"})

    async def one_dossier(self, minted: bool) -> None:
        source = self.intake.sources.valid
        code = None if minted else dossier_code()
        received = cloudevent(EventType.RECEIVED, code, received_data(), source=source)
        reply = await self.post(received, CE)
        if reply.status_code != 202 or reply.json()["status"] != "accepted":
            self.problems.append(f"valid received answered {reply.status_code} {reply.text[:300]}")
            return
        self.sent.append(received["id"])
        code = reply.json()["dossier_code"]
        later = [cloudevent(EventType.STEP_STARTED, code, {"step": "thẩm định", "unit_code": UNITS[1]}, source=source),
                 cloudevent(EventType.RESOLVED, code, {}, source=source)]
        reply = await self.post(later, BATCH)
        if reply.status_code != 202 or [r["status"] for r in reply.json()["results"]] != ["accepted", "accepted"]:
            self.problems.append(f"valid batch answered {reply.status_code} {reply.text[:300]}")
            return
        self.sent += [event["id"] for event in later]

    async def run(self) -> None:
        turn = 0
        while not self.stop.is_set():
            turn += 1
            await asyncio.gather(*(self.one_dossier(minted=(turn + i) % 5 == 0) for i in range(2)))


# Hypothesis generates in a worker thread while the event loop (aiokafka among it) draws on the global random
# generator: that does not make the generated inputs any less reproducible.
QUIET = pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")


@QUIET
async def test_http_fuzz_refuses_with_reasons_and_valid_traffic_counts_exactly(intake: Intake, infra: Infra) -> None:
    loop = asyncio.get_running_loop()
    started, cpu = time.monotonic(), time.process_time()
    tally = Tally()
    bootstrap = infra.bootstrap_servers
    accepted_start = await end_offsets(bootstrap, topics.ACCEPTED)
    rejections_start = await end_offsets(bootstrap, topics.REJECTIONS)
    valid = ValidTraffic(intake)
    traffic = asyncio.create_task(valid.run())

    async def send(items: list[Input]) -> list[httpx.Response]:
        return list(await asyncio.gather(*(intake.client.post("/v1/events", content=item.body,
                                                              headers=headers_for(item, intake.keys))
                                           for item in items)))

    # No shrinking: it would replay against a server whose state has moved on, for minutes; the failure names
    # each offending input already, and the example database replays it first next time.
    @settings(max_examples=EXAMPLES, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(http_examples(intake.sources))
    def fuzz(items: list[Input]) -> None:
        replies = on_loop(loop, send(items))
        problems = [problem for item, reply in zip(items, replies, strict=True)
                    for problem in check_answer(item, reply)]
        assert not problems, "\n".join(problems[:10])
        tally.inputs += len(items)
        for reply in replies:
            tally.outcomes.update(outcomes_of(reply))

    try:
        await run_hypothesis(fuzz)
    finally:
        valid.stop.set()
        await traffic
    # A few bodies beyond the 4 MiB limit: too costly to generate by the thousand.
    for size in (4 * 1024 * 1024 + 1, 9 * 1024 * 1024):
        huge = Input(b"[" + b" " * size + b"]", BATCH, "fuzz", True, "body over the limit")
        reply = await intake.client.post("/v1/events", content=huge.body, headers=headers_for(huge, intake.keys))
        assert not check_answer(huge, reply)
        assert reply.json()["reason"] == "payload_too_large"
        tally.inputs += 1
        tally.outcomes.update(outcomes_of(reply))

    assert not valid.problems, "\n".join(valid.problems[:10])
    assert tally.inputs >= EXAMPLES * PER_EXAMPLE // 2
    assert len(valid.sent) >= 30, f"only {len(valid.sent)} valid events went alongside the fuzzer"
    tally.outcomes.update(["accepted"] * len(valid.sent))
    print(f"\n{tally.inputs} fuzz inputs, {len(valid.sent)} valid events alongside; outcomes {dict(tally.outcomes)}; "
          f"{time.monotonic() - started:.0f} s, {time.process_time() - cpu:.0f} s of CPU in this process")

    # Counted exactly: intake's counters, the accepted topic (each valid event once) and the rejections topic.
    text = (await intake.client.get("/metrics")).text
    counted = {dict(labels)["outcome"]: value for labels, value in metric_values(text, "tthc_intake_events_total")
               .items() if dict(labels)["channel"] == "http"}
    assert counted == {outcome: float(n) for outcome, n in tally.outcomes.items()}
    accepted = await records_between(bootstrap, accepted_start, await end_offsets(bootstrap, topics.ACCEPTED))
    assert len(accepted) == tally.outcomes["accepted"]
    passed_on = collections.Counter(record["id"] for record in map(json.loads, accepted)
                                    if record["source"] == intake.sources.valid)
    assert passed_on == collections.Counter(valid.sent)
    rejections = await records_between(bootstrap, rejections_start, await end_offsets(bootstrap, topics.REJECTIONS))
    assert len(rejections) == tally.outcomes["rejected"]
    assert all(RejectionRecorded.model_validate_json(record).stage == "intake" for record in rejections)
    conn = await asyncpg.connect(intake.database_url)
    try:
        recorded = await conn.fetchval("SELECT count(*) FROM intake.received_events WHERE source = $1",
                                       intake.sources.valid)
    finally:
        await conn.close()
    assert recorded == len(valid.sent)
    assert (await intake.client.get("/readyz")).status_code == 200


class TopicWatch:
    """Follows the accepted and rejections topics from given offsets: which ids were passed on, which
    payload digests refused."""

    def __init__(self, bootstrap: str, start: dict[TopicPartition, int]) -> None:
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
        self.start = start
        self.accepted: collections.Counter[str] = collections.Counter()
        self.refused: collections.Counter[str] = collections.Counter()
        self.reasons: dict[str, str] = {}

    async def __aenter__(self) -> TopicWatch:
        await self.consumer.start()
        self.consumer.assign(list(self.start))
        for tp, offset in self.start.items():
            self.consumer.seek(tp, offset)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.consumer.stop()

    async def poll(self) -> None:
        for tp, batch in (await self.consumer.getmany(timeout_ms=200)).items():
            for record in batch:
                value = json.loads(record.value)
                if tp.topic == topics.ACCEPTED:
                    self.accepted[f"{value['source']} {value['id']}"] += 1
                else:
                    self.refused[value["payload_sha256"]] += 1
                    self.reasons[value["payload_sha256"]] = value["reason"]


@QUIET
async def test_ingress_fuzz_never_stalls_a_partition_and_valid_records_pass_once(intake: Intake, infra: Infra) -> None:
    loop = asyncio.get_running_loop()
    bootstrap = infra.bootstrap_servers
    start = {**await end_offsets(bootstrap, topics.ACCEPTED), **await end_offsets(bootstrap, topics.REJECTIONS)}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=2 * 1024 * 1024)
    await producer.start()
    sent = collections.Counter[str]()
    valid_ids: collections.Counter[str] = collections.Counter()
    codes = [dossier_code() for _ in range(12)]

    async def produce_and_wait(records: list[tuple[bytes, str]], watch: TopicWatch) -> None:
        batch_ids = []
        digests = collections.Counter(hashlib.sha256(raw).hexdigest() for raw, _ in records)
        sends = []
        for index, (raw, _) in enumerate(records):
            code = random.choice(codes)  # the same keys as valid events: a refusal must not hold them up
            sends.append(await producer.send(topics.INGRESS, raw, key=code.encode()))
            if index % 5 == 0:
                event = cloudevent(EventType.RECEIVED, dossier_code(), received_data(), source=intake.sources.valid)
                sends.append(await producer.send(topics.INGRESS, json.dumps(event).encode(), key=code.encode()))
                batch_ids.append(f"{intake.sources.valid} {event['id']}")
        await asyncio.gather(*sends)
        sent.update(digests)
        valid_ids.update(batch_ids)

        async def settled() -> bool:
            await watch.poll()
            return all(watch.refused[d] >= n for d, n in sent.items()) and all(
                watch.accepted[i] >= 1 for i in valid_ids)

        await eventually(settled, 30, what="every ingress record refused or passed on")

    async with TopicWatch(bootstrap, start) as watch:
        @settings(max_examples=INGRESS_EXAMPLES, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(ingress_examples(intake.sources))
        def fuzz(records: list[tuple[bytes, str]]) -> None:
            on_loop(loop, produce_and_wait(records, watch))

        try:
            await run_hypothesis(fuzz)
        finally:
            await producer.stop()
        # Read on a little: a record refused twice or passed on twice would show now.
        for _ in range(5):
            await watch.poll()
        print(f"\n{sum(sent.values())} ingress records refused, {len(valid_ids)} valid events alongside")
        assert sum(sent.values()) >= INGRESS_EXAMPLES * PER_EXAMPLE // 2
        assert {d: watch.refused[d] for d in sent} == dict(sent)
        assert sum(watch.refused.values()) == sum(sent.values())
        assert watch.accepted == valid_ids
        assert set(watch.reasons.values()) <= REASONS

