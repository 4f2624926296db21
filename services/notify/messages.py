"""Notify's pure core: which messages a lifecycle event owes the citizen, and their text."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from shared.clock.deadline import vi_instant
from shared.contract.events import EventType
from shared.contract.lifecycle import DossierLifecycleEvent, Timeliness

TEMPLATES = Path(__file__).resolve().parent / "templates"
# Plain-text email and SMS bodies: HTML escaping would corrupt them, and nothing here is rendered as HTML.
_env = Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined, autoescape=False,  # noqa: S701
                   keep_trailing_newline=True)

TEMPLATE_FOR: dict[EventType, str] = {
    EventType.RECEIVED: "received",
    EventType.RESOLVED: "resolved",
    EventType.REJECTED: "rejected",
}
CHANNELS_BUILT = ("email",)


@dataclass(frozen=True)
class Owed:
    template: str
    channel: str
    context: dict[str, Any]


def owed(event: DossierLifecycleEvent, notify_via: list[str], procedure_name: str, lookup_url: str) -> list[Owed]:
    template = TEMPLATE_FOR.get(event.event_type)
    if template is None:
        return []
    context = {
        "dossier_code": event.dossier_code,
        "procedure_name": procedure_name,
        "received_at": _local(event.received_at),
        "appointment_at": _local(event.appointment_at),
        "early": event.timeliness is Timeliness.EARLY,
        "reason": event.reason or "",
        "lookup_url": f"{lookup_url}?ma_ho_so={event.dossier_code}",
    }
    return [Owed(template, channel, context) for channel in notify_via if channel in CHANNELS_BUILT]


def render(template: str, channel: str, context: dict[str, Any]) -> tuple[str, str]:
    """(subject, body) of a message; the template file has the subject, then `---`, then the body."""
    text = _env.get_template(f"{template}.{channel}.j2").render(**context)
    subject, _, body = text.partition("\n---\n")
    return subject.strip(), body.strip() + "\n"


def _local(value: datetime | None) -> str:
    return vi_instant(value) if value is not None else ""
