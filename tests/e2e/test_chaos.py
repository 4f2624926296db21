"""Chaos under load: each service SIGKILLed in turn, the Kafka broker restarted, PostgreSQL restarted, while a
commune system keeps sending lifecycles through intake's HTTP API. Afterwards a reconciliation proves that every
event intake acknowledged is in resolution exactly once, metrics equal resolution's truth, every message owed
was sent once (a notify kill may leave one copy per channel, under the same id, for the provider to drop), and
every rejection was deserved.

The stack owns its broker and database server (both are restarted). One round of faults by default;
TTHC_SOAK_SECONDS=600 repeats rounds under load for that long (`make soak`).

The same load and reconciliation run on a cluster of three brokers (topics with three copies, writes needing
two), where each broker in turn is SIGKILLed and load must flow on the other two before it comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from services.metrics.reconcile import reconcile
from services.notify.settings import NotifySettings
from shared.contract import topics
from shared.contract.events import EventType
from shared.infra.kafka import LocalKafka, LocalKafkaCluster
from shared.infra.sinks import read_mail
from shared.infra.stack import SERVICES, Stack
from tests.support import VN, cloudevent, dossier_code, eventually, received_data

SOAK_SECONDS = float(os.environ.get("TTHC_SOAK_SECONDS", "0"))
# Dossiers started per second: enough to keep every stage busy during each fault, small enough for 2 CPUs.
RATE = float(os.environ.get("TTHC_CHAOS_RATE", "4"))
# Dossiers acknowledged between two faults: proof that the platform took load again after the last one.
PROGRESS = 15
# Back-off between a sender's retries while intake, or what it depends on, is down.
RETRY_PAUSE = 0.5
# Each fault's outage lasts well under this (25 s at most in the soaks); longer, the stack did not come back.
OUTAGE_LIMIT = 120.0
# Which faults a round injects, in order (a subset to chase one of them).
FAULTS = os.environ.get("TTHC_CHAOS_FAULTS", ",".join([*SERVICES, "kafka", "postgres"])).split(",")
log = logging.getLogger(__name__)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(300 + 2 * SOAK_SECONDS),
    pytest.mark.skipif(os.environ.get("TEST_INFRA") == "containers" or bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
                       or bool(os.environ.get("DATABASE_URL")),
                       reason="restarts the broker and the database server, so the stack must own both"),
]

# The messages each event type owes the citizen (services/notify/messages.py TEMPLATE_FOR, restated here so
# that the test is an independent judge).
TEMPLATE = {EventType.RECEIVED: "received", EventType.SUPPLEMENT_REQUESTED: "supplement_requested",
            EventType.RESOLVED: "resolved", EventType.RESULT_RETURNED: "result_returned"}


@contextlib.asynccontextmanager
async def started(stack: Stack) -> AsyncIterator[Stack]:
    try:
        await stack.start()
        yield stack
    finally:
        await asyncio.to_thread(stack.stop)


@pytest.fixture(scope="module")
async def chaos_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    # Its own broker and database, so that the test may stop and start them.
    async with started(Stack.of_its_own(tmp_path_factory.mktemp("chaos"), partitions=3)) as running:
        yield running


@pytest.fixture(scope="module")
async def cluster_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with started(Stack.of_its_own(tmp_path_factory.mktemp("cluster"), brokers=3, partitions=3)) as running:
        yield running


@dataclass
class Planned:
    """One event a dossier's lifecycle sends, and what should become of it."""

    event: dict[str, Any]
    kind: EventType
    refused_by: str | None = None  # "intake" or "resolution": a deserved rejection


@dataclass
class Ledger:
    """What the commune system sent and what intake answered, event by event."""

    acknowledged: dict[str, list[Planned]] = field(default_factory=dict)
    notify_via: dict[str, list[str]] = field(default_factory=dict)
    refused_at_intake: set[str] = field(default_factory=set)
    wrong_answers: list[str] = field(default_factory=list)
    retries: Counter[str] = field(default_factory=Counter)
    dossiers_done: int = 0

    def expected_in_resolution(self) -> dict[str, set[str]]:
        return {code: {p.event["id"] for p in planned if p.refused_by is None}
                for code, planned in self.acknowledged.items()}

    def deserved_rejections(self) -> set[str]:
        return self.refused_at_intake | {p.event["id"] for planned in self.acknowledged.values() for p in planned
                                         if p.refused_by == "resolution"}


