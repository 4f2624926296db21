"""A real Prometheus scrapes the whole stack and evaluates the deployed rules: its answers must be the dossiers sent,
and every panel of the provisioned Grafana dashboard must get data from it."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import yaml

from shared.contract.events import EventType
from shared.infra.paths import PROJECT_ROOT
from shared.infra.ports import free_port
from shared.infra.prometheus import DEPLOY, LocalPrometheus, PrometheusError, binary, local_config, query, quick_rules
from shared.infra.stack import SERVICES, Stack
from tests.e2e.conftest import intake_client
from tests.e2e.test_faults import send
from tests.support import CATALOG, UNIT, VN, cloudevent, dossier_code, eventually, received_data

pytestmark = pytest.mark.e2e

GRAFANA = PROJECT_ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "tthc.json"
OTHER_UNIT = next(u for u in CATALOG.units.values() if u.level == "commune" and u.code != UNIT.code)
LONG_AGO = timedelta(days=40)
"""Far beyond any commune procedure's legal time: received this long ago is overdue, resolved now is late."""

# (unit, channel, what happens to the dossier). Both units in one province, so the province ratios mix them.
PLAN: list[tuple[str, str, str]] = [
    (UNIT.code, "online", "early"), (UNIT.code, "online", "early_with_step"), (UNIT.code, "direct", "early"),
    (UNIT.code, "direct", "on_time"), (UNIT.code, "direct", "late"), (UNIT.code, "online", "late"),
    (UNIT.code, "online", "open_with_apology"), (UNIT.code, "direct", "open"),
    (UNIT.code, "direct", "overdue"), (UNIT.code, "direct", "overdue"), (UNIT.code, "online", "supplement"),
    (OTHER_UNIT.code, "online", "early"), (OTHER_UNIT.code, "direct", "early"), (OTHER_UNIT.code, "online", "on_time"),
    (OTHER_UNIT.code, "direct", "late"), (OTHER_UNIT.code, "online", "overdue"), (OTHER_UNIT.code, "direct", "open"),
]
COMPLETED_AS = {"early": "early", "early_with_step": "early", "on_time": "on_time", "late": "late"}
OPEN_AS = {"open": "running", "open_with_apology": "running", "overdue": "overdue", "supplement": "awaiting_supplement"}


@dataclass
class Sent:
    """The dossiers sent and what every count over them must be, derived from PLAN alone."""

    province: str
    codes: dict[str, tuple[str, str, str]] = field(default_factory=dict)

    def count(self, unit: str | None = None, channel: str | None = None, outcome: set[str] | None = None) -> int:
        return sum(1 for u, c, what in self.codes.values()
                   if unit in (None, u) and channel in (None, c) and (outcome is None or what in outcome))

    def completed(self, unit: str | None = None, timeliness: set[str] | None = None) -> int:
        kinds = {k for k, t in COMPLETED_AS.items() if timeliness is None or t in timeliness}
        return self.count(unit, outcome=kinds)

    def open(self, unit: str | None = None, states: set[str] | None = None) -> int:
        kinds = {k for k, s in OPEN_AS.items() if states is None or s in states}
        return self.count(unit, outcome=kinds)

    @property
    def units(self) -> list[str]:
        return sorted({unit for unit, _, _ in self.codes.values()})


def lifecycle(code: str, unit: str, channel: str, what: str, now: datetime) -> list[dict[str, Any]]:
    """Every event of one dossier but an on-time resolution, which needs the deadline resolution computes."""
    received_at = now - (LONG_AGO if what in ("on_time", "late", "overdue") else timedelta(minutes=5))
    data = {**received_data(channel=channel), "unit_code": unit}
    events = [cloudevent(EventType.RECEIVED, code, data, at=received_at)]
    if what == "early_with_step":
        step = {"step": "thẩm định", "unit_code": unit}
        events.append(cloudevent(EventType.STEP_STARTED, code, {**step, "duration": "2 working_days"},
                                 at=now - timedelta(minutes=4)))
        events.append(cloudevent(EventType.STEP_COMPLETED, code, {**step, "outcome": "đạt"},
                                 at=now - timedelta(minutes=3)))
    if what == "open_with_apology":
        events.append(cloudevent(EventType.APOLOGY_ISSUED, code, {
            "reason": "Chờ xác minh", "new_appointment_at": (now + timedelta(days=10)).isoformat()},
            at=now - timedelta(minutes=2)))
    if what == "supplement":
        events.append(cloudevent(EventType.SUPPLEMENT_REQUESTED, code, {
            "reason": "Thiếu tờ khai", "items": ["Bản sao CCCD"]}, at=now - timedelta(minutes=2)))
    if what in ("early", "early_with_step", "late"):
        events.append(cloudevent(EventType.RESOLVED, code, {}, at=now - timedelta(minutes=1)))
    return events


