"""Kafka topic names: the one place they are spelled."""

from typing import Final

INGRESS: Final = "tthc.ingress.v1"
"""CloudEvents from commune systems, as they sent them."""

ACCEPTED: Final = "tthc.accepted.v1"
"""Events intake validated, key = dossier code; personal data sealed."""

LIFECYCLE: Final = "tthc.dossier-lifecycle.v1"
"""Canonical lifecycle events from resolution, enriched with due dates and state; for downstream consumers."""

REJECTIONS: Final = "tthc.rejections.v1"
"""Every refused input with its reason, from intake and resolution."""

ALL: Final = (INGRESS, ACCEPTED, LIFECYCLE, REJECTIONS)
