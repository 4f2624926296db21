"""`tthc`: the operator's command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any


def _up(args: argparse.Namespace) -> int:
    from shared.infra.paths import run_dir
    from shared.infra.stack import Stack, run_forever

    simulator = os.environ.get("SIMULATOR", "on").lower() not in ("off", "0", "false", "no")
    asyncio.run(run_forever(Stack(run_dir(), simulator=simulator, simulator_rate=args.rate)))
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from shared.simulator import simulate

    key = os.environ.get("TTHC_SIMULATOR_API_KEY", "")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    sent = asyncio.run(simulate(args.intake_url, args.rate, args.duration, args.seed, headers))
    print(json.dumps({"sent": sent}))
    return 0


def _clock(unit_code: str | None) -> Any:
    from shared.catalog import Catalog
    from shared.clock.calendar import WorkingCalendar
    from shared.clock.policy import Policy
    from shared.dossier import clock_for_units

    catalog = Catalog.load()
    return catalog, clock_for_units(catalog, WorkingCalendar.load(), Policy())(unit_code or "")


def _deadline(args: argparse.Namespace) -> int:
    from shared.contract.duration import Duration

    _, clock = _clock(args.unit)
    received_at = datetime.fromisoformat(args.received_at)
    if received_at.tzinfo is None:
        print("--received-at needs an offset, e.g. 2026-02-12T09:00:00+07:00", file=sys.stderr)
        return 2
    cutoff = time.fromisoformat(args.cutoff) if args.cutoff else None
    deadline = clock.due(received_at, Duration.parse(args.duration), cutoff)
    print(json.dumps({
        "received_at": received_at.isoformat(), "duration": args.duration, "due_at": deadline.due_at.isoformat(),
        "calendar_version": deadline.calendar_version, "policy_version": deadline.policy_version,
        "explanation": [vars(step) for step in deadline.explanation],
    }, ensure_ascii=False, indent=2))
    return 0


def _explain(args: argparse.Namespace) -> int:
    from shared.catalog import Catalog
    from shared.clock.calendar import WorkingCalendar
    from shared.clock.policy import Policy
    from shared.contract.duration import Duration
    from shared.contract.events import parse_cloudevent
    from shared.contract.lifecycle import EventAccepted
    from shared.contract.rejections import EventRefused
    from shared.dossier import Dossier, clock_for_units

    catalog = Catalog.load()
    clock_for = clock_for_units(catalog, WorkingCalendar.load(), Policy())
    override = Duration.parse(args.duration) if args.duration else None
    dossier: Dossier | None = None
    for number, line in enumerate(Path(args.events).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            incoming = parse_cloudevent(json.loads(line))
            data = incoming.data.model_dump(mode="json")
            data.pop("applicant", None)
            accepted = EventAccepted(id=incoming.id, source=incoming.source, event_type=incoming.event_type,
                                     dossier_code=incoming.dossier_code or "unassigned",
                                     occurred_at=incoming.occurred_at, accepted_at=datetime.now(UTC), data=data)
            dossier = (Dossier.start(accepted, catalog, clock_for, override) if dossier is None
                       else dossier.apply(accepted, catalog, clock_for))
        except (EventRefused, json.JSONDecodeError) as refusal:
            reason = getattr(refusal, "reason", "malformed_json")
            print(json.dumps({"refused": {"line": number, "reason": str(reason), "detail": str(refusal)}},
                             ensure_ascii=False, indent=2))
            return 1
    if dossier is None:
        print("no events", file=sys.stderr)
        return 2
    now = datetime.fromisoformat(args.now) if args.now else datetime.now(UTC)
    view = dossier.model_dump(mode="json", exclude={"applicant_sealed", "notify_via"})
    view["due_at"] = view["legal_due_at"]
    view["open_state"] = dossier.open_state(now)
    view["explanation"] = dossier.explanation(catalog, clock_for(dossier.unit_code))
    print(json.dumps(view, ensure_ascii=False, indent=2))
    return 0


def _replay(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from services.resolution.replay import REPLAY_SCHEMA, replay
    from shared.clock.policy import Policy, SupplementMode
    from shared.db import create_pool
    from shared.reference import Reference
    from shared.settings import CommonSettings

    async def run() -> list[Any]:
        pool = await create_pool(args.database_url or CommonSettings().database_url)
        try:
            reference = Reference.load(Policy(supplement_mode=SupplementMode(args.supplement_mode)))
            return await replay(pool, reference, apply=args.apply)
        finally:
            await pool.close()

    differences = asyncio.run(run())
    print(json.dumps({"rebuilt_into": REPLAY_SCHEMA, "applied": bool(args.apply and differences),
                      "differences": [asdict(d) for d in differences]}, ensure_ascii=False, indent=2, default=str))
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from services.metrics.reconcile import reconcile
    from shared.settings import CommonSettings

    differences = asyncio.run(reconcile(args.database_url or CommonSettings().database_url, args.metrics_url))
    print(json.dumps({"differences": [asdict(d) for d in differences]}, ensure_ascii=False, indent=2, default=str))
    return 1 if differences else 0


def _api_keys(args: argparse.Namespace) -> int:
    from services.intake import keys
    from services.intake.app import MIGRATIONS
    from services.intake.store import SCHEMA
    from shared.db import create_pool, migrate
    from shared.settings import CommonSettings

    async def run() -> dict[str, Any]:
        pool = await create_pool(args.database_url or CommonSettings().database_url, max_size=2)
        try:
            await migrate(pool, SCHEMA, MIGRATIONS)
            async with pool.acquire() as conn:
                if args.action == "create":
                    units = [code.strip() for code in args.units.split(",") if code.strip()]
                    key = await keys.create(conn, args.source, units)
                    return {"source": args.source, "units": units, "api_key": key}
                if args.action == "rotate":
                    return {"source": args.source, "api_key": await keys.rotate(conn, args.source)}
                return {"source": args.source, "revoked": await keys.revoke(conn, args.source, args.key_id)}
        finally:
            await pool.close()

    answer = asyncio.run(run())
    if "api_key" in answer:
        answer["note"] = "shown once: store it in the commune system now"
    print(json.dumps(answer, ensure_ascii=False, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tthc", description="Operate the one-stop dossier timeliness platform.")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start the whole local stack in the foreground (make run)")
    up.add_argument("--rate", type=float, default=5.0, help="simulated events per second")
    up.set_defaults(handler=_up)

    sim = commands.add_parser("simulate", help="send a province's day of commune traffic to intake")
    sim.add_argument("--intake-url", default="http://127.0.0.1:8000")
    sim.add_argument("--rate", type=float, default=5.0)
    sim.add_argument("--duration", type=float, default=None, help="seconds; forever when omitted")
    sim.add_argument("--seed", type=int, default=None)
    sim.set_defaults(handler=_simulate)

    deadline = commands.add_parser("deadline", help="the due instant of a duration from a receipt instant")
    deadline.add_argument("--received-at", required=True)
    deadline.add_argument("--duration", required=True, help="'3 working_days', '4 working_hours', 'same_day' ...")
    deadline.add_argument("--cutoff", default=None, help="HH:MM after which same-day receipt counts tomorrow")
    deadline.add_argument("--unit", default=None, help="unit code, for its office hours")
    deadline.set_defaults(handler=_deadline)

    explain = commands.add_parser("explain", help="fold a dossier's CloudEvents (JSON lines) and explain it")
    explain.add_argument("events", help="file of CloudEvents, one JSON object per line")
    explain.add_argument("--now", default=None)
    explain.add_argument("--duration", default=None, help="override the catalog's legal duration")
    explain.set_defaults(handler=_explain)

    rebuild = commands.add_parser("replay", help="rebuild every dossier from its history and show what differs")
    rebuild.add_argument("--database-url", default=None, help="defaults to DATABASE_URL")
    rebuild.add_argument("--supplement-mode", default="restart", choices=["restart", "subtract"],
                         help="the policy to rebuild under (a what-if)")
    rebuild.add_argument("--apply", action="store_true", help="write the rebuilt state over the live one")
    rebuild.set_defaults(handler=_replay)

    check = commands.add_parser("reconcile", help="compare metrics with resolution's ground truth; exit 1 on any "
                                "difference")
    check.add_argument("--database-url", default=None, help="defaults to DATABASE_URL")
    check.add_argument("--metrics-url", action="append", default=[],
                       help="a live metrics instance's /metrics to compare too (repeat for each instance)")
    check.set_defaults(handler=_reconcile)

    api_keys = commands.add_parser("api-keys", help="create, rotate or revoke a commune system's API key")
    key_actions = api_keys.add_subparsers(dest="action", required=True)
    for action, text in (("create", "a new key (printed once)"), ("rotate", "a new key; the old ones revoked"),
                         ("revoke", "revoke the source's keys")):
        command = key_actions.add_parser(action, help=text)
        command.add_argument("--source", required=True, help="the CloudEvents source the key speaks for")
        command.add_argument("--database-url", default=None, help="defaults to DATABASE_URL")
        if action == "create":
            command.add_argument("--units", required=True, help="unit codes, comma-separated")
        if action == "revoke":
            command.add_argument("--key-id", default=None, help="only this key")
        command.set_defaults(handler=_api_keys)

    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
