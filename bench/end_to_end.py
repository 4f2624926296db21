"""Lifecycle events per second end to end, ingress-to-counter latency, and what each process of the stack costs.

Starts a whole stack of its own (Kafka, PostgreSQL, sinks, intake, resolution, metrics, notify; no simulator)
and sends realistic dossier lifecycles (the simulator's procedure mix: supplements, fees, pauses, rejections,
withdrawals, backdated ones that finish late) to intake: over HTTP in batches, and a share (`--kafka-share`)
as signed records on the ingress topic. Dossiers are split over lanes, each sending in order, so that no
dossier's events overtake each other. Measures:

- sustained events/s: from the first send until resolution has judged every event sent and metrics' counters
  (tthc_dossiers_received_total, tthc_dossiers_completed_total) show every dossier received and completed;
- latency from ingress to a visible counter: every `--probe-interval` seconds one marked dossier is received at
  a unit no load goes to, and metrics' /metrics is polled until that unit's received counter moves;
- CPU seconds and peak RSS of every process of the stack (children included: postgres backends, the broker's
  JVM) and of the load generator itself;
- in the same run, with the stack's services stopped, the floor on the same payloads: raw produce, consume and
  inserts each alone (bench.resolution_throughput's functions), and the pipeline's floor (bench.pipeline_floor:
  the Kafka and PostgreSQL work of every stage, all at once, without the services' logic), with CPU per event
  of each part of the stack beside this run's.

    .venv/bin/python -m bench.end_to_end --rate 1000 --seconds 60
    .venv/bin/python -m bench.end_to_end --max --seconds 60

Writes JSON, a Markdown table and a PNG plot of throughput and latency over time to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench import logic_floor, pipeline_floor
from bench.metrics_memory import percentile
from bench.plot import plot
from bench.processes import ProcessWatch, database_backends, postmaster_pid
from bench.resolution_throughput import RESULTS, consume_all, produce, progress_bar, raw_inserts
from services.intake.ingress import sign
from services.notify.messages import CHANNELS, WEBHOOK
from shared.catalog import Catalog
from shared.clock.deadline import LOCAL_ZONE as VN
from shared.contract import topics
from shared.contract.events import EventType, schema_uri
from shared.infra.stack import Stack
from shared.kafka import send_batched
from shared.simulator import SOURCE, Simulator

TERMINAL = {t.cloudevents_type for t in (EventType.RESOLVED, EventType.REJECTED, EventType.WITHDRAWN)}
RECEIVED = EventType.RECEIVED.cloudevents_type
FLOOR_TOPIC = "bench.floor.v1"
FLOOR_SAMPLE = 100_000
LOGIC_SAMPLE = 30_000
TARGET_RATE = 5_000
"""Events a second end to end that DESIGN §5 asks of two cores."""


class LaneSimulator(Simulator):
    """The simulator's lifecycles with dossier codes of its own lane (no collisions between lanes)."""

    def __init__(self, catalog: Catalog, rng: random.Random, lane: int) -> None:
        super().__init__(catalog, rng)
        self.prefix = f"{chr(65 + lane // 26)}{chr(65 + lane % 26)}"

    def _code(self, unit_code: str, received: datetime) -> str:
        key = (unit_code, received.astimezone(VN).strftime("%y%m%d"))
        self.day_sequence[key] = self.day_sequence.get(key, 0) + 1
        return f"000.00.24.{unit_code}-{key[1]}-{self.prefix}{self.day_sequence[key]:06d}"


@dataclass
class Batch:
    """One send of a lane: its events, their bytes, and for a Kafka lane each record's signature headers."""

    events: list[dict[str, Any]]
    payloads: list[bytes]
    signatures: list[list[tuple[str, bytes]]] | None


@dataclass
class Tally:
    sent: int = 0
    accepted_http: int = 0
    rejected_http: int = 0
    sent_kafka: int = 0
    received: int = 0
    completed: int = 0
    first_send: float | None = None
    last_send: float | None = None
    payloads: list[tuple[bytes, bytes]] = field(default_factory=list)

    def count(self, event: dict[str, Any], payload: bytes) -> None:
        if event["type"] == RECEIVED:
            self.received += 1
        elif event["type"] in TERMINAL:
            self.completed += 1
        if len(self.payloads) < FLOOR_SAMPLE:
            self.payloads.append((str(event["subject"]).encode(), payload))


