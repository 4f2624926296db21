"""A real Prometheus server (Debian's `prometheus` binary) scraping a local stack, for the end-to-end tests.

The configuration is derived from deploy/prometheus/prometheus.yml, so the job names the dashboards and the
rules see are the deployed ones; only the targets, the intervals and the rule files change.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from shared.infra.paths import PROJECT_ROOT
from shared.infra.processes import stop_group

BINARY = "prometheus"
DEPLOY = PROJECT_ROOT / "deploy" / "prometheus"


class PrometheusError(RuntimeError):
    pass


def binary() -> str | None:
    return shutil.which(BINARY) or (f"/usr/bin/{BINARY}" if Path(f"/usr/bin/{BINARY}").exists() else None)


def quick_rules(source: Path, target: Path, interval: str) -> Path:
    """A copy of a rule file whose groups evaluate every `interval`, so a test need not wait minutes.

    Text, not YAML round-tripping: the rules' expressions and annotations stay byte for byte what is deployed.
    """
    text = re.sub(r"(?m)^(\s+)interval:\s*\S+\s*$", rf"\g<1>interval: {interval}", source.read_text())
    target.write_text(text)
    return target


def local_config(targets: Mapping[str, str], rule_files: list[Path], interval: str) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with each job pointed at `targets[job]` (host:port)."""
    config: dict[str, Any] = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"] = {**config.get("global", {}), "scrape_interval": interval, "evaluation_interval": interval,
                        "scrape_timeout": interval}
    config["rule_files"] = [str(path) for path in rule_files]
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    if missing := set(targets) ^ jobs:
        raise PrometheusError(f"targets and deployed jobs differ: {sorted(missing)}")
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    return config


@dataclass
class LocalPrometheus:
    home: Path
    port: int
    config: dict[str, Any]
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.home / "prometheus.log"

    def start(self) -> None:
        executable = binary()
        if executable is None:
            raise PrometheusError("the prometheus binary is not installed (make tools)")
        self.home.mkdir(parents=True, exist_ok=True)
        config = self.home / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config, sort_keys=False))
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [executable, f"--config.file={config}", f"--storage.tsdb.path={self.home / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
                 # Nothing is kept beyond the test; a short retention keeps the TSDB small.
                 "--storage.tsdb.retention.time=1d"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                if self.process is None or self.process.poll() is not None:
                    raise PrometheusError(f"prometheus exited; see {self.log}:\n{self._tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.url}/-/ready")).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise PrometheusError(f"prometheus not ready after {timeout}s; see {self.log}")
                await asyncio.sleep(0.2)

    def stop(self, timeout: float = 20.0) -> None:
        stop_group(self.process, timeout)
        self.process = None

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""


async def query(client: httpx.AsyncClient, base_url: str, expr: str) -> list[dict[str, Any]]:
    """An instant query's result vector; a PromQL error raises with Prometheus' own message."""
    reply = await client.get(f"{base_url}/api/v1/query", params={"query": expr})
    body = reply.json()
    if reply.status_code != 200 or body.get("status") != "success":
        raise PrometheusError(f"{expr!r}: {body.get('errorType')}: {body.get('error')}")
    data = body["data"]
    if data["resultType"] in ("scalar", "string"):
        return [{"metric": {}, "value": data["result"]}]
    result: list[dict[str, Any]] = data["result"]
    return result
