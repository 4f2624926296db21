"""The local broker in secure mode: SASL/SCRAM-SHA-512 principals on the client listener and ACLs enforced by
KRaft's StandardAuthorizer, with nothing allowed unless an ACL says so.

The controller and inter-broker listeners authenticate the broker to itself with SASL/PLAIN as `admin`, the only
super user (SCRAM cannot serve the controller listener: its credentials live in the metadata log the controller
serves). SCRAM users are written into the metadata log when the storage is formatted, so the broker never runs
with a window in which a user exists without its ACLs being enforced. `platform_acls` is the least-privilege
table docs/security.md describes; a production cluster gets the same bindings from its administrator.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from shared.contract import topics
from shared.infra.kafka import LOG4J_CONFIG, KafkaStartError, LocalKafka, ensure_kafka_jars
from shared.infra.paths import PROJECT_ROOT
from shared.kafka import client_options
from shared.settings import CommonSettings

ACL_TOOL = PROJECT_ROOT / "deploy" / "kafka" / "KafkaAcls.java"
ADMIN = "admin"
MECHANISM = "SCRAM-SHA-512"
# Names and passwords go into StorageTool's `[name=...,password=...]` syntax and into JAAS strings unquoted.
_SAFE = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Acl:
    """One ALLOW binding for a user, on a literal resource name."""

    user: str
    resource: str  # TOPIC, GROUP or CLUSTER
    name: str
    operation: str  # READ, WRITE, DESCRIBE, ...

    def line(self) -> str:
        return f"User:{self.user} {self.resource} LITERAL {self.name} {self.operation}"


def platform_acls(communes: Iterable[str], *, intake: str = "intake", resolution: str = "resolution",
                  metrics: str = "metrics", notify: str = "notify") -> list[Acl]:
    """Least privilege for the platform's principals; each service's consumer group is named as its user.

    READ and WRITE imply DESCRIBE on the same topic. Metrics measures every service's lag: it may DESCRIBE
    their groups (committed offsets) and the topics they read (end offsets), never read those topics."""
    acls = [Acl(commune, "TOPIC", topics.INGRESS, operation) for commune in communes
            for operation in ("WRITE", "DESCRIBE")]
    acls += [Acl(intake, "TOPIC", topics.INGRESS, "READ"), Acl(intake, "GROUP", intake, "READ"),
             Acl(intake, "TOPIC", topics.ACCEPTED, "WRITE"), Acl(intake, "TOPIC", topics.REJECTIONS, "WRITE")]
    acls += [Acl(resolution, "TOPIC", topics.ACCEPTED, "READ"), Acl(resolution, "GROUP", resolution, "READ"),
             Acl(resolution, "TOPIC", topics.LIFECYCLE, "WRITE"),
             Acl(resolution, "TOPIC", topics.REJECTIONS, "WRITE")]
    acls += [Acl(metrics, "TOPIC", topics.LIFECYCLE, "READ"), Acl(metrics, "TOPIC", topics.REJECTIONS, "READ"),
             Acl(metrics, "GROUP", metrics, "READ"),
             *(Acl(metrics, "GROUP", group, "DESCRIBE") for group in (intake, resolution, notify)),
             *(Acl(metrics, "TOPIC", topic, "DESCRIBE") for topic in (topics.INGRESS, topics.ACCEPTED))]
    acls += [Acl(notify, "TOPIC", topics.LIFECYCLE, "READ"), Acl(notify, "GROUP", notify, "READ")]
    # FastStream starts an idempotent producer in every broker, and its start asks for a producer id, which
    # needs WRITE on some topic or this: it grants ids only, never a write.
    acls += [Acl(user, "CLUSTER", "kafka-cluster", "IDEMPOTENT_WRITE") for user in (metrics, notify)]
    return acls


@dataclass
class SecureLocalKafka(LocalKafka):
    """LocalKafka with a SASL_PLAINTEXT client listener (SCRAM-SHA-512 `users`), a third port for the
    inter-broker listener, and `acls` created once the broker answers."""

    internal_port: int = 9094
    users: dict[str, str] = field(default_factory=dict)
    acls: list[Acl] = field(default_factory=list)
    _admin_password: str = field(default="", init=False, repr=False)

    def __post_init__(self) -> None:
        for name, password in self.users.items():
            if not (_SAFE.fullmatch(name) and _SAFE.fullmatch(password)) or name == ADMIN:
                raise ValueError(f"user {name!r}: names and passwords are [A-Za-z0-9._-]+, and {ADMIN!r} is reserved")

    @property
    def admin_password(self) -> str:
        # Kept with the data: the SCRAM credential is in the metadata log, so a restart must present the same one.
        if not self._admin_password:
            secret = self.state_dir / "admin.password"
            if not secret.exists():
                self.state_dir.mkdir(parents=True, exist_ok=True)
                secret.touch(mode=0o600)
                secret.write_text(secrets.token_urlsafe(24))
            self._admin_password = secret.read_text().strip()
        return self._admin_password

    def env_for(self, user: str) -> dict[str, str]:
        """The settings (environment variables) a client needs to connect as `user`."""
        password = self.admin_password if user == ADMIN else self.users[user]
        return {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers, "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "KAFKA_SASL_MECHANISM": MECHANISM, "KAFKA_SASL_USERNAME": user, "KAFKA_SASL_PASSWORD": password}

    def settings_for(self, user: str) -> CommonSettings:
        return CommonSettings.model_validate(self.env_for(user))

    def client_options(self) -> dict[str, Any]:
        return client_options(self.settings_for(ADMIN))

    def _server_properties(self) -> str:
        redefined = ("listeners=", "advertised.listeners=", "inter.broker.listener.name=",
                     "listener.security.protocol.map=")
        kept = [line for line in super()._server_properties().splitlines() if line and not line.startswith(redefined)]
        plain = (f'org.apache.kafka.common.security.plain.PlainLoginModule required username="{ADMIN}" '
                 f'password="{self.admin_password}" user_{ADMIN}="{self.admin_password}";')
        listeners = (f"CLIENT://127.0.0.1:{self.port},INTERNAL://127.0.0.1:{self.internal_port},"
                     f"CONTROLLER://127.0.0.1:{self.controller_port}")
        return "\n".join([
            *kept,
            f"listeners={listeners}",
            f"advertised.listeners={listeners}",
            "listener.security.protocol.map=CLIENT:SASL_PLAINTEXT,INTERNAL:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT",
            "inter.broker.listener.name=INTERNAL",
            f"listener.name.client.sasl.enabled.mechanisms={MECHANISM}",
            f"listener.name.client.{MECHANISM.lower()}.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "listener.name.internal.sasl.enabled.mechanisms=PLAIN",
            f"listener.name.internal.plain.sasl.jaas.config={plain}",
            "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
            f"listener.name.controller.plain.sasl.jaas.config={plain}",
            "sasl.mechanism.inter.broker.protocol=PLAIN",
            "sasl.mechanism.controller.protocol=PLAIN",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            f"super.users=User:{ADMIN}",
            "allow.everyone.if.no.acl.found=false",
            "",
        ])

    def _format_options(self) -> list[str]:
        users = {ADMIN: self.admin_password, **self.users}
        return [option for name, password in users.items()
                for option in ("--add-scram", f"{MECHANISM}=[name={name},password={password}]")]

    async def wait_ready(self, timeout: float = 90.0) -> None:
        await super().wait_ready(timeout)
        await self.grant(self.acls)

    async def grant(self, acls: Iterable[Acl]) -> None:
        """Create ACL bindings as the super user (existing ones stay as they are)."""
        config = self.state_dir / "admin-client.properties"
        config.touch(mode=0o600)
        config.write_text("\n".join([
            f"bootstrap.servers={self.bootstrap_servers}", "security.protocol=SASL_PLAINTEXT",
            f"sasl.mechanism={MECHANISM}",
            "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{ADMIN}" password="{self.admin_password}";', ""]))
        tool = await asyncio.create_subprocess_exec(
            "java", "-Xmx256m", f"-Dlog4j2.configurationFile={LOG4J_CONFIG}", "-cp", f"{ensure_kafka_jars()}/*",
            str(ACL_TOOL), str(config),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        output, _ = await tool.communicate("\n".join(acl.line() for acl in acls).encode())
        if tool.returncode:
            raise KafkaStartError(f"creating the ACLs failed:\n{output.decode(errors='replace')[-4000:]}")
