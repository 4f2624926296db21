"""The webhook to a commune's (unit's) own system: a JSON body with no personal data, signed so the commune
can check it came from us and was not altered.

Signature: `X-TTHC-Signature: sha256=<hex>` is HMAC-SHA256, keyed with the shared secret, over
`<X-TTHC-Timestamp>.<raw body>`; the timestamp (Unix seconds) lets a receiver refuse an old request replayed.
`Idempotency-Key` repeats on a retry of the same alert, so a receiver can drop the copy.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime
from typing import Any

from services.notify.messages import render
from shared.clock.deadline import vi_instant

SIGNATURE_HEADER = "X-TTHC-Signature"
TIMESTAMP_HEADER = "X-TTHC-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
# Fields of the stored context that are ours, not the commune's.
_INTERNAL = ("kind", "last_event_id")


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, signature: str, *, now: float,
           tolerance: float = 300.0) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent (`now` in Unix seconds)."""
    try:
        stamp = int(timestamp)
    except ValueError:
        return False
    if abs(now - stamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, stamp, body).encode(), signature.encode())


def payload(template: str, context: dict[str, Any], key: str) -> dict[str, Any]:
    """The body sent: the machine fields and a `message` in Vietnamese for people reading the commune's screen."""
    legal_due = context.get("legal_due_at")
    text_context = {**context, "legal_due_local": vi_instant(datetime.fromisoformat(legal_due)) if legal_due else ""}
    _, message = render(template, "webhook", text_context)
    fields = {name: value for name, value in context.items() if name not in _INTERNAL}
    return {"event_type": context.get("kind", template), **fields, "message": message, "idempotency_key": key}


def request(secret: bytes, timestamp: int, body: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """(raw body, headers) of the signed POST."""
    raw = json.dumps(body, ensure_ascii=False, sort_keys=True).encode()
    return raw, {"Content-Type": "application/json; charset=utf-8", TIMESTAMP_HEADER: str(timestamp),
                 SIGNATURE_HEADER: sign(secret, timestamp, raw), IDEMPOTENCY_HEADER: body["idempotency_key"]}
