"""Log lines as `time level service logger: message`. Messages name dossiers and events by code and id only,
never a person; nothing here formats event data."""

from __future__ import annotations

import logging
import sys


def configure_logging(service: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka logs every refused connection while a broker restarts; one warning is enough.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
