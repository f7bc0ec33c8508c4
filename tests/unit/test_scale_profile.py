"""PROFILE=scale selects its services; the default profile stays as it was."""

from __future__ import annotations

import json

import pytest

from catdog_runtime import services


@pytest.fixture
def env(tmp_path, monkeypatch):
    values = {
        "CATDOG_RUN_DIR": str(tmp_path),
        "MLFLOW_PORT": "15000",
        "PREFECT_PORT": "14200",
        "BENTO_PORT": "13000",
        "CATDOG_WORK_POOL": "local",
        "CATDOG_PG_PORT": "15433",
        "PROMETHEUS_PORT": "19090",
        "PUSHGATEWAY_PORT": "19091",
        "CATDOG_MLFLOW_BACKEND_URI": "postgresql+psycopg://catdog@127.0.0.1:15433/mlflow",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    for name in ("CATDOG_PROFILE", "PROFILE", "CATDOG_PREFECT_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_default_profile_is_unchanged(env):
    platform = services.services()
    assert list(platform) == ["mlflow", "prefect-server", "worker", "haproxy", "watchdog"]
    mlflow = platform["mlflow"]
    assert mlflow.env["MLFLOW_BACKEND_STORE_URI"] == f"sqlite:///{env}/mlflow/mlflow.db"
    assert "--serve-artifacts" not in mlflow.argv


def test_scale_profile_adds_postgres_two_workers_and_monitoring(env, monkeypatch):
    monkeypatch.setenv("PROFILE", "scale")
    platform = services.services()
    assert set(platform) == {
        "mlflow",
        "prefect-server",
        "worker",
        "worker-2",
        "haproxy",
        "watchdog",
        "postgres",
        "prometheus",
        "pushgateway",
    }
    mlflow = platform["mlflow"]
    # The URI (a password, off this machine) reaches MLflow through its environment only.
    assert mlflow.env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://")
    assert not any("postgresql" in part for part in mlflow.argv)
    assert "--serve-artifacts" in mlflow.argv and "basic-auth" in mlflow.argv
    names = [w.argv[w.argv.index("--name") + 1] for w in (platform["worker"], platform["worker-2"])]
    assert names[1] == f"{names[0]}-2"  # one pool, two distinct workers
    assert platform["worker"].argv[-2:] == platform["worker-2"].argv[-2:] == ["--limit", "1"]
    assert platform["postgres"].port == 15433 and "-p" in platform["postgres"].argv
    for name in ("prometheus", "pushgateway"):
        assert f"--web.config.file={env / name / 'web.yml'}" in platform[name].argv
    monkeypatch.setenv("CATDOG_PREFECT_WORKERS", "3")
    assert "worker-3" in services.services()


def test_unknown_profile_is_refused(env, monkeypatch):
    monkeypatch.setenv("PROFILE", "big")
    with pytest.raises(services.ServiceError, match="PROFILE='big'"):
        services.services()


def test_prometheus_config_and_replica_targets(env, monkeypatch):
    monkeypatch.delenv("CATDOG_MONITORING_PASSWORD", raising=False)
    with pytest.raises(services.ServiceError, match="CATDOG_MONITORING_PASSWORD is not set"):
        services.render_prometheus_config()
    monkeypatch.setenv("CATDOG_MONITORING_PASSWORD", "pw-of-the-test")
    config = services.render_prometheus_config(interval="2s")
    text = config.read_text()
    assert "scrape_interval: 2s" in text and str(services.MONITORING_DIR / "alerts.yml") in text
    assert "127.0.0.1:14200" in text and "127.0.0.1:19091" in text
    # Prometheus scrapes the Pushgateway with the password: the file is the owner's alone.
    assert "password: pw-of-the-test" in text and config.stat().st_mode & 0o777 == 0o600
    services.write_service_targets(["127.0.0.1:3001", "127.0.0.1:3002"])
    groups = json.loads(services.service_targets_file().read_text())
    assert [g["targets"] for g in groups] == [["127.0.0.1:3001"], ["127.0.0.1:3002"]]
