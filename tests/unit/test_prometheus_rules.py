"""The Decision 766 recording rules and the alerts, checked and unit-tested by promtool."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from shared.infra.paths import PROJECT_ROOT

pytestmark = pytest.mark.unit
RULES = PROJECT_ROOT / "deploy" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], cwd=RULES, capture_output=True, text=True, timeout=120, check=False)


def test_rules_are_valid_and_every_alert_has_a_test() -> None:
    deployed = [rule for group in yaml.safe_load((RULES / "rules.yml").read_text())["groups"]
                for rule in group["rules"]]
    checked = promtool("check", "rules", "rules.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(deployed)} rules found" in checked.stdout
    tested = {case["alertname"] for test in yaml.safe_load((RULES / "rules_test.yml").read_text())["tests"]
              for case in test.get("alert_rule_test", [])}
    assert {rule["alert"] for rule in deployed if "alert" in rule} <= tested


def test_rules_compute_the_expected_rates_and_fire_the_expected_alerts() -> None:
    tested = promtool("test", "rules", "rules_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout
