"""The closed loop on a real Prefect server + worker: events -> automations -> runs.

Order matters and is the file order: the loop starts OFF (tests/integration/conftest.py),
ingest and the switch are checked first, then the loop is turned on for the chain.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flows import events
from tests.conftest import DATA
from tests.integration.conftest import (
    SMALL_TRAINING,
    emit,
    events_named,
    loop_automations,
    prefect_api,
    run_deployment,
    runs_of,
    set_loop,
    set_pool_paused,
    wait_for,
)

# How long "nothing happened" is watched for, once the events are stored: several times
# what an automation takes from its event to the run it creates (notes/tests.md).
QUIET_SECONDS = 15
LOOP_MODEL = "catdog-loop-test"  # its own registered model: the session's champion is not touched


def dvc(*args, cwd):
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True
    )
    assert result.returncode == 0, f"dvc {' '.join(args)}: {result.stderr}{result.stdout}"
    return result.stdout


@pytest.fixture(scope="module")
def loop(platform):
    """The switch for the tests of this module; the loop is off again afterwards (it
    starts off: the session's platform is deployed with CATDOG_LOOP=off, and no other
    module turns it on).

    With CATDOG_LOOP_SCREENSHOTS=<folder>, the UI's automations page is
    screenshot first, for the README."""
    yield lambda enabled: set_loop(platform, enabled)
    set_pool_paused(platform, False)
    if folder := os.environ.get("CATDOG_LOOP_SCREENSHOTS"):
        screenshot_loop(platform, Path(folder))
    set_loop(platform, False)


def screenshot_loop(platform, folder: Path) -> None:
    from catdog_runtime.screenshots import READY_AUTOMATION, chromium_screenshot, prefect_ui_login

    ui = platform["env"]["PREFECT_API_URL"].removesuffix("/api")
    folder.mkdir(parents=True, exist_ok=True)
    # The event feed and run list pages need clicks to show the catdog.* entries;
    # the automations page shows the whole loop as it stands.
    login = prefect_ui_login(platform["env"]["PREFECT_API_AUTH_STRING"])
    chromium_screenshot(
        f"{ui}/automations",
        folder / "loop-automations.png",
        local_storage=login,
        ready_text=READY_AUTOMATION,
    )


@pytest.fixture
def small_repo(tmp_path, real_data):
    """A DVC repository with 12 real photos per class and a writable local remote."""
    repo = tmp_path / "repo"
    for name in ("cat", "dog"):
        (repo / "data" / name).mkdir(parents=True)
        for path in sorted((DATA / name).iterdir())[:12]:
            shutil.copy(path, repo / "data" / name / path.name)
    dvc("init", "--no-scm", "--quiet", cwd=repo)
    dvc("remote", "add", "--local", "store", str(tmp_path / "dvc-store"), cwd=repo)
    dvc("add", "--quiet", "data", cwd=repo)
    dvc("push", "--quiet", "--remote", "store", cwd=repo)
    return repo


def test_ingest_adds_only_good_new_files_as_a_new_data_version(
    platform, loop, small_repo, tmp_path
):
    from model_lib.data import dvc_data_version

    batch = tmp_path / "batch"
    new = {
        "cat": sorted((DATA / "cat").iterdir())[20:22],
        "dog": sorted((DATA / "dog").iterdir())[20:21],
    }
    for name, paths in new.items():
        (batch / name).mkdir(parents=True)
        for path in paths:
            shutil.copy(path, batch / name / path.name)
    (batch / "dog" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    existing = sorted((small_repo / "data" / "cat").iterdir())[0]
    shutil.copy(existing, batch / "cat" / "relabelled-copy.jpg")
    data_root = small_repo / "data"
    before = dvc_data_version(small_repo / "data.dvc")
    files_before = {p.relative_to(data_root) for p in data_root.rglob("*.jpg")}

    params = {"folder": str(batch), "data_root": str(data_root), "dvc_remote": "store"}
    flow_run = run_deployment(platform, "ingest/labelled", params)
    assert flow_run["state"]["type"] == "COMPLETED"

    after = dvc_data_version(small_repo / "data.dvc")
    added = {p.relative_to(data_root) for p in data_root.rglob("*.jpg")} - files_before
    expected = {p.relative_to(DATA) for paths in new.values() for p in paths}
    assert added == expected  # not the corrupt file, not the copy
    assert after != before and after.endswith(".dir")
    assert "in sync" in dvc("status", "--cloud", "--remote", "store", cwd=small_repo)
    (event,) = stored_events(platform, "catdog.data.new-version", f"catdog.data.{after}")
    assert event["payload"]["data_version"] == after
    assert event["payload"]["files_added"] == 3
    assert [r["file"].rsplit("/", 1)[-1] for r in event["payload"]["rejected"]] == ["corrupt.jpg"]

    # The same batch again: every file is now a duplicate; nothing changes.
    again = run_deployment(platform, "ingest/labelled", params)
    assert dvc_data_version(small_repo / "data.dvc") == after
    # Once the run's own Completed event is stored, anything it emitted would be too.
    stored_events(platform, "prefect.flow-run.Completed", f"prefect.flow-run.{again['id']}")
    assert {p.relative_to(data_root) for p in data_root.rglob("*.jpg")} == files_before | added
    assert (
        len(
            [
                e
                for e in events_named(platform, "catdog.data.new-version")
                if e["payload"]["previous_data_version"] == after
            ]
        )
        == 0
    )


def test_loop_switch_off_means_no_automation_fires(platform, loop):
    automations = loop_automations(platform)
    names = {
        "retrain-on-alarm",
        "retrain-on-new-data",
        "package-on-promotion",
        "rollout-on-new-bento",
    }
    assert names <= set(automations)
    assert not any(automations[n]["enabled"] for n in names)
    runs_before = {
        d: len(runs_of(platform, d))
        for d in ("train/retrain", "package/champion", "deploy/rollout")
    }

    model = f"catdog.model.{LOOP_MODEL}.99"
    ids = [
        emit(platform, "catdog.evaluation.drift-detected", model),
        emit(platform, "catdog.model.promoted", model, {"model_name": LOOP_MODEL, "version": "99"}),
        emit(platform, "catdog.bento.built", model, {"bento_tag": "catdog-classifier:off"}),
        emit(
            platform, "catdog.data.new-version", "catdog.data.off.dir", {"data_version": "off.dir"}
        ),
    ]
    wait_for(
        lambda: (
            {
                e["id"]
                for n in ("catdog.evaluation.drift-detected", "catdog.bento.built")
                for e in events_named(platform, n)
            }
            >= {ids[0], ids[2]}
        ),
        120,
        "the server to store the emitted events",
    )
    time.sleep(QUIET_SECONDS)
    assert {d: len(runs_of(platform, d)) for d in runs_before} == runs_before


def test_repeated_drift_alarm_starts_exactly_one_retraining(platform, loop):
    loop(True)
    automations = loop_automations(platform)
    assert automations["retrain-on-alarm"]["enabled"]
    time.sleep(5)  # the trigger service loads changed automations right after the commit
    # No worker picks the retraining up (a full EfficientNet run): the test counts runs.
    set_pool_paused(platform, True)
    try:
        model = "catdog.model.catdog-classifier.1"
        # Many photos answered `neither` (people upload other things): a warning for a
        # person, which no automation turns into a retraining.
        warning = emit(platform, events.NON_PET_SHARE, model, {"neither_share": 0.6})
        wait_for(
            lambda: warning in {e["id"] for e in events_named(platform, events.NON_PET_SHARE)},
            120,
            "the server to store the non-pet warning",
        )
        time.sleep(QUIET_SECONDS)
        assert runs_of(platform, "train/retrain") == []
        for _ in range(3):
            emit(platform, "catdog.evaluation.drift-detected", model, {"drift_share": 0.6})
        emit(platform, "catdog.evaluation.accuracy-low", model, {"accuracy": 0.7})
        (retrain,) = wait_for(
            lambda: runs_of(platform, "train/retrain"), 180, "a train/retrain run"
        )
        time.sleep(QUIET_SECONDS)
        emit(platform, "catdog.evaluation.drift-detected", model, {"drift_share": 0.7})
        time.sleep(QUIET_SECONDS)
        runs = runs_of(platform, "train/retrain")
        assert [r["id"] for r in runs] == [retrain["id"]]
        assert retrain["created_by"]["type"] == "AUTOMATION"
        assert retrain["parameters"]["config"]["architecture"] == "efficientnet_lite2"

        # New data has its own trigger (and cool-down): one more retraining.
        prefect_api(platform, "DELETE", f"/flow_runs/{retrain['id']}")
        emit(
            platform, "catdog.data.new-version", "catdog.data.abc.dir", {"data_version": "abc.dir"}
        )
        emit(
            platform, "catdog.data.new-version", "catdog.data.abd.dir", {"data_version": "abd.dir"}
        )
        (retrain,) = wait_for(
            lambda: runs_of(platform, "train/retrain"), 180, "a retraining on new data"
        )
        time.sleep(QUIET_SECONDS)
        assert len(runs_of(platform, "train/retrain")) == 1
        prefect_api(platform, "DELETE", f"/flow_runs/{retrain['id']}")
    finally:
        set_pool_paused(platform, False)


def stored_events(platform, name: str, resource_id: str) -> list[dict]:
    """The events `name` about `resource_id`, once the server has stored them: the event
    persister writes in batches a few seconds after the flow emitted them."""
    return wait_for(
        lambda: [
            e
            for e in events_named(platform, name)
            if e["resource"]["prefect.resource.id"] == resource_id
        ],
        120,
        f"event {name} of {resource_id} in the server's event store",
    )


def test_promoted_model_is_packaged_then_rolled_out(platform, loop):
    from mlflow import MlflowClient

    config = {**SMALL_TRAINING, "registered_model_name": LOOP_MODEL}
    run_deployment(platform, "train/baseline", {"config": config})
    (promoted,) = stored_events(platform, "catdog.model.promoted", f"catdog.model.{LOOP_MODEL}.1")
    assert "first" in promoted["payload"]["reason"]

    def package_done():
        runs = [
            r
            for r in runs_of(platform, "package/champion")
            if r["parameters"].get("model_name") == LOOP_MODEL
        ]
        return (
            runs
            if runs and runs[0]["state"]["type"] in {"COMPLETED", "FAILED", "CRASHED"}
            else None
        )

    (package_run,) = wait_for(package_done, 900, "package/champion started by the promotion")
    assert package_run["state"]["type"] == "COMPLETED", package_run["state"]["message"]
    assert package_run["created_by"]["type"] == "AUTOMATION"
    assert package_run["parameters"] == {"model_name": LOOP_MODEL, "version": "1"}

    bento_tag = (
        MlflowClient(platform["mlflow_uri"]).get_model_version(LOOP_MODEL, "1").tags["bento_tag"]
    )
    (rollout,) = wait_for(
        lambda: [
            r
            for r in runs_of(platform, "deploy/rollout")
            if r["parameters"].get("bento_tag") == bento_tag
        ],
        300,
        f"deploy/rollout with bento_tag {bento_tag}",
    )
    assert rollout["created_by"]["type"] == "AUTOMATION"
    # The approval window: the automatic rollout waits, scheduled, for CATDOG_ROLLOUT_DELAY
    # (an hour in these tests); a person can cancel it in the UI meanwhile. So do we.
    assert rollout["state"]["type"] == "SCHEDULED"
    waits = datetime.fromisoformat(rollout["expected_start_time"]) - datetime.now(UTC)
    assert timedelta(minutes=50) < waits <= timedelta(hours=1)
    prefect_api(
        platform,
        "POST",
        f"/flow_runs/{rollout['id']}/set_state",
        json={"state": {"type": "CANCELLED", "message": "test: veto"}, "force": True},
    )


def test_rejected_candidate_starts_no_packaging(platform, loop):
    packages_before = len(runs_of(platform, "package/champion"))
    config = {
        **SMALL_TRAINING,
        "registered_model_name": LOOP_MODEL,
        "epochs": 1,
        "learning_rate": 1e-9,
    }
    run_deployment(platform, "train/baseline", {"config": config})
    (rejected,) = stored_events(platform, "catdog.model.rejected", f"catdog.model.{LOOP_MODEL}.2")
    assert rejected["payload"]["method"] == "mcnemar-exact"
    assert "does not beat" in rejected["payload"]["reason"]
    time.sleep(QUIET_SECONDS)
    assert len(runs_of(platform, "package/champion")) == packages_before
