"""How many messages one notify process sends a second, and what each costs, with the providers' rate limits
lifted.

Queues the messages owed for `--dossiers` dossiers (their receipt and their result, by email to every
citizen and by SMS to half of them, as the simulator's applicants choose), each citizen's contact sealed as
intake seals it, then runs notify's own delivery rounds (`Deliverer.deliver_due`) against the local sinks
(an SMTP server and an SMS gateway in a process of their own) until every message is delivered. Reports
messages per second and CPU per message of this process (all of notify's sending: claiming, opening the
contact, rendering, SMTP and HTTP, recording each outcome), of PostgreSQL and of the sinks.

The sinks answer at once unless `--answer-delay` holds each answer, as a provider across the internet
takes 20-100 ms; `--senders` sets how many messages a channel has in flight at once (notify's
`NOTIFY_SENDERS_PER_CHANNEL`).

    .venv/bin/python -m bench.notify_delivery --dossiers 3000
    .venv/bin/python -m bench.notify_delivery --dossiers 1000 --answer-delay 0.05 --senders 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from prometheus_client import CollectorRegistry

from bench.processes import ProcessWatch, postmaster_pid
from bench.resolution_throughput import RESULTS
from services.notify.app import MIGRATIONS, SCHEMA
from services.notify.delivery import Deliverer, connections_needed, queue_owed
from services.notify.links import LinkSigner
from services.notify.messages import owed
from services.notify.settings import NotifySettings
from shared import db
from shared.contract.events import EventType
from shared.contract.lifecycle import DossierLifecycleEvent, DossierState, Timeliness
from shared.crypto import Keyring, new_key_spec
from shared.infra.paths import PROJECT_ROOT
from shared.infra.ports import free_ports
from shared.infra.postgres import LocalPostgres

PROCEDURE = "Đăng ký khai sinh"
UNLIMITED = 1_000_000.0
SENDERS: int = NotifySettings.model_fields["senders_per_channel"].default


def lifecycle_event(code: str, kind: EventType, sequence: int, received: datetime) -> DossierLifecycleEvent:
    due = received + timedelta(days=3)
    resolved = kind is EventType.RESOLVED
    return DossierLifecycleEvent(
        id=f"{code}:{sequence}", dossier_code=code, sequence=sequence, event_type=kind,
        occurred_at=received + timedelta(days=sequence - 1), recorded_at=received, source="urn:bench",
        source_event_id=f"{code}-{sequence}", procedure_code="1.001193", unit_code="07654", sector="ho_tich",
        channel="online", state=DossierState.RESOLVED if resolved else DossierState.RECEIVED,
        status_code=9 if resolved else 2, received_at=received, legal_due_at=due, appointment_at=due,
        timeliness=Timeliness.EARLY if resolved else None, calendar_version="bench", policy_version="bench",
    )


def owed_rows(dossiers: int, keyring: Keyring, lookup_url: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(contacts, deliveries) rows as notify writes them."""
    received = datetime(2026, 11, 26, 1, 30, tzinfo=UTC)
    contacts, deliveries = [], []
    for number in range(dossiers):
        code = f"000.00.24.07654-261126-ND{number:06d}"
        via = ["email", "sms"] if number % 2 else ["email"]
        applicant = {"full_name": "Nguyễn Thị Hồng Nhung", "id_number": f"0{number:011d}",
                     "phone": f"09{number:08d}", "email": f"nhung.nguyen{number}@example.vn"}
        contacts.append((code, keyring.seal(json.dumps(applicant, ensure_ascii=False).encode(), code), via))
        for sequence, kind in ((1, EventType.RECEIVED), (2, EventType.RESOLVED)):
            event = lifecycle_event(code, kind, sequence, received)
            deliveries += [(code, event.id, item.channel, item.template, json.dumps(item.context, ensure_ascii=False),
                            item.required) for item in owed(event, via, PROCEDURE, lookup_url)]
    return contacts, deliveries


async def queue(pool: asyncpg.Pool, contacts: list[tuple[Any, ...]], deliveries: list[tuple[Any, ...]]) -> None:
    now = datetime.now(UTC)
    async with pool.acquire() as conn, conn.transaction():
        await conn.executemany(f"INSERT INTO {SCHEMA}.contacts VALUES ($1, $2, $3)", contacts)
        await queue_owed(conn, deliveries, now)


