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
from shared.text import without_diacritics

TEMPLATES = Path(__file__).resolve().parent / "templates"
# Plain-text email and SMS bodies: HTML escaping would corrupt them, and nothing here is rendered as HTML.
# Templates ship with the code, so they are not checked for changes on disk at every message (a stat each,
# nearly half of a render's 35 µs).
_env = Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined, autoescape=False,  # noqa: S701
                   keep_trailing_newline=True, auto_reload=False)

TEMPLATE_FOR: dict[EventType, str] = {
    EventType.RECEIVED: "received",
    EventType.SUPPLEMENT_REQUESTED: "supplement_requested",
    EventType.FEE_REQUESTED: "fee_requested",
    EventType.APOLOGY_ISSUED: "apology_issued",
    EventType.RESOLVED: "resolved",
    EventType.REJECTED: "rejected",
    EventType.RESULT_RETURNED: "result_returned",
}
CHANNELS = ("email", "sms", "zalo")
# The handling unit's own system (services/notify/webhook.py); never a citizen's channel.
WEBHOOK = "webhook"
TEMPLATE_VERSION = "2026.11.3"
# What the citizen must be told whatever they chose (Decree 61/2018): the receipt (art. 17.2), a supplement
# request (art. 19.4), an apology with the new appointment (art. 19.9), a refusal with its reason, and a
# result ready before its appointment (art. 20.4). An opt-out stops only the others.
REQUIRED = frozenset({EventType.RECEIVED, EventType.SUPPLEMENT_REQUESTED, EventType.APOLOGY_ISSUED,
                      EventType.REJECTED})
# Filled in when the message is sent, never stored: they carry tokens that act for the dossier.
LINK_FIELDS = ("survey_url", "opt_out_url")


@dataclass(frozen=True)
class Owed:
    template: str
    channel: str
    context: dict[str, Any]
    required: bool = True


def required(event: DossierLifecycleEvent) -> bool:
    """Whether the law requires this notice, so that an opt-out does not stop it."""
    early_result = event.event_type is EventType.RESOLVED and event.timeliness is Timeliness.EARLY
    return event.event_type in REQUIRED or early_result


def owed(event: DossierLifecycleEvent, notify_via: list[str], procedure_name: str, lookup_url: str) -> list[Owed]:
    """The messages `event` owes the citizen, one per channel they chose."""
    template = TEMPLATE_FOR.get(event.event_type)
    if template is None:
        return []
    amount = event.details.get("amount_vnd")
    context = {
        "dossier_code": event.dossier_code,
        "procedure_name": procedure_name,
        "received_at": _local(event.received_at),
        "appointment_at": _local(event.appointment_at),
        "original_appointment_at": _local(event.legal_due_at),
        "early": event.timeliness is Timeliness.EARLY,
        "reason": event.reason or "",
        "details": event.details,
        "amount": f"{amount:,}".replace(",", ".") if isinstance(amount, int) else "",
        "lookup_url": f"{lookup_url}?ma_ho_so={event.dossier_code}",
        "template_version": TEMPLATE_VERSION,
    }
    needed = required(event)
    return [Owed(template, channel, context, needed) for channel in dict.fromkeys(notify_via) if channel in CHANNELS]


def render(template: str, channel: str, context: dict[str, Any], *, ascii_sms: bool = False) -> tuple[str, str]:
    """(subject, body). Email templates hold the subject, `---`, then the body; SMS and Zalo share a short one,
    without diacritics for SMS gateways that need it; a webhook's message is one paragraph."""
    if channel == WEBHOOK:
        return "", " ".join(_env.get_template(f"{template}.webhook.j2").render(**context).split())
    if channel == "email":
        text = _env.get_template(f"{template}.email.j2").render(**context)
        subject, _, body = text.partition("\n---\n")
        return subject.strip(), body.strip() + "\n"
    # Zalo messages carry the opt-out link as emails do; an SMS stays short (the gateway's reply keyword is
    # the usual way out there).
    body = " ".join(_env.get_template(f"{template}.short.j2").render(**context, channel=channel).split())
    return "", without_diacritics(body) if channel == "sms" and ascii_sms else body


def _local(value: datetime | None) -> str:
    return vi_instant(value) if value is not None else ""