def lifecycle(n: int) -> tuple[str, list[str], list[Planned]]:
    """A realistic mix: left open, resolved early and returned, received long ago and resolved late, sent back
    for a supplement; some resend a resolution (resolution refuses it) and some name an unknown procedure
    (intake refuses it)."""
    code = dossier_code()
    notify_via = ["email", "sms"] if n % 4 == 0 else ["email"]
    data = received_data(channel=("online", "direct")[n % 2])
    data["applicant"]["notify_via"] = notify_via
    shape = n % 5
    late = shape == 2  # received forty days ago: long past any procedure's legal duration
    start = datetime.now(VN) - (timedelta(days=40) if late else timedelta(hours=1))

    def at(minutes: int) -> datetime:
        return datetime.now(VN) - timedelta(minutes=10 - minutes) if late else start + timedelta(minutes=minutes)

    plan = [Planned(cloudevent(EventType.RECEIVED, code, data, at=start), EventType.RECEIVED)]
    if shape in (1, 2):
        plan.append(Planned(cloudevent(EventType.RESOLVED, code, {}, at=at(1)), EventType.RESOLVED))
        plan.append(Planned(cloudevent(EventType.RESULT_RETURNED, code, {}, at=at(2)), EventType.RESULT_RETURNED))
    elif shape == 3:
        plan.append(Planned(cloudevent(EventType.SUPPLEMENT_REQUESTED, code, {
            "reason": "Thiếu bản sao giấy khai sinh", "items": ["Bản sao giấy khai sinh"]}, at=at(10)),
            EventType.SUPPLEMENT_REQUESTED))
        plan.append(Planned(cloudevent(EventType.SUPPLEMENT_RECEIVED, code, {}, at=at(20)),
                            EventType.SUPPLEMENT_RECEIVED))
        plan.append(Planned(cloudevent(EventType.RESOLVED, code, {}, at=at(30)), EventType.RESOLVED))
    elif shape == 4:
        plan.append(Planned(cloudevent(EventType.RESOLVED, code, {}, at=at(5)), EventType.RESOLVED))
        plan.append(Planned(cloudevent(EventType.RESOLVED, code, {}, at=at(6)), EventType.RESOLVED,
                            refused_by="resolution"))
    if n % 10 == 7:
        bogus = received_data()
        bogus["procedure_code"] = "9.999999.000.00.00.H99"
        plan.append(Planned(cloudevent(EventType.RECEIVED, dossier_code(), bogus), EventType.RECEIVED,
                            refused_by="intake"))
    return code, notify_via, plan


async def post_until_answered(client: httpx.AsyncClient, event: dict[str, Any], ledger: Ledger) -> httpx.Response:
    """Resend until intake answers for itself: a lost connection, a timeout or a 5xx means it (or its broker or
    database) is down, and intake dedupes a resend by (source, id)."""

    async def answered() -> httpx.Response | None:
        try:
            reply = await client.post("/v1/events", json=event,
                                      headers={"content-type": "application/cloudevents+json"})
        except httpx.HTTPError as error:
            ledger.retries[type(error).__name__] += 1
            return None
        if reply.status_code >= 500:
            ledger.retries[f"HTTP {reply.status_code}"] += 1
            return None
        return reply

    return await eventually(answered, timeout=OUTAGE_LIMIT, interval=RETRY_PAUSE,
                            what=f"intake to answer for event {event['id']}")


async def send_dossier(client: httpx.AsyncClient, code: str, notify_via: list[str], plan: list[Planned],
                       ledger: Ledger) -> None:
    ledger.notify_via[code] = notify_via
    for planned in plan:  # in order: each event waits for the previous one's answer
        reply = await post_until_answered(client, planned.event, ledger)
        if planned.refused_by == "intake":
            if reply.status_code == 422 and reply.json().get("reason") == "unknown_procedure":
                ledger.refused_at_intake.add(planned.event["id"])
            else:
                ledger.wrong_answers.append(f"{planned.event['id']}: {reply.status_code} {reply.text[:200]}")
        elif reply.status_code in (200, 202):
            # 200 is a duplicate: an earlier attempt was accepted but its answer was lost in the fault.
            ledger.acknowledged.setdefault(code, []).append(planned)
        else:
            ledger.wrong_answers.append(f"{planned.event['id']}: {reply.status_code} {reply.text[:200]}")
            return  # later events of this dossier would only be refused for the missing one
    ledger.dossiers_done += 1


