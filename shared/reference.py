"""Reference data every service judges by: the procedure catalog, the unit registry and the working calendar.

The data files under shared/data/ are versioned; a service reloads them when they change on disk, so a new
year's swaps or a corrected procedure take effect without a restart. A file that fails to load leaves the
previous data in force and says why in the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from shared.catalog import DATA_DIR, Catalog
from shared.clock.calendar import WorkingCalendar
from shared.clock.deadline import LOCAL_ZONE as VN
from shared.clock.policy import Policy
from shared.dossier import ClockFor, clock_for_units

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reference:
    catalog: Catalog
    calendar: WorkingCalendar
    clock_for: ClockFor

    @classmethod
    def load(cls, policy: Policy, data_dir: Path = DATA_DIR) -> Reference:
        catalog = Catalog.load(data_dir)
        calendar = WorkingCalendar.load(data_dir / "calendar")
        return cls(catalog, calendar, clock_for_units(catalog, calendar, policy))


def _fingerprint(data_dir: Path) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((str(path), path.stat().st_mtime_ns) for path in data_dir.rglob("*.toml")))


@dataclass
class ReferenceSource:
    policy: Policy = field(default_factory=Policy)
    data_dir: Path = DATA_DIR
    current: Reference = field(init=False)
    _seen: tuple[tuple[str, int], ...] = field(init=False)

    def __post_init__(self) -> None:
        self._seen = _fingerprint(self.data_dir)
        self.current = Reference.load(self.policy, self.data_dir)
        self.warn_if_next_year_missing()

    def refresh(self) -> bool:
        """Reload when a data file changed; True when new data is now in force."""
        seen = _fingerprint(self.data_dir)
        if seen == self._seen:
            return False
        self._seen = seen
        try:
            self.current = Reference.load(self.policy, self.data_dir)
        except (OSError, ValueError, KeyError) as error:
            log.error("reference data not reloaded, the previous data stays in force: %s", error)
            return False
        log.info("reference data reloaded: %s; calendar %s", self.current.catalog.version,
                 self.current.calendar.version)
        self.warn_if_next_year_missing()
        return True

    def warn_if_next_year_missing(self) -> None:
        year = self.current.calendar.missing_next_year(datetime.now(VN).date())
        if year is not None:
            log.warning("the working calendar has no complete data for %d yet: add shared/data/calendar/vn-%d.toml "
                        "when the year's swaps are announced", year, year)

    async def watch(self, interval: float = 30.0) -> None:
        while True:
            await asyncio.sleep(interval)
            self.refresh()


class ReferenceCollector(Collector):
    """The versions in force and whether next year's calendar is missing, for the dashboards and an alert."""

    def __init__(self, source: ReferenceSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        reference = self.source.current
        info = InfoMetricFamily("tthc_reference_data", "Versions of the reference data in force")
        info.add_metric([], {"calendar": reference.calendar.version, "procedures": reference.catalog.procedures_version,
                             "units": reference.catalog.units_version})
        missing = GaugeMetricFamily("tthc_calendar_next_year_missing",
                                    "1 while next year has no complete working-calendar data")
        missing.add_metric([], 1.0 if reference.calendar.missing_next_year(datetime.now(VN).date()) else 0.0)
        yield from (info, missing)
