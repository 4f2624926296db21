"""The logic's floor: the CPU each stage's own work takes per lifecycle event, in one process, with no Kafka, no
PostgreSQL, no HTTP and no framework.

The pipeline's floor (bench/pipeline_floor.py) is the design's I/O without its logic; this is the logic without
the I/O. Each stage runs the same functions the service runs on every event, in batches as the services do, on
the same events in the same order, each stage fed what the one before produced:

- intake: decode and size-check the bytes, screen the CloudEvent against the contract and the catalog, seal
  the applicant, and encode the accepted event;
- resolution: validate the accepted event, judge the batch against the dossiers as the batches before left
  them (histories for late events from memory), and encode what its writes encode (snapshots, timeline rows,
  the lifecycle events of the outbox);
- metrics: validate the lifecycle event, count it (the sequence check, `tally`, the progress row), and apply
  the batch to memory (totals and the open-dossier tracker);
- notify: validate the lifecycle event, and work out the messages it owes and each dossier's due-soon alert;
  apart, per message rather than per event (the providers' rate limits pace the sending, not the events),
  build each as the sender does when it sends it: open the sealed contact, render, and for an email the MIME
  message flattened to bytes.

What a service spends beyond its share of the pipeline's floor and this is glue: framework, batching, metrics,
reads before writes, logging. `bench.end_to_end` runs this on its own payloads after each run.

    .venv/bin/python -m bench.logic_floor --events 50000
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from typing import Any, TypeVar

from services.intake import domain
from services.intake.pipeline import Item
from services.metrics.series import Totals
from services.metrics.store import progress_row
from services.metrics.tally import CounterKey, open_kind, tally
from services.metrics.tracker import OpenDossiers
from services.notify import due
from services.notify.delivery import mail
from services.notify.messages import WEBHOOK, owed, render
from services.resolution.judge import judge, needs_history
from shared.clock.deadline import LOCAL_ZONE as VN
from shared.contract import topics
from shared.contract.dossier_code import mint_dossier_code
from shared.contract.events import EventType
from shared.contract.lifecycle import DossierLifecycleEvent, EventAccepted
from shared.contract.rejections import EventRefused
from shared.crypto import Keyring, new_key_spec
from shared.db import columns
from shared.dossier import Dossier
from shared.http import GC_THRESHOLDS
from shared.reference import ReferenceSource
from shared.simulator import Simulator

STAGES = ("intake", "resolution", "metrics", "notify")
BATCH = 500
T = TypeVar("T")


def simulated(events: int, seed: int = 7) -> list[bytes]:
    """`events` CloudEvents of the simulator's lifecycles, as commune systems send them."""
    simulator = Simulator(ReferenceSource().current.catalog, random.Random(seed))
    out: list[bytes] = []
    while len(out) < events:
        out += [json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()
                for event in simulator.next_events(datetime.now(UTC), min(BATCH, events - len(out)))]
    return out