async def load(stack: Stack, ledger: Ledger, stop: asyncio.Event) -> int:
    """Start RATE dossiers a second until `stop`, then let those under way finish; returns how many started."""
    slots = asyncio.Semaphore(64)  # while intake is down, stop starting dossiers rather than pile them up
    running: set[asyncio.Task[None]] = set()
    started = 0

    async def one(code: str, notify_via: list[str], plan: list[Planned]) -> None:
        try:
            await send_dossier(client, code, notify_via, plan, ledger)
        except Exception as error:  # kept for the verdict: a task's exception is otherwise only logged
            ledger.wrong_answers.append(f"{code}: {error!r}")
        finally:
            slots.release()

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.ports.intake}", timeout=20,
                                 headers={"authorization": f"Bearer {stack.api_key}"}) as client:
        while not stop.is_set():
            await slots.acquire()
            task = asyncio.create_task(one(*lifecycle(started)))
            running.add(task)
            task.add_done_callback(running.discard)
            started += 1
            # The pace of a busy province's counters, cut short as soon as the load is told to stop.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1 / RATE)
        await asyncio.gather(*running)
    return started


async def all_ready(stack: Stack) -> bool:
    async with httpx.AsyncClient(timeout=5) as client:
        for name in SERVICES:
            if stack.processes[name].poll() is not None:
                raise AssertionError(f"{name} exited with {stack.processes[name].returncode}; "
                                     f"see {stack.logs / name}.log")
            try:
                if (await client.get(f"http://127.0.0.1:{stack.ports.of(name)}/readyz")).status_code != 200:
                    return False
            except httpx.HTTPError:
                return False
    return True


async def ready_answer(stack: Stack, name: str) -> str:
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            return str((await client.get(f"http://127.0.0.1:{stack.ports.of(name)}/readyz")).status_code)
    except httpx.HTTPError as error:
        return type(error).__name__


async def resolution_events(stack: Stack, codes: list[str]) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Accepted events per dossier as resolution recorded them, and each dossier's last sequence."""
    conn = await asyncpg.connect(stack.database_url)
    try:
        rows = await conn.fetch("SELECT dossier_code, event_id FROM resolution.events WHERE sequence IS NOT NULL "
                                "AND dossier_code = ANY($1::text[])", codes)
        sequences = await conn.fetch("SELECT code, (snapshot->>'sequence')::int AS sequence "
                                     "FROM resolution.dossiers WHERE code = ANY($1::text[])", codes)
    finally:
        await conn.close()
    events: dict[str, list[str]] = {}
    for row in rows:
        events.setdefault(row["dossier_code"], []).append(row["event_id"])
    return events, {row["code"]: row["sequence"] for row in sequences}


async def deliveries(stack: Stack) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(stack.database_url)
    try:
        # Citizens' messages only: due-soon alerts to the units' webhooks are scheduled and cancelled with time.
        return list(await conn.fetch("SELECT dossier_code, event_id, channel, template, status, provider_message_id "
                                     "FROM notify.deliveries WHERE channel <> 'webhook'"))
    finally:
        await conn.close()


