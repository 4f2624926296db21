"""Legal processing durations as commune systems and the catalog write them.

`N working_days`, `N working_hours`, `N calendar_days` or `same_day` (DESIGN §3).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema


class DurationUnit(StrEnum):
    WORKING_DAYS = "working_days"
    WORKING_HOURS = "working_hours"
    CALENDAR_DAYS = "calendar_days"
    SAME_DAY = "same_day"


_PATTERN = re.compile(r"^\s*(?:(?P<n>\d{1,4})\s+(?P<unit>working_days?|working_hours?|calendar_days?)|same_day)\s*$")


@dataclass(frozen=True)
class Duration:
    amount: int
    unit: DurationUnit

    @classmethod
    @functools.lru_cache(maxsize=1024)  # a handful of spellings, parsed again for every step of every dossier
    def parse(cls, text: str) -> Duration:
        match = _PATTERN.match(text)
        if match is None:
            raise ValueError(
                f"{text!r} is not a duration: write 'N working_days', 'N working_hours', 'N calendar_days' "
                "or 'same_day'"
            )
        if match["n"] is None:
            return cls(0, DurationUnit.SAME_DAY)
        unit = match["unit"] if match["unit"].endswith("s") else match["unit"] + "s"
        amount = int(match["n"])
        if amount == 0:
            # Zero working days is the same-day rule, with its cutoff; one spelling keeps one meaning.
            return cls(0, DurationUnit.SAME_DAY)
        return cls(amount, DurationUnit(unit))

    def __str__(self) -> str:
        if self.unit is DurationUnit.SAME_DAY:
            return "same_day"
        return f"{self.amount} {self.unit.value}"

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        def validate(value: Any) -> Duration:
            if isinstance(value, Duration):
                return value
            if isinstance(value, str):
                return cls.parse(value)
            raise ValueError("a duration is a string such as '3 working_days'")

        return core_schema.no_info_plain_validator_function(
            validate,
            json_schema_input_schema=core_schema.str_schema(pattern=_PATTERN.pattern),
            serialization=core_schema.to_string_ser_schema(),
        )
