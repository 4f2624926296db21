"""Intake's one path, for HTTP and the ingress topic alike: screen, dedupe, mint codes, publish, answer."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry, Counter

from services.intake import domain, store
from services.intake.keys import Principal
from shared.catalog import Catalog
from shared.clock.deadline import LOCAL_ZONE as VN
from shared.contract import topics
from shared.contract.dossier_code import DAILY_SEQUENCE_LIMIT, mint_dossier_code
from shared.contract.events import IncomingEvent, Received
from shared.contract.rejections import EventRefused, FieldProblem, RejectionReason, RejectionRecorded
from shared.crypto import Keyring
from shared.db import Connection
from shared.kafka import Message, send_batched
from shared.reference import ReferenceSource

log = logging.getLogger(__name__)


AUTH_REASONS = frozenset({RejectionReason.UNAUTHENTICATED, RejectionReason.FORGED_SOURCE,
                          RejectionReason.FORBIDDEN_UNIT})


class Status(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass
class Outcome:
    status: Status
    id: str | None = None
    dossier_code: str | None = None
    reason: str | None = None
    detail: str | None = None
    problems: list[FieldProblem] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        answer: dict[str, Any] = {"status": self.status.value, "id": self.id}
        if self.dossier_code:
            answer["dossier_code"] = self.dossier_code
        if self.status is Status.REJECTED:
            answer |= {"reason": self.reason, "detail": self.detail,
                       "problems": [problem.model_dump() for problem in self.problems]}
        return answer


@dataclass(frozen=True)
class Item:
    """One input: its bytes (for the rejection's digest) and its decoded JSON, or why it could not be."""

    payload: bytes
    value: Any = None
    refusal: EventRefused | None = None

    @classmethod
    def from_bytes(cls, raw: bytes) -> Item:
        try:
            return cls(raw, value=domain.decode_json(domain.check_size(raw)))
        except EventRefused as refusal:
            return cls(raw, refusal=refusal)

    @classmethod
    def from_value(cls, value: Any) -> Item:
        """A value from a decoded batch; its compact JSON stands for its bytes (size limit, digest)."""
        raw = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            return cls(domain.check_size(raw), value=value)
        except EventRefused as refusal:
            return cls(raw, refusal=refusal)


class IntakeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter("tthc_intake_events_total", "Inputs intake screened, by outcome and channel",
                              ["outcome", "channel"], registry=registry)
        self.rejections = Counter("tthc_intake_rejections_total", "Inputs intake refused, by reason",
                                  ["reason"], registry=registry)


Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class IntakePipeline:
    def __init__(self, *, pool: asyncpg.Pool, producer: AIOKafkaProducer, reference: ReferenceSource, keyring: Keyring,
                 metrics: IntakeMetrics, now: Clock = utc_now) -> None:
        self.pool = pool
        self.producer = producer
        self.reference = reference
        self.keyring = keyring
        self.metrics = metrics
        self.now = now

    async def process(self, items: Sequence[Item], channel: str, principal: Principal | None = None) -> list[Outcome]:
        """Screen, authorise (when a key sent them), dedupe and pass on `items`; one outcome per item.

        Events from the ingress topic come without a principal: the broker authenticated their producer.
        """
        now = self.now()
        outcomes: list[Outcome | None] = [None] * len(items)
        rejections: list[RejectionRecorded] = []
        candidates: list[tuple[int, IncomingEvent]] = []
        catalog = self.reference.current.catalog
        for index, item in enumerate(items):
            envelope = domain.Envelope.of(item.value)
            try:
                if item.refusal is not None:
                    raise item.refusal
                candidates.append((index, domain.screen(item.value, catalog)))
            except EventRefused as refusal:
                rejections.append(domain.rejection(refusal, payload=item.payload, envelope=envelope, now=now))
                outcomes[index] = Outcome(Status.REJECTED, envelope.event_id, envelope.subject, refusal.reason,
                                          refusal.detail, refusal.problems)
        if not candidates and not any(r.reason in AUTH_REASONS for r in rejections):
            # Nothing to authorise, dedupe or audit: a flood of malformed input never reaches the database.
            await (await send_batched(self.producer, [refusal_message(rejection) for rejection in rejections]))
        else:
            async with self.pool.acquire() as conn, conn.transaction():
                if principal is not None and candidates:
                    candidates = await self._authorized(conn, principal, items, candidates, outcomes, rejections,
                                                        now)
                messages = [refusal_message(rejection) for rejection in rejections]
                await store.audit(conn, [r for r in rejections if r.reason in AUTH_REASONS],
                                  principal.key_id if principal else None)
                if candidates:
                    messages += await self._pass_on(conn, catalog, items, candidates, outcomes, now)
                # Committed only once Kafka has every accepted event: a crash before this line leaves the
                # events unrecorded, so the sender's retry passes them on again (resolution dedupes).
                await (await send_batched(self.producer, messages))
        for outcome in outcomes:
            assert outcome is not None
            self.metrics.events.labels(outcome.status.value, channel).inc()
            if outcome.reason:
                self.metrics.rejections.labels(outcome.reason).inc()
        return [outcome for outcome in outcomes if outcome is not None]

    async def _authorized(self, conn: Connection, principal: Principal, items: Sequence[Item],
                          candidates: list[tuple[int, IncomingEvent]],
                          outcomes: list[Outcome | None], rejections: list[RejectionRecorded],
                          now: datetime) -> list[tuple[int, IncomingEvent]]:
        units = await store.dossier_units(conn, [e.dossier_code for _, e in candidates if e.dossier_code])
        allowed = []
        for index, event in candidates:
            try:
                domain.authorize(event, principal.source, principal.units, units.get(event.dossier_code or ""))
            except EventRefused as refusal:
                rejection, outcomes[index] = refused_event(event, refusal, items[index].payload, now)
                rejections.append(rejection)
                continue
            if isinstance(event.data, Received) and event.dossier_code:
                units.setdefault(event.dossier_code, event.data.unit_code)  # later events in this batch
            allowed.append((index, event))
        return allowed

    async def _pass_on(self, conn: Connection, catalog: Catalog, items: Sequence[Item],
                       candidates: list[tuple[int, IncomingEvent]], outcomes: list[Outcome | None],
                       now: datetime) -> list[Message]:
        """Accepted events and refusals for the accepted and rejections topics, the outcomes filled in."""
        seen = await store.already_accepted(conn, [event.key for _, event in candidates])
        # Only a key's first event in the batch takes a code: a repeat is a duplicate of it, or refused with it.
        firsts: dict[tuple[str, str], tuple[int, IncomingEvent, tuple[str, date] | None]] = {}
        for index, event in candidates:
            if event.key not in seen and event.key not in firsts:
                firsts[event.key] = (index, event, daily_sequence(event, catalog))
        wanted: dict[tuple[str, date], int] = {}
        for _, _, sequence in firsts.values():
            if sequence is not None:
                wanted[sequence] = wanted.get(sequence, 0) + 1
        numbers = await store.reserve_sequences(conn, wanted)
        codes: dict[tuple[str, str], str] = {}
        refused: dict[tuple[str, str], EventRefused] = {}
        for key, (_, event, sequence) in firsts.items():
            if sequence is None:
                assert event.dossier_code is not None
                codes[key] = event.dossier_code
            elif numbers[sequence] <= DAILY_SEQUENCE_LIMIT:
                codes[key] = mint_dossier_code(*sequence, numbers[sequence])
                numbers[sequence] += 1
            else:
                agency_id, day = sequence
                refused[key] = EventRefused(RejectionReason.BAD_DOSSIER_CODE, (
                    f"agency {agency_id} has used all {DAILY_SEQUENCE_LIMIT} dossier codes of {day:%d/%m/%Y} "
                    "(Circular 01/2018), so none can be minted: send the dossier's own code as subject"))
        new_keys = await store.record_accepted(conn, [(*key, code) for key, code in codes.items()], now)
        # Keys a concurrent request accepted first, committed by now (it held the key, or the day's sequence of a
        # refused one): duplicates with that request's codes, not new events nor refusals.
        seen.update(await store.already_accepted(conn, [*refused, *(key for key in codes if key not in new_keys)]))
        await store.record_units(conn, [(codes[key], event.data.unit_code) for key, (_, event, _) in firsts.items()
                                        if key in new_keys and isinstance(event.data, Received)])
        messages: list[Message] = []
        for index, event in candidates:
            key = event.key
            if key in seen:
                outcomes[index] = Outcome(Status.DUPLICATE, event.id, seen[key])
            elif (refusal := refused.get(key)) is not None:
                rejection, outcomes[index] = refused_event(event, refusal, items[index].payload, now)
                messages.append(refusal_message(rejection))
            elif firsts[key][0] != index:
                outcomes[index] = Outcome(Status.DUPLICATE, event.id, codes[key])
            else:
                accepted = domain.accept(event, codes[key], minted=firsts[key][2] is not None, keyring=self.keyring,
                                         now=now)
                messages.append((topics.ACCEPTED, codes[key].encode(), accepted.model_dump_json().encode()))
                outcomes[index] = Outcome(Status.ACCEPTED, event.id, codes[key])
        return messages


def daily_sequence(event: IncomingEvent, catalog: Catalog) -> tuple[str, date] | None:
    """The (agency, day) whose daily sequence numbers the event's new dossier code, when the commune sent none."""
    unit_code = domain.minting_unit(event)
    if unit_code is None:
        return None
    return catalog.units[unit_code].agency_id, event.occurred_at.astimezone(VN).date()


def refused_event(event: IncomingEvent, refusal: EventRefused, payload: bytes,
                  now: datetime) -> tuple[RejectionRecorded, Outcome]:
    """An event that parsed but is refused: its rejection, and the answer for it."""
    envelope = domain.Envelope(event.id, event.source, event.dossier_code, event.event_type.value)
    return (domain.rejection(refusal, payload=payload, envelope=envelope, now=now),
            Outcome(Status.REJECTED, event.id, event.dossier_code, refusal.reason, refusal.detail))


def refusal_message(rejection: RejectionRecorded) -> Message:
    """A refusal for the rejections topic, keyed by what it concerns."""
    return (topics.REJECTIONS, (rejection.subject or rejection.source or "").encode() or None,
            rejection.model_dump_json().encode())