@dataclass
class Observed:
    judged: int = 0
    received: int = 0
    completed: int = 0
    probe_received: int = 0


class Scraper:
    """GETs a service's `/metrics` over one kept-alive connection. The probe reads metrics twenty times a second,
    and httpx spent about 5 ms of this process's CPU on each request, on the two cores the stack runs on: nearly
    idle, this process used 0.10-0.11 cores with httpx and 0.04 with this."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self, *names: str) -> str:
        """The exposition of the families `names`; ConnectionError when the service did not answer with one."""
        request = f"GET /metrics?{urlencode([('name[]', name) for name in names])} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        try:
            if self._streams is None:
                self._streams = await asyncio.open_connection("127.0.0.1", self.port)
            reader, writer = self._streams
            writer.write(request.encode())
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower().split("\r\n")
            length = next(int(line.split(":", 1)[1]) for line in head if line.startswith("content-length:"))
            body = await reader.readexactly(length)
            if head[0].split()[1] != "200":
                raise ConnectionError(f"/metrics answered {head[0]}")
            return body.decode()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, StopIteration, ValueError) as error:
            await self.close()
            raise ConnectionError(f"no exposition from port {self.port}: {error!r}") from error

    async def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


def scan_metrics(text: str, probe_unit: str) -> tuple[int, int, int]:
    """(received, completed, received at the probe unit) from a Prometheus exposition."""
    received = completed = probe = 0
    for line in text.splitlines():
        if line.startswith("tthc_dossiers_received_total{"):
            value = int(float(line.rsplit(" ", 1)[1]))
            received += value
            if f'unit="{probe_unit}"' in line:
                probe += value
        elif line.startswith("tthc_dossiers_completed_total{"):
            completed += int(float(line.rsplit(" ", 1)[1]))
    return received, completed, probe


def scan_judged(text: str) -> int:
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith("tthc_resolution_events_total{"))


WAITING = ("queued", "sending", "temporary-failure")


def deliveries(text: str) -> dict[str, int]:
    """Notify's messages by delivery status, all channels summed, from its exposition."""
    found: dict[str, int] = {}
    for sample, value in counter(text, "tthc_notification_deliveries").items():
        status = sample.split('status="', 1)[1].split('"', 1)[0]
        found[status] = found.get(status, 0) + int(value)
    return found


def counter(text: str, name: str) -> dict[str, float]:
    return {line.split(" ")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(name + "{")}


# ---------------------------------------------------------------- processes: CPU and RSS from /proc

# ---------------------------------------------------------------- the run

