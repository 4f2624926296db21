"""A dossier as the fold of its lifecycle events: the state machine and the clock changes each event causes.

Pure: no I/O, time comes from the events. Resolution folds every accepted event through `Dossier.apply`;
`tthc explain` and `tthc replay` fold the same events the same way, so there is one answer to "where does
this dossier stand and why".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, time, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.catalog import Catalog
from shared.clock.calendar import WorkingCalendar
from shared.clock.deadline import Clock
from shared.clock.office import OfficeHours
from shared.clock.policy import Policy, SupplementMode
from shared.contract.duration import Duration
from shared.contract.events import EventType
from shared.contract.lifecycle import (
    STATUS_CODES,
    DossierLifecycleEvent,
    DossierState,
    EventAccepted,
    OpenState,
    StepView,
    Timeliness,
)
from shared.contract.rejections import EventRefused, RejectionReason

OPEN = frozenset({DossierState.RECEIVED, DossierState.PROCESSING, DossierState.AWAITING_SUPPLEMENT,
                  DossierState.AWAITING_FEE, DossierState.PAUSED})
ACTIVE = frozenset({DossierState.RECEIVED, DossierState.PROCESSING})
CLOCK_STOPPED = frozenset({DossierState.AWAITING_SUPPLEMENT, DossierState.AWAITING_FEE, DossierState.PAUSED})
COMPLETING = {
    EventType.RESOLVED: DossierState.RESOLVED,
    EventType.REJECTED: DossierState.REJECTED,
    EventType.STOPPED: DossierState.STOPPED,
    EventType.WITHDRAWN: DossierState.WITHDRAWN,
}

ClockFor = Callable[[str], Clock]
"""The clock of a unit: the national calendar with that unit's office hours and the policy in force."""


class ImpossibleTransition(EventRefused):
    def __init__(self, detail: str, state: DossierState | None) -> None:
        super().__init__(RejectionReason.IMPOSSIBLE_TRANSITION, detail)
        self.state = state


class TimelineEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    sequence: int
    event_type: EventType
    occurred_at: datetime
    state: DossierState
    due_at: datetime | None
    clock_change: str | None = None


