"""The configurable choices of the timeliness rules (DESIGN §4), versioned so that a replay can say which
choices computed a date."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any


class SupplementMode(StrEnum):
    """What a supplement after appraisal does to the clock.

    RESTART: Decree 61/2018 art. 19.4, "thời hạn giải quyết được tính lại từ đầu sau khi nhận đủ hồ sơ".
    SUBTRACT: the Decision 766 reporting formula 2.1 subtracts the supplement interval, and a second
    supplement request counts as late.
    """

    RESTART = "restart"
    SUBTRACT = "subtract"


class CompletionGranularity(StrEnum):
    """How a completion is compared with its due instant to decide lateness.

    INSTANT: late if completed after the due instant (the receipt slip states hour and minute).
    DAY: late only if completed on a later local day than the due day (what many provincial reports do
    with CONVERT(DATE, ...)).
    """

    INSTANT = "instant"
    DAY = "day"


@dataclass(frozen=True)
class Policy:
    """Every choice a province may make differently, each with the national default.

    `version` names the rule set; `fingerprint` (recorded on every Deadline) adds a digest whenever a field
    differs from its default, so a province that flips one switch without renaming the version still gets a
    distinct version on its dossiers.
    """

    version: str = "2026.1"
    # RESTART follows the decree; SUBTRACT is the 766 reporting mode (see SupplementMode).
    supplement_mode: SupplementMode = SupplementMode.RESTART
    # Receipt at or after closing, or on a non-working day, counts as received at the opening of the next
    # working day (so that day is the uncounted receipt day). False: the calendar day of receipt is the
    # receipt day, whatever the hour.
    after_hours_receipt_next_day: bool = True
    # An open dossier is due_soon once at most this many working days of office time are left.
    due_soon_working_days: int = 1
    # Decree 61/2018 art. 19.9: the apology is due "chậm nhất 01 ngày trước ngày hết hạn"; read as the close
    # of the working day this many working days before the due day.
    apology_lead_working_days: int = 1
    # INSTANT: after the due instant is late (default); DAY: only a later day is late.
    completion_granularity: CompletionGranularity = CompletionGranularity.INSTANT

    def __post_init__(self) -> None:
        if not self.version.strip():
            raise ValueError("a policy needs a version")
        if self.due_soon_working_days < 0:
            raise ValueError("due_soon_working_days cannot be negative")
        if self.apology_lead_working_days < 0:
            raise ValueError("apology_lead_working_days cannot be negative")
        # Accept plain strings from configuration files; keep enums inside.
        object.__setattr__(self, "supplement_mode", SupplementMode(self.supplement_mode))
        object.__setattr__(self, "completion_granularity", CompletionGranularity(self.completion_granularity))

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> Policy:
        """Build from configuration (TOML/JSON); unknown keys are an error so that a typo is not silently the
        default."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown policy settings: {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        return cls(**values)

    def as_mapping(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    def changed_settings(self) -> dict[str, Any]:
        """The settings that differ from the defaults, version excluded."""
        default = Policy()
        return {
            f.name: _plain(getattr(self, f.name))
            for f in fields(self)
            if f.name != "version" and getattr(self, f.name) != getattr(default, f.name)
        }

    def second_supplement_is_late(self) -> bool:
        """In the 766 reporting mode a dossier with more than one supplement request counts as late."""
        return self.supplement_mode is SupplementMode.SUBTRACT

    def fingerprint(self, extra: dict[str, Any] | None = None) -> str:
        """`version` alone under the default settings, else `version~<digest of the changed settings>`.

        `extra` carries other changed inputs of a computation (the Clock passes non-default office hours).
        """
        changed = self.changed_settings()
        if extra:
            changed.update(extra)
        if not changed:
            return self.version
        digest = hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.version}~{digest}"


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, StrEnum) else value