@dataclass
class Run:
    stack: Stack
    rate: float | None
    seconds: float
    lanes: int
    batch: int
    kafka_share: float
    probe_interval: float
    probe_unit: str
    tally: Tally = field(default_factory=Tally)
    observed: Observed = field(default_factory=Observed)
    probes_sent: list[float] = field(default_factory=list)
    probe_latency: list[tuple[float, float]] = field(default_factory=list)
    probe_codes: list[tuple[str, float]] = field(default_factory=list)  # (dossier code, wall-clock send time)
    timeline: list[dict[str, float]] = field(default_factory=list)
    sending: bool = True
    started: float = 0.0

    @property
    def kafka_lanes(self) -> int:
        return round(self.lanes * self.kafka_share)

    def event_bytes(self, event: dict[str, Any]) -> bytes:
        return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()

    def batches(self, number: int, catalog: Catalog, kafka: bool, begin: datetime) -> Iterator[Batch]:
        """Lane `number`'s batches, one send each. Events carry times from `begin` on, a batch's worth of the
        lane's rate apart (a `--max` run's as they are made), so none is later than when it is sent."""
        simulator = LaneSimulator(catalog, random.Random(1000 + number), number)
        step = timedelta(seconds=self.batch * self.lanes / self.rate) if self.rate else None
        for made in itertools.count():
            events = simulator.next_events(begin + made * step if step else datetime.now(UTC), self.batch)
            payloads = [self.event_bytes(event) for event in events]
            yield Batch(events, payloads,
                        [sign(self.stack.api_key, payload) for payload in payloads] if kafka else None)

    def prepare(self, number: int, catalog: Catalog, kafka: bool) -> Iterator[Batch]:
        """The lane's batches made before the clock starts, so that the load generator's CPU during the run is
        sending, not simulating and encoding (two fifths of it in a profile), on the same two cores as the stack:
        a rate run's all of them, a `--max` run's as many as DESIGN §5's rate would send in the run (about 2 KB
        of memory an event), then made as they go. In a `--max` run the Kafka lanes make that many between them,
        the HTTP lanes their share each: a Kafka lane waits for no answer, and sent three quarters or more of the
        events alone, making most of them during the run when it had only its share."""
        made = self.batches(number, catalog, kafka, datetime.now(UTC))
        sharing = self.lanes if self.rate or not kafka else self.kafka_lanes
        ahead = math.ceil(self.seconds * (self.rate or TARGET_RATE) / sharing / self.batch) + 1
        return itertools.chain(list(itertools.islice(made, ahead)), made)

    async def lane(self, batches: Iterator[Batch], client: httpx.AsyncClient,
                   producer: AIOKafkaProducer | None) -> None:
        per_lane = self.rate / self.lanes if self.rate else None
        interval = self.batch / per_lane if per_lane else 0.0
        due = time.perf_counter()
        while time.perf_counter() - self.started < self.seconds:
            if interval:
                due += interval
            batch = next(batches)
            events, payloads = batch.events, batch.payloads
            now = time.perf_counter()
            self.tally.first_send = self.tally.first_send or now
            if producer is not None:
                # As a commune's system would send a batch: record batches built at once, not a send per event.
                await (await send_batched(producer, [(topics.INGRESS, str(event["subject"]).encode(), payload)
                                                     for event, payload in zip(events, payloads, strict=True)],
                                          batch.signatures or ()))
                self.tally.sent_kafka += len(events)
                counted = {str(event["id"]) for event in events}
            else:
                body = b"[" + b",".join(payloads) + b"]"
                reply = await client.post("/v1/events", content=body,
                                          headers={"content-type": "application/cloudevents-batch+json"})
                results = reply.json().get("results", []) if reply.status_code in (202, 207) else []
                counted = {str(event["id"]) for event, result in zip(events, results, strict=False)
                           if result.get("status") == "accepted"}
                self.tally.accepted_http += len(counted)
                self.tally.rejected_http += len(events) - len(counted)
            for event, payload in zip(events, payloads, strict=True):
                if event["id"] in counted:
                    self.tally.count(event, payload)
            self.tally.sent += len(events)
            self.tally.last_send = time.perf_counter()
            if interval:
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
            else:
                await asyncio.sleep(0)

    async def probes(self, client: httpx.AsyncClient) -> None:
        day = datetime.now(VN).strftime("%y%m%d")
        procedure = next(iter(Catalog.load().procedures))
        applicant = {"full_name": "Nguyễn Văn Đo", "id_number": "001234567890", "phone": "0900000000",
                     "email": "probe@example.vn", "notify_via": ["email"]}
        number = 0
        while self.sending:
            number += 1
            event = {"specversion": "1.0", "id": f"probe-{number}", "source": SOURCE, "type": RECEIVED,
                     "subject": f"000.00.24.{self.probe_unit}-{day}-PR{number:06d}",
                     "time": datetime.now(UTC).isoformat(), "datacontenttype": "application/json",
                     "dataschema": schema_uri(EventType.RECEIVED),
                     "data": {"procedure_code": procedure, "unit_code": self.probe_unit, "channel": "online",
                              "applicant": applicant}}
            self.probes_sent.append(time.perf_counter())
            self.probe_codes.append((str(event["subject"]), time.time()))
            reply = await client.post("/v1/events", content=self.event_bytes(event),
                                      headers={"content-type": "application/cloudevents+json"})
            if reply.status_code == 202:
                self.tally.sent += 1
                self.tally.accepted_http += 1
                self.tally.received += 1
            else:
                print(f"probe refused ({reply.status_code}): {reply.text[:200]}", file=sys.stderr)
                self.probes_sent.pop()
                self.probe_codes.pop()
            await asyncio.sleep(self.probe_interval)

    async def watch_metrics(self) -> None:
        scraper = Scraper(self.stack.ports.metrics)
        # Only the counters read here (a full export twenty times a second was half of metrics' CPU), and the
        # completed counter, three times the received one's series, only twice a second while sending: the run
        # can end only once sending has, and from then on it is read at every poll.
        received_only = ["tthc_dossiers_received_total"]
        both = [*received_only, "tthc_dossiers_completed_total"]
        polls = 0
        while True:
            polls += 1
            with contextlib.suppress(ConnectionError):
                read_both = not self.sending or polls % 10 == 0
                text = await scraper.get(*(both if read_both else received_only))
                received, completed, probe = scan_metrics(text, self.probe_unit)
                now = time.perf_counter()
                self.observed.received = received
                if read_both:
                    self.observed.completed = completed
                while self.observed.probe_received < min(probe, len(self.probes_sent)):
                    sent = self.probes_sent[self.observed.probe_received]
                    self.probe_latency.append((sent - self.started, now - sent))
                    self.observed.probe_received += 1
            await asyncio.sleep(0.05)

    async def watch_resolution(self, processes: ProcessWatch) -> None:
        scraper = Scraper(self.stack.ports.resolution)
        last_print = 0.0
        while True:
            with contextlib.suppress(ConnectionError):
                self.observed.judged = scan_judged(await scraper.get("tthc_resolution_events_total"))
            processes.sample()
            now = time.perf_counter() - self.started
            recent = [lat for at, lat in self.probe_latency if at > now - 5]
            self.timeline.append({"t": round(now, 1), "sent": self.tally.sent, "judged": self.observed.judged,
                                  "received": self.observed.received, "completed": self.observed.completed,
                                  "probe_p50_5s": round(percentile(recent, 0.5), 3) if recent else -1})
            if now - last_print >= 5:
                last_print = now
                phase = "sending" if self.sending else "draining"
                expected = self.tally.accepted_http + self.tally.sent_kafka
                done = (min(1.0, now / self.seconds) if self.sending
                        else min(1.0, self.observed.judged / expected) if expected else 1.0)
                print(f"  {progress_bar(done)} [{now:6.1f}s {phase}] sent {self.tally.sent:>8}  "
                      f"judged {self.observed.judged:>8}  "
                      f"received {self.observed.received:>7}/{self.tally.received:<7} completed "
                      f"{self.observed.completed:>7}/{self.tally.completed:<7} probe p50(5s) "
                      f"{self.timeline[-1]['probe_p50_5s']:.3f}s", file=sys.stderr, flush=True)
            await asyncio.sleep(1.0)

    def caught_up(self) -> bool:
        expected = self.tally.accepted_http + self.tally.sent_kafka
        return (self.observed.judged >= expected and self.observed.received >= self.tally.received
                and self.observed.completed >= self.tally.completed)