async def rejected_event_ids(stack: Stack) -> Counter[str]:
    """Every rejection on the topic (the stack's own broker: all of them are this test's), by event id."""
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap_servers, group_id=None,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topics.REJECTIONS, part) for part in range(stack.partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        seen: Counter[str] = Counter()

        async def read_to_end() -> bool:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    seen[json.loads(record.value).get("event_id") or "?"] += 1
            positions = {tp: await consumer.position(tp) for tp in ends}
            return all(positions[tp] >= end for tp, end in ends.items())

        await eventually(read_to_end, 60, what="the rejections topic read to its end")
        return seen
    finally:
        await consumer.stop()


LoadFlows = Callable[[str], Awaitable[None]]
"""Waits until PROGRESS more dossiers are through; the argument says what for."""
Fault = tuple[str, Callable[[], Awaitable[None]]]


async def test_every_service_killed_and_the_broker_and_database_restarted_under_load_lose_nothing(
        chaos_stack: Stack) -> None:
    def faults(load_flows: LoadFlows) -> list[Fault]:
        every: dict[str, Fault] = {
            **{name: (f"SIGKILL {name}", functools.partial(chaos_stack.restart_service, name)) for name in SERVICES},
            "kafka": ("restart Kafka", chaos_stack.restart_kafka),
            "postgres": ("restart PostgreSQL", chaos_stack.restart_postgres),
        }
        return [every[name] for name in FAULTS]

    await faults_under_load(chaos_stack, faults, notify_kills_a_round=FAULTS.count("notify"))


async def test_each_broker_of_a_three_node_cluster_killed_under_load_loses_nothing(cluster_stack: Stack) -> None:
    """Topics keep three copies and a write needs two: with any one broker dead the platform goes on (its
    partitions get new leaders), and the broker catches up when it is back."""
    assert isinstance(cluster_stack.kafka, LocalKafkaCluster)
    nodes = cluster_stack.kafka.nodes

    def faults(load_flows: LoadFlows) -> list[Fault]:
        def kill(node: LocalKafka) -> Callable[[], Awaitable[None]]:
            async def fault() -> None:
                node.kill()
                await load_flows(f"{PROGRESS} dossiers through with broker {node.node_id} dead")
                await asyncio.to_thread(node.start)
                await node.wait_ready()
            return fault
        return [(f"SIGKILL broker {node.node_id} of {len(nodes)}", kill(node)) for node in nodes]

    await faults_under_load(cluster_stack, faults, notify_kills_a_round=0)


async def faults_under_load(stack: Stack, faults_for: Callable[[LoadFlows], list[Fault]], *,
                            notify_kills_a_round: int) -> None:
    """Injects each fault in turn (repeated for SOAK_SECONDS) while a commune system keeps sending, waiting
    for load to flow again between them, then reconciles everything (module docstring)."""
    ledger = Ledger()
    stop = asyncio.Event()
    began = time.monotonic()
    sender = asyncio.create_task(load(stack, ledger, stop))

    async def progressed(mark: int) -> bool:
        if sender.done():
            sender.result()  # the sender's own failure, surfaced
        return ledger.dossiers_done >= mark + PROGRESS

    async def load_flows(what: str) -> None:
        try:
            await eventually(functools.partial(progressed, ledger.dossiers_done), 120, what=what)
        except AssertionError as stalled:
            ready = {name: await ready_answer(stack, name) for name in SERVICES}
            raise AssertionError(f"{stalled}; senders' retries {dict(ledger.retries)}; readiness {ready}") from None

    faults = faults_for(load_flows)
    timeline: list[tuple[str, float]] = []
    rounds = 0
    try:
        while rounds == 0 or time.monotonic() - began < SOAK_SECONDS:
            for what, fault in faults:
                await load_flows(f"{PROGRESS} dossiers through before: {what}")
                started = time.monotonic()
                log.info("%s after %d dossiers", what, ledger.dossiers_done)
                await fault()
                # Recovered: every service ready again and load flowing (the next round's wait) without help.
                await eventually(lambda: all_ready(stack), 120, what=f"every service ready after: {what}")
                timeline.append((what, time.monotonic() - started))
            rounds += 1
        await load_flows("load flowing after the last fault")
    except BaseException:
        sender.cancel()  # the senders would resend forever to a platform that did not recover
        raise
    finally:
        stop.set()
    started_dossiers = await sender
    load_seconds = time.monotonic() - began
    assert not ledger.wrong_answers, ledger.wrong_answers[:10]
    assert ledger.dossiers_done == started_dossiers

    # 1. Every acknowledged event is in resolution exactly once, and each dossier's sequence counts them once.
    expected = ledger.expected_in_resolution()
    codes = sorted(expected)

    async def resolution_complete() -> tuple[dict[str, list[str]], dict[str, int]] | None:
        found, sequences = await resolution_events(stack, codes)
        done = all(len(found.get(code, [])) >= len(ids) for code, ids in expected.items())
        return (found, sequences) if done else None

    found, sequences = await eventually(resolution_complete, 180, what="every acknowledged event in resolution")
    doubled = {code: ids for code, ids in found.items() if len(ids) != len(set(ids))}
    assert not doubled
    assert {code: set(ids) for code, ids in found.items()} == expected
    assert sequences == {code: len(ids) for code, ids in expected.items()}

    # 2. Metrics equal resolution's truth, stored and exported.
    metrics_url = f"http://127.0.0.1:{stack.ports.metrics}/metrics"

    async def agreed() -> bool:
        return not await reconcile(stack.database_url, [metrics_url])

    try:
        await eventually(agreed, 120, what="metrics equal to resolution's truth")
    except AssertionError:
        differences = await reconcile(stack.database_url, [metrics_url])
        raise AssertionError(f"{len(differences)} differences, e.g. {differences[:10]}") from None

    # 3. Every message owed was sent, once: each (dossier, event, channel) has one delivery row, delivered,
    # and the providers received exactly one message per row.
    owed: Counter[tuple[str, str, str]] = Counter()
    for code, planned in ledger.acknowledged.items():
        for p in planned:
            if p.refused_by is None and p.kind in TEMPLATE:
                for channel in ledger.notify_via[code]:
                    owed[(code, TEMPLATE[p.kind], channel)] += 1

    async def all_delivered() -> list[asyncpg.Record] | None:
        rows = await deliveries(stack)
        return rows if len(rows) == sum(owed.values()) and all(r["status"] == "delivered" for r in rows) else None

    try:
        rows = await eventually(all_delivered, 180, what="every owed message delivered")
    except AssertionError:
        rows = await deliveries(stack)
        raise AssertionError(f"{len(rows)} deliveries for {sum(owed.values())} owed; not delivered: "
                             f"{[dict(r) for r in rows if r['status'] != 'delivered'][:5]}") from None
    assert Counter((r["dossier_code"], r["template"], r["channel"]) for r in rows) == owed
    # A SIGKILL between a provider taking a message and notify recording it makes notify send it again after the
    # restart, under the same Message-ID (email) or idempotency key (SMS) so that the provider drops the copy.
    # Each of a channel's senders has one message in flight at a time, so each notify kill may leave at most
    # that many such copies per channel.
    copies_allowed = rounds * notify_kills_a_round * NotifySettings.model_fields["senders_per_channel"].default
    mails = Counter(mail["message_id"] for mail in read_mail(stack.outbox_dir / "mail"))
    assert set(mails) == {r["provider_message_id"] for r in rows if r["channel"] == "email"}
    assert sum(n - 1 for n in mails.values()) <= copies_allowed, {m: n for m, n in mails.items() if n != 1}
    gateway_log = stack.outbox_dir / "gateway.jsonl"
    texts = Counter(json.loads(line)["payload"]["idempotency_key"]
                    for line in gateway_log.read_text(encoding="utf-8").splitlines() if line)
    assert set(texts) == {f"{r['dossier_code']}:{r['event_id']}:{r['channel']}" for r in rows
                          if r["channel"] == "sms"}
    assert sum(n - 1 for n in texts.values()) <= copies_allowed, {k: n for k, n in texts.items() if n != 1}
    repeats = sum(n - 1 for n in mails.values()) + sum(n - 1 for n in texts.values())

    # 4. Every rejection was deserved, and every deserved one was made.
    rejected = await rejected_event_ids(stack)
    assert set(rejected) == ledger.deserved_rejections()

    events = sum(len(planned) for planned in ledger.acknowledged.values())
    print(f"\nchaos: {started_dossiers} dossiers, {events} events acknowledged, {len(rows)} messages, "
          f"{repeats} repeats for providers to drop, {sum(rejected.values())} rejections ({len(rejected)} events), "
          f"{rounds} round(s) of faults in "
          f"{load_seconds:.0f}s of load; retries {dict(ledger.retries)}; "
          + ", ".join(f"{what} {seconds:.1f}s" for what, seconds in timeline))
