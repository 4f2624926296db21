"""The whole local stack as processes: Kafka, PostgreSQL, the message sinks, the four services, the simulator.

`tthc up` (and so `make run`) runs it in the foreground until Ctrl-C; the end-to-end tests start the same
stack on their own ports and folders. Whatever is given by KAFKA_BOOTSTRAP_SERVERS or DATABASE_URL is used
instead of starting one; a `kafka` given (not started: a broker or a cluster) is started and owned.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shared.crypto import new_key_spec
from shared.infra.kafka import LocalKafka, LocalKafkaCluster, local_brokers
from shared.infra.paths import PROJECT_ROOT
from shared.infra.ports import free_ports
from shared.infra.postgres import LocalPostgres
from shared.infra.processes import kill_group, stop_group
from shared.kafka import ensure_topics
from shared.simulator import SOURCE as LOCAL_SOURCE

SERVICES = ("intake", "resolution", "metrics", "notify")



@dataclass
class Ports:
    intake: int = 8000
    resolution: int = 8001
    metrics: int = 8002
    notify: int = 8003
    kafka: int = 9092
    controller: int = 9093
    postgres: int = 55432
    smtp: int = 1025
    sinks_http: int = 8025

    def of(self, service: str) -> int:
        return int(getattr(self, service))


@dataclass
class Stack:
    run_dir: Path
    ports: Ports = field(default_factory=Ports)
    simulator: bool = True
    simulator_rate: float = 5.0
    partitions: int = 6
    kafka: LocalKafka | LocalKafkaCluster | None = None
    postgres: LocalPostgres | None = None
    bootstrap_servers: str = ""
    database_url: str = ""
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    api_key: str = ""

    @classmethod
    def of_its_own(cls, run_dir: Path, *, brokers: int = 1, partitions: int = 6) -> Stack:
        """A stack on free ports that starts its own brokers (one, or a cluster of `brokers`) and database, so
        that a test or a benchmark may stop and kill them; no simulator, the caller sends the load."""
        numbers = free_ports(9 + 2 * brokers)
        return cls(run_dir, ports=Ports(*numbers[:9]), simulator=False, partitions=partitions,
                   kafka=local_brokers(run_dir / "kafka", numbers[9:]), bootstrap_servers="", database_url="")

    @property
    def replicas(self) -> int:
        """Copies of each topic: three on the stack's own cluster, one otherwise."""
        return self.kafka.replicas if self.kafka is not None else 1

    @property
    def kafka_pids(self) -> list[int]:
        """The broker processes the stack started, if any."""
        return self.kafka.pids if self.kafka is not None else []

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    @property
    def outbox_dir(self) -> Path:
        return self.run_dir / "outbox"

    def data_keys(self) -> str:
        path = self.run_dir / "data-keys"
        if not path.exists():
            path.write_text(new_key_spec("local"))
            path.chmod(0o600)
        return path.read_text().strip()

    def internal_token(self) -> str:
        return self._secret("internal-token")

    def _secret(self, name: str) -> str:
        path = self.run_dir / name
        if not path.exists():
            path.write_text(secrets.token_urlsafe(32))
            path.chmod(0o600)
        return path.read_text().strip()

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "DATABASE_URL": self.database_url,
            "TTHC_DATA_KEYS": self.data_keys(),
            "TTHC_INTERNAL_TOKEN": self.internal_token(),
            "TTHC_TOPIC_PARTITIONS": str(self.partitions),
            "INTAKE_PORT": str(self.ports.intake),
            "INTAKE_RESOLUTION_URL": f"http://127.0.0.1:{self.ports.resolution}",
            "RESOLUTION_PORT": str(self.ports.resolution),
            "METRICS_PORT": str(self.ports.metrics),
            "NOTIFY_PORT": str(self.ports.notify),
            "NOTIFY_SMTP_PORT": str(self.ports.smtp),
            "NOTIFY_SMS_URL": f"http://127.0.0.1:{self.ports.sinks_http}/sms",
            "NOTIFY_ZALO_URL": f"http://127.0.0.1:{self.ports.sinks_http}/zalo",
            "NOTIFY_SURVEY_BASE_URL": f"http://127.0.0.1:{self.ports.notify}/khao-sat",
            "NOTIFY_LOOKUP_BASE_URL": f"http://127.0.0.1:{self.ports.resolution}/tra-cuu",
            # What the SMS and Zalo gateways present on their delivery reports.
            "NOTIFY_CALLBACK_SECRET": self._secret("provider-callback-secret"),
            # Every unit's due-soon alerts go to the sinks' stand-in for a commune's system, signed with this.
            "NOTIFY_DEFAULT_WEBHOOK_URL": f"http://127.0.0.1:{self.ports.sinks_http}/webhook",
            "NOTIFY_WEBHOOK_SECRET": self._secret("unit-webhook-secret"),
            "PYTHONUNBUFFERED": "1",
            **({"TTHC_TOPIC_REPLICATION": str(self.replicas)} if self.replicas > 1 else {}),
        }

    async def start_infrastructure(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        if self.kafka is None:
            self.bootstrap_servers = self.bootstrap_servers or os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
            if not self.bootstrap_servers:
                self.kafka = local_brokers(self.run_dir / "kafka", [self.ports.kafka, self.ports.controller])
        if self.kafka is not None:
            self.kafka.start()
        self.database_url = self.database_url or os.environ.get("DATABASE_URL", "")
        if not self.database_url:
            self.postgres = LocalPostgres(self.run_dir / "postgres" / "data", self.ports.postgres)
            self.database_url = await asyncio.to_thread(self.postgres.start)
        if self.kafka is not None:
            await self.kafka.wait_ready()
            self.bootstrap_servers = self.kafka.bootstrap_servers
        await ensure_topics(self.bootstrap_servers, self.partitions, self.replicas)
        self.api_key = await provision_key(self.database_url, LOCAL_SOURCE)

    def spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as log:
            process = subprocess.Popen([sys.executable, *args], cwd=PROJECT_ROOT, env={**self.env(), **(env or {})},
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes[name] = process
        return process

    def start_sinks(self) -> None:
        self.spawn("sinks", "-m", "shared.infra.sinks", "--dir", str(self.outbox_dir),
                   "--smtp-port", str(self.ports.smtp), "--http-port", str(self.ports.sinks_http))

    def start_service(self, name: str, env: dict[str, str] | None = None) -> None:
        self.spawn(name, "-m", f"services.{name}", env=env)

    async def wait_ready(self, name: str, timeout: float = 90.0) -> None:
        url = f"http://127.0.0.1:{self.ports.of(name)}/readyz"
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                process = self.processes[name]
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}; see {self.logs / name}.log")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(url)).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not ready after {timeout}s; see {self.logs / name}.log")
                await asyncio.sleep(0.3)

    async def start(self) -> None:
        await self.start_infrastructure()
        self.start_sinks()
        for name in SERVICES:
            self.start_service(name)
        await asyncio.gather(*(self.wait_ready(name) for name in SERVICES))
        if self.simulator:
            self.spawn("simulator", "-m", "shared.cli", "simulate", "--rate", str(self.simulator_rate),
                       "--intake-url", f"http://127.0.0.1:{self.ports.intake}",
                       env={"TTHC_SIMULATOR_API_KEY": self.api_key})

    def stop_process(self, name: str, timeout: float = 20.0) -> None:
        stop_group(self.processes.pop(name, None), timeout)

    def kill_process(self, name: str) -> None:
        kill_group(self.processes.pop(name))

    async def restart_service(self, name: str) -> None:
        """SIGKILL a service and start it again until it answers ready (fault drills)."""
        self.kill_process(name)
        self.start_service(name)
        await self.wait_ready(name)

    async def restart_kafka(self) -> None:
        """Stop the stack's own brokers and start them again on the same ports and data (fault drills)."""
        if self.kafka is None:
            raise RuntimeError("the broker is not this stack's own: it cannot be restarted")
        await asyncio.to_thread(self.kafka.stop)
        await asyncio.to_thread(self.kafka.start)
        await self.kafka.wait_ready()

    async def restart_postgres(self) -> None:
        """Stop the stack's own PostgreSQL (fast shutdown) and start it again on the same data and port."""
        if self.postgres is None:
            raise RuntimeError("the database server is not this stack's own: it cannot be restarted")
        await asyncio.to_thread(self.postgres.stop)
        await asyncio.to_thread(self.postgres.start)

    def stop(self) -> None:
        for name in ("simulator", *SERVICES, "sinks"):
            self.stop_process(name)
        if self.kafka is not None:
            self.kafka.stop()
        if self.postgres is not None:
            self.postgres.stop()

    def banner(self) -> str:
        p = self.ports
        return "\n".join([
            "",
            "TTHC one-stop timeliness platform is running. Ctrl-C stops everything it started.",
            f"  Metrics (Prometheus)     http://127.0.0.1:{p.metrics}/metrics   (tthc_dossiers_received_total ...)",
            f"  Liveboard (wall screen)  http://127.0.0.1:{p.metrics}/liveboard",
            f"  Dossier look-up page     http://127.0.0.1:{p.resolution}/tra-cuu",
            f"  Intake API docs          http://127.0.0.1:{p.intake}/docs        (POST /v1/events)",
            f"  Resolution API docs      http://127.0.0.1:{p.resolution}/docs    (GET /v1/dossiers/{{code}})",
            f"  Notify API docs          http://127.0.0.1:{p.notify}/docs",
            f"  Messages sent (mail/SMS) http://127.0.0.1:{p.sinks_http}/",
            f"                           (.eml files in {self.outbox_dir}/mail)",
            f"  Kafka                    {self.bootstrap_servers}",
            f"  PostgreSQL               {self.database_url}",
            f"  Logs                     {self.logs}/",
            "  API keys                 .venv/bin/tthc api-keys create --source NAME --units CODE[,CODE...]",
            f"  Simulator                {'on' if self.simulator else 'off (SIMULATOR=off)'}",
            "",
        ])


async def provision_key(database_url: str, source: str) -> str:
    """A key for `source` over every unit of the registry, for the local stack's simulator and tests."""
    from services.intake import keys
    from services.intake.app import MIGRATIONS
    from services.intake.store import SCHEMA
    from shared.catalog import Catalog
    from shared.db import create_pool, migrate

    pool = await create_pool(database_url, max_size=2)
    try:
        await migrate(pool, SCHEMA, MIGRATIONS)
        async with pool.acquire() as conn:
            return await keys.create(conn, source, list(Catalog.load().units))
    finally:
        await pool.close()


async def run_forever(stack: Stack) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stack.start()
        print(stack.banner(), flush=True)
        await stop.wait()
        print("Stopping ...", flush=True)
    finally:
        await asyncio.to_thread(stack.stop)
        print("Stopped.", flush=True)
