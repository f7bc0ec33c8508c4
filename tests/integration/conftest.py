"""Session fixtures: real MLflow and Prefect servers plus a worker, in a temp folder.

Each integration session gets its own ports and state, so it never touches the
user's running platform (.run/).
"""

from __future__ import annotations

import json
import re
import sys
import uuid
from datetime import UTC, datetime

import pytest
from mlflow import MlflowClient

from catdog_runtime.prefect_api import PrefectAPI
from catdog_runtime.processes import BIN, free_port, run, start_server
from catdog_runtime.waits import poll
from tests.integration.platform import log_into_mlflow, platform_env, services_cli
from tests.integration.service_runner import save_to_store, train_temporary_model


@pytest.fixture(scope="session")
def platform(tmp_path_factory, real_data):
    """`make up` and `make deploy` (MLflow, Prefect server, worker) on free ports."""
    state = tmp_path_factory.mktemp("platform")
    # The loop starts OFF: other tests emit real alarms and promotions, which must not
    # start retrainings on the shared worker; test_loop.py turns it on for itself. An
    # automatic rollout waits an hour (the approval window) so a test sees it scheduled.
    # Replicas run one worker process, not one per core: these tests judge rollouts and
    # evaluations, not throughput, and each process imports the service again at start.
    env = platform_env(
        state,
        CATDOG_LOOP="off",
        CATDOG_RETRAIN_COOLDOWN="PT6H",
        CATDOG_ROLLOUT_DELAY="PT1H",
        CATDOG_WORKERS="1",
    )
    try:
        started = services_cli(env, "up")
        assert started.returncode == 0, f"make up failed:\n{started.stdout}\n{started.stderr}"
        run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], env)
        pause_schedules({"env": env}, "evaluate/scheduled")
        with pytest.MonkeyPatch.context() as monkeypatch:
            log_into_mlflow(monkeypatch, env)  # the tests' own MlflowClient calls
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
    """What the make targets do (python -m catdog_runtime.run_deployment NAME --params JSON);
    returns the flow run as the REST API shows it.
    With `check`, AssertionError when the run fails."""
    args = [sys.executable, "-m", "catdog_runtime.run_deployment", name]
    args += ["--params", json.dumps(params)]
    result = run(args, platform["env"], timeout=timeout, check=check)
    match = re.search(r"flow run '[^']+' \(([0-9a-f-]{36})\)", result.stdout)
    assert match, (
        f"no flow run id in the output of {' '.join(args)} (exit {result.returncode}):\n"
        f"stdout:\n{result.stdout[-2000:]}\nstderr:\n{result.stderr[-2000:]}"
    )
    return prefect_api(platform, "GET", f"/flow_runs/{match.group(1)}")


def prefect_api(platform, method: str, path: str, **kwargs):
    """One call through the project's Prefect client (catdog_runtime.prefect_api)."""
    env = platform["env"]
    api = PrefectAPI(
        env["PREFECT_API_URL"], patience=60, timeout=60, auth=env["PREFECT_API_AUTH_STRING"]
    )
    return api.call(method, path, **kwargs)


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
    flow_run = run_deployment(platform, "train/baseline", {"config": SMALL_TRAINING})
    client = MlflowClient(platform["mlflow_uri"])
    experiment = client.get_experiment_by_name("catdog-training")
    # Found by the flow run that logged it: other modules may have trained before.
    (first,) = client.search_runs(
        [experiment.experiment_id], f"tags.prefect_flow_run_id = '{flow_run['id']}'"
    )
    return client, first


@pytest.fixture(scope="session")
def served_champion(platform, trained):
    """`package/champion` through the worker, then `bentoml serve` of the packaged model."""
    run_deployment(platform, "package/champion", {})
    port = free_port()
    # Its own inference log: the drift tests start from an empty one, whatever traffic
    # other modules sent through the platform's replicas before.
    inference_log = str(platform["state"] / "served-champion-inference.sqlite")
    server = start_server(
        "bentoml",
        [str(BIN / "bentoml"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        platform["state"] / "bentoml.log",
        {**platform["env"], "CATDOG_INFERENCE_LOG": inference_log},
        f"http://127.0.0.1:{port}/readyz",
    )
    try:
        yield {"url": f"http://127.0.0.1:{port}", "server": server, "inference_log": inference_log}
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


@pytest.fixture(scope="session")
def model_store(model_onnx, tmp_path_factory):
    """A BentoML store (its state folder) holding that model, saved once: for the tests
    that start their own `bentoml serve` with other settings and judge its answers, not
    its inference log (the servers started on it share one)."""
    state = tmp_path_factory.mktemp("model-store")
    save_to_store(model_onnx, state)
    return state


def set_loop(platform, enabled: bool) -> None:
    """The switch as `make loop-on` / `make loop-off` flips it."""
    python_cli(platform, "-m", "catdog_runtime.loop", "on" if enabled else "off")


def loop_automations(platform) -> dict[str, dict]:
    automations = prefect_api(platform, "POST", "/automations/filter", json={})
    return {a["name"]: a for a in automations}


def emit(platform, name: str, resource_id: str, payload: dict | None = None) -> str:
    """An event as a flow would send it (POST /api/events: what emit_event ends in)."""
    event_id = str(uuid.uuid4())
    prefect_api(
        platform,
        "POST",
        "/events",
        json=[
            {
                "id": event_id,
                "occurred": datetime.now(UTC).isoformat(),
                "event": name,
                "resource": {"prefect.resource.id": resource_id},
                "related": [],
                "payload": payload or {},
            }
        ],
    )
    return event_id


def events_named(platform, name: str) -> list[dict]:
    page = prefect_api(
        platform,
        "POST",
        "/events/filter",
        json={"filter": {"event": {"name": [name]}}, "limit": 50},
    )
    return page["events"]


def runs_of(platform, deployment: str) -> list[dict]:
    found = prefect_api(platform, "GET", f"/deployments/name/{deployment}")
    return prefect_api(
        platform,
        "POST",
        "/flow_runs/filter",
        json={"deployments": {"id": {"any_": [found["id"]]}}, "sort": "EXPECTED_START_TIME_ASC"},
    )


def wait_for(check, timeout: float, what: str, every: float = 2.0):
    """Poll `check()` until it returns something truthy; fail naming `what` after `timeout`."""
    value = poll(check, bool, timeout, interval=every)
    if value:
        return value
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def set_pool_paused(platform, paused: bool, pool: str = "local") -> None:
    prefect_api(platform, "PATCH", f"/work_pools/{pool}", json={"is_paused": paused})
