"""A broker and a database for a benchmark that runs without the stack."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.processes import postmaster_pid
from shared.infra.kafka import local_brokers
from shared.infra.ports import free_ports
from shared.infra.postgres import LocalPostgres


@dataclass(frozen=True)
class Infrastructure:
    bootstrap_servers: str
    database_url: str
    started: dict[int, str]
    """pid -> "kafka" or "postgres" of those started here, whose CPU a benchmark can count."""
    replication: int = 1
    """Copies a topic should keep: three on a cluster of three or more."""


@asynccontextmanager
async def infrastructure(prefix: str, *, from_environment: bool = True,
                         brokers: int = 1) -> AsyncIterator[Infrastructure]:
    """The environment's broker and database (KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL) where set and allowed,
    otherwise ones of its own in a temporary directory, stopped and deleted afterwards (a gigabyte a run):
    one broker, or a cluster of `brokers` on this machine."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "") if from_environment else ""
    database_url = os.environ.get("DATABASE_URL", "") if from_environment else ""
    ports = free_ports(1 + 2 * brokers)
    postgres_port = ports[0]
    kafka = None if bootstrap else local_brokers(home / "kafka", ports[1:])
    postgres = None if database_url else LocalPostgres(home / "pg" / "data", postgres_port)
    try:
        if kafka is not None:
            kafka.start()
        if postgres is not None:
            database_url = await asyncio.to_thread(postgres.start)
        if kafka is not None:
            await kafka.wait_ready()
            bootstrap = kafka.bootstrap_servers
        started = dict.fromkeys(kafka.pids if kafka is not None else [], "kafka")
        if postgres is not None and (pid := postmaster_pid(postgres.data_dir)) is not None:
            started[pid] = "postgres"
        replication = kafka.replicas if kafka is not None else 1
        yield Infrastructure(bootstrap, database_url, started, replication)
    finally:
        if kafka is not None:
            kafka.stop()
        if postgres is not None:
            postgres.stop()
        shutil.rmtree(home, ignore_errors=True)
