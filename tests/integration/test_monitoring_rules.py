"""monitoring/alerts.yml is valid and every alert behaves as its unit tests say (promtool,
installed when missing: so not a unit test)."""

from __future__ import annotations

import subprocess

import pytest
import yaml

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
    groups = yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
    assert f"SUCCESS: {sum(len(g['rules']) for g in groups)} rules found" in result.stdout


def test_rules_unit_tests_pass():
    result = promtool_run("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_is_valid(tmp_path, monkeypatch):
    monkeypatch.setenv("CATDOG_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("CATDOG_MONITORING_PASSWORD", "test-password")
    config = services.render_prometheus_config(interval="2s")
    check = subprocess.run(
        ["promtool", "check", "config", "--syntax-only", str(config)],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    # The basic-auth web configs of Prometheus and the Pushgateway.
    services.require_debian_packages("apache2-utils")
    services.write_web_configs()
    for name in services.SCALE_MONITORING:
        web = services.web_config_file(name)
        check = subprocess.run(
            ["promtool", "check", "web-config", str(web)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert "test-password" not in web.read_text() and web.stat().st_mode & 0o777 == 0o600
