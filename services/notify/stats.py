"""Notify's Prometheus families read from its schema at scrape time (a custom collector), so a restart or a
second instance exports the same values. Labels are bounded: unit, channel, status, rating; never a dossier."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from services.notify.guard import BreakerState

SCHEMA = "notify"


class Snapshot:
    def __init__(self) -> None:
        self.deliveries: dict[tuple[str, str], int] = {}
        self.invited: dict[str, int] = {}
        self.answers: dict[tuple[str, str], int] = {}


async def read(conn: Any) -> Snapshot:
    snapshot = Snapshot()
    rows = await conn.fetch(f"SELECT channel, status, count(*) AS n FROM {SCHEMA}.deliveries GROUP BY 1, 2")
    snapshot.deliveries = {(r["channel"], r["status"]): int(r["n"]) for r in rows}
    rows = await conn.fetch(f"SELECT unit_code, rating, count(*) AS n FROM {SCHEMA}.surveys GROUP BY 1, 2")
    for r in rows:
        snapshot.invited[r["unit_code"]] = snapshot.invited.get(r["unit_code"], 0) + int(r["n"])
        if r["rating"] is not None:
            snapshot.answers[(r["unit_code"], r["rating"])] = int(r["n"])
    return snapshot


class NotifyCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot], breakers: Callable[[], Mapping[str, BreakerState]]) -> None:
        self.snapshot = snapshot
        self.breakers = breakers

    def collect(self) -> Iterator[Any]:
        snapshot = self.snapshot()
        deliveries = GaugeMetricFamily("tthc_notification_deliveries",
                                       "Messages owed to citizens, by channel and current delivery status",
                                       labels=["channel", "status"])
        for (channel, status), count in sorted(snapshot.deliveries.items()):
            deliveries.add_metric([channel, status], count)
        invited = CounterMetricFamily("tthc_satisfaction_surveys",
                                      "Satisfaction surveys offered (dossiers whose result was returned)",
                                      labels=["unit"])
        for unit, count in sorted(snapshot.invited.items()):
            invited.add_metric([unit], count)
        answers = CounterMetricFamily("tthc_satisfaction_answers",
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
