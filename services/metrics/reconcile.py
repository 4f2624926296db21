"""`tthc reconcile`: metrics' numbers against resolution's ground truth, every difference named.

Three comparisons, each exact: every dossier's progress in metrics against its state in resolution (same last
sequence, open or closed, timeliness); metrics' stored counters against totals recounted from resolution's
dossiers; and optionally what live metrics instances export (summed over instances) against the same totals.
Run it when traffic is quiet: an event still on its way shows as a difference until it lands.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from shared.contract.lifecycle import DossierState
from shared.dossier import OPEN

Totals = Counter[tuple[str, ...]]
"""("received", unit, channel) / ("completed", unit, timeliness) / ("open", unit) -> dossiers."""


@dataclass(frozen=True)
class Difference:
    what: str
    key: str
    truth: object
    metrics: object


async def _truth(conn: asyncpg.Connection) -> tuple[dict[str, tuple[int, bool, str | None]], Totals]:
    rows = await conn.fetch(
        "SELECT code, unit_code, state, (snapshot->>'sequence')::int AS sequence, snapshot->>'channel' AS channel, "
        "snapshot->>'timeliness' AS timeliness, snapshot->>'completed_at' IS NOT NULL AS completed "
        "FROM resolution.dossiers")
    dossiers: dict[str, tuple[int, bool, str | None]] = {}
    totals: Totals = Counter()
    for row in rows:
        is_open = DossierState(row["state"]) in OPEN
        timeliness = row["timeliness"] if row["completed"] else None
        dossiers[row["code"]] = (row["sequence"], is_open, timeliness)
        totals[("received", row["unit_code"], row["channel"])] += 1
        if timeliness:
            totals[("completed", row["unit_code"], timeliness)] += 1
        if is_open:
            totals[("open", row["unit_code"])] += 1
    return dossiers, totals


async def _stored(conn: asyncpg.Connection) -> tuple[dict[str, tuple[int, bool, str | None]], Totals]:
    progress = {row["code"]: (row["last_sequence"], row["open_kind"] is not None, row["timeliness"])
                for row in await conn.fetch("SELECT code, last_sequence, open_kind, timeliness "
                                            "FROM metrics.dossier_progress")}
    totals: Totals = Counter()
    for row in await conn.fetch("SELECT family, unit_code, channel, label, sum(value) AS value FROM metrics.counters "
                                "WHERE family IN ('received', 'completed') GROUP BY 1, 2, 3, 4"):
        key = (row["family"], row["unit_code"], row["channel"] if row["family"] == "received" else row["label"])
        totals[key] += int(row["value"])
    totals.update(("open", row["unit_code"]) for row in await conn.fetch(
        "SELECT unit_code FROM metrics.dossier_progress WHERE open_kind IS NOT NULL"))
    return progress, totals


async def exported(urls: list[str]) -> Totals:
    """The same totals as live instances export them, summed over instances."""
    totals: Totals = Counter()
    async with httpx.AsyncClient(timeout=30) as client:
        for url in urls:
            answer = await client.get(url)
            answer.raise_for_status()
            for family in text_string_to_metric_families(answer.text):
                for sample in family.samples:
                    labels = sample.labels
                    if sample.name == "tthc_dossiers_received_total":
                        totals[("received", labels["unit"], labels["channel"])] += int(sample.value)
                    elif sample.name == "tthc_dossiers_completed_total":
                        totals[("completed", labels["unit"], labels["timeliness"])] += int(sample.value)
                    elif sample.name == "tthc_dossiers_open":
                        totals[("open", labels["unit"])] += int(sample.value)
    return totals


def _compare(what: str, truth: Totals, seen: Totals) -> list[Difference]:
    return [Difference(what, "/".join(key), truth[key], seen[key])
            for key in sorted(set(truth) | set(seen)) if truth[key] != seen[key]]


async def reconcile(database_url: str, metrics_urls: list[str]) -> list[Difference]:
    conn = await asyncpg.connect(database_url)
    try:
        dossiers, truth = await _truth(conn)
        progress, stored = await _stored(conn)
    finally:
        await conn.close()
    differences = [Difference("dossier", code, dossiers.get(code), progress.get(code))
                   for code in sorted(set(dossiers) | set(progress)) if dossiers.get(code) != progress.get(code)]
    differences += _compare("stored", truth, stored)
    if metrics_urls:
        differences += _compare("exported", truth, await exported(metrics_urls))
    return differences
