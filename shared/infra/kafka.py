"""Apache Kafka (KRaft, combined mode) run from Maven Central jars: a single node, or a cluster of several on
one machine, each a broker and a voter of the controller quorum.

Development machines and CI have Java and Maven but no Docker engine, so the project fetches the broker's
class path itself and runs `kafka.Kafka` directly. The jars land in a git-ignored cache keyed by the pom's
content, so a second start downloads nothing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import shutil
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from shared.infra.paths import PROJECT_ROOT, cache_dir
from shared.infra.processes import kill_group, stop_group

POM = PROJECT_ROOT / "deploy" / "kafka" / "pom.xml"
LOG4J_CONFIG = PROJECT_ROOT / "deploy" / "kafka" / "log4j2.properties"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies"


class KafkaStartError(RuntimeError):
    pass


def ensure_kafka_jars() -> Path:
    """The broker's class path directory, fetched by Maven on first use."""
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:12]
    libs = cache_dir() / "kafka" / digest / "libs"
    marker = libs.parent / "complete"
    if marker.exists():
        return libs
    if shutil.which("mvn") is None or shutil.which("java") is None:
        raise KafkaStartError("Java 17+ and Maven are needed to fetch and run the local Kafka broker")
    if libs.exists():
        shutil.rmtree(libs)
    libs.mkdir(parents=True)
    fetched = subprocess.run(
        ["mvn", "-B", "-q", "-Dstyle.color=never", "-f", str(POM), DEPENDENCY_PLUGIN, "-DincludeScope=runtime",
         f"-DoutputDirectory={libs}"],
        capture_output=True, text=True, check=False,
    )
    if fetched.returncode:
        output = (fetched.stdout + fetched.stderr)[-4000:]
        raise KafkaStartError(f"Maven could not fetch the Kafka jars:\n{output}")
    marker.write_text(digest)
    return libs


def _cluster_id() -> str:
    # As Kafka's own Uuid.randomUuid: an id starting with '-' would be read as an option by the storage tool.
    while (cluster_id := base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()).startswith("-"):
        pass
    return cluster_id