async def floor(stack: Stack, records: list[tuple[bytes, bytes]], partitions: int) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(FLOOR_TOPIC, num_partitions=partitions,
                                            replication_factor=stack.replicas)])
    finally:
        await admin.close()
    produce_rate = await produce(stack.bootstrap_servers, FLOOR_TOPIC, records)
    consume_rate = await consume_all(stack.bootstrap_servers, FLOOR_TOPIC, len(records))
    insert_rate = await raw_inserts(stack.database_url, records)
    return {"records": len(records), "aiokafka_produce_per_s": round(produce_rate),
            "aiokafka_consume_per_s": round(consume_rate), "asyncpg_insert_per_s": round(insert_rate)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="tthc-e2e-bench-"))
    stack = Stack.of_its_own(home, brokers=args.brokers, partitions=args.partitions)
    for variable in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"):
        os.environ.pop(variable, None)  # a stack of its own, never a shared one
    os.environ["TTHC_LOG_LEVEL"] = "WARNING"
    if args.providers_unlimited:  # every message sent as soon as it is owed, its CPU counted with the run's
        os.environ["NOTIFY_RATE_PER_SECOND"] = json.dumps(dict.fromkeys((*CHANNELS, WEBHOOK), 100_000.0))
        os.environ["NOTIFY_RATE_BURST"] = json.dumps(dict.fromkeys((*CHANNELS, WEBHOOK), 1_000))
    print(f"starting a stack in {home} ...", file=sys.stderr, flush=True)
    try:
        await stack.start()
        catalog = Catalog.load()
        communes = sorted(code for code, unit in catalog.units.items() if unit.level == "commune")
        probe_unit = communes[-1]
        load_catalog = dataclasses.replace(catalog, units={code: unit for code, unit in catalog.units.items()
                                                           if code != probe_unit})
        run = Run(stack, None if args.max else args.rate, args.seconds, args.lanes, args.batch, args.kafka_share,
                  args.probe_interval, probe_unit)
        roots = {process.pid: name for name, process in stack.processes.items()}
        roots.update(dict.fromkeys(stack.kafka_pids, "kafka"))
        if (pid := postmaster_pid(stack.postgres.data_dir if stack.postgres else None)) is not None:
            roots[pid] = "postgres"
        roots[os.getpid()] = "load generator (this bench)"
        processes = ProcessWatch(roots)
        kafka_lanes = run.kafka_lanes
        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap_servers, linger_ms=5,
                                    enable_idempotence=True) if kafka_lanes else None
        if producer is not None:
            await producer.start()
        headers = {"authorization": f"Bearer {stack.api_key}"}
        limits = httpx.Limits(max_connections=args.lanes + 4)
        print(f"sending {'as fast as intake takes' if args.max else f'{args.rate:g} events/s'} for "
              f"{args.seconds:g}s over {args.lanes} lanes ({kafka_lanes} over Kafka), batches of {args.batch}",
              file=sys.stderr, flush=True)
        lanes = [run.prepare(n, load_catalog, kafka=n < kafka_lanes) for n in range(args.lanes)]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.ports.intake}", headers=headers,
                                     timeout=120, limits=limits) as client, \
                httpx.AsyncClient(timeout=10) as watcher:
            processes.mark_start()
            run.started = time.perf_counter()
            watchers = [asyncio.create_task(run.watch_metrics()),
                        asyncio.create_task(run.watch_resolution(processes))]
            probe_task = asyncio.create_task(run.probes(client))
            await asyncio.gather(*(run.lane(batches, client, producer if n < kafka_lanes else None)
                                   for n, batches in enumerate(lanes)))
            run.sending = False
            await probe_task
            send_end = time.perf_counter()
            stalled_since, last_progress = time.perf_counter(), (-1, -1, -1)
            while not run.caught_up():
                progress = (run.observed.judged, run.observed.received, run.observed.completed)
                if progress != last_progress:
                    stalled_since, last_progress = time.perf_counter(), progress
                elif time.perf_counter() - stalled_since > args.stall:
                    print("counters stopped moving before everything sent was reflected", file=sys.stderr)
                    break
                await asyncio.sleep(0.1)
            done = time.perf_counter()
            await asyncio.sleep(1.2)  # a last sample of every process
            for task in watchers:
                task.cancel()
            processes.sample()
            processes.rename(await database_backends(stack.database_url))
            notifications = deliveries((await watcher.get(f"http://127.0.0.1:{stack.ports.notify}/metrics")).text)
            intake_text = (await watcher.get(f"http://127.0.0.1:{stack.ports.intake}/metrics")).text
            resolution_text = (await watcher.get(f"http://127.0.0.1:{stack.ports.resolution}/metrics")).text
        if producer is not None:
            await producer.stop()
        first = run.tally.first_send or run.started
        wall = done - first
        expected = run.tally.accepted_http + run.tally.sent_kafka
        latencies = [latency for _, latency in run.probe_latency]
        steady = [latency for at, latency in run.probe_latency if at >= args.warmup]
        probed = {code: (sent, latency) for (code, sent), (_, latency) in zip(run.probe_codes, run.probe_latency,
                                                                               strict=False)}
        legs = await probe_legs(stack.bootstrap_servers, probed)
        for name in list(stack.processes):  # the floors have the box to themselves
            await asyncio.to_thread(stack.stop_process, name)
        print("measuring the floor on the same payloads ...", file=sys.stderr, flush=True)
        floor_rates = await floor(stack, run.tally.payloads, args.partitions)
        print("measuring the pipeline's floor on the same payloads ...", file=sys.stderr, flush=True)
        pipeline = await pipeline_floor.measure(stack.bootstrap_servers, stack.database_url, run.tally.payloads,
                                                args.partitions, {pid: name for pid, name in roots.items()
                                                                  if name in ("kafka", "postgres")},
                                                replication=stack.replicas)
        floor_rates["pipeline_events_per_s"] = pipeline["events_per_s"]
        print("measuring the logic's floor on the same payloads ...", file=sys.stderr, flush=True)
        logic = logic_floor.measure([payload for _, payload in run.tally.payloads[:LOGIC_SAMPLE]])
        used = processes.report(wall)
        e2e_rate = run.observed.judged / wall if wall else float("nan")
        return {
            "benchmark": "end_to_end",
            "measured_at": datetime.now(UTC).isoformat(),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version(), "processor": platform.processor() or platform.machine()},
            "settings": {"mode": "max" if args.max else "rate", "rate": None if args.max else args.rate,
                         "seconds": args.seconds, "lanes": args.lanes, "kafka_lanes": kafka_lanes,
                         "batch": args.batch, "partitions": args.partitions, "probe_interval": args.probe_interval,
                         "brokers": args.brokers, "topic_copies": stack.replicas,
                         "providers_unlimited": args.providers_unlimited},
            "sent": {"events": run.tally.sent, "accepted_http": run.tally.accepted_http,
                     "rejected_http": run.tally.rejected_http, "over_kafka": run.tally.sent_kafka,
                     "dossiers_received": run.tally.received, "dossiers_completed": run.tally.completed},
            "reflected": {"judged": run.observed.judged, "received": run.observed.received,
                          "completed": run.observed.completed, "complete": run.caught_up(),
                          "resolution_verdicts": counter(resolution_text, "tthc_resolution_events_total"),
                          "intake_outcomes": counter(intake_text, "tthc_intake_events_total")},
            "send_seconds": round(send_end - first, 2),
            "drain_seconds": round(done - send_end, 2),
            "end_to_end_seconds": round(wall, 2),
            "offered_events_per_s": round(run.tally.sent / (send_end - first)) if send_end > first else 0,
            "end_to_end_events_per_s": round(e2e_rate),
            "expected_events": expected,
            "latency_s": {**latency_summary(latencies), "sent": len(run.probes_sent), "poll_interval": 0.05},
            "latency_after_warmup_s": {**latency_summary(steady), "warmup_s": args.warmup},
            "latency_legs_s": legs,
            "notifications_at_end": notifications,
            "processes": used,
            "floor": floor_rates,
            "pipeline_floor": pipeline,
            "logic_floor": logic,
            "cpu_us_per_event": cpu_by_part(processes.cpu_seconds(), run.observed.judged, pipeline, logic),
            "ratios": {f"end_to_end / {name}": round(e2e_rate / value, 3)
                       for name, value in floor_rates.items() if name != "records" and value},
            "timeline": run.timeline,
            "probes": [[round(at, 2), round(latency, 3)] for at, latency in run.probe_latency],
        }
    finally:
        await asyncio.to_thread(stack.stop)
        for data in ("kafka", "postgres"):  # a gigabyte a run; the services' logs stay
            shutil.rmtree(home / data, ignore_errors=True)


