"""Metrics' pure core: open dossiers flipping on their timers, and the national label budget."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from services.metrics.series import ExportedState, Totals
from services.metrics.tally import RATIO_BUCKETS, CounterKey, tally
from services.metrics.tracker import OPEN_STATES, OpenDossiers, state_at
from shared.catalog import Catalog
from shared.contract.events import EventType
from shared.contract.lifecycle import DossierLifecycleEvent, DossierState, Timeliness

pytestmark = pytest.mark.unit
PLACE = ("24", "10000", "ho_tich")
T0 = 1_800_000_000.0


def states(tracker: OpenDossiers) -> dict[str, int]:
    return {state: count for (_, _, state), count in tracker.by_unit.items() if count}


def test_a_running_dossier_turns_due_soon_then_overdue_at_its_instants_with_no_event() -> None:
    tracker = OpenDossiers()
    tracker.put("A", 0, PLACE, "running", T0, due_soon=T0 + 100, due=T0 + 200, now=T0)
    assert states(tracker) == {"on_track": 1}
    assert tracker.next_instant() == T0 + 100

    assert tracker.advance(T0 + 99.9).count == 0
    flips = tracker.advance(T0 + 100)
    assert (flips.count, flips.earliest) == (1, T0 + 100)
    assert states(tracker) == {"due_soon": 1}

    tracker.advance(T0 + 200)  # overdue is strictly after the due instant
    assert states(tracker) == {"due_soon": 1}
    tracker.advance(T0 + 200.001)
    assert states(tracker) == {"overdue": 1}
    assert tracker.next_instant() is None


def test_a_new_event_re_arms_and_the_old_timer_is_ignored() -> None:
    tracker = OpenDossiers()
    tracker.put("A", 0, PLACE, "running", T0, due_soon=T0 + 100, due=T0 + 200, now=T0)
    tracker.put("A", 0, PLACE, "paused", T0, due_soon=T0 + 100, due=T0 + 200, now=T0 + 50)
    assert tracker.advance(T0 + 1000).count == 0
    assert states(tracker) == {"paused": 1}
    tracker.put("A", 0, PLACE, "running", T0, due_soon=T0 + 1100, due=T0 + 1200, now=T0 + 1000)
    assert states(tracker) == {"on_track": 1}
    tracker.advance(T0 + 1300)
    assert states(tracker) == {"overdue": 1}
    tracker.remove("A")
    assert states(tracker) == {}
    assert len(tracker) == 0


def test_counts_by_unit_and_sector_always_sum_to_the_open_dossiers() -> None:
    rng = random.Random(7)
    tracker = OpenDossiers()
    places = [("24", f"1000{u}", sector) for u in range(5) for sector in ("ho_tich", "dat_dai", "chung_thuc")]
    now = T0
    for step in range(3000):
        code = f"D{rng.randrange(400)}"
        now += rng.uniform(0, 5)
        if rng.random() < 0.15:
            tracker.remove(code)
        else:
            kind = rng.choice(["running", "running", "paused", "awaiting_supplement"])
            soon = now + rng.uniform(-50, 300)
            tracker.put(code, rng.randrange(3), rng.choice(places), kind, now, soon, soon + rng.uniform(0, 300), now)
        if step % 7 == 0:
            tracker.advance(now)
    tracker.advance(now)
    assert sum(tracker.by_unit.values()) == sum(tracker.by_sector.values()) == len(tracker)
    assert all(count >= 0 for count in tracker.by_unit.values())
    # The timers left nothing for the safety net to correct.
    assert tracker.sweep(tracker.codes(), now) == 0
    tracker.drop_partitions([0, 1])
    assert sum(tracker.by_unit.values()) == len(tracker)


def test_the_sweep_corrects_a_state_no_timer_will_fix_and_leaves_due_timers_to_fire() -> None:
    tracker = OpenDossiers()
    # The wall clock stepped back after the dossier was judged overdue: no timer is armed to undo that.
    tracker.put("A", 0, PLACE, "running", T0, due_soon=T0 + 10, due=T0 + 20, now=T0 + 30)
    assert states(tracker) == {"overdue": 1}
    assert tracker.sweep(["A"], T0) == 1
    assert states(tracker) == {"on_track": 1}
    # A timer already due is the next advance's to fire, not a miss.
    assert tracker.sweep(["A"], T0 + 15) == 0
    assert tracker.advance(T0 + 15).count == 1
    assert states(tracker) == {"due_soon": 1}


def test_oldest_open_dossier_per_unit_skips_closed_ones() -> None:
    tracker = OpenDossiers()
    tracker.put("OLD", 0, PLACE, "running", T0, None, None, T0 + 50)
    tracker.put("NEW", 0, PLACE, "running", T0 + 40, None, None, T0 + 50)
    assert tracker.oldest_received() == {("24", "10000"): T0}
    tracker.remove("OLD")
    assert tracker.oldest_received() == {("24", "10000"): T0 + 40}


def test_state_at_matches_the_dossier_rules() -> None:
    assert state_at("awaiting_supplement", T0, T0, T0 + 10) == "awaiting_supplement"
    assert state_at("paused", T0, T0, T0 + 10) == "paused"
    assert state_at("running", None, None, T0) == "on_track"


def test_a_partition_leaving_takes_exactly_its_counts_away() -> None:
    totals = Totals(lambda unit: "24")
    totals.add(("received", 0, "10000", "ho_tich", "online", ""), 3)
    totals.add(("received", 1, "10000", "ho_tich", "online", ""), 2)
    assert totals.series[("received", "24", "10000", "online")] == 5
    assert totals.series[("sector_received", "24", "ho_tich", "online")] == 5
    totals.drop_partitions([0])
    assert totals.series[("received", "24", "10000", "online")] == 2
    totals.drop_partitions([1])
    assert totals.series == {}  # a partition gone leaves no zero-valued series behind


def test_a_partition_whose_counters_add_nothing_to_a_series_leaves_cleanly() -> None:
    """A dossier completed having used none of its time adds 0.0 to its ratio sum: once the other keys are
    dropped the series is gone, and dropping that key too must not fail (it failed a rebalance once)."""
    totals = Totals(lambda unit: "24")
    totals.add(("time_used_sum", 0, "10000", "ho_tich", "online", ""), 0.5)
    totals.add(("time_used_sum", 0, "10001", "ho_tich", "online", ""), 0.0)
    totals.add(("time_used_sum", 1, "10002", "ho_tich", "online", ""), 0.25)
    assert totals.series == {("ratio_sum", "24", "ho_tich"): 0.75}
    totals.drop_partitions([0])
    assert totals.series == {("ratio_sum", "24", "ho_tich"): 0.25}
    totals.add(("time_used_sum", 2, "10003", "ho_tich", "online", ""), 0.0)
    totals.drop_partitions([1, 2])
    assert totals.series == {}


def test_a_whole_country_stays_under_the_series_budget() -> None:
    """About 3,400 communes in 34 provinces, every sector in the catalog plus room for more, every channel,
    state, timeliness and apology timing in use: the exported series stay under 200k."""
    sectors = sorted({procedure.sector for procedure in Catalog.load().procedures.values()})
    sectors += [f"sector_{n}" for n in range(40 - len(sectors))]
    units = [(f"{p:02d}", f"{p:02d}{u:03d}") for p in range(34) for u in range(100)]
    province = dict((unit, prov) for prov, unit in units)
    totals = Totals(lambda unit: province[unit])
    tracker = OpenDossiers()
    for n, (_, unit) in enumerate(units):
        sector = sectors[n % len(sectors)]  # each province's 100 communes between them use every sector
        for channel in ("online", "direct"):
            for family, labels in (("received", [""]), ("completed", ["early", "on_time", "late"]),
                                   ("supplements", [""]), ("apologies", ["in_time", "late"]),
                                   ("steps", ["early", "on_time", "late"]), ("time_used_sum", [""]),
                                   ("time_used_in_bucket", ["0.25", "0.5", "0.75", "0.9", "1.0", "1.25", "1.5", "2.0",
                                                         "3.0", "+Inf"])):
                for label in labels:
                    totals.add((family, n % 12, unit, sector, channel, label), 1)
        for kind, due in (("running", T0 - 1), ("running", T0 + 10), ("running", T0 + 10_000), ("paused", None),
                          ("awaiting_supplement", None)):
            soon = due - 100 if due else None
            tracker.put(f"{unit}-{kind}-{due}", 0, (province[unit], unit, sector), kind, T0, soon, due, T0)
    assert {state for (_, _, state) in tracker.by_unit} == set(OPEN_STATES)
    registry = CollectorRegistry()
    for collector in ExportedState(totals, tracker, lambda: T0).families():
        registry.register(collector)
    samples = [sample for family in registry.collect() for sample in family.samples]
    assert len({sample.labels["unit"] for sample in samples if "unit" in sample.labels}) == len(units)
    assert 60_000 < len(samples) < 200_000
    assert not any("code" in sample.labels for sample in samples)


def test_a_restricted_export_builds_only_the_families_asked_for() -> None:
    """The end-to-end benchmark's probe reads one counter twenty times a second: asking for it must not build
    the open-dossier gauges (or any other family) each time."""
    totals = Totals(lambda unit: unit[:2])
    totals.add(("received", 0, "01001", "ho_tich", "online", ""), 3)
    tracker = OpenDossiers()
    tracker.put("D1", 0, ("01", "01001", "ho_tich"), "running", T0, T0 + 50, T0 + 100, T0)
    families = ExportedState(totals, tracker, lambda: T0).families()

    def not_asked_for() -> dict[tuple[str, str], float]:
        raise AssertionError("the oldest-open gauge was built for an export that did not ask for it")

    tracker.oldest_received = not_asked_for  # type: ignore[method-assign]
    written = "".join(family.exposition({"tthc_dossiers_received_total"}) for family in families)
    assert written.splitlines()[2:] == [
        'tthc_dossiers_received_total{channel="online",province="01",unit="01001"} 3.0']
    with pytest.raises(AssertionError, match="oldest-open gauge"):
        "".join(family.exposition() for family in families)


def test_every_family_writes_the_text_prometheus_client_would() -> None:
    """/metrics writes metrics' families itself; prometheus_client's generate_latest over the same samples is
    the reference, whole and restricted to some sample names, label values needing escapes included."""
    totals = Totals(lambda unit: "24" if unit != 'odd"\\unit' else 'x\n"y')
    for n, unit in enumerate(["10000", "10001", 'odd"\\unit']):
        totals.add(("received", n % 3, unit, "ho_tich", "online", ""), 1 + n)
        totals.add(("completed", 0, unit, "dat_dai", "direct", "late"), 2)
        totals.add(("time_used_in_bucket", 1, unit, "ho_tich", "online", "0.5"), 1)
        totals.add(("time_used_in_bucket", 1, unit, "ho_tich", "online", "+Inf"), 1_234_567)
        totals.add(("time_used_sum", 1, unit, "ho_tich", "online", ""), 0.4)
        totals.add(("apologies", 2, unit, "ho_tich", "online", "late"), 1)
    tracker = OpenDossiers()
    tracker.put("D1", 0, ("24", "10000", "ho_tich"), "running", T0, T0 + 50, T0 + 100, T0)
    tracker.put("D2", 0, ("24", "10001", "ho_tich"), "paused", T0 + 5, None, None, T0)
    state = ExportedState(totals, tracker, lambda: T0 + 30)
    state.rejections = {("intake", "schema"): 4.0}
    families = state.families()
    for wanted in (None, {"tthc_dossiers_received_total", "tthc_working_time_used_ratio_sum",
                          "tthc_consumer_lag", "tthc_dossiers_open"}):
        for family in families:
            registry = CollectorRegistry()
            registry.register(family)
            reference = generate_latest(registry.restricted_registry(wanted) if wanted else registry).decode()
            assert family.exposition(wanted) == reference, family.name
    written = "".join(family.exposition() for family in families)
    assert 'tthc_supplement_requests_total' in written  # an empty family still says what it is
    assert 'province="x\\n\\"y",unit="odd\\"\\\\unit"' in written


def completion(ratio: float, n: int) -> DossierLifecycleEvent:
    at = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)
    code = f"000.00.24.10000-260302-{n:04d}"
    return DossierLifecycleEvent(
        id=f"{code}:5", dossier_code=code, sequence=5, event_type=EventType.RESOLVED, occurred_at=at,
        recorded_at=at, source="urn:test", source_event_id=f"e{n}", procedure_code="1.001193", unit_code="10000",
        sector="ho_tich", channel="online", state=DossierState.RESOLVED, status_code=10,
        received_at=at - timedelta(days=3), legal_due_at=at, appointment_at=at, calendar_version="c",
        policy_version="p",
        timeliness=Timeliness.LATE if ratio > 1 else Timeliness.ON_TIME, time_used_ratio=ratio)


def test_each_completion_is_stored_in_one_bucket_and_exported_in_every_bucket_at_or_above_its_ratio() -> None:
    ratios = [0.0, 0.1, 0.25, 0.26, 0.9, 1.0, 1.0, 1.01, 2.5, 3.0, 3.01, 40.0]
    stored: dict[CounterKey, float] = {}
    for n, ratio in enumerate(ratios):
        tally(completion(ratio, n), 0, stored)
    in_buckets = {key[5]: value for key, value in stored.items() if key[0] == "time_used_in_bucket"}
    assert in_buckets == {"0.25": 3, "0.5": 1, "0.9": 1, "1.0": 2, "1.25": 1, "3.0": 2, "+Inf": 2}
    assert sum(in_buckets.values()) == len(ratios)  # one row per completion, not one per bound above it

    totals = Totals(lambda unit: "24")
    for key, value in stored.items():
        totals.add(key, value)
    registry = CollectorRegistry()
    for collector in ExportedState(totals, OpenDossiers(), lambda: T0).families():
        registry.register(collector)
    [histogram] = [family for family in registry.collect() if family.name == "tthc_working_time_used_ratio"]
    buckets = {sample.labels["le"]: sample.value for sample in histogram.samples if sample.name.endswith("_bucket")}
    assert buckets == {**{str(bound): float(sum(r <= bound for r in ratios)) for bound in RATIO_BUCKETS},
                       "+Inf": float(len(ratios))}
    [count] = [sample.value for sample in histogram.samples if sample.name.endswith("_count")]
    [total] = [sample.value for sample in histogram.samples if sample.name.endswith("_sum")]
    assert count == len(ratios)
    assert total == pytest.approx(sum(ratios))
