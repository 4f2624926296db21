"""The unit registry and the procedure catalog, loaded from the versioned data files in shared/data/."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import time
from pathlib import Path

from shared.contract.duration import Duration

DATA_DIR = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class Procedure:
    code: str
    name_vi: str
    name_en: str
    sector: str
    sector_vi: str
    level: str
    duration: Duration
    cutoff: time | None
    online_level: str
    source: str


@dataclass(frozen=True)
class Unit:
    code: str
    name_vi: str
    kind: str
    level: str
    province_code: str
    office_hours: tuple[tuple[str, str], ...] | None

    @property
    def agency_id(self) -> str:
        """The agency block of dossier codes minted for this unit (when a commune sends none)."""
        return f"000.00.{self.province_code}.{self.code}"


@dataclass(frozen=True)
class Catalog:
    procedures_version: str
    units_version: str
    procedures: dict[str, Procedure]
    units: dict[str, Unit]

    @property
    def version(self) -> str:
        return f"procedures:{self.procedures_version};units:{self.units_version}"

    @classmethod
    def load(cls, data_dir: Path = DATA_DIR) -> Catalog:
        with (data_dir / "procedures.toml").open("rb") as file:
            procedures_doc = tomllib.load(file)
        with (data_dir / "units.toml").open("rb") as file:
            units_doc = tomllib.load(file)
        procedures = {
            entry["code"]: Procedure(
                code=entry["code"], name_vi=entry["name_vi"], name_en=entry.get("name_en", ""),
                sector=entry["sector"], sector_vi=entry.get("sector_vi", entry["sector"]),
                level=entry.get("level", "commune"), duration=Duration.parse(entry["duration"]),
                cutoff=time.fromisoformat(entry["cutoff"]) if entry.get("cutoff") else None,
                online_level=entry.get("online_level", "mot_phan"), source=entry.get("source", ""),
            )
            for entry in procedures_doc["procedures"]
        }
        units = {
            entry["code"]: Unit(
                code=entry["code"], name_vi=entry["name_vi"], kind=entry.get("kind", ""),
                level=entry.get("level", "commune"),
                province_code=entry.get("province_code", units_doc.get("province_code", "")),
                office_hours=tuple(tuple(pair) for pair in entry["office_hours"]) if "office_hours" in entry
                else None,
            )
            for entry in units_doc["units"]
        }
        return cls(str(procedures_doc["version"]), str(units_doc["version"]), procedures, units)
