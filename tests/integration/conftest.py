"""Session fixtures: real MLflow and Prefect servers plus a worker, in a temp folder.

Each integration session gets its own ports and state, so it never touches the
user's running platform (.run/).
"""

from __future__ import annotations

import json
import re
import sys

import httpx
import pytest
from mlflow import MlflowClient

from bench.servers import BIN, ROOT, Server, free_port, run
from tests.integration.platform import platform_env, services_cli
from tests.integration.service_runner import train_temporary_model


@pytest.fixture(scope="session")
def platform(tmp_path_factory, real_data):
    """`make up` and `make deploy` (MLflow, Prefect server, worker) on free ports."""
    state = tmp_path_factory.mktemp("platform")
    env = platform_env(state)
    try:
        started = services_cli(env, "up")
        assert started.returncode == 0, f"make up failed:\n{started.stdout}\n{started.stderr}"
        run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], env)
        pause_schedules({"env": env}, "evaluate/scheduled")
        yield {"env": env, "state": state, "mlflow_uri": env["MLFLOW_TRACKING_URI"]}
    finally:
        services_cli(env, "down", timeout=300)


SMALL_TRAINING = {
    "architecture": "baseline_cnn",
    "data_fraction": 0.04,
    "epochs": 2,
    "image_size": 64,
}


def run_deployment(platform, name: str, params: dict, timeout: float = 1800, check: bool = True):
    """What the make targets do (scripts/run_deployment.py NAME --params JSON); returns the
    flow run as the REST API shows it. With `check`, AssertionError when the run fails."""
    args = [sys.executable, str(ROOT / "scripts" / "run_deployment.py"), name]
    args += ["--params", json.dumps(params)]
    result = run(args, platform["env"], timeout=timeout, check=check)
    match = re.search(r"flow run '[^']+' \(([0-9a-f-]{36})\)", result.stdout)
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


@pytest.fixture(scope="session")
def model_onnx(tmp_path_factory, real_data):
    """A small real baseline (cached under .run/test-cache) for the service tests."""
    return train_temporary_model(tmp_path_factory.mktemp("onnx"))
