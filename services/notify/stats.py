"""Notify's Prometheus families read from its schema at scrape time (a custom collector), so a restart or a
second instance exports the same values. Labels are bounded: unit, channel, status, rating; never a dossier."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from services.notify.guard import BreakerState

SCHEMA = "notify"
DELIVERIES = "tthc_notification_deliveries"
SURVEYS = "tthc_satisfaction_surveys"
ANSWERS = "tthc_satisfaction_answers"
READ_FROM_THE_SCHEMA = frozenset({DELIVERIES, f"{SURVEYS}_total", f"{ANSWERS}_total"})
"""The samples a scrape must read the schema for; the circuits' state is the process's own."""


class Snapshot:
    def __init__(self) -> None:
        self.deliveries: dict[tuple[str, str], int] = {}
        self.invited: dict[str, int] = {}
        self.answers: dict[tuple[str, str], int] = {}


COMPACT_ABOVE = 1_000
"""Rows of a counts table beyond which a scrape folds it into one row per key."""


async def read(conn: Any) -> Snapshot:
    """The counts as of now, from the tables the triggers of migration 0007 keep; a scrape that finds many
    rows per key folds them. Deleting exactly the rows read and inserting their sums is safe alongside writers
    and another instance doing the same: each only ever removes rows it saw, and adds back what they held."""
    snapshot = Snapshot()
    # Every key's rows, those summing to zero too: they count towards folding, though not exported.
    deliveries = await conn.fetch(f"SELECT channel, status, sum(n) AS n, count(*) AS parts "
                                  f"FROM {SCHEMA}.delivery_counts GROUP BY 1, 2")
    snapshot.deliveries = {(r["channel"], r["status"]): int(r["n"]) for r in deliveries if r["n"]}
    surveys = await conn.fetch(f"SELECT unit_code, rating, sum(n) AS n, count(*) AS parts "
                               f"FROM {SCHEMA}.survey_counts GROUP BY 1, 2")
    for r in surveys:
        if not r["n"]:
            continue
        if r["rating"] is None:
            snapshot.invited[r["unit_code"]] = int(r["n"])
        else:
            snapshot.answers[(r["unit_code"], r["rating"])] = int(r["n"])
    if sum(r["parts"] for r in deliveries) > COMPACT_ABOVE:
        await compact(conn, "delivery_counts", "channel, status")
    if sum(r["parts"] for r in surveys) > COMPACT_ABOVE:
        await compact(conn, "survey_counts", "unit_code, rating")
    return snapshot


async def compact(conn: Any, table: str, key: str) -> None:
    await conn.execute(f"WITH gone AS (DELETE FROM {SCHEMA}.{table} RETURNING {key}, n) "
                       f"INSERT INTO {SCHEMA}.{table} SELECT {key}, sum(n) FROM gone GROUP BY {key} "
                       "HAVING sum(n) <> 0")


class NotifyCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot], breakers: Callable[[], Mapping[str, BreakerState]]) -> None:
        self.snapshot = snapshot
        self.breakers = breakers

    def collect(self) -> Iterator[Any]:
        snapshot = self.snapshot()
        deliveries = GaugeMetricFamily(DELIVERIES,
                                       "Messages owed to citizens, by channel and current delivery status",
                                       labels=["channel", "status"])
        for (channel, status), count in sorted(snapshot.deliveries.items()):
            deliveries.add_metric([channel, status], count)
        invited = CounterMetricFamily(SURVEYS,
                                      "Satisfaction surveys offered (dossiers whose result was returned)",
                                      labels=["unit"])
        for unit, count in sorted(snapshot.invited.items()):
            invited.add_metric([unit], count)
        answers = CounterMetricFamily(ANSWERS,
                                      "Satisfaction survey answers (Decision 766 group 6), by unit and rating",
                                      labels=["unit", "rating"])
        for (unit, rating), count in sorted(snapshot.answers.items()):
            answers.add_metric([unit, rating], count)
        circuit = GaugeMetricFamily("tthc_notify_provider_circuit_open",
                                    "1 while notify leaves a failing provider alone (circuit open or half-open)",
                                    labels=["channel"])
        for channel, state in sorted(self.breakers().items()):
            circuit.add_metric([channel], 0 if state is BreakerState.CLOSED else 1)
        yield from (deliveries, invited, answers, circuit)