@dataclass
class LocalKafka:
    """One broker+controller on loopback whose data and log live under `state_dir`; alone by default, or node
    `node_id` of a cluster whose controller quorum is `voters` (`id@host:port,...`, as LocalKafkaCluster
    sets it), where internal topics keep `replicas` copies."""

    state_dir: Path
    port: int = 9092
    controller_port: int = 9093
    heap: str = "768m"
    node_id: int = 1
    voters: str = ""
    cluster_id: str = ""
    replicas: int = 1
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "broker.log"

    def _server_properties(self) -> str:
        data = self.state_dir / "data"
        quorum = (f"controller.quorum.voters={self.voters}" if self.voters
                  else f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}")
        # A write is acknowledged once two copies have it when there are three: one broker may die unnoticed.
        in_sync = min(2, self.replicas)
        return "\n".join([
            "process.roles=broker,controller",
            f"node.id={self.node_id}",
            quorum,
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={data}",
            "num.partitions=6",
            "num.network.threads=2",
            "num.io.threads=4",
            "num.recovery.threads.per.data.dir=1",
            f"default.replication.factor={self.replicas}",
            f"min.insync.replicas={in_sync}",
            f"offsets.topic.replication.factor={self.replicas}",
            "offsets.topic.num.partitions=6",
            f"transaction.state.log.replication.factor={self.replicas}",
            f"transaction.state.log.min.isr={in_sync}",
            "transaction.state.log.num.partitions=1",
            f"share.coordinator.state.topic.replication.factor={self.replicas}",
            f"share.coordinator.state.topic.min.isr={in_sync}",
            "group.initial.rebalance.delay.ms=0",
            # Topics are created explicitly with their partition counts; a typo must not create one.
            "auto.create.topics.enable=false",
            "",
        ])

    def _java(self, libs: Path) -> list[str]:
        return [
            # The serial collector: a small heap on a box of two cores does not need G1's short pauses, and its
            # concurrent threads cost the broker about a seventh of its CPU in the end-to-end benchmark.
            # Only the quick (C1) compiler: the optimising one was still compiling minutes into a run, and the
            # broker used 24 against 33 CPU seconds over 150 s at 800 events/s end to end (1,378-1,462 against
            # 1,170-1,182 events/s at most, two pairs). A long-lived broker on a cluster keeps the JVM's default.
            "java", "-Xms256m", f"-Xmx{self.heap}", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            f"-Dkafka.logs.dir={self.state_dir / 'logs'}", "-cp", f"{libs}/*",
        ]

    def start(self) -> None:
        libs = ensure_kafka_jars()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        config = self.state_dir / "server.properties"
        config.write_text(self._server_properties())
        if not (self.state_dir / "data" / "meta.properties").exists():
            # A cluster's nodes share its id and name their voters in the configuration (a static quorum).
            alone = [] if self.voters else ["--standalone"]
            subprocess.run(
                [*self._java(libs), "kafka.tools.StorageTool", "format", *alone,
                 "-t", self.cluster_id or _cluster_id(), "-c", str(config), *self._format_options()],
                check=True, stdout=subprocess.DEVNULL,
            )
        with self.log_file.open("ab") as log:
            # A session of its own: a Ctrl-C in the terminal reaches the supervisor, which stops the
            # broker in order, instead of killing it mid-write.
            self._process = subprocess.Popen(
                [*self._java(libs), "kafka.Kafka", str(config)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        (self.state_dir / "broker.pid").write_text(str(self._process.pid))

    async def wait_ready(self, timeout: float = 90.0) -> None:
        """Ready when the broker answers a metadata request, not after a fixed sleep."""
        deadline = time.monotonic() + timeout
        while True:
            if self._process is not None and self._process.poll() is not None:
                raise KafkaStartError(f"Kafka exited with {self._process.returncode}:\n{self.log_tail()}")
            if await broker_answers(self.bootstrap_servers, **self.client_options()):
                return
            if time.monotonic() > deadline:
                raise KafkaStartError(f"Kafka not ready after {timeout}s:\n{self.log_tail()}")
            await asyncio.sleep(0.5)

    def _format_options(self) -> list[str]:
        """More `StorageTool format` arguments: a secured broker (shared/infra/secure_kafka.py) adds its users."""
        return []

    def client_options(self) -> dict[str, Any]:
        """aiokafka arguments for an administrator's client; none on the plaintext listener."""
        return {}

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    @property
    def pids(self) -> list[int]:
        """As a cluster's: the broker's process, once started."""
        return [self._process.pid] if self._process else []

    def stop(self, timeout: float = 30.0) -> None:
        stop_group(self._process, timeout)

    def kill(self) -> None:
        kill_group(self._process)


@dataclass
class LocalKafkaCluster:
    """`size` LocalKafka nodes on loopback, each a broker and a controller voter, with internal topics copied
    to three of them (fewer if fewer nodes): what a production cluster looks like, on one machine, so that a
    broker can be killed under load. Node `i`'s files live under `state_dir/node-i`."""

    state_dir: Path
    ports: list[int]
    """Two per node: its client port, then its controller port."""
    heap: str = "512m"
    nodes: list[LocalKafka] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        size = len(self.ports) // 2
        if size < 1 or len(self.ports) != 2 * size:
            raise ValueError("a cluster needs two ports per node")
        pairs = [(self.ports[2 * i], self.ports[2 * i + 1]) for i in range(size)]
        voters = ",".join(f"{i + 1}@127.0.0.1:{controller}" for i, (_, controller) in enumerate(pairs))
        cluster_id = _cluster_id()
        self.nodes = [LocalKafka(self.state_dir / f"node-{i + 1}", port, controller, heap=self.heap, node_id=i + 1,
                                 voters=voters, cluster_id=cluster_id, replicas=min(3, size))
                      for i, (port, controller) in enumerate(pairs)]

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.bootstrap_servers for node in self.nodes)

    @property
    def replicas(self) -> int:
        return self.nodes[0].replicas

    def start(self) -> None:
        for node in self.nodes:
            node.start()

    async def wait_ready(self, timeout: float = 120.0) -> None:
        await asyncio.gather(*(node.wait_ready(timeout) for node in self.nodes))

    def stop(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            node.stop(timeout)

    @property
    def pids(self) -> list[int]:
        return [pid for node in self.nodes for pid in node.pids]


def local_brokers(state_dir: Path, ports: Sequence[int]) -> LocalKafka | LocalKafkaCluster:
    """Brokers of a stack or benchmark's own: one on two ports (client, controller), or a cluster of a node for
    each two."""
    if len(ports) == 2:
        return LocalKafka(state_dir, ports[0], ports[1])
    return LocalKafkaCluster(state_dir, list(ports))


async def broker_answers(bootstrap_servers: str, **options: Any) -> bool:
    # aiokafka logs each refused connection at error level; while waiting for a start, those are expected.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=3000, **options)
    try:
        await admin.start()
        await admin.list_topics()
    except (KafkaError, OSError):
        return False
    finally:
        await admin.close()
    return True
