"""What the metrics service exports, and the label budget that keeps it national-scale.

Stored counters are fine-grained (unit × sector × channel per partition); the exported series are not: per
unit, the series carry no sector, and the sector breakdown is per province. With about 3,400 units in 34
provinces that is about 20 series per unit and 22 per province and sector, under 100k nationally where
unit × sector × channel × state would pass 2M.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping
from functools import partial
from itertools import accumulate
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from services.metrics.tally import BUCKET_LABELS, CounterKey
from services.metrics.tracker import OpenDossiers

SeriesKey = tuple[str, ...]
"""(series family, *label values)."""
Labels = tuple[str, ...]
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


def series_of(key: CounterKey, province_of: ProvinceOf) -> tuple[tuple[str, Labels], ...]:
    """The exported series one stored counter adds to, as (series family, label values)."""
    family, _part, unit, sector, channel, label = key
    province = province_of(unit)
    if family == "received":
        return ("received", (province, unit, channel)), ("sector_received", (province, sector, channel))
    if family == "completed":
        return ("completed", (province, unit, channel, label)), ("sector_completed", (province, sector, label))
    if family == "time_used_in_bucket":
        return (("ratio_bucket", (province, sector, label)),)
    if family == "time_used_sum":
        return (("ratio_sum", (province, sector)),)
    if family == "supplements":
        return (("supplements", (province, unit)),)
    if family in ("apologies", "steps"):
        return ((family, (province, unit, label)),)
    return ()


class Totals:
    """Exported counter values for the partitions this instance owns, kept per partition so that a partition
    leaving (rebalance) takes exactly its share away, and per series family, so that exporting one family
    reads only its own series."""

    def __init__(self, province_of: ProvinceOf) -> None:
        self._province_of = province_of
        self._by_part: dict[int, dict[CounterKey, float]] = defaultdict(dict)
        self._mapping: dict[CounterKey, tuple[tuple[str, Labels], ...]] = {}
        self._families: dict[str, dict[Labels, float]] = defaultdict(dict)

    def add(self, key: CounterKey, value: float) -> None:
        stored = self._by_part[key[1]]
        stored[key] = stored.get(key, 0.0) + value
        series = self._mapping.get(key)
        if series is None:
            series = self._mapping[key] = series_of(key, self._province_of)
        for name, labels in series:
            family = self._families[name]
            family[labels] = family.get(labels, 0.0) + value

    def drop_partitions(self, parts: Iterable[int]) -> None:
        for part in parts:
            for key, value in self._by_part.pop(part, {}).items():
                for name, labels in self._mapping.pop(key, ()):
                    family = self._families[name]
                    # Gone already if the keys still adding to it add nothing (a ratio sum of 0.0).
                    remaining = family.get(labels, 0.0) - value
                    if remaining == 0:
                        # Nothing this instance owns adds to it any more: the series is the new owner's to
                        # export (counts are whole numbers and the ratio sums of completed dossiers positive).
                        family.pop(labels, None)
                    else:
                        family[labels] = remaining

    def family(self, name: str) -> dict[Labels, float]:
        """One series family's values by label values (empty if none)."""
        return self._families.get(name, {})

    @property
    def series(self) -> dict[SeriesKey, float]:
        """Every series, keyed by (family, *label values): a copy, for checks."""
        return {(name, *labels): value for name, family in self._families.items() for labels, value in family.items()}


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

    def families(self) -> list[Family]:
        """One collector per family, each naming its family up front, so that a restricted export
        (`/metrics?name[]=...`) builds only the families asked for: a watcher polling one counter many times a
        second must not pay for every series of the country each time."""
        counters = [Family("counter", metric, help_text, labels, partial(self.totals.family, name))
                    for name, (metric, help_text, labels) in COUNTER_FAMILIES.items()]
        return [
            *counters,
            Family("histogram", "tthc_working_time_used_ratio", "Working time used relative to the legal time, at "
                   "completion, per province and sector", ["province", "sector"], self._ratio_rows),
            Family("gauge", "tthc_dossiers_open", "Open dossiers by state", ["province", "unit", "state"],
                   lambda: self.tracker.by_unit),
            Family("gauge", "tthc_sector_dossiers_open", "Open dossiers per province and sector, by state",
                   ["province", "sector", "state"], lambda: self.tracker.by_sector),
            Family("gauge", "tthc_oldest_open_dossier_age_seconds", "Age of each unit's oldest open dossier",
                   ["province", "unit"], self._oldest_rows),
            Family("counter", "tthc_rejections", "Inputs refused, by stage and reason", ["stage", "reason"],
                   lambda: self.rejections),
            Family("gauge", "tthc_metrics_partitions_owned", "Partitions this metrics instance counts", ["topic"],
                   lambda: {(topic,): len(parts) for topic, parts in self.owned.items()}),
            Family("gauge", "tthc_consumer_lag", "Records each service's consumer group has yet to commit",
                   ["group", "topic"], lambda: self.lag),
        ]

    def _ratio_rows(self) -> dict[Labels, tuple[list[tuple[str, float]], float]]:
        """Each group's cumulative buckets, added up from the completions counted in each bucket alone."""
        buckets: dict[Labels, dict[str, float]] = defaultdict(dict)
        for (province, sector, bound), value in self.totals.family("ratio_bucket").items():
            buckets[(province, sector)][bound] = value
        sums = self.totals.family("ratio_sum")
        return {group: (list(zip(BUCKET_LABELS, accumulate(by_bound.get(label, 0.0) for label in BUCKET_LABELS),
                                 strict=True)), sums.get(group, 0.0))
                for group, by_bound in buckets.items()}

    def _oldest_rows(self) -> dict[Labels, float]:
        now = self.now()
        return {province_unit: max(0.0, now - received)
                for province_unit, received in self.tracker.oldest_received().items()}