class Dossier(BaseModel):
    model_config = ConfigDict(frozen=True)

    code: str
    procedure_code: str = ""
    unit_code: str = ""
    sector: str = ""
    channel: str = ""
    duration: str = ""
    state: DossierState
    sequence: int = 0
    received_at: datetime
    clock_started_at: datetime
    legal_due_at: datetime | None = None
    # When the dossier turns due_soon: kept with the due instant it derives from, because every event and
    # every timer asks for it and computing it walks office hours.
    due_soon_at: datetime | None = None
    appointment_at: datetime | None = None
    stopped_since: datetime | None = None
    supplement_count: int = 0
    apology_issued: bool = False
    apology_late: bool = False
    completed_at: datetime | None = None
    timeliness: Timeliness | None = None
    time_used_ratio: float | None = None
    steps: dict[str, StepView] = Field(default_factory=dict)
    last_occurred_at: datetime
    # The entries folded into this value: the whole history when folded from the first event, only those since
    # it was read when it comes from a stored snapshot, which keeps none (resolution stores them as rows).
    timeline: list[TimelineEntry] = Field(default_factory=list)
    calendar_version: str = ""
    policy_version: str = ""
    applicant_sealed: str | None = None
    notify_via: list[str] = Field(default_factory=list)
    reason: str | None = None

    # -- reading -----------------------------------------------------------------------------------------

    def snapshot_json(self) -> str:
        """The dossier as stored after every event, without its timeline: that grows with every event and is
        stored once per entry instead of again with each one."""
        return self.model_dump_json(exclude={"timeline"})

    @property
    def is_open(self) -> bool:
        return self.state in OPEN

    def open_state(self, now: datetime) -> OpenState | None:
        """Where an open dossier stands at `now` (the clock's classify_open, from the stored due_soon_at)."""
        if not self.is_open or self.legal_due_at is None or self.due_soon_at is None:
            return None
        if self.state is DossierState.AWAITING_SUPPLEMENT:
            return OpenState.AWAITING_SUPPLEMENT
        if self.state in (DossierState.PAUSED, DossierState.AWAITING_FEE):
            return OpenState.PAUSED
        if now > self.legal_due_at:
            return OpenState.OVERDUE
        return OpenState.DUE_SOON if now >= self.due_soon_at else OpenState.ON_TRACK

    def explanation(self, catalog: Catalog, clock: Clock) -> list[dict[str, Any]]:
        """How the running clock's base deadline was counted, day by day. Derived on read rather than stored:
        it follows from when the clock started, the duration and the calendar; what moved the deadline since is
        in the timeline."""
        if self.legal_due_at is None or not self.duration:
            return []
        deadline = clock.due(self.clock_started_at, Duration.parse(self.duration), self._cutoff(catalog))
        return [dict(vars(step)) for step in deadline.explanation]

    def lifecycle_event(self, accepted: EventAccepted, clock: Clock, now: datetime) -> DossierLifecycleEvent:
        """The canonical event announcing this dossier as it stands after `accepted`."""
        step = None
        if accepted.event_type in (EventType.STEP_STARTED, EventType.STEP_COMPLETED):
            step = self.steps.get(_step_key(accepted.data))
        return DossierLifecycleEvent(
            id=f"{self.code}:{self.sequence}", dossier_code=self.code, sequence=self.sequence,
            event_type=accepted.event_type, occurred_at=accepted.occurred_at, recorded_at=now,
            source=accepted.source, source_event_id=accepted.id, procedure_code=self.procedure_code,
            unit_code=self.unit_code, sector=self.sector, channel=self.channel, state=self.state,
            status_code=STATUS_CODES[self.state], received_at=self.received_at, legal_due_at=self.legal_due_at,
            due_soon_at=self.due_soon_at, appointment_at=self.appointment_at,
            open_state=self.open_state(accepted.occurred_at),
            timeliness=self.timeliness, completed_at=self.completed_at, time_used_ratio=self.time_used_ratio,
            supplement_count=self.supplement_count, apology_issued=self.apology_issued,
            apology_late=self.apology_late, step=step, reason=self.reason,
            details={} if accepted.event_type is EventType.RECEIVED else accepted.data,
            calendar_version=self.calendar_version, policy_version=self.policy_version,
            applicant_sealed=accepted.applicant_sealed if accepted.event_type is EventType.RECEIVED else None,
            notify_via=self.notify_via,
        )

    # -- folding -----------------------------------------------------------------------------------------

    @classmethod
    def start(cls, event: EventAccepted, catalog: Catalog, clock_for: ClockFor,
              duration_override: Duration | None = None) -> Dossier:
        if event.event_type is EventType.REFUSED_AT_INTAKE:
            return cls(code=event.dossier_code, state=DossierState.REFUSED, sequence=1,
                       received_at=event.occurred_at, clock_started_at=event.occurred_at,
                       last_occurred_at=event.occurred_at, reason=event.data.get("reason"),
                       completed_at=event.occurred_at,
                       timeline=[TimelineEntry(sequence=1, event_type=event.event_type,
                                               occurred_at=event.occurred_at, state=DossierState.REFUSED,
                                               due_at=None)])
        if event.event_type is not EventType.RECEIVED:
            raise ImpossibleTransition(f"{event.event_type.value} for a dossier that was never received", None)
        procedure = catalog.procedures.get(event.data["procedure_code"])
        if procedure is None:
            raise EventRefused(RejectionReason.UNKNOWN_PROCEDURE,
                               f"unknown procedure {event.data['procedure_code']!r}")
        unit_code = event.data["unit_code"]
        clock = clock_for(unit_code)
        duration = duration_override or procedure.duration
        deadline = clock.due(event.occurred_at, duration, procedure.cutoff, explain=False)
        return cls(
            code=event.dossier_code, procedure_code=procedure.code, unit_code=unit_code,
            sector=procedure.sector, channel=event.data["channel"], duration=str(duration),
            state=DossierState.RECEIVED, sequence=1, received_at=event.occurred_at,
            clock_started_at=event.occurred_at, legal_due_at=deadline.due_at,
            due_soon_at=clock.due_soon_at(deadline.due_at), appointment_at=deadline.due_at,
            last_occurred_at=event.occurred_at,
            timeline=[TimelineEntry(sequence=1, event_type=event.event_type, occurred_at=event.occurred_at,
                                    state=DossierState.RECEIVED, due_at=deadline.due_at,
                                    clock_change=f"received: due {deadline.due_at.isoformat()} ({duration})")],
            calendar_version=deadline.calendar_version, policy_version=deadline.policy_version,
            applicant_sealed=event.applicant_sealed, notify_via=event.notify_via,
        )

    def apply(self, event: EventAccepted, catalog: Catalog, clock_for: ClockFor) -> Dossier:
        """The dossier after `event`, or ImpossibleTransition saying why the event cannot happen now."""
        kind, at, state = event.event_type, event.occurred_at, self.state
        if kind in (EventType.RECEIVED, EventType.REFUSED_AT_INTAKE):
            raise ImpossibleTransition(f"{kind.value}: the dossier was already received", state)
        if not self.is_open and not (kind is EventType.RESULT_RETURNED
                                     and state in (DossierState.RESOLVED, DossierState.REJECTED)):
            raise ImpossibleTransition(f"{kind.value} after the dossier ended ({state.value})", state)
        clock = clock_for(self.unit_code)
        change: dict[str, Any] = {}
        note: str | None = None

        if kind is EventType.STEP_STARTED:
            self._require(kind, ACTIVE)
            key = _step_key(event.data)
            if key in self.steps:
                raise ImpossibleTransition(f"step {key} was already started", state)
            due = _step_due(event.data, at, clock_for)
            change["steps"] = {**self.steps, key: StepView(step=event.data["step"], unit_code=event.data["unit_code"],
                                                           started_at=at, due_at=due)}
            change["state"] = DossierState.PROCESSING
        elif kind is EventType.STEP_COMPLETED:
            key = _step_key(event.data)
            step = self.steps.get(key)
            if step is None or step.completed_at is not None:
                raise ImpossibleTransition(f"step {key} is not in progress", state)
            timeliness = clock_for(step.unit_code).classify_completion(at, step.due_at) if step.due_at else None
            change["steps"] = {**self.steps, key: step.model_copy(update={"completed_at": at,
                                                                          "timeliness": timeliness})}
        elif kind is EventType.SUPPLEMENT_REQUESTED:
            self._require(kind, ACTIVE)
            change |= {"state": DossierState.AWAITING_SUPPLEMENT, "stopped_since": at,
                       "supplement_count": self.supplement_count + 1}
            note = f"supplement #{self.supplement_count + 1} requested: the clock stops"
        elif kind is EventType.SUPPLEMENT_RECEIVED:
            self._require(kind, {DossierState.AWAITING_SUPPLEMENT})
            change["state"] = DossierState.PROCESSING
            change["stopped_since"] = None
            if clock.policy.supplement_mode is SupplementMode.RESTART:
                deadline = clock.due(at, Duration.parse(self.duration), self._cutoff(catalog), explain=False)
                change |= {"legal_due_at": deadline.due_at, "clock_started_at": at}
                if not self.apology_issued:
                    change["appointment_at"] = deadline.due_at
                note = "complete dossier received: the clock restarts from zero (Decree 61/2018 art. 19.4)"
            else:
                change |= self._moved_by_stop(clock, at)
                note = "supplement received: the due instant moves by the office time waited (Decision 766)"
        elif kind is EventType.FEE_REQUESTED:
            self._require(kind, ACTIVE)
            change |= {"state": DossierState.AWAITING_FEE, "stopped_since": at}
            note = "fee requested: the clock pauses until it is paid"
        elif kind is EventType.FEE_PAID:
            self._require(kind, {DossierState.AWAITING_FEE})
            change |= {"state": DossierState.PROCESSING, **self._moved_by_stop(clock, at)}
            note = "fee paid: the due instant moves by the office time paused"
        elif kind is EventType.PAUSED:
            self._require(kind, ACTIVE)
            change |= {"state": DossierState.PAUSED, "stopped_since": at}
            note = f"paused ({event.data.get('reason')}): the clock stops"
        elif kind is EventType.RESUMED:
            self._require(kind, {DossierState.PAUSED})
            change |= {"state": DossierState.PROCESSING, **self._moved_by_stop(clock, at)}
            note = "resumed: the due instant moves by the office time paused"
        elif kind is EventType.APOLOGY_ISSUED:
            if self.apology_issued:
                raise ImpossibleTransition("an apology with a new appointment is allowed once (Decree 61/2018 "
                                           "art. 19.9)", state)
            new_appointment = datetime.fromisoformat(event.data["new_appointment_at"])
            if self.legal_due_at is not None and new_appointment <= self.legal_due_at:
                raise ImpossibleTransition("the new appointment must be later than the due instant", state)
            late = self.legal_due_at is not None and clock.apology_late(at, self.legal_due_at)
            change |= {"apology_issued": True, "apology_late": late, "appointment_at": new_appointment}
            note = (f"apology: the citizen's appointment moves to {new_appointment.isoformat()}; statistics keep "
                    "the legal due instant" + (" (issued later than one working day before it)" if late else ""))
        elif kind in COMPLETING:
            if kind is not EventType.WITHDRAWN and kind is not EventType.STOPPED:
                self._require(kind, OPEN - {DossierState.AWAITING_FEE})
            moved = self._moved_by_stop(clock, at) if self.state in CLOCK_STOPPED else {}
            due = moved.get("legal_due_at", self.legal_due_at)
            timeliness = clock.classify_completion(at, due) if due is not None else None
            if (clock.policy.supplement_mode is SupplementMode.SUBTRACT and self.supplement_count > 1):
                timeliness = Timeliness.LATE  # Decision 766: a second supplement request counts as late
            change |= {**moved, "state": COMPLETING[kind], "completed_at": at, "timeliness": timeliness,
                       "reason": event.data.get("reason"),
                       "time_used_ratio": clock.time_used_ratio(self.clock_started_at, at, due) if due else None}
        elif kind is EventType.RESULT_RETURNED:
            self._require(kind, {DossierState.RESOLVED, DossierState.REJECTED})
            change["state"] = DossierState.RETURNED
        else:  # pragma: no cover - every type is handled above
            raise ImpossibleTransition(f"unhandled event type {kind.value}", state)

        new_state = change.get("state", state)
        due_after = change.get("legal_due_at", self.legal_due_at)
        if due_after != self.legal_due_at and due_after is not None:
            change["due_soon_at"] = clock.due_soon_at(due_after)
        entry = TimelineEntry(sequence=self.sequence + 1, event_type=kind, occurred_at=at,
                                              state=new_state, due_at=due_after, clock_change=note)
        return self.model_copy(update={**change, "sequence": self.sequence + 1, "timeline": [*self.timeline, entry],
                                       "last_occurred_at": max(self.last_occurred_at, at)})

    def _require(self, kind: EventType, allowed: Iterable[DossierState]) -> None:
        if self.state not in allowed:
            raise ImpossibleTransition(f"{kind.value} is not possible while the dossier is {self.state.value}",
                                       self.state)

    def _moved_by_stop(self, clock: Clock, at: datetime) -> dict[str, Any]:
        """Close a stop of the clock: the due instant moves later by the office time stopped."""
        if self.stopped_since is None or self.legal_due_at is None:
            return {"stopped_since": None}
        waited = clock.office_time_between(self.stopped_since, at)
        due = clock.add_office_time(self.legal_due_at, waited) if waited > timedelta(0) else self.legal_due_at
        moved: dict[str, Any] = {"stopped_since": None, "legal_due_at": due}
        if not self.apology_issued:
            moved["appointment_at"] = due
        return moved

    def _cutoff(self, catalog: Catalog) -> time | None:
        procedure = catalog.procedures.get(self.procedure_code)
        return procedure.cutoff if procedure else None