async def resolve_on_the_due_instant(stack: Stack, codes: list[str]) -> None:
    """Resolved exactly at the legal due instant: on the due day and not after it, so on time under either
    completion policy (instant or day)."""
    async with intake_client(stack) as client:
        events = []
        for code in codes:
            async def due(code: str = code) -> str | None:
                reply = await client.get(f"/v1/dossiers/{code}")
                return str(reply.json()["legal_due_at"]) if reply.status_code == 200 else None

            due_at = datetime.fromisoformat(await eventually(due, what=f"{code} received by resolution"))
            events.append(cloudevent(EventType.RESOLVED, code, {}, at=due_at))
    await send(stack, events)


async def refuse_one(stack: Stack) -> None:
    """An input intake must refuse (a unit the registry does not know), so the rejection families have data."""
    stranger = {**received_data(), "unit_code": "00000"}
    async with intake_client(stack) as client:
        reply = await client.post("/v1/events", json=cloudevent(EventType.RECEIVED, dossier_code(), stranger),
                                  headers={"content-type": "application/cloudevents+json"})
    assert reply.status_code >= 400, reply.text


@pytest.fixture(scope="module")
def prometheus(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPrometheus]:
    # `make test` installs it (`make tools`): a missing binary is a broken machine, not a reason to skip.
    assert binary() is not None, "the prometheus binary is not installed: run `make tools` (Debian's prometheus)"
    home = tmp_path_factory.mktemp("prometheus")
    # Groups evaluate every 2 s instead of every minute; the expressions are the deployed ones.
    rules = quick_rules(DEPLOY / "rules.yml", home / "rules.yml", "2s")
    targets = {name: f"127.0.0.1:{stack.ports.of(name)}" for name in SERVICES}
    server = LocalPrometheus(home, free_port(), local_config(targets, [rules], "1s"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
async def prom(prometheus: LocalPrometheus) -> AsyncIterator[httpx.AsyncClient]:
    await prometheus.wait_ready()
    async with httpx.AsyncClient(base_url=prometheus.url, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
async def sent(stack: Stack) -> Sent:
    now = datetime.now(VN)
    traffic = Sent(province=UNIT.province_code)
    events: list[dict[str, Any]] = []
    for unit, channel, what in PLAN:
        code = dossier_code()
        traffic.codes[code] = (unit, channel, what)
        events += lifecycle(code, unit, channel, what, now)
    await send(stack, events)
    await resolve_on_the_due_instant(stack, [code for code, (_, _, what) in traffic.codes.items()
                                             if what == "on_time"])
    await refuse_one(stack)
    return traffic


Answer = dict[tuple[tuple[str, str], ...], float]


async def answer(prom: httpx.AsyncClient, expr: str) -> Answer:
    """Labels (without the metric name, which a recorded series keeps) to value."""
    return {tuple(sorted((k, v) for k, v in sample["metric"].items() if k != "__name__")): float(sample["value"][1])
            for sample in await query(prom, str(prom.base_url).rstrip("/"), expr)}


async def settles(prom: httpx.AsyncClient, expr: str, expected: Answer, timeout: float = 90.0) -> None:
    """Wait until `expr` answers exactly `expected` (ratios to float precision); fail showing both."""
    last: Answer = {}

    async def check() -> bool:
        nonlocal last
        last = await answer(prom, expr)
        return last.keys() == expected.keys() and all(math.isclose(last[k], v, rel_tol=1e-9) for k, v in
                                                      expected.items())

    try:
        await eventually(check, timeout=timeout, what=expr)
    except AssertionError:
        assert last == expected, expr


def counts(label: str, values: dict[str, int]) -> Answer:
    """Counts by one label; a zero count is no series at all, as an exporter leaves it."""
    return {((label, key),): float(value) for key, value in values.items() if value}


def ratios(label: str, values: dict[str, float]) -> Answer:
    return {((label, key),): value for key, value in values.items()}


async def test_promql_answers_are_the_dossiers_sent(prom: httpx.AsyncClient, sent: Sent) -> None:
    units = sent.units
    await settles(prom, "sum(tthc_dossiers_received_total)", {(): len(sent.codes)})
    await settles(prom, "sum by (channel) (tthc_dossiers_received_total)",
                  counts("channel", {c: sent.count(channel=c) for c in ("online", "direct")}))
    await settles(prom, "sum by (unit) (tthc_dossiers_received_total)",
                  counts("unit", {u: sent.count(u) for u in units}))
    await settles(prom, "sum by (timeliness) (tthc_dossiers_completed_total)",
                  counts("timeliness", {t: sent.completed(timeliness={t}) for t in ("early", "on_time", "late")}))
    await settles(prom, 'sum(tthc_dossiers_open{state="overdue"})', {(): sent.open(states={"overdue"})})
    await settles(prom, 'sum by (unit) (tthc_dossiers_open{state="overdue"})',
                  counts("unit", {u: sent.open(u, {"overdue"}) for u in units}))
    await settles(prom, 'sum(tthc_dossiers_open{state="awaiting_supplement"})',
                  {(): sent.open(states={"awaiting_supplement"})})
    await settles(prom, "sum(tthc_dossiers_open)", {(): sent.open()})

    # The recording rules, evaluated by Prometheus from what it scraped.
    await settles(prom, "unit:tthc_completed_in_time:ratio", ratios("unit", {
        u: sent.completed(u, {"early", "on_time"}) / sent.completed(u) for u in units}))
    await settles(prom, "province:tthc_completed_in_time:ratio", ratios("province", {
        sent.province: sent.completed(timeliness={"early", "on_time"}) / sent.completed()}))
    await settles(prom, "province:tthc_received_online:ratio", ratios("province", {
        sent.province: sent.count(channel="online") / len(sent.codes)}))
    await settles(prom, "unit:tthc_received_online:ratio", ratios("unit", {
        u: sent.count(u, channel="online") / sent.count(u) for u in units}))
    overdue = {u: (sent.completed(u, {"late"}) + sent.open(u, {"overdue"})) / (sent.completed(u) + sent.open(u))
               for u in units}
    await settles(prom, "unit:tthc_overdue:ratio", ratios("unit", overdue))
    await settles(prom, "unit:tthc_satisfaction_proxy:ratio", ratios("unit", {u: 1 - r for u, r in overdue.items()}))
    await settles(prom, "province:tthc_satisfaction_proxy:ratio", ratios("province", {sent.province: 1 - (
        sent.completed(timeliness={"late"}) + sent.open(states={"overdue"})) / (sent.completed() + sent.open())}))

    # Every deployed rule loaded and evaluating without an error (an alert over a family nobody exports yet,
    # such as the calendar's, is fine: it is simply inactive).
    deployed = yaml.safe_load((DEPLOY / "rules.yml").read_text())["groups"]
    loaded = (await prom.get("/api/v1/rules")).json()["data"]["groups"]
    assert sorted(group["name"] for group in loaded) == sorted(group["name"] for group in deployed)
    assert sum(len(group["rules"]) for group in loaded) == sum(len(group["rules"]) for group in deployed)
    unhealthy = [(rule["name"], rule.get("lastError")) for group in loaded for rule in group["rules"]
                 if rule["health"] != "ok"]
    assert not unhealthy


# ---- the Grafana dashboard -----------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def targets(board: dict[str, Any]) -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in panels(board) if panel.get("type") != "row"
            for target in panel.get("targets", [])]


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's own substitution for the variables the dashboard uses ($x, ${x}, [[x]])."""
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in values:
            raise AssertionError(f"{expr!r} uses ${name}, which this test does not know how to fill")
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\[\[(\w+)\]\]|\$(\w+)", value, expr)


def datasource_uid() -> str:
    provisioned = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    return str(provisioned["datasources"][0]["uid"])


def test_dashboard_is_provisioned_in_compose_against_the_provisioned_datasource() -> None:
    board = dashboard()
    uid = datasource_uid()
    everything = panels(board)
    assert len({panel["id"] for panel in everything}) == len(everything), "panel ids must be unique"
    for panel in everything:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == uid, panel["title"]
            assert panel["targets"], f"{panel['title']} has no query"
            assert all(target["datasource"]["uid"] == uid for target in panel["targets"]), panel["title"]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == uid, variable["name"]

    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in compose["services"]["grafana"]["volumes"]
              if volume.startswith("./")}
    providers = yaml.safe_load(next((GRAFANA / "provisioning" / "dashboards").glob("*.yml")).read_text())
    folder = providers["providers"][0]["options"]["path"]
    host = mounts.get(folder)
    assert host is not None, f"the provider reads {folder}, which compose does not mount"
    assert (PROJECT_ROOT / host / DASHBOARD.name).samefile(DASHBOARD)
    assert mounts.get("/etc/grafana/provisioning/dashboards") == "./deploy/grafana/provisioning/dashboards"


async def variable_values(prom: httpx.AsyncClient, definition: str) -> list[str]:
    """A `label_values(selector, label)` template query, as Grafana's Prometheus datasource runs it."""
    match = re.fullmatch(r"label_values\((?:(.+),\s*)?(\w+)\)", definition.strip())
    assert match, f"unsupported variable query {definition!r}"
    selector, label = match.groups()
    params = {"match[]": selector} if selector else {}
    reply = await prom.get(f"/api/v1/label/{label}/values", params=params)
    assert reply.status_code == 200, reply.text
    return [str(value) for value in reply.json()["data"]]


async def test_every_dashboard_panel_has_data(prom: httpx.AsyncClient, sent: Sent) -> None:
    board = dashboard()
    # Variables resolve in dashboard order, each from real label values, as Grafana does; $unit is a unit that
    # was sent dossiers for every panel to show (an apology, a step, a supplement).
    chosen = {"province": sent.province, "unit": UNIT.code}
    values = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}
    for variable in board["templating"]["list"]:
        name = variable["name"]
        definition = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        definition = substitute(definition, values)

        async def offered(definition: str = definition, name: str = name) -> list[str] | None:
            found = await variable_values(prom, definition)
            return found if chosen[name] in found else None

        await eventually(offered, timeout=90, what=f"${name} offering {chosen[name]}")
        values[name] = chosen[name]

    queries = [(title, substitute(expr, values)) for title, expr in targets(board)]
    assert len(queries) >= 20, "the dashboard lost panels"
    last: dict[str, Any] = {}

    async def all_answer() -> bool:
        for title, expr in queries:
            try:
                result = await query(prom, str(prom.base_url).rstrip("/"), expr)
            except PrometheusError as error:
                last[title] = str(error)
                continue
            numbers = [float(sample["value"][1]) for sample in result]
            if numbers and all(math.isfinite(n) for n in numbers):
                last.pop(title, None)
            else:
                last[title] = f"{expr}: {result}"
        return not last

    try:
        # Rates need two scrapes inside their window and lag is read every 15 s: waiting, not sleeping.
        await eventually(all_answer, timeout=120, what="every panel answering")
    except AssertionError:
        pytest.fail("panels without data:\n" + "\n".join(f"  {title}: {why}" for title, why in last.items()))


def test_dashboard_titles_are_vietnamese() -> None:
    """The operators read Vietnamese: every row and panel title carries it (with its diacritics)."""
    titles = Counter(panel["title"] for panel in panels(dashboard()))
    vietnamese = re.compile(r"[ăâđêôơưàảãáạằẳẵắặầẩẫấậèẻẽéẹềểễếệìỉĩíịòỏõóọồổỗốộờởỡớợùủũúụừửữứựỳỷỹýỵ]", re.IGNORECASE)
    assert all(vietnamese.search(title) for title in titles), [t for t in titles if not vietnamese.search(t)]
    assert not [title for title, n in titles.items() if n > 1], "titles repeat"
