"""What the metrics service exports, and the label budget that keeps it national-scale.

Stored counters are fine-grained (unit × sector × channel per partition); the exported series are not: per
unit, the series carry no sector, and the sector breakdown is per province. With about 3,400 units in 34
provinces that is about 20 series per unit and 22 per province and sector, under 100k nationally where
unit × sector × channel × state would pass 2M.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Iterable
from functools import partial
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from services.metrics.tally import RATIO_BUCKETS, CounterKey
from services.metrics.tracker import OpenDossiers

SeriesKey = tuple[str, ...]
"""(series family, *label values)."""
ProvinceOf = Callable[[str], str]

COUNTER_FAMILIES: dict[str, tuple[str, str, list[str]]] = {
    "received": ("tthc_dossiers_received", "Dossiers received", ["province", "unit", "channel"]),
    "completed": ("tthc_dossiers_completed", "Dossiers completed, by timeliness",
                  ["province", "unit", "channel", "timeliness"]),
    "sector_received": ("tthc_sector_dossiers_received", "Dossiers received, per province and sector",
                        ["province", "sector", "channel"]),
    "sector_completed": ("tthc_sector_dossiers_completed", "Dossiers completed per province and sector, by "
                         "timeliness", ["province", "sector", "timeliness"]),
    "supplements": ("tthc_supplement_requests", "Supplement requests", ["province", "unit"]),
    "apologies": ("tthc_apologies", "Apologies issued, late when less than a working day before the due instant",
                  ["province", "unit", "timing"]),
    "steps": ("tthc_interagency_steps_completed", "Liên thông steps completed by the unit that handled them, "
              "by timeliness", ["province", "unit", "timeliness"]),
}


def series_of(key: CounterKey, province_of: ProvinceOf) -> tuple[SeriesKey, ...]:
    """The exported series one stored counter adds to."""
    family, _part, unit, sector, channel, label = key
    province = province_of(unit)
    if family == "received":
        return ("received", province, unit, channel), ("sector_received", province, sector, channel)
    if family == "completed":
        return ("completed", province, unit, channel, label), ("sector_completed", province, sector, label)
    if family == "time_used_bucket":
        return (("ratio_bucket", province, sector, label),)
    if family == "time_used_sum":
        return (("ratio_sum", province, sector),)
    if family == "supplements":
        return (("supplements", province, unit),)
    if family in ("apologies", "steps"):
        return ((family, province, unit, label),)
    return ()


class Totals:
    """Exported counter values for the partitions this instance owns, kept per partition so that a partition
    leaving (rebalance) takes exactly its share away."""

    def __init__(self, province_of: ProvinceOf) -> None:
        self._province_of = province_of
        self._by_part: dict[int, dict[CounterKey, float]] = defaultdict(dict)
        self._mapping: dict[CounterKey, tuple[SeriesKey, ...]] = {}
        self.series: dict[SeriesKey, float] = defaultdict(float)

    def add(self, key: CounterKey, value: float) -> None:
        stored = self._by_part[key[1]]
        stored[key] = stored.get(key, 0.0) + value
        series = self._mapping.get(key)
        if series is None:
            series = self._mapping[key] = series_of(key, self._province_of)
        for name in series:
            self.series[name] += value

    def drop_partitions(self, parts: Iterable[int]) -> None:
        for part in parts:
            for key, value in self._by_part.pop(part, {}).items():
                for name in self._mapping.pop(key, ()):
                    self.series[name] -= value
                    if self.series[name] == 0:
                        # Nothing this instance owns adds to it any more: the series is the new owner's to
                        # export (counts are whole numbers and the ratio sums of completed dossiers positive).
                        del self.series[name]


class ExportedState:
    """What the custom collectors export: counters from `Totals`, open dossiers from the tracker, rejections as
    loaded, partitions owned and consumer lag."""

    def __init__(self, totals: Totals, tracker: OpenDossiers, now: Callable[[], float]) -> None:
        self.totals = totals
        self.tracker = tracker
        self.now = now
        self.rejections: dict[tuple[str, str], float] = {}
        self.owned: dict[str, Collection[int]] = {}
        """topic -> partitions owned, exported so that dashboards can see the split between instances."""
        self.lag: dict[tuple[str, str], int] = {}

    def collectors(self) -> list[Collector]:
        """One collector per family, each naming its family up front, so that a restricted export
        (`/metrics?name[]=...`) builds only the families asked for: a watcher polling one counter many times a
        second must not pay for every series of the country each time."""
        counters = [_Family(partial(CounterMetricFamily, metric, help_text, labels=labels),
                            partial(self._fill_counter, name))
                    for name, (metric, help_text, labels) in COUNTER_FAMILIES.items()]
        return [
            *counters,
            _Family(partial(HistogramMetricFamily, "tthc_working_time_used_ratio", "Working time used relative to "
                            "the legal time, at completion, per province and sector", labels=["province", "sector"]),
                    self._fill_ratio),
            _Family(partial(GaugeMetricFamily, "tthc_dossiers_open", "Open dossiers by state",
                            labels=["province", "unit", "state"]),
                    lambda family: _fill(family, self.tracker.by_unit.items())),
            _Family(partial(GaugeMetricFamily, "tthc_sector_dossiers_open", "Open dossiers per province and sector, "
                            "by state", labels=["province", "sector", "state"]),
                    lambda family: _fill(family, self.tracker.by_sector.items())),
            _Family(partial(GaugeMetricFamily, "tthc_oldest_open_dossier_age_seconds",
                            "Age of each unit's oldest open dossier", labels=["province", "unit"]),
                    self._fill_oldest),
            _Family(partial(CounterMetricFamily, "tthc_rejections", "Inputs refused, by stage and reason",
                            labels=["stage", "reason"]),
                    lambda family: _fill(family, self.rejections.items())),
            _Family(partial(GaugeMetricFamily, "tthc_metrics_partitions_owned",
                            "Partitions this metrics instance counts", labels=["topic"]),
                    lambda family: _fill(family, (((topic,), len(parts)) for topic, parts in self.owned.items()))),
            _Family(partial(GaugeMetricFamily, "tthc_consumer_lag",
                            "Records each service's consumer group has yet to commit", labels=["group", "topic"]),
                    lambda family: _fill(family, self.lag.items())),
        ]

    def _fill_counter(self, name: str, family: Any) -> None:
        _fill(family, ((tuple(labels), value) for (series, *labels), value in self.totals.series.items()
                       if series == name))

    def _fill_ratio(self, family: Any) -> None:
        buckets: dict[tuple[str, ...], dict[str, float]] = defaultdict(dict)
        sums: dict[tuple[str, ...], float] = defaultdict(float)
        for (name, *labels), value in self.totals.series.items():
            if name == "ratio_bucket":
                buckets[tuple(labels[:2])][labels[2]] = value
            elif name == "ratio_sum":
                sums[tuple(labels)] = value
        for group, by_bound in sorted(buckets.items()):
            ordered = [(str(bound), by_bound.get(str(bound), 0.0)) for bound in RATIO_BUCKETS]
            ordered.append(("+Inf", by_bound.get("+Inf", 0.0)))
            family.add_metric(list(group), ordered, sums[group])

    def _fill_oldest(self, family: Any) -> None:
        now = self.now()
        _fill(family, ((province_unit, max(0.0, now - received))
                       for province_unit, received in self.tracker.oldest_received().items()))


def _fill(family: Any, values: Iterable[tuple[tuple[str, ...], float]]) -> None:
    for labels, value in sorted(values):
        family.add_metric(list(labels), value)


class _Family(Collector):
    """One metric family: described by name without its samples, built in full only when collected."""

    def __init__(self, make: Callable[[], Metric], fill: Callable[[Any], None]) -> None:
        self._make = make
        self._fill = fill

    def describe(self) -> list[Metric]:
        return [self._make()]

    def collect(self) -> list[Metric]:
        family = self._make()
        self._fill(family)
        return [family]