def _step_key(data: dict[str, Any]) -> str:
    return f"{data['step']}@{data['unit_code']}"


def _step_due(data: dict[str, Any], at: datetime, clock_for: ClockFor) -> datetime | None:
    if data.get("due_at"):
        return datetime.fromisoformat(data["due_at"])
    if data.get("duration"):
        return clock_for(data["unit_code"]).due(at, Duration.parse(data["duration"]), explain=False).due_at
    return None


def fold(events: Iterable[EventAccepted], catalog: Catalog, clock_for: ClockFor,
         duration_override: Duration | None = None) -> Dossier:
    """The dossier from its whole history, in the order given."""
    dossier: Dossier | None = None
    for event in events:
        if dossier is None:
            dossier = Dossier.start(event, catalog, clock_for, duration_override)
        else:
            dossier = dossier.apply(event, catalog, clock_for)
    if dossier is None:
        raise ValueError("no events")
    return dossier


def clock_for_units(catalog: Catalog, calendar: WorkingCalendar, policy: Policy) -> ClockFor:
    """One clock per unit, built once: the unit's own office hours where the registry gives them."""
    default = Clock(calendar, OfficeHours.default(), policy)
    clocks: dict[str, Clock] = {}

    def clock_for(unit_code: str) -> Clock:
        clock = clocks.get(unit_code)
        if clock is None:
            unit = catalog.units.get(unit_code)
            hours = unit.office_hours if unit else None
            clock = Clock(calendar, OfficeHours.parse([list(pair) for pair in hours]), policy) if hours else default
            clocks[unit_code] = clock
        return clock

    return clock_for
