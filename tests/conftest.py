"""Session fixtures: real MLflow and Prefect servers plus a worker, in a temp folder.

Each integration session gets its own ports and state, so it never touches the
user's running platform (.run/).
"""

from __future__ import annotations

import json
import os
import re
import sys
from types import SimpleNamespace

import httpx
import pytest

from tests.servers import BIN, ROOT, Server, free_port, run

DATA = ROOT / "data"
TEST_IMAGES = ROOT / "test_images"


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def real_data():
    """The DVC-pulled photos; integration tests need them (`make data`)."""
    if not (DATA / "cat").is_dir() or not (TEST_IMAGES / "dog").is_dir():
        pytest.fail("data/ and test_images/ are missing: run `make data` (dvc pull) first")
    return DATA


@pytest.fixture
def tiny_run(tmp_path):
    """A baseline trained for 3 epochs on generated two-colour images (no data needed)."""
    from model_lib.config import TrainConfig
    from model_lib.data import discover_images, split
    from model_lib.models import preprocessing_for
    from model_lib.training import prepare_data, train
    from tests.images import write_dataset

    items, class_names = discover_images(write_dataset(tmp_path / "data", per_class=16))
    train_items, val_items = split(items, 25)
    config = TrainConfig(epochs=3, batch_size=8, image_size=32, learning_rate=0.01)
    prep = preprocessing_for(config.architecture, config.image_size, class_names)
    data = prepare_data(config, train_items, val_items, prep)
    events = []
    result = train(config, data, class_names, on_progress=events.append)
    return SimpleNamespace(data=data, result=result, events=events, prep=prep, val_items=val_items)


@pytest.fixture(scope="session")
def platform(tmp_path_factory, real_data):
    """MLflow server + Prefect server + process worker, like `make up`, on free ports."""
    state = tmp_path_factory.mktemp("platform")
    mlflow_port, prefect_port = free_port(), free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "CATDOG_ROOT": str(ROOT),
        "PREFECT_HOME": str(state / "prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        # prefect.yaml names the pool "{{ $CATDOG_WORK_POOL }}"; the pool created below.
        "CATDOG_WORK_POOL": "local",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
        "BENTOML_HOME": str(state / "bentoml"),
        "CATDOG_INFERENCE_LOG": str(state / "inference_log.sqlite"),
    }
    servers = []
    try:
        mlflow = Server(
            "mlflow",
            [
                str(BIN / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(mlflow_port),
                "--backend-store-uri",
                f"sqlite:///{state}/mlflow.db",
                "--artifacts-destination",
                str(state / "artifacts"),
                # As scripts/services.py: 4 workers importing mlflow at once on a busy
                # 2-core machine were not healthy within the wait below.
                "--workers",
                "1",
            ],
            state / "mlflow.log",
            env,
        )
        servers.append(mlflow)
        prefect = Server(
            "prefect-server",
            [
                str(BIN / "prefect"),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(prefect_port),
            ],
            state / "prefect-server.log",
            env,
        )
        servers.append(prefect)
        # Cold starts took minutes on a busy shared machine; a crash still fails at once.
        prefect.wait_http(f"http://127.0.0.1:{prefect_port}/api/health", timeout=600)
        mlflow.wait_http(f"http://127.0.0.1:{mlflow_port}/health", timeout=600)
        run([str(BIN / "prefect"), "work-pool", "create", "local", "--type", "process"], env)
        run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], env)
        pause_schedules({"env": env}, "evaluate/scheduled")
        worker = Server(
            "worker",
            [str(BIN / "prefect"), "worker", "start", "--pool", "local"],
            state / "worker.log",
            env,
        )
        servers.append(worker)
        yield {
            "env": env,
            "state": state,
            "mlflow_uri": env["MLFLOW_TRACKING_URI"],
            "servers": {s.name: s for s in servers},
        }
    finally:
        for server in reversed(servers):
            server.stop()


SMALL_TRAINING = {
    "architecture": "baseline_cnn",
    "data_fraction": 0.04,
    "epochs": 2,
    "image_size": 64,
}


def run_deployment(platform, name: str, params: dict, timeout: float = 900, check: bool = True):
    """`prefect deployment run NAME --watch`; returns the flow run as the REST API shows it.

    With `check`, AssertionError when the run fails.
    """
    args = [str(BIN / "prefect"), "deployment", "run", name, "--watch"]
    args += ["--params", json.dumps(params)]
    result = run(args, platform["env"], timeout=timeout, check=check)
    match = re.search(r"UUID: ([0-9a-f-]{36})", result.stdout)
    assert match, f"no flow run id in the output of {' '.join(args)}:\n{result.stdout[-2000:]}"
    return prefect_api(platform, "GET", f"/flow_runs/{match.group(1)}")


def prefect_api(platform, method: str, path: str, **kwargs):
    response = httpx.request(
        method, platform["env"]["PREFECT_API_URL"] + path, timeout=10, **kwargs
    )
    response.raise_for_status()
    return response.json() if response.content else None


def pause_schedules(platform, deployment: str) -> None:
    """Tests trigger runs themselves; a cron run firing mid-session would add noise."""
    found = prefect_api(platform, "GET", f"/deployments/name/{deployment}")
    for schedule in found["schedules"]:
        prefect_api(
            platform,
            "PATCH",
            f"/deployments/{found['id']}/schedules/{schedule['id']}",
            json={"active": False},
        )


@pytest.fixture(scope="session")
def trained(platform):
    """One real `train/baseline` run on a slice of the photos: (MlflowClient, run)."""
    from mlflow import MlflowClient

    run_deployment(platform, "train/baseline", {"config": SMALL_TRAINING})
    client = MlflowClient(platform["mlflow_uri"])
    experiment = client.get_experiment_by_name("catdog-training")
    (first,) = client.search_runs([experiment.experiment_id])
    return client, first


@pytest.fixture(scope="session")
def served_champion(platform, trained):
    """`package/champion` through the worker, then `bentoml serve` of the packaged model."""
    run_deployment(platform, "package/champion", {})
    port = free_port()
    server = Server(
        "bentoml",
        [str(BIN / "bentoml"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        platform["state"] / "bentoml.log",
        platform["env"],
    )
    try:
        server.wait_http(f"http://127.0.0.1:{port}/readyz", timeout=180)
        yield {"url": f"http://127.0.0.1:{port}", "server": server}
    finally:
        server.stop()


def prefect_cli(platform, *args, timeout: float = 900):
    return run([str(BIN / "prefect"), *args], platform["env"], timeout=timeout)


def python_cli(platform, *args, timeout: float = 600):
    return run([sys.executable, *args], platform["env"], timeout=timeout)


def latest_flow_run(platform, flow_name: str) -> dict:
    """The most recently started run of `flow_name`."""
    (flow_run,) = prefect_api(
        platform,
        "POST",
        "/flow_runs/filter",
        json={
            "flows": {"name": {"any_": [flow_name]}},
            "flow_runs": {"start_time": {"is_null_": False}},
            "sort": "START_TIME_DESC",
            "limit": 1,
        },
    )
    return flow_run