LEGS = ("intake", "waiting for resolution", "resolution and its relay", "metrics and the probe's poll")


async def probe_legs(bootstrap: str, probes: dict[str, tuple[float, float]], accepted_topic: str = topics.ACCEPTED,
                     lifecycle_topic: str = topics.LIFECYCLE) -> dict[str, dict[str, float | None]]:
    """Where each probe's latency went, from the timestamps its events carry: sent (wall clock, here) → its
    accepted record (intake's producer) → `recorded_at` of its canonical event (when resolution's batch began
    judging it) → the canonical record (the outbox relay's producer) → seen on the counter (sent + latency).
    `probes` maps a probe's dossier code to (sent, latency); one leg of a probe is left out if a record is
    missing. Read after the run from both topics, so the stack never pays for it."""
    accepted: dict[str, float] = {}
    canonical: dict[str, tuple[float, float]] = {}  # code → (recorded_at, record's timestamp)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                max_partition_fetch_bytes=4 * 1024 * 1024)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([accepted_topic, lifecycle_topic])
    finally:
        await admin.close()
    await consumer.start()
    try:
        for topic in (accepted_topic, lifecycle_topic):
            partitions = [TopicPartition(topic, partition["partition"]) for description in described
                          if description["topic"] == topic for partition in description["partitions"]]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                for records in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                    for record in records:
                        code = (record.key or b"").decode()
                        if code not in probes:
                            continue
                        if topic == accepted_topic:
                            accepted.setdefault(code, record.timestamp / 1000)
                        elif (body := json.loads(record.value or b"{}")).get("sequence") == 1:
                            recorded = datetime.fromisoformat(body["recorded_at"]).timestamp()
                            canonical.setdefault(code, (recorded, record.timestamp / 1000))
    finally:
        await consumer.stop()
    legs: dict[str, list[float]] = {leg: [] for leg in LEGS}
    for code, (sent, latency) in probes.items():
        marks = [sent, accepted.get(code), *canonical.get(code, (None, None)), sent + latency]
        for leg, begin, end in zip(LEGS, marks, marks[1:], strict=False):
            if begin is not None and end is not None:
                legs[leg].append(end - begin)
    return {leg: latency_summary(values) for leg, values in legs.items()}


