"""Metrics' pure core: what one canonical lifecycle event adds to the counters."""

from __future__ import annotations

from shared.contract.events import EventType
from shared.contract.lifecycle import DossierLifecycleEvent, DossierState

CounterKey = tuple[str, int, str, str, str, str]
"""(family, partition, unit, sector, channel, label)."""

RATIO_BUCKETS = (0.25, 0.5, 0.75, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0)
BUCKET_LABELS = (*map(str, RATIO_BUCKETS), "+Inf")


def bucket_of(ratio: float) -> str:
    """The one histogram bucket a ratio falls in: the smallest bound at or above it. Stored counters keep each
    completion in its own bucket only (one row, not one for every bound at or above it); the export adds them
    up into Prometheus' cumulative buckets."""
    return next((str(bound) for bound in RATIO_BUCKETS if ratio <= bound), "+Inf")


def open_kind(event: DossierLifecycleEvent) -> str | None:
    if event.state in (DossierState.PAUSED, DossierState.AWAITING_FEE):
        return "paused"
    if event.state is DossierState.AWAITING_SUPPLEMENT:
        return "awaiting_supplement"
    if event.state in (DossierState.RECEIVED, DossierState.PROCESSING):
        return "running"
    return None


def tally(event: DossierLifecycleEvent, part: int, into: dict[CounterKey, float]) -> None:
    """Add what `event` counts. Called once per canonical event, after dedupe."""

    def add(family: str, label: str = "", amount: float = 1.0) -> None:
        key = (family, part, event.unit_code, event.sector, event.channel, label)
        into[key] = into.get(key, 0.0) + amount

    if event.event_type is EventType.RECEIVED:
        add("received")
    if event.event_type in (EventType.RESOLVED, EventType.REJECTED, EventType.STOPPED, EventType.WITHDRAWN) \
            and event.timeliness is not None:
        add("completed", event.timeliness.value)
        if event.time_used_ratio is not None:
            add("time_used_in_bucket", bucket_of(event.time_used_ratio))
            add("time_used_sum", amount=event.time_used_ratio)
    if event.event_type is EventType.STEP_COMPLETED and event.step is not None and event.step.timeliness:
        # A liên thông step counts for the unit that handled it, not the dossier's receiving unit.
        key = ("steps", part, event.step.unit_code, event.sector, event.channel, event.step.timeliness.value)
        into[key] = into.get(key, 0.0) + 1.0
    if event.event_type is EventType.SUPPLEMENT_REQUESTED:
        add("supplements")
    if event.event_type is EventType.APOLOGY_ISSUED:
        add("apologies", "late" if event.apology_late else "in_time")
