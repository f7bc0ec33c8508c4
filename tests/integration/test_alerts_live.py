"""Real Prometheus + Pushgateway evaluate monitoring/alerts.yml and fire alerts on purpose.

Two stand-in replicas (tests/integration/fake_replica.py: real HTTP, BentoML's metric
names) are scraped every second through the file_sd targets the platform
writes. Failing requests fire CatdogHighErrorRatio, killing a replica fires
CatdogReplicaDown, and the evaluation's figures pushed with
model_lib.pushgateway fire CatdogEvaluationAccuracyLow and CatdogNonPetShareHigh.
The rules are the shipped expressions with their `for:` durations shortened to seconds.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import time

import httpx
import pytest

from catdog_runtime import services
from catdog_runtime.processes import ROOT, free_port
from catdog_runtime.waits import poll
from model_lib.pushgateway import push_evaluation

ALERT_WAIT_SECONDS = 180
# Prometheus and the Pushgateway ask for basic auth, as on the platform.
AUTH = (services.MONITORING_USER, secrets.token_hex(16))


@pytest.fixture
def monitoring(tmp_path, monkeypatch):
    services.require_debian_packages("prometheus", "prometheus-pushgateway", "apache2-utils")
    monkeypatch.setenv("CATDOG_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("CATDOG_MONITORING_PASSWORD", AUTH[1])  # push_evaluation reads it too
    prometheus_port, pushgateway_port = free_port(), free_port()
    monkeypatch.setenv("PROMETHEUS_PORT", str(prometheus_port))
    monkeypatch.setenv("PUSHGATEWAY_PORT", str(pushgateway_port))
    monkeypatch.setenv("PREFECT_PORT", str(free_port()))  # scrape nobody's real server
    (tmp_path / "logs").mkdir()
    rules = tmp_path / "alerts.yml"
    shipped = (services.MONITORING_DIR / "alerts.yml").read_text()
    rules.write_text(re.sub(r"for: \d+m", "for: 3s", shipped))
    services.render_prometheus_config(interval="1s", rules=rules)
    services.write_web_configs()
    platform = services.scale_services(
        {
            "mlflow": services.Service("mlflow", ["mlflow"], env={"MLFLOW_BACKEND_STORE_URI": "x"}),
            "worker": services.Service("worker", ["prefect", "--name", "w"]),
        }
    )
    started = [platform["prometheus"], platform["pushgateway"]]
    try:
        for service in started:
            services.start(service)
        for service in started:
            services.wait_healthy(service)
        yield {
            "prometheus": f"http://127.0.0.1:{prometheus_port}",
            "pushgateway": f"http://127.0.0.1:{pushgateway_port}",
        }
    finally:
        for service in started:
            services.stop(service)


@pytest.fixture
def replicas():
    ports = [free_port(), free_port()]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.integration.fake_replica", str(port)], cwd=ROOT
        )
        for port in ports
    ]
    yield list(zip(ports, processes, strict=True))
    for process in processes:
        process.kill()
        process.wait()


def firing(prometheus: str) -> dict[str, list[dict]]:
    alerts = httpx.get(f"{prometheus}/api/v1/alerts", auth=AUTH, timeout=10).json()["data"][
        "alerts"
    ]
    found: dict[str, list[dict]] = {}
    for alert in alerts:
        if alert["state"] == "firing":
            found.setdefault(alert["labels"]["alertname"], []).append(alert)
    return found


def wait_for_alert(prometheus: str, name: str) -> list[dict]:
    alerts = poll(lambda: firing(prometheus).get(name), bool, ALERT_WAIT_SECONDS, interval=1)
    if alerts:
        return alerts
    pytest.fail(f"{name} did not fire within {ALERT_WAIT_SECONDS} s; firing: {firing(prometheus)}")


def wait_for_scrapes(prometheus: str, count: int) -> None:
    def healthy() -> list:
        targets = httpx.get(f"{prometheus}/api/v1/targets", auth=AUTH, timeout=10).json()["data"]
        return [
            t
            for t in targets["activeTargets"]
            if t["labels"]["job"] == "catdog-service" and t["health"] == "up"
        ]

    found = poll(healthy, lambda up: len(up) == count, ALERT_WAIT_SECONDS, interval=1)
    if len(found) != count:
        pytest.fail(f"Prometheus never scraped {count} healthy replicas: {found}")


def test_error_ratio_replica_down_and_accuracy_alerts_fire(monitoring, replicas):
    prometheus = monitoring["prometheus"]
    services.write_service_targets([f"127.0.0.1:{port}" for port, _ in replicas])
    wait_for_scrapes(prometheus, 2)
    assert "CatdogHighErrorRatio" not in firing(prometheus)
    assert "CatdogReplicaDown" not in firing(prometheus)

    # Half the requests of one replica fail with 500, for a few scrapes.
    (port, _), (victim_port, victim) = replicas
    for _ in range(5):
        for body in (b"fine", b"fail"):
            httpx.post(f"http://127.0.0.1:{port}/classify", content=body, timeout=10)
        time.sleep(1)
    (ratio,) = wait_for_alert(prometheus, "CatdogHighErrorRatio")
    assert ratio["labels"]["severity"] == "page"
    # Half of the requests failed. The value is read when the alert first fires, which
    # on a busy machine can be between a request and the next scrape (and rate() does
    # not count a new series' first increment): about a half, not exactly.
    assert 0.3 <= float(ratio["value"]) <= 0.7

    victim.kill()
    victim.wait()
    (down,) = wait_for_alert(prometheus, "CatdogReplicaDown")
    assert down["labels"]["instance"] == f"127.0.0.1:{victim_port}"
    assert "CatdogNoReplicaUp" not in firing(prometheus)  # the other one still answers

    push_evaluation(
        monitoring["pushgateway"],
        accuracy=0.5,
        min_accuracy=0.85,
        errors=0,
        requests=200,
        window_requests=40,
        neither_share=0.45,
        max_neither_share=0.2,
        drift_share=0.1,
        drift_detected=False,
    )
    (accuracy,) = wait_for_alert(prometheus, "CatdogEvaluationAccuracyLow")
    assert float(accuracy["value"]) == pytest.approx(0.5)
    (non_pets,) = wait_for_alert(prometheus, "CatdogNonPetShareHigh")
    assert float(non_pets["value"]) == pytest.approx(0.45)
    assert "CatdogDataDrift" not in firing(prometheus)
