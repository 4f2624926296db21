"""Resolution's pure core: judge a batch of accepted events against the dossiers they belong to."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from shared.catalog import Catalog
from shared.contract import topics
from shared.contract.lifecycle import DossierLifecycleEvent, EventAccepted
from shared.contract.rejections import EventRefused, RejectionReason, RejectionRecorded, Stage
from shared.dossier import ClockFor, Dossier, ImpossibleTransition, TimelineEntry, fold


@dataclass
class Verdicts:
    """What a batch changes: dossiers to write, events to record, messages for the outbox."""

    dossiers: dict[str, Dossier] = field(default_factory=dict)
    # Timeline entries to store, by dossier: those this batch added, or every one of a dossier whose history
    # was refolded (a late event moves the places, states and due instants of those after it); the stored
    # entries of the `refolded` ones are replaced.
    timeline: dict[str, list[TimelineEntry]] = field(default_factory=dict)
    refolded: set[str] = field(default_factory=set)
    recorded: list[tuple[EventAccepted, int | None, str | None]] = field(default_factory=list)
    outbox: list[tuple[str, str, bytes]] = field(default_factory=list)
    accepted: int = 0
    refused: int = 0


def _rejection(event: EventAccepted, refusal: EventRefused, state: str | None, now: datetime) -> RejectionRecorded:
    return RejectionRecorded(
        rejection_id=str(uuid.uuid4()), stage=Stage.RESOLUTION, reason=refusal.reason, detail=refusal.detail,
        event_id=event.id, source=event.source, subject=event.dossier_code, event_type=event.event_type.value,
        dossier_state=state, rejected_at=now,
    )


def needs_history(events: list[EventAccepted], dossiers: dict[str, Dossier]) -> set[str]:
    """Stored dossiers that some event of the batch reaches out of order, so their history must be loaded."""
    latest = {code: dossier.last_occurred_at for code, dossier in dossiers.items()}
    late: set[str] = set()
    for event in events:
        code = event.dossier_code
        if code in dossiers and code in latest and event.occurred_at < latest[code]:
            late.add(code)
        latest[code] = max(latest.get(code, event.occurred_at), event.occurred_at)
    return late


def judge(
    events: list[EventAccepted],
    dossiers: dict[str, Dossier],
    histories: dict[str, list[EventAccepted]],
    *,
    catalog: Catalog,
    clock_for: ClockFor,
    now: datetime,
) -> Verdicts:
    """Fold each event (already deduplicated) into its dossier, in batch order.

    An event older than the dossier's latest is judged against the whole history: the history is refolded
    with the event in its place in time, and the event is accepted when that fold holds (docs/adr/0002).
    `histories` holds the accepted events of the dossiers that need it; it grows with this batch.
    """
    verdicts = Verdicts()
    for code in {event.dossier_code for event in events} - dossiers.keys():
        histories.setdefault(code, [])  # a dossier new in this batch: its whole history is in the batch
    for event in events:
        current = verdicts.dossiers.get(event.dossier_code) or dossiers.get(event.dossier_code)
        try:
            if current is None:
                updated = Dossier.start(event, catalog, clock_for)
            elif event.occurred_at < current.last_occurred_at:
                history = histories.get(event.dossier_code)
                if history is None:
                    raise EventRefused(RejectionReason.OUT_OF_ORDER, "history unavailable")
                ordered = sorted([*history, event], key=lambda item: item.occurred_at)
                refolded = fold(ordered, catalog, clock_for)
                # The sequence keeps counting accepted events; the state is the refolded one.
                updated = refolded.model_copy(update={"sequence": current.sequence + 1})
                verdicts.refolded.add(event.dossier_code)
            else:
                updated = current.apply(event, catalog, clock_for)
        except EventRefused as refusal:
            state = current.state.value if current is not None else None
            if isinstance(refusal, ImpossibleTransition) and current is not None \
                    and event.occurred_at < current.last_occurred_at:
                refusal = EventRefused(RejectionReason.OUT_OF_ORDER,
                                       f"older than the dossier's latest event and does not fit its history: "
                                       f"{refusal.detail}")
            rejection = _rejection(event, refusal, state, now)
            verdicts.recorded.append((event, None, refusal.reason.value))
            verdicts.outbox.append((topics.REJECTIONS, event.dossier_code, rejection.model_dump_json().encode()))
            verdicts.refused += 1
            continue
        verdicts.dossiers[event.dossier_code] = updated
        if event.dossier_code in histories:
            histories[event.dossier_code].append(event)
        verdicts.recorded.append((event, updated.sequence, None))
        canonical: DossierLifecycleEvent = updated.lifecycle_event(event, clock_for(updated.unit_code), now)
        verdicts.outbox.append((topics.LIFECYCLE, event.dossier_code, canonical.model_dump_json().encode()))
        verdicts.accepted += 1
    for code, dossier in verdicts.dossiers.items():
        stored = 0 if code in verdicts.refolded or code not in dossiers else dossiers[code].sequence
        verdicts.timeline[code] = [entry for entry in dossier.timeline if entry.sequence > stored]
    return verdicts
