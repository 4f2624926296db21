"""Reloadable reference data, and the operator CLI's deadline and explain commands."""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from shared.catalog import DATA_DIR
from shared.cli import main
from shared.contract.events import EventType
from shared.reference import ReferenceCollector, ReferenceSource
from tests.support import cloudevent, received_data

pytestmark = pytest.mark.unit


def test_reference_data_reloads_when_a_file_changes_and_survives_a_broken_one(tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(DATA_DIR, data)
    source = ReferenceSource(data_dir=data)
    assert source.refresh() is False
    procedures = data / "procedures.toml"
    text = procedures.read_text(encoding="utf-8")
    version = source.current.catalog.procedures_version
    procedures.write_text(text.replace(f'version = "{version}"', 'version = "9999.1"', 1), encoding="utf-8")
    os.utime(procedures, ns=(1, 10**18))
    assert source.refresh() is True
    assert source.current.catalog.procedures_version == "9999.1"
    procedures.write_text("version = [broken", encoding="utf-8")
    os.utime(procedures, ns=(1, 2 * 10**18))
    assert source.refresh() is False
    assert source.current.catalog.procedures_version == "9999.1"


def test_reference_metrics_name_the_versions_and_a_missing_year() -> None:
    registry = CollectorRegistry()
    source = ReferenceSource()
    registry.register(ReferenceCollector(source))
    text = generate_latest(registry).decode()
    assert f'calendar="{source.current.calendar.version}"' in text
    assert "tthc_calendar_next_year_missing " in text


def test_cli_deadline_prints_the_due_instant_and_why(capsys: pytest.CaptureFixture[str]) -> None:
    # Thursday 12 February 2026, before Tết (off Saturday 14 to Sunday 22): 3 working days end Tuesday 24.
    assert main(["deadline", "--received-at", "2026-02-12T09:00:00+07:00", "--duration", "3 working_days"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["due_at"] == "2026-02-24T17:00:00+07:00"
    skipped = [step["at"] for step in answer["explanation"] if step["kind"] == "skipped_day"]
    assert skipped[0] == "2026-02-14"
    assert "2026-02-20" in skipped


def write_events(path: Path, *events: dict[str, object]) -> Path:
    path.write_text("\n".join(json.dumps(e, ensure_ascii=False) for e in events) + "\n", encoding="utf-8")
    return path


def test_cli_explain_folds_a_dossier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = "000.00.24.07420-250106-0001"
    events = write_events(
        tmp_path / "d.jsonl",
        cloudevent(EventType.RECEIVED, code, received_data(), at=datetime.fromisoformat("2025-01-06T09:00:00+07:00")),
        cloudevent(EventType.APOLOGY_ISSUED, code, {"reason": "Chờ xác minh",
                                                      "new_appointment_at": "2025-01-20T17:00:00+07:00"},
                   at=datetime.fromisoformat("2025-01-09T10:00:00+07:00")),
    )
    assert main(["explain", str(events), "--now", "2025-01-10T09:00:00+07:00", "--duration", "3 working_days"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["due_at"] == "2025-01-09T17:00:00+07:00"
    assert answer["state"] == "received"
    assert answer["open_state"] == "overdue"
    assert answer["apology_late"] is True
    assert [entry["event_type"] for entry in answer["timeline"]] == ["received", "apology_issued"]


def test_cli_explain_refuses_an_impossible_sequence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = "000.00.24.07420-250106-0002"
    events = write_events(tmp_path / "d.jsonl", cloudevent(EventType.RESOLVED, code, {}))
    assert main(["explain", str(events)]) == 1
    answer = json.loads(capsys.readouterr().out)
    assert answer["refused"]["line"] == 1
    assert answer["refused"]["reason"] == "impossible_transition"
