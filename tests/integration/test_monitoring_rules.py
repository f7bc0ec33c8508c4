"""monitoring/alerts.yml is valid and every alert behaves as its unit tests say (promtool)."""

from __future__ import annotations

import subprocess

import pytest

from catdog_runtime import services

MONITORING = services.MONITORING_DIR


@pytest.fixture(scope="module", autouse=True)
def promtool():
    services.require_debian_packages("prometheus")


def promtool_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=MONITORING)


def test_rules_are_valid():
    result = promtool_run("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 14 rules found" in result.stdout


def test_rules_unit_tests_pass():
    result = promtool_run("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test():
    import yaml

    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    cases = yaml.safe_load((MONITORING / "alerts_test.yml").read_text())["tests"]
    fired = {t["alertname"] for case in cases for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert alerts == fired