go_float: Callable[[float], str] = floatToGoString
"""A sample's value as Prometheus writes it (Go's float formatting)."""
SAMPLE_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}
MAKERS: dict[str, Callable[..., Metric]] = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
                                            "histogram": HistogramMetricFamily}


class Family(Collector):
    """One metric family, described by name without its samples and built only when asked for. /metrics renders
    it straight to the text format (`exposition`): prometheus_client spends ~15 µs formatting each sample,
    4.5 ms for the 300 series of the benchmark's received counter, which its probe reads twenty times a second,
    and the country has 100k series. `collect` gives the same samples through prometheus_client. `rows` gives
    label values -> value (a histogram's value: its (bound, cumulative count) buckets and its sum)."""

    def __init__(self, kind: str, name: str, help_text: str, labels: list[str],
                 rows: Callable[[], Mapping[Any, Any]]) -> None:
        self.kind = kind
        self.name = name
        self.help_text = help_text
        self.labels = labels
        self.rows = rows
        self.sample_names = frozenset(name + suffix for suffix in SAMPLE_SUFFIXES[kind])
        self._exported = name + "_total" if kind == "counter" else name
        escaped_help = help_text.replace("\\", "\\\\").replace("\n", "\\n")
        self._header = f"# HELP {self._exported} {escaped_help}\n# TYPE {self._exported} {kind}\n"
        self._label_texts: dict[Labels, str] = {}

    def _empty(self) -> Metric:
        return MAKERS[self.kind](self.name, self.help_text, labels=self.labels)

    def describe(self) -> list[Metric]:
        return [self._empty()]

    def collect(self) -> list[Metric]:
        family: Any = self._empty()
        for labels, value in sorted(self.rows().items()):
            if self.kind == "histogram":
                family.add_metric(list(labels), *value)
            else:
                family.add_metric(list(labels), value)
        return [family]

    def exposition(self, wanted: Collection[str] | None = None) -> str:
        """The family in the Prometheus text format, as prometheus_client's generate_latest writes it; only the
        samples named in `wanted` if given, and nothing if none of them is."""
        names = self.sample_names if wanted is None else self.sample_names.intersection(wanted)
        if not names:
            return ""
        rows = sorted(self.rows().items())
        if self.kind == "histogram":
            lines = self._histogram_lines(rows, names)
        else:
            lines = [f"{self._exported}{self._label_text(labels)} {go_float(value)}\n" for labels, value in rows]
        # Restricted to samples there are none of: prometheus_client leaves the family out, header and all.
        return self._header + "".join(lines) if lines or wanted is None else ""

    def _histogram_lines(self, rows: list[tuple[Labels, Any]], names: Collection[str]) -> list[str]:
        lines: list[str] = []
        bucket, count, total_sum = (self.name + suffix in names for suffix in SAMPLE_SUFFIXES["histogram"])
        for labels, (buckets, total) in rows:
            if bucket:
                lines += [f"{self.name}_bucket{self._label_text((*labels, bound), le=True)} {go_float(value)}\n"
                          for bound, value in buckets]
            if count:
                lines.append(f"{self.name}_count{self._label_text(labels)} {go_float(buckets[-1][1])}\n")
            if total_sum:
                lines.append(f"{self.name}_sum{self._label_text(labels)} {go_float(total)}\n")
        return lines

    def _label_text(self, values: Labels, *, le: bool = False) -> str:
        """`{name="value",...}` with the names in alphabetical order, as prometheus_client writes them; made once
        per series."""
        text = self._label_texts.get(values)
        if text is None:
            names = [*self.labels, "le"] if le else self.labels
            pairs = sorted(zip(names, values, strict=True))
            text = self._label_texts[values] = "{" + ",".join(f'{name}="{_escaped(value)}"'
                                                              for name, value in pairs) + "}"
        return text


def _escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
