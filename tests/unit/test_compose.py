"""docker-compose.yml, the Prometheus config and README.md agree with each other and with the settings the
services actually read: a renamed setting or a moved port breaks here, not on a user's machine."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from shared.crypto import Keyring
from shared.infra.paths import PROJECT_ROOT

pytestmark = pytest.mark.unit

COMPOSE = PROJECT_ROOT / "docker-compose.yml"
PROMETHEUS = PROJECT_ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA_DATASOURCE = PROJECT_ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
README = PROJECT_ROOT / "README.md"

# Every interface: what a service must bind to inside its container (S104 is about servers, not this check).
ANY_INTERFACE = "0.0.0.0"  # noqa: S104
APP_PORTS = {"intake": 8000, "resolution": 8001, "metrics": 8002, "notify": 8003}
ALL_SERVICES = {"kafka", "postgres", *APP_PORTS, "prometheus", "grafana", "mailpit"}
PUBLISHED = {9092, *APP_PORTS.values(), 9090, 3000, 8025}
SHARED_ENV = {"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "TTHC_DATA_KEYS"}

# Code that reads a variable straight from the environment (shared/infra/paths.py, shared/cli.py, ...).
_DIRECT_READ = re.compile(r"""(?:environ\.get\(|environ\[|getenv\()\s*["']([A-Z][A-Z0-9_]+)["']""")

# `${NAME}` or `${NAME:-default}`, the compose interpolation this file uses.
_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?::?-(?P<default>[^}]*))?\}")


def _load(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict), f"{path} is not a YAML mapping"
    return loaded


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _load(COMPOSE)["services"]
    return services


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as compose sees it (mapping or `NAME=value` list), defaults interpolated."""
    raw = service.get("environment") or {}
    pairs = dict(item.split("=", 1) for item in raw) if isinstance(raw, list) else raw
    return {
        name: _INTERPOLATION.sub(lambda m: m["default"] or "", str(value)) for name, value in pairs.items()
    }


def _published_ports(service: dict[str, Any]) -> set[int]:
    published: set[int] = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            published.add(int(port["published"]))
        else:
            # "HOST:CONTAINER", "IP:HOST:CONTAINER" or "PORT", optionally with "/tcp".
            parts = str(port).split("/")[0].split(":")
            published.add(int(parts[-2] if len(parts) > 1 else parts[0]))
    return published


def _settings_class(name: str) -> type[BaseSettings]:
    module = importlib.import_module(f"services.{name}.settings")
    classes = [
        value for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, BaseSettings) and value.__module__ == module.__name__
    ]
    assert len(classes) == 1, f"services/{name}/settings.py should define one settings class, found {classes}"
    return classes[0]


def env_names(settings: type[BaseSettings]) -> set[str]:
    """Every environment variable a settings class reads: a field's validation alias when it has one (the
    env_prefix does not apply then), otherwise env_prefix + field name; upper case, as the docs spell them."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for field_name, field in settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, str):
            names.add(alias.upper())
        elif isinstance(alias, AliasChoices):
            names.update(choice.upper() for choice in alias.choices if isinstance(choice, str))
        else:
            names.add((prefix + (field.alias or field_name)).upper())
    return names


def _direct_env() -> set[str]:
    """Variables the code reads with os.environ / os.getenv outside the settings classes (paths, the CLI, the
    tests' knobs such as the soak length)."""
    sources = [*(PROJECT_ROOT / "shared").rglob("*.py"), *(PROJECT_ROOT / "services").rglob("*.py"),
               *(PROJECT_ROOT / "tests").rglob("*.py")]
    return {name for path in sources for name in _DIRECT_READ.findall(path.read_text(encoding="utf-8"))}


SETTINGS = {name: _settings_class(name) for name in APP_PORTS}
ALL_SETTINGS_ENV = set().union(*(env_names(cls) for cls in SETTINGS.values()))


def test_every_service_is_defined() -> None:
    missing = ALL_SERVICES - _services().keys()
    assert not missing, f"docker-compose.yml lacks services {sorted(missing)}"


def test_ports_are_published() -> None:
    published = set().union(*(_published_ports(service) for service in _services().values()))
    missing = PUBLISHED - published
    assert not missing, f"docker-compose.yml does not publish ports {sorted(missing)}"


