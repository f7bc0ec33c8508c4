"""Fixtures and helpers of the closed-loop tests: the loop switch, events, a rollout stand-in."""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from tests.conftest import pause_schedules, prefect_api
from tests.servers import BIN, ROOT, run

LOOP_DEPLOYMENTS = ("train/retrain", "package/champion", "deploy/rollout")


def pytest_configure(config):
    """prefect.yaml reads the loop settings at deploy time (scripts/env.sh sets them for
    `make`). The test session starts with the loop OFF, whatever the shell says: other
    tests emit real alarms and promotions, and must not start retrainings on the
    shared worker. tests/integration/test_loop.py turns it on for itself."""
    os.environ["CATDOG_LOOP_ENABLED"] = "false"
    os.environ["CATDOG_RETRAIN_COOLDOWN"] = "PT6H"
    os.environ["CATDOG_ROLLOUT_DELAY"] = "PT0S"
    os.environ.setdefault("CATDOG_WORK_POOL", "local")  # the pool the `platform` fixture makes
    # As scripts/env.sh does for `make up`: MLflow's default 4 uvicorn workers and its job
    # runner never became healthy on a loaded 2-core machine (GUIDE "Slow machines exist").
    os.environ.setdefault("MLFLOW_WORKERS", "1")
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")


STAND_IN_FLOW = '''"""TEST STAND-IN for `deploy/rollout`, registered ONLY in the
integration tests' own Prefect server (tests/integration/conftest.py). The real
rollout flow lives on branch `rollout`; this one only shows that the automation
started it, and with which bento_tag."""

from prefect import flow


@flow(name="deploy")
def rollout(bento_tag: str) -> str:
    print(f"stand-in rollout of {bento_tag}")
    return bento_tag
'''


@pytest.fixture(scope="module")
def rollout_stand_in(platform, tmp_path_factory) -> Path:
    """A project folder with the stand-in flow and the repo's own rollout trigger
    (prefect.yaml `definitions.triggers.rollout_on_bento`), as the real rollout
    deployment will carry it."""
    folder = tmp_path_factory.mktemp("rollout-stand-in")
    (folder / "stand_in_rollout.py").write_text(STAND_IN_FLOW)
    trigger = yaml.safe_load((ROOT / "prefect.yaml").read_text())["definitions"]["triggers"][
        "rollout_on_bento"
    ]
    project = {
        "name": "rollout-stand-in",
        "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": str(folder)}}],
        "deployments": [
            {
                "name": "rollout",
                "entrypoint": "stand_in_rollout.py:rollout",
                "work_pool": {"name": "{{ $CATDOG_WORK_POOL }}"},
                "triggers": [trigger],
            }
        ],
    }
    (folder / "prefect.yaml").write_text(yaml.safe_dump(project, sort_keys=False))
    return folder


def set_loop(platform, enabled: bool, *extra_projects: Path) -> None:
    """The switch as `make loop-on` / `make loop-off` flips it: re-deploy with
    CATDOG_LOOP_ENABLED, which sets `enabled` on every trigger."""
    env = {
        **platform["env"],
        "CATDOG_LOOP_ENABLED": "true" if enabled else "false",
        "CATDOG_WORK_POOL": "local",
    }
    for project in (ROOT, *extra_projects):
        run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], env, cwd=project)
    # A deploy re-activates the cron schedule the `platform` fixture paused.
    pause_schedules(platform, "evaluate/scheduled")


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
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def set_pool_paused(platform, paused: bool, pool: str = "local") -> None:
    prefect_api(platform, "PATCH", f"/work_pools/{pool}", json={"is_paused": paused})
