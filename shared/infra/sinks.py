"""Stand-ins for the providers notify talks to, so a person can read every message the platform sends.

SMTP (aiosmtpd) keeps every mail as an .eml file; an HTTP server plays the SMS and Zalo gateways and a
commune's system (`POST /webhook`, kept with its raw body and signature headers so they can be checked), and
shows everything received at `/` (Vietnamese) and `/api/messages` (JSON).

Tests make the gateways misbehave the way real ones do: `POST /api/faults` with
`{"channel": "sms", "status": 503, "times": 3}` answers the next three SMS requests with 503 (429 for rate
limiting), `"delay": 5` holds each answer that long (a timeout for the caller); `DELETE /api/faults` ends
them. `GET /api/attempts` lists when every request arrived (Unix seconds) by channel, failed ones included.
`--answer-delay` holds every answer, mail included, that long: providers as far away as real ones.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import html
import json
import signal
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvicorn
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field


class MailDirHandler:
    def __init__(self, folder: Path, answer_delay: float = 0.0) -> None:
        self.folder = folder
        self.answer_delay = answer_delay
        folder.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        await asyncio.sleep(self.answer_delay)
        content = envelope.original_content or b""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        (self.folder / f"{stamp}.eml").write_bytes(content)
        return "250 Message accepted for delivery"


def read_mail(folder: Path) -> list[dict[str, Any]]:
    mails = []
    for path in sorted(folder.glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        body = message.get_body(preferencelist=("plain",))
        mails.append({"file": path.name, "message_id": message["Message-ID"], "to": message["To"],
                      "subject": message["Subject"], "body": body.get_content() if body else ""})
    return mails


WEBHOOK_HEADERS = ("content-type", "x-tthc-timestamp", "x-tthc-signature", "idempotency-key")


def read_webhooks(folder: Path) -> list[dict[str, Any]]:
    """Every request `POST /webhook` took: headers, raw body (what the signature covers) and parsed payload."""
    log = folder / "webhook.jsonl"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line]


class FaultPlan(BaseModel):
    channel: str
    status: int | None = Field(default=None, ge=400, le=599)
    delay: float = Field(default=0.0, ge=0, le=60)
    times: int = Field(default=1, ge=1)


@dataclass
class _Fault:
    status: int | None
    delay: float
    left: int


def gateway_app(folder: Path, answer_delay: float = 0.0) -> FastAPI:
    app = FastAPI(title="Message sinks")
    gateway_log = folder / "gateway.jsonl"
    webhook_log = folder / "webhook.jsonl"
    faults: dict[str, _Fault] = {}
    attempts: defaultdict[str, list[float]] = defaultdict(list)

    async def misbehave(channel: str) -> JSONResponse | None:
        attempts[channel].append(time.time())
        await asyncio.sleep(answer_delay)
        fault = faults.get(channel)
        if fault is not None:
            fault.left -= 1
            if fault.left <= 0:
                del faults[channel]
            if fault.delay:
                await asyncio.sleep(fault.delay)  # plays a slow provider: the caller's timeout decides
            if fault.status is not None:
                return JSONResponse({"error": "simulated failure"}, status_code=fault.status)
        return None

    @app.post("/sms")
    @app.post("/zalo")
    async def gateway(request: Request) -> JSONResponse:
        channel = request.url.path.strip("/")
        if (failed := await misbehave(channel)) is not None:
            return failed
        message_id = uuid.uuid4().hex
        entry = {"channel": channel, "received_at": datetime.now(UTC).isoformat(), "message_id": message_id,
                 "payload": await request.json()}
        with gateway_log.open("a", encoding="utf-8") as file:
            file.write(json.dumps(entry, ensure_ascii=False) + "\n")
        return JSONResponse({"status": "accepted", "message_id": message_id})

    @app.post("/webhook")
    async def commune_system(request: Request) -> JSONResponse:
        if (failed := await misbehave("webhook")) is not None:
            return failed
        raw = await request.body()
        entry = {"channel": "webhook", "received_at": datetime.now(UTC).isoformat(),
                 "headers": {name: request.headers.get(name, "") for name in WEBHOOK_HEADERS},
                 "raw": raw.decode("utf-8", "replace"), "payload": json.loads(raw or b"null")}
        with webhook_log.open("a", encoding="utf-8") as file:
            file.write(json.dumps(entry, ensure_ascii=False) + "\n")
        return JSONResponse({"status": "accepted"})

    @app.post("/api/faults", status_code=204)
    async def add_fault(plan: FaultPlan) -> None:
        faults[plan.channel] = _Fault(plan.status, plan.delay, plan.times)

    @app.delete("/api/faults", status_code=204)
    async def clear_faults() -> None:
        faults.clear()

    @app.get("/api/attempts")
    async def attempt_times() -> dict[str, list[float]]:
        return dict(attempts)

    def gateway_messages() -> list[dict[str, Any]]:
        if not gateway_log.exists():
            return []
        return [json.loads(line) for line in gateway_log.read_text(encoding="utf-8").splitlines() if line]

    @app.get("/api/messages")
    async def messages() -> dict[str, Any]:
        return {"mail": read_mail(folder / "mail"), "gateway": gateway_messages(),
                "webhook": read_webhooks(folder)}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        rows = "".join(
            f"<article><h3>{html.escape(m['subject'] or '')}</h3><p>Gửi tới: {html.escape(m['to'] or '')}</p>"
            f"<pre>{html.escape(m['body'])}</pre></article>" for m in reversed(read_mail(folder / "mail"))
        )
        others = "".join(f"<pre>{html.escape(json.dumps(g, ensure_ascii=False))}</pre>"
                         for g in reversed(gateway_messages()))
        alerts = "".join(f"<pre>{html.escape(json.dumps(w['payload'], ensure_ascii=False, indent=1))}</pre>"
                         for w in reversed(read_webhooks(folder)))
        return ("<!doctype html><html lang='vi'><meta charset='utf-8'><title>Hộp thư thử nghiệm</title>"
                "<meta http-equiv='refresh' content='10'><body style='font-family:sans-serif;max-width:60em'>"
                f"<h1>Thư điện tử đã gửi (email)</h1>{rows or '<p>Chưa có thư.</p>'}"
                f"<h1>Tin nhắn SMS / Zalo</h1>{others or '<p>Chưa có tin nhắn.</p>'}"
                f"<h1>Cảnh báo gửi hệ thống một cửa (webhook)</h1>{alerts or '<p>Chưa có cảnh báo.</p>'}"
                "</body></html>")

    return app


async def run(folder: Path, smtp_port: int, http_port: int, answer_delay: float = 0.0) -> None:
    controller = Controller(MailDirHandler(folder / "mail", answer_delay), hostname="127.0.0.1", port=smtp_port)
    controller.start()
    server = uvicorn.Server(uvicorn.Config(gateway_app(folder, answer_delay), host="127.0.0.1", port=http_port,
                                           log_level="warning"))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    try:
        await server.serve()
    finally:
        controller.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--smtp-port", type=int, default=1025)
    parser.add_argument("--http-port", type=int, default=8025)
    parser.add_argument("--answer-delay", type=float, default=0.0, help="seconds every answer is held")
    args = parser.parse_args()
    asyncio.run(run(args.dir, args.smtp_port, args.http_port, args.answer_delay))


if __name__ == "__main__":
    main()