def batches(items: list[T], size: int = BATCH) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class Stages:
    """The four stages' logic with the state each keeps between batches (stored dossiers, counters, memory)."""

    def __init__(self, keyring: Keyring, now: datetime) -> None:
        self.reference = ReferenceSource().current  # as each service loads it
        self.keyring = keyring
        self.now = now
        self.minted: dict[tuple[str, date], int] = {}
        self.judged: set[tuple[str, str]] = set()
        self.dossiers: dict[str, Dossier] = {}
        self.histories: dict[str, list[EventAccepted]] = {}
        self.last_sequence: dict[str, int] = {}
        units = self.reference.catalog.units
        self.province_of: Callable[[str], str] = lambda unit: units[unit].province_code if unit in units else ""
        self.totals = Totals(self.province_of)
        self.tracker = OpenDossiers()
        self.contacts: dict[str, str] = {}

    def intake(self, raw: list[bytes]) -> list[bytes]:
        catalog = self.reference.catalog
        out = []
        for payload in raw:
            item = Item.from_bytes(payload)
            domain.Envelope.of(item.value)  # intake reads it from every input, for a refusal's envelope
            try:
                event = domain.screen(item.value, catalog)
            except EventRefused:
                continue
            code = event.dossier_code
            if (unit := domain.minting_unit(event)) is not None:
                day = event.occurred_at.astimezone(VN).date()
                agency = catalog.units[unit].agency_id
                self.minted[(agency, day)] = number = self.minted.get((agency, day), 0) + 1
                code = mint_dossier_code(agency, day, number)
            assert code is not None
            accepted = domain.accept(event, code, minted=unit is not None, keyring=self.keyring, now=self.now)
            out.append(accepted.model_dump_json().encode())
        return out

    def resolution(self, raw: list[bytes]) -> list[bytes]:
        events = [EventAccepted.model_validate_json(payload) for payload in raw]
        fresh = []
        for event in events:
            if (event.source, event.id) not in self.judged:
                self.judged.add((event.source, event.id))
                fresh.append(event)
        codes = {event.dossier_code for event in fresh}
        dossiers = {code: self.dossiers[code] for code in codes if code in self.dossiers}
        late = needs_history(fresh, dossiers)
        current = self.reference
        verdicts = judge(fresh, dossiers, {code: self.histories.get(code, []) for code in late},
                         catalog=current.catalog, clock_for=current.clock_for, now=self.now)
        # What resolution's writes encode: snapshots and timeline rows (history rows keep each event's bytes).
        [(d.code, d.state.value, d.unit_code, d.snapshot_json(), self.now) for d in verdicts.dossiers.values()]
        [(code, e.sequence, e.event_type.value, e.occurred_at, e.state.value, e.due_at, e.clock_change)
         for code, timeline in verdicts.timeline.items() for e in timeline]
        for event, sequence, _refusal in verdicts.recorded:
            if sequence is not None:
                self.histories.setdefault(event.dossier_code, []).append(event)
        self.dossiers.update(verdicts.dossiers)
        return [payload for topic, _, payload in verdicts.outbox if topic == topics.LIFECYCLE]

    def metrics(self, raw: list[bytes]) -> None:
        events = [DossierLifecycleEvent.model_validate_json(payload) for payload in raw]
        deltas: dict[CounterKey, float] = {}
        latest: dict[str, tuple[DossierLifecycleEvent, int, str | None]] = {}
        for event in events:
            if event.sequence <= self.last_sequence.get(event.dossier_code, 0):
                continue
            self.last_sequence[event.dossier_code] = event.sequence
            part = hash(event.dossier_code) % 6
            tally(event, part, deltas)
            latest[event.dossier_code] = (event, part, open_kind(event))
        columns(progress_row(event, part, kind) for event, part, kind in latest.values())
        for key, value in deltas.items():
            self.totals.add(key, value)
        now = time.time()
        for event, part, kind in latest.values():
            if kind is None:
                self.tracker.remove(event.dossier_code)
            else:
                self.tracker.put(event.dossier_code, part, (self.province_of(event.unit_code), event.unit_code,
                                                           event.sector), kind, event.received_at.timestamp(),
                                 event.due_soon_at.timestamp() if event.due_soon_at else None,
                                 event.legal_due_at.timestamp() if event.legal_due_at else None, now)

    def notify(self, raw: list[bytes]) -> list[tuple[str, str, str, str]]:
        """Taking the batch in; returns the messages it owes, (dossier, template, channel, context), to send."""
        events = [DossierLifecycleEvent.model_validate_json(payload) for payload in raw]
        procedures = self.reference.catalog.procedures
        newest: dict[str, DossierLifecycleEvent] = {}
        names: dict[str, str] = {}
        messages = []
        for event in events:
            if event.event_type is EventType.RECEIVED and event.applicant_sealed:
                self.contacts[event.dossier_code] = event.applicant_sealed
            procedure = procedures.get(event.procedure_code)
            names[event.dossier_code] = name = procedure.name_vi if procedure else event.procedure_code
            for item in owed(event, event.notify_via, name, "https://dichvucong.example.vn/tra-cuu"):
                messages.append((event.dossier_code, item.template, item.channel,
                                 json.dumps(item.context, ensure_ascii=False)))
            if event.sequence > getattr(newest.get(event.dossier_code), "sequence", 0):
                newest[event.dossier_code] = event
        for code, event in newest.items():
            plan = due.plan(event, self.now, names[code])
            if plan.schedule is not None:
                json.dumps(plan.schedule.context, ensure_ascii=False)
        return messages

    def send(self, messages: list[tuple[str, str, str, str]]) -> None:
        """Each message as the sender builds it: the contact opened, the text rendered, an email's MIME bytes
        or a gateway's JSON."""
        for code, template, channel, context in messages:
            applicant = json.loads(self.keyring.open(self.contacts[code], code))
            filled = {**json.loads(context), "full_name": applicant["full_name"], "survey_url": "https://x.vn/s",
                      "opt_out_url": "https://x.vn/o"}
            subject, body = render(template, channel, filled)
            if channel == "email":
                mail("Một cửa <mot-cua@example.vn>", applicant["email"], subject, body, f"<{code}@x.vn>")
            elif channel != WEBHOOK:
                json.dumps({"phone": applicant["phone"], "text": body, "template": template}, ensure_ascii=False)


def measure(payloads: list[bytes], batch: int = BATCH) -> dict[str, Any]:
    """CPU µs per event of each stage's logic on `payloads` (CloudEvents as sent to intake), run in order,
    batch by batch, with the services' garbage collector settings."""
    stages = Stages(Keyring.parse(new_key_spec()), datetime.now(UTC))
    spent = dict.fromkeys(STAGES, 0.0)
    sending, messages = 0.0, 0
    thresholds = gc.get_threshold()
    gc.collect()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        for chunk in batches(payloads, batch):
            started = time.process_time()
            accepted = stages.intake(chunk)
            screened = time.process_time()
            lifecycle = stages.resolution(accepted)
            judged = time.process_time()
            stages.metrics(lifecycle)
            counted = time.process_time()
            owed = stages.notify(lifecycle)
            taken = time.process_time()
            stages.send(owed)
            sending += time.process_time() - taken
            messages += len(owed)
            for stage, seconds in zip(STAGES, (screened - started, judged - screened, counted - judged,
                                               taken - counted), strict=True):
                spent[stage] += seconds
    finally:
        gc.set_threshold(*thresholds)
    events = len(payloads)
    per_event = {stage: round(1e6 * seconds / events, 1) for stage, seconds in spent.items()}
    return {"events": events, "cpu_us_per_event": per_event,
            "cpu_us_per_event_total": round(sum(per_event.values()), 1), "messages": messages,
            "cpu_us_per_message_built": round(1e6 * sending / messages, 1) if messages else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    args = parser.parse_args()
    print(f"simulating {args.events} events ...", file=sys.stderr, flush=True)
    result = measure(simulated(args.events))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