@pytest.mark.parametrize(("name", "port"), APP_PORTS.items())
def test_app_service_runs_its_module_from_the_project_image(name: str, port: int) -> None:
    service = _services()[name]
    command = service["command"]
    assert (command.split() if isinstance(command, str) else command) == ["python", "-m", f"services.{name}"]
    assert service["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (PROJECT_ROOT / service["build"]["dockerfile"]).is_file()
    assert port in _published_ports(service)
    for dependency in ("kafka", "postgres"):
        assert service["depends_on"][dependency]["condition"] == "service_healthy", (
            f"{name} must wait for {dependency} to be healthy"
        )


@pytest.mark.parametrize(("name", "port"), APP_PORTS.items())
def test_app_service_environment(name: str, port: int) -> None:
    env = _environment(_services()[name])
    own_port = f"{name.upper()}_PORT"
    missing = (SHARED_ENV | {own_port}) - env.keys()
    assert not missing, f"{name} in docker-compose.yml does not set {sorted(missing)}"
    assert int(env[own_port]) == port
    assert env.get("TTHC_BIND_HOST") == ANY_INTERFACE, f"{name} must listen on every interface in a container"


@pytest.mark.parametrize("name", APP_PORTS)
def test_app_service_environment_is_read_by_its_settings(name: str) -> None:
    env = _environment(_services()[name])
    unread = set(env) - env_names(SETTINGS[name])
    reader = SETTINGS[name].__name__
    assert not unread, f"{name} in docker-compose.yml sets {sorted(unread)}, which {reader} never reads"


@pytest.mark.parametrize(("name", "port"), APP_PORTS.items())
def test_app_service_settings_load_from_compose_environment(
    name: str, port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The values parse, not only the names: the settings class built from compose's environment alone."""
    for variable in ALL_SETTINGS_ENV:
        monkeypatch.delenv(variable, raising=False)
    for variable, value in _environment(_services()[name]).items():
        monkeypatch.setenv(variable, value)
    settings: Any = SETTINGS[name]()
    assert settings.port == port
    assert settings.host == ANY_INTERFACE
    assert settings.kafka_bootstrap_servers.split(":")[0] == "kafka"
    assert "@postgres:" in settings.database_url
    Keyring.parse(settings.data_keys.get_secret_value())


def test_database_url_matches_postgres_service() -> None:
    postgres = _environment(_services()["postgres"])
    for name in APP_PORTS:
        url = _environment(_services()[name])["DATABASE_URL"]
        match = re.fullmatch(
            r"postgresql://(?P<user>[^:@/]+)(?::(?P<password>[^@/]*))?@postgres:5432/(?P<db>\w+)", url
        )
        assert match, f"{name}: DATABASE_URL {url!r} does not name the postgres service"
        assert match["db"] == postgres["POSTGRES_DB"] == "tthc"
        assert match["user"] == postgres.get("POSTGRES_USER", "postgres")
        if postgres.get("POSTGRES_HOST_AUTH_METHOD") != "trust":
            assert match["password"] == postgres["POSTGRES_PASSWORD"]


def test_kafka_advertises_the_compose_address_the_services_use() -> None:
    kafka = _environment(_services()["kafka"])
    advertised = kafka["KAFKA_ADVERTISED_LISTENERS"]
    for name in APP_PORTS:
        bootstrap = _environment(_services()[name])["KAFKA_BOOTSTRAP_SERVERS"]
        assert f"://{bootstrap}" in advertised, f"{name} bootstraps from {bootstrap}, not advertised by kafka"
    assert "://localhost:9092" in advertised, "host tools reach the broker at localhost:9092"


def test_notify_sends_mail_to_mailpit() -> None:
    env = _environment(_services()["notify"])
    assert env["NOTIFY_SMTP_HOST"] == "mailpit"
    assert int(env["NOTIFY_SMTP_PORT"]) == 1025
    assert env["NOTIFY_LOOKUP_BASE_URL"].startswith("http://localhost:8001/")


def test_prometheus_scrapes_every_service() -> None:
    config = _load(PROMETHEUS)
    assert config["global"]["scrape_interval"] == "15s"
    targets = {
        target
        for job in config["scrape_configs"]
        if job.get("metrics_path", "/metrics") == "/metrics"
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    missing = {f"{name}:{port}" for name, port in APP_PORTS.items()} - targets
    assert not missing, f"deploy/prometheus/prometheus.yml does not scrape {sorted(missing)}"
    mounts = _services()["prometheus"]["volumes"]
    assert any(str(mount).startswith("./deploy/prometheus/prometheus.yml:") for mount in mounts)


def test_grafana_is_provisioned_with_prometheus() -> None:
    datasources = _load(GRAFANA_DATASOURCE)["datasources"]
    assert any(ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090" for ds in datasources)
    grafana = _services()["grafana"]
    env = _environment(grafana)
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    host_dirs = [str(mount).split(":")[0] for mount in grafana["volumes"]]
    assert any(GRAFANA_DATASOURCE.parent.is_relative_to(PROJECT_ROOT / path) for path in host_dirs), (
        "grafana must mount the provisioning directory that holds the datasource"
    )


def _settings_prefixes() -> set[str]:
    """Name prefixes that belong to the settings: each class's env_prefix and the first word of each alias."""
    prefixes = {str(cls.model_config.get("env_prefix", "")) for cls in SETTINGS.values()} - {""}
    prefixes |= {name.split("_")[0] + "_" for name in ALL_SETTINGS_ENV}
    return prefixes


def test_readme_env_vars_are_read_by_the_settings() -> None:
    """A variable README.md tells users to set, in a settings namespace (TTHC_, INTAKE_, KAFKA_, ...), must be
    one a settings class reads: a typo or a renamed setting would otherwise be silently ignored."""
    mentioned = set(re.findall(r"`([A-Z][A-Z0-9_]{3,})`", README.read_text(encoding="utf-8")))
    prefixes = _settings_prefixes()
    claimed = {name for name in mentioned if name.startswith(tuple(prefixes))}
    unknown = claimed - ALL_SETTINGS_ENV - _direct_env()
    assert not unknown, f"README.md names {sorted(unknown)}, which neither the settings nor the code read"
