"""Where the project keeps what it downloads and what it runs, both git-ignored."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    """Downloads that survive between runs (Kafka jars)."""
    return Path(os.environ.get("TTHC_CACHE_DIR", PROJECT_ROOT / ".cache"))


def run_dir() -> Path:
    """State of the local stack: broker and database data, logs, the mail sink."""
    return Path(os.environ.get("TTHC_RUN_DIR", PROJECT_ROOT / ".run"))