async def sinks_ready(smtp_port: int, http_port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(timeout=2.0) as client:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the sinks exited with {process.returncode}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", smtp_port)
                writer.close()
                if (await client.get(f"http://127.0.0.1:{http_port}/")).status_code < 500:
                    return
            except (OSError, httpx.HTTPError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the sinks did not start within 60 s")
            await asyncio.sleep(0.2)


async def measure(database_url: str, dossiers: int, home: Path, postgres_pid: int | None = None, *,
                  senders: int = SENDERS, answer_delay: float = 0.0) -> dict[str, Any]:
    """`postgres_pid`: the server's postmaster, when it runs here, so that its CPU is counted."""
    smtp_port, http_port = free_ports(2)
    sinks = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is timed
        [sys.executable, "-m", "shared.infra.sinks", "--dir", str(home / "outbox"), "--smtp-port", str(smtp_port),
         "--http-port", str(http_port), "--answer-delay", str(answer_delay)],
        cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    settings = NotifySettings(
        database_url=database_url, smtp_port=smtp_port, sms_url=f"http://127.0.0.1:{http_port}/sms",
        zalo_url=f"http://127.0.0.1:{http_port}/zalo", senders_per_channel=senders,
        rate_per_second=dict.fromkeys(("email", "sms", "zalo", "webhook"), UNLIMITED),
        rate_burst=dict.fromkeys(("email", "sms", "zalo", "webhook"), 50))
    pool = await db.create_pool(database_url, max_size=connections_needed(settings), application_name="notify")
    deliverer: Deliverer | None = None
    try:
        await sinks_ready(smtp_port, http_port, sinks)
        await db.migrate(pool, SCHEMA, MIGRATIONS)
        keyring = Keyring.parse(new_key_spec("bench"))
        contacts, deliveries = owed_rows(dossiers, keyring, settings.lookup_base_url)
        await queue(pool, contacts, deliveries)
        deliverer = Deliverer(pool, settings, keyring, LinkSigner(keyring), CollectorRegistry())
        roots = {os.getpid(): "notify (this process)", sinks.pid: "sinks"}
        if postgres_pid is not None:
            roots[postgres_pid] = "postgres"
        watch = ProcessWatch(roots)
        watch.mark_start()
        started = time.perf_counter()
        while await deliverer.deliver_due():
            pass
        wall = time.perf_counter() - started
        watch.sample()
        statuses = {row["status"]: row["count"] for row in await pool.fetch(
            f"SELECT status, count(*) FROM {SCHEMA}.deliveries GROUP BY status")}
    finally:
        if deliverer is not None:
            await deliverer.stop()
        await pool.close()
        sinks.terminate()
        sinks.wait(timeout=20)
    sent = statuses.get("delivered", 0)
    used = watch.cpu_seconds()
    return {
        "senders_per_channel": senders, "answer_delay_s": answer_delay,
        "messages": len(deliveries), "delivered": sent, "statuses": statuses,
        "by_channel": {channel: sum(1 for row in deliveries if row[2] == channel) for channel in ("email", "sms")},
        "seconds": round(wall, 2), "messages_per_s": round(sent / wall, 1) if wall else 0.0,
        "cpu_seconds": {name: round(value, 2) for name, value in sorted(used.items())},
        "cpu_ms_per_message": {name: round(value / sent * 1000, 3) for name, value in sorted(used.items())}
        if sent else {},
    }


async def main(dossiers: int, senders: int, answer_delay: float) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="tthc-notify-bench-"))
    postgres = None
    database_url = os.environ.get("DATABASE_URL", "")
    try:
        if not database_url:
            postgres = LocalPostgres(home / "pg" / "data", free_ports(1)[0])
            database_url = await asyncio.to_thread(postgres.start)
        result = await measure(database_url, dossiers, home,
                               postmaster_pid(postgres.data_dir) if postgres is not None else None,
                               senders=senders, answer_delay=answer_delay)
    finally:
        if postgres is not None:
            postgres.stop()
        shutil.rmtree(home, ignore_errors=True)
    return {"benchmark": "notify_delivery", "measured_at": datetime.now(UTC).isoformat(),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "dossiers": dossiers, **result}


def run() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--dossiers", type=int, default=3000, help="dossiers whose receipt and result are owed")
    parser.add_argument("--senders", type=int, default=SENDERS, help="messages in flight at once per channel")
    parser.add_argument("--answer-delay", type=float, default=0.0, help="seconds each provider takes to answer")
    args = parser.parse_args()
    result = asyncio.run(main(args.dossiers, args.senders, args.answer_delay))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"notify-delivery-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print(f"{result['delivered']:,} of {result['messages']:,} messages delivered in {result['seconds']} s: "
          f"{result['messages_per_s']:,} a second ({args.senders} senders a channel, providers answering in "
          f"{args.answer_delay} s)")
    for name, value in result["cpu_ms_per_message"].items():
        print(f"  {name}: {value} ms of CPU a message")
    print(f"written to {path.relative_to(PROJECT_ROOT)}")


if __name__ == "__main__":
    run()
