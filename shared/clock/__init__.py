"""The pure deadline engine: working calendar, office hours, policy, and due dates with explanations."""

from shared.clock.calendar import DayReason, WorkingCalendar, YearOverrides
from shared.clock.deadline import LOCAL_ZONE, Clock, Deadline, ExplanationStep, to_local
from shared.clock.office import OfficeHours
from shared.clock.policy import CompletionGranularity, Policy, SupplementMode

__all__ = [
    "LOCAL_ZONE",
    "Clock",
    "CompletionGranularity",
    "DayReason",
    "Deadline",
    "ExplanationStep",
    "OfficeHours",
    "Policy",
    "SupplementMode",
    "WorkingCalendar",
    "YearOverrides",
    "to_local",
]