PARTS = ("intake", "resolution", "metrics", "notify")


def cpu_by_part(cpu_seconds: dict[str, float], events: int, pipeline: dict[str, Any],
                logic: dict[str, Any]) -> dict[str, dict[str, float]]:
    """CPU per event of each part of the stack, in this run, in the pipeline's floor and in the logic's floor:
    each service with its PostgreSQL backends, the broker, the rest of PostgreSQL, and what sends the load.
    What a service spent beyond both floors is its glue."""
    def parts(us: dict[str, float], prefix: str, load: tuple[str, ...]) -> dict[str, float]:
        out = {part: us.get(f"{prefix}{part}", 0.0) + us.get(f"postgres: {prefix}{part}", 0.0) for part in PARTS}
        out["kafka"] = us.get("kafka", 0.0)
        out["postgres, shared"] = sum((value for name, value in us.items() if name.startswith("postgres")
                                      and name.removeprefix("postgres: ").removeprefix(prefix) not in PARTS), 0.0)
        out["load and sinks"] = sum(us.get(name, 0.0) for name in load)
        out["total"] = sum(out.values())
        return out

    run = parts({name: 1e6 * value / events for name, value in cpu_seconds.items()} if events else {}, "",
                ("load generator (this bench)", "sinks"))
    floor = parts(pipeline["cpu_us_per_event"], "floor ", ("floor source",))
    own = {part: logic["cpu_us_per_event"].get(part, 0.0) for part in run if part != "total"}
    own["total"] = sum(own.values())
    return {part: {"end_to_end": round(run[part], 1), "pipeline_floor": round(floor[part], 1),
                   "logic_floor": round(own[part], 1), "glue": round(run[part] - floor[part] - own[part], 1)}
            for part in run}


