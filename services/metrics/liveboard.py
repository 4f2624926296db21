"""The one-stop centre's wall screen: today's numbers per unit, from metrics' own state."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from shared.catalog import Catalog
from shared.clock.deadline import LOCAL_ZONE as VN

LIVEBOARD_HTML = (Path(__file__).resolve().parent / "templates" / "liveboard.html").read_text(encoding="utf-8")
COLUMNS = ("received", "early", "on_time", "late", "overdue", "due_soon")


async def today(pool: asyncpg.Pool, now: datetime, catalog: Catalog) -> dict[str, Any]:
    day = now.astimezone(VN).date()
    rows = await pool.fetch(
        "SELECT unit_code, "
        "count(*) FILTER (WHERE received_on = $1) AS received, "
        "count(*) FILTER (WHERE completed_on = $1 AND timeliness = 'early') AS early, "
        "count(*) FILTER (WHERE completed_on = $1 AND timeliness = 'on_time') AS on_time, "
        "count(*) FILTER (WHERE completed_on = $1 AND timeliness = 'late') AS late, "
        "count(*) FILTER (WHERE open_kind = 'running' AND due_at < $2) AS overdue, "
        "count(*) FILTER (WHERE open_kind = 'running' AND due_at >= $2 AND due_soon_at <= $2) AS due_soon "
        "FROM metrics.dossier_progress "
        "WHERE received_on = $1 OR completed_on = $1 OR open_kind = 'running' GROUP BY unit_code", day, now)
    units = []
    for row in rows:
        counts = {column: int(row[column]) for column in COLUMNS}
        if any(counts.values()):
            unit = catalog.units.get(row["unit_code"])
            units.append({"unit_code": row["unit_code"], "unit": unit.name_vi if unit else row["unit_code"],
                          **counts})
    units.sort(key=lambda unit: (-unit["overdue"], -unit["due_soon"], unit["unit"]))
    totals = {column: sum(unit[column] for unit in units) for column in COLUMNS}
    return {"day": day.isoformat(), "at": now.astimezone(VN).isoformat(), "totals": totals, "units": units}
