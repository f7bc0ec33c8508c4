"""Canary rollouts behind a real HAProxy, through the real Prefect worker.

One story, in file order, on one champion trained, packaged and rolled out once:
the champion goes live (first deployment); a good candidate (the same weights
registered as a new version) is promoted; a broken one (its model answers "cat"
whatever the photo) is rolled back automatically; `deploy/rollback` puts the
previous version back. Throughout each change a client loops through the
balancer, and must see nothing but 200s.

Then the faults: a rollout SIGKILLed between the balancer switch and the
`production` alias move leaves HAProxy serving the candidate while `production`
still names the version before it. The next deploy run (what `make serve`
starts) reconciles first: the production version serves again, the candidate's
replicas are retired, its `promoting` outcome becomes `interrupted`, and the
run's log says so; a run after that finds nothing to fix. Last, `make down` and
`make up` alone bring back what `production` names.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx
import pytest
from mlflow import MlflowClient

from bench.rollout import Load
from catdog_runtime import services
from catdog_runtime.processes import ROOT, run
from flows.deploy import KILL_AT_ENV
from tests.conftest import TEST_IMAGES
from tests.integration.conftest import run_deployment

MODEL = "catdog-classifier"
# Small test model and a busy machine: accuracy and latency are judged leniently,
# except accuracy against the stable version, which is what the broken candidate fails.
CONFIG = {"observe_seconds": 5, "min_requests": 10, "min_accuracy": 0.0, "p95_slack_ms": 2000}


@pytest.fixture(scope="module")
def balancer_env(platform):
    """The platform's settings in this process too: the test reads the balancer's state
    (catdog_runtime.balancer) as the worker's deploy runs write it. `make down` at the end of
    the session stops the balancer and the replicas."""
    settings = {
        key: platform["env"][key] for key in ("BENTO_PORT", "CATDOG_RUN_DIR", "BENTOML_HOME")
    }
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        yield settings
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def deploy(platform, name: str, params: dict) -> dict:
    """Run deploy/NAME through the worker, as `make serve` does; the flow run."""
    return run_deployment(platform, name, params, timeout=1800, check=False)


def looping_client(url: str) -> Load:
    """Two connections posting photos through the balancer until the block ends, at half
    the rate the balancer allows one client: a tiny model answers fast enough for an
    unpaced client to be refused with 429s, which would say nothing about the rollout."""
    allowed_per_second = services.settings().lb_client_rate / 10  # the limit is per 10 s
    return Load(url, connections=2, source="rollout-test", rate=allowed_per_second / 2)


def failures(load: Load) -> list:
    return [(r.status, r.version) for r in load.records if r.status != 200]


def versions_seen(load: Load) -> set[str]:
    return {r.version for r in load.records if r.version}


def answering_versions(url: str, count: int = 20) -> set[str]:
    photo = next((TEST_IMAGES / "dog").glob("*.jpg")).read_bytes()
    versions = set()
    with httpx.Client(timeout=60) as client:
        for _ in range(count):
            response = client.post(f"{url}/classify", files={"image": ("d.jpg", photo)})
            assert response.status_code == 200, response.text
            versions.add(response.json()["model"]["version"])
    return versions


# The session's SMALL_TRAINING model answers "cat" for every photo: it cannot tell a
# constant-output candidate from a good one (and the canary check rightly refuses
# it). This one (a 10 % slice, 3 epochs: ~0.6 validation accuracy) answers both.
ROLLOUT_TRAINING = {
    "architecture": "baseline_cnn",
    "data_fraction": 0.1,
    "epochs": 3,
    "image_size": 64,
}


@pytest.fixture(scope="module")
def live(platform, balancer_env):
    """A model that becomes champion, packaged and rolled out as the first deployment."""
    run_deployment(platform, "train/baseline", {"config": ROLLOUT_TRAINING})
    run_deployment(platform, "package/champion", {})
    flow_run = deploy(platform, "deploy/rollout", {"config": CONFIG})
    assert flow_run["state"]["type"] == "COMPLETED", flow_run["state"]["message"]
    client = MlflowClient(platform["mlflow_uri"])
    return {
        "url": f"http://127.0.0.1:{balancer_env['BENTO_PORT']}",
        "client": client,
        "first": client.get_model_version_by_alias(MODEL, "champion").version,
    }


@pytest.fixture(scope="module")
def candidates(platform, live, tmp_path_factory):
    """A good and a broken candidate, each a registered version with its bento."""
    from bench.candidates import build_candidate

    os.environ["MLFLOW_TRACKING_URI"] = platform["mlflow_uri"]
    work = tmp_path_factory.mktemp("candidates")
    return {
        "good": build_candidate(MODEL, live["first"], work),
        "broken": build_candidate(MODEL, live["first"], work, constant_label="cat"),
    }


def production(live) -> str:
    return live["client"].get_model_version_by_alias(MODEL, "production").version


def test_first_deployment_serves_the_champion_through_the_balancer(live):
    assert answering_versions(live["url"]) == {live["first"]}
    assert production(live) == live["first"]


def test_good_candidate_is_promoted_without_a_failed_request(
    platform, balancer_env, live, candidates
):
    version, bento_tag = candidates["good"]
    with looping_client(live["url"]) as client:
        flow_run = deploy(platform, "deploy/rollout", {"bento_tag": bento_tag, "config": CONFIG})
    assert flow_run["state"]["type"] == "COMPLETED", flow_run["state"]["message"]
    assert client.records, "the client sent nothing"
    assert failures(client) == []
    # The client saw both versions: the canary took live traffic before promotion.
    assert versions_seen(client) >= {live["first"], version}
    assert answering_versions(live["url"]) == {version}
    assert production(live) == version
    tags = live["client"].get_model_version(MODEL, version).tags
    assert tags["rollout_outcome"] == "completed"
    assert tags["previous_production_version"] == live["first"]


def test_broken_candidate_is_rolled_back_with_the_reason(platform, balancer_env, live, candidates):
    good_version, _ = candidates["good"]
    version, bento_tag = candidates["broken"]
    with looping_client(live["url"]) as client:
        flow_run = deploy(platform, "deploy/rollout", {"bento_tag": bento_tag, "config": CONFIG})
    assert flow_run["state"]["type"] == "FAILED"
    assert "rolled back: " in flow_run["state"]["message"]
    assert "it answers one class ('cat') for every photo" in flow_run["state"]["message"]
    assert client.records, "the client sent nothing"
    assert failures(client) == []
    assert answering_versions(live["url"]) == {good_version}
    assert production(live) == good_version
    tags = live["client"].get_model_version(MODEL, version).tags
    assert tags["rollout_outcome"] == "rolled-back"
    assert "it answers one class ('cat')" in tags["rollout_reason"]


def test_rollback_puts_the_previous_version_back(platform, balancer_env, live, candidates):
    good_version, _ = candidates["good"]
    with looping_client(live["url"]) as client:
        # Two replicas this time: the next test kills one of them.
        flow_run = deploy(platform, "deploy/rollback", {"replicas": 2})
    assert flow_run["state"]["type"] == "COMPLETED", flow_run["state"]["message"]
    assert client.records, "the client sent nothing"
    assert failures(client) == []
    assert answering_versions(live["url"]) == {live["first"]}
    assert production(live) == live["first"]
    assert live["client"].get_model_version(MODEL, good_version).tags["rollout_outcome"] == (
        "rolled-back"
    )


def test_a_killed_replica_costs_no_request_and_is_restarted(live):
    """HAProxy retries a refused connection on the other replica, and replays there the
    requests the replica held when it died (CATDOG_LB_REPLAY_DROPPED, on by default)."""
    from bench.faults import kill_replica
    from catdog_runtime import balancer

    replicas = balancer.load()
    assert len(replicas) == 2
    with looping_client(live["url"]) as client:
        balancer.wait_for(lambda: len(client.records) > 20, "20 answers before the kill", 120)
        # The watchdog starts it again on the same port; HAProxy's check puts it back.
        kill_replica(replicas[0])
    assert client.records, "the client sent nothing"
    assert failures(client) == []
    assert [r.port for r in balancer.load()] == [r.port for r in replicas]


def test_a_new_replica_count_for_what_serves_resizes_the_fleet_without_a_failed_request(
    platform, balancer_env, live
):
    """`make serve REPLICAS=N` when the bento already serves: no canary, the fleet grows or
    shrinks (the newest replicas drained first)."""
    from catdog_runtime import balancer

    serving = balancer.load()
    bento_tag = serving[0].bento_tag
    for count in (len(serving) + 1, len(serving)):
        with looping_client(live["url"]) as client:
            flow_run = deploy(
                platform, "deploy/rollout", {"bento_tag": bento_tag, "replicas": count}
            )
        assert flow_run["state"]["type"] == "COMPLETED", flow_run["state"]["message"]
        assert client.records, "the client sent nothing"
        assert failures(client) == []
        fleet = balancer.load()
        assert len(fleet) == count and {r.bento_tag for r in fleet} == {bento_tag}
        assert all(row["status"] == "UP" for row in balancer.server_stats().values())
    assert [r.port for r in balancer.load()] == [r.port for r in serving]


# The deploy flow run in a process of its own (not through the worker), so that the
# kill point reaches it and it alone: what a SIGKILL of the worker's flow run does.
KILLED_ROLLOUT = """
import json, sys
from flows.deploy import rollout
from model_lib.rollout import RolloutConfig
rollout(bento_tag=sys.argv[1], config=RolloutConfig(**json.loads(sys.argv[2])))
"""


def make_serve(platform) -> str:
    """`make serve`: deploy/rollout through the worker with no bento (the champion's);
    the output, the run's log lines included."""
    args = [sys.executable, "-m", "catdog_runtime.run_deployment", "deploy/rollout"]
    args += ["--params", json.dumps({"replicas": None})]
    result = run(args, platform["env"], timeout=1800, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


@pytest.fixture(scope="module")
def killed_candidate(platform, live, tmp_path_factory):
    """A good candidate (the production weights as a new version) and its bento;
    deleted afterwards, as the rollout benchmark deletes its own."""
    from bench.candidates import build_candidate, remove_candidate

    os.environ["MLFLOW_TRACKING_URI"] = platform["mlflow_uri"]
    work = tmp_path_factory.mktemp("fault-candidate")
    version, bento_tag = build_candidate(MODEL, production(live), work)
    yield version, bento_tag
    remove_candidate(MODEL, version)


def test_a_rollout_killed_before_the_alias_move_is_reconciled_by_make_serve(
    platform, live, killed_candidate
):
    from catdog_runtime import balancer

    client, url = live["client"], live["url"]
    before = production(live)
    stable = balancer.load()
    stable_bento = {r.bento_tag for r in stable}
    version, bento_tag = killed_candidate

    killed = subprocess.run(
        [sys.executable, "-c", KILLED_ROLLOUT, bento_tag, json.dumps(CONFIG)],
        cwd=ROOT,
        env={**platform["env"], KILL_AT_ENV: "switched"},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-3000:]

    # Killed after the switch: traffic and registry disagree.
    assert {r.bento_tag for r in balancer.load()} == {bento_tag}
    assert answering_versions(url) == {version}
    assert production(live) == before
    tags = client.get_model_version(MODEL, version).tags
    assert tags["rollout_outcome"] == "promoting"
    assert tags["previous_production_version"] == before  # written before traffic moved

    output = make_serve(platform)
    # As many replicas as the fleet had (the tests above leave two).
    started = f"reconcile: start {len(stable)} replica(s) of {stable_bento.pop()}"
    assert started in output, output[-4000:]
    assert "reconcile: retire replica r" in output
    assert f"v{version} rollout_outcome promoting -> interrupted" in output
    assert answering_versions(url) == {before}
    assert production(live) == before
    assert client.get_model_version(MODEL, version).tags["rollout_outcome"] == "interrupted"
    assert set(balancer.running_replicas().values()) == {r.bento_tag for r in balancer.load()}
    assert bento_tag not in balancer.running_replicas().values()

    assert "reconcile: nothing to fix" in make_serve(platform)


def test_make_up_after_make_down_serves_production_again(platform, live):
    """What a restart of the machine does to the platform: everything stops, the run
    folder stays; `make up` alone (no rollout) brings back what `production` names."""
    from catdog_runtime.waits import http_ok
    from tests.integration.platform import services_cli

    url = live["url"]
    before = production(live)
    stopped = services_cli(platform["env"], "down", timeout=300)
    assert stopped.returncode == 0, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    assert not http_ok(f"{url}/readyz")

    started = services_cli(platform["env"], "up")
    output = started.stdout + started.stderr
    assert started.returncode == 0, output[-4000:]
    assert "reconcile: nothing to fix" in output, output[-4000:]
    assert answering_versions(url) == {before}