def latency_summary(latencies: list[float]) -> dict[str, float | None]:
    return {"probes": len(latencies), **{name: round(percentile(latencies, share), 3) if latencies else None
                                         for name, share in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99),
                                                             ("max", 1.0))}}


def markdown(result: dict[str, Any]) -> str:
    settings, latency = result["settings"], result["latency_s"]
    machine = result["machine"]
    lines = [
        f"# End to end, {result['measured_at'][:19]}Z",
        "",
        f"Machine: {machine['cpus']} CPUs, {machine['platform']}, Python {machine['python']}. Mode "
        f"{settings['mode']}" + (f" at {settings['rate']:g} events/s" if settings["rate"] else "")
        + f" for {settings['seconds']:g} s, {settings['lanes']} lanes ({settings['kafka_lanes']} over Kafka), "
        f"batches of {settings['batch']}, {settings['partitions']} partitions"
        + (f", {settings['brokers']} brokers ({settings['topic_copies']} copies of each topic)"
           if settings.get("brokers", 1) > 1 else "")
        + (", notify's providers without rate limits" if settings.get("providers_unlimited") else "") + ".",
        "",
        "| measure | value |",
        "|---|---|",
        f"| events sent (accepted by intake over HTTP / over Kafka) | {result['sent']['events']:,} "
        f"({result['sent']['accepted_http']:,} / {result['sent']['over_kafka']:,}) |",
        f"| offered rate | {result['offered_events_per_s']:,} events/s |",
        f"| end to end (first send until counters reflect all) | {result['end_to_end_events_per_s']:,} events/s "
        f"over {result['end_to_end_seconds']} s (drain {result['drain_seconds']} s) |",
        f"| everything reflected | {result['reflected']['complete']} |",
        f"| ingress → visible counter p50 / p95 / p99 / max ({latency['probes']} probes) | "
        f"{latency['p50']} / {latency['p95']} / {latency['p99']} / {latency['max']} s |",
    ]
    if (steady := result.get("latency_after_warmup_s")) is not None:
        lines.append(f"| the same, probes sent after the first {steady['warmup_s']:g} s ({steady['probes']} probes) | "
                     f"{steady['p50']} / {steady['p95']} / {steady['p99']} / {steady['max']} s |")
    for leg, summary in result.get("latency_legs_s", {}).items():
        lines.append(f"| … of which {leg}, p50 / p95 / p99 / max | "
                     f"{summary['p50']} / {summary['p95']} / {summary['p99']} / {summary['max']} s |")
    if (sent := result.get("notifications_at_end")) is not None:
        lines.append(f"| citizens' messages when the counters caught up: delivered / waiting (providers' rate "
                     f"limits as set) | {sent.get('delivered', 0):,} / "
                     f"{sum(sent.get(status, 0) for status in WAITING):,} |")
    for name, value in result["floor"].items():
        if name != "records":
            lines.append(f"| floor: {name.replace('_', ' ')} | {value:,} |")
    for name, value in result["ratios"].items():
        lines.append(f"| ratio {name} | {value} |")
    pipeline = result["pipeline_floor"]
    lines += ["", f"Pipeline floor (bench/pipeline_floor.py, the same payloads): {pipeline['events_per_s']:,} "
              f"events/s, {pipeline['cores']} cores.", "",
              "| CPU per event (µs) | this run | pipeline floor | logic floor | beyond both (glue) |",
              "|---|---|---|---|---|"]
    for part, four in result["cpu_us_per_event"].items():
        lines.append(f"| {part} | {four['end_to_end']} | {four['pipeline_floor']} | {four.get('logic_floor', '')} | "
                     f"{four.get('glue', '')} |")
    if (logic := result.get("logic_floor")) is not None:
        lines += ["", f"Logic floor (bench/logic_floor.py, the first {logic['events']:,} of the same events): "
                  f"{logic['cpu_us_per_event_total']} µs per event; building each of the {logic['messages']:,} "
                  f"messages they owe, {logic['cpu_us_per_message_built']} µs."]
    lines += ["", "| process | CPU s | cores | peak RSS MiB |", "|---|---|---|---|"]
    for name, used in result["processes"].items():
        lines.append(f"| {name} | {used['cpu_seconds']} | {used['cores']} | {used['peak_rss_mib']} |")
    return "\n".join(lines) + "\n"


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0, help="events per second offered (ignored with --max)")
    parser.add_argument("--max", action="store_true", help="send as fast as intake answers, for sustained throughput")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to send")
    parser.add_argument("--lanes", type=int, default=4, help="concurrent senders, each with its own dossiers")
    parser.add_argument("--batch", type=int, default=100, help="events per HTTP batch")
    parser.add_argument("--kafka-share", type=float, default=0.25, help="share of lanes sending over tthc.ingress.v1")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--brokers", type=int, default=1,
                        help="a cluster of this many brokers on this machine, topics with min(3, brokers) copies")
    parser.add_argument("--probe-interval", type=float, default=0.5)
    parser.add_argument("--warmup", type=float, default=10.0,
                        help="latency is also reported for probes sent after this many seconds: a stack just "
                             "started has its broker's code not yet compiled and its caches and plans cold")
    parser.add_argument("--providers-unlimited", action="store_true",
                        help="lift notify's rate limits per provider (20 emails and 10 SMS a second by default), "
                             "so that the run sends every citizen's message as it is owed")
    parser.add_argument("--stall", type=float, default=60.0, help="give up when counters stop moving this long")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    outcome = asyncio.run(main(arguments))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%S}"
    (RESULTS / f"end-to-end-{stamp}.json").write_text(json.dumps(outcome, indent=2) + "\n")
    table = markdown(outcome)
    (RESULTS / f"end-to-end-{stamp}.md").write_text(table)
    plot(outcome, RESULTS / f"end-to-end-{stamp}.png")
    print(table)
    print(f"written: bench/results/end-to-end-{stamp}.json, .md and .png", file=sys.stderr)
