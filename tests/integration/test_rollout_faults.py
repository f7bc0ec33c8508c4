"""A rollout SIGKILLed between the balancer switch and the `production` alias move,
then `make serve`: real MLflow, Prefect worker, HAProxy and replicas.

The killed rollout leaves HAProxy serving the candidate while `production` still
names the version before it. The next deploy run (what `make serve` starts)
reconciles first: the production version serves again, the candidate's replicas
are retired, its `promoting` outcome becomes `interrupted`, and the run's log says
so; a run after that finds nothing to fix.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from catdog_runtime.processes import ROOT, run
from flows.deploy import KILL_AT_ENV
from model_lib.tracking import version_by_alias
from tests.integration.conftest import run_deployment
from tests.integration.test_rollout import (
    CONFIG,
    MODEL,
    ROLLOUT_TRAINING,
    answering_versions,
    balancer_env,  # noqa: F401 - a fixture
)

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


def production(client) -> str:
    return client.get_model_version_by_alias(MODEL, "production").version


@pytest.fixture(scope="module")
def serving(platform, balancer_env):  # noqa: F811 - the imported fixture
    """The champion packaged and served (`make train package serve`)."""
    client = MlflowClient(platform["mlflow_uri"])
    if version_by_alias(client, MODEL, "champion") is None:  # none yet in this session
        run_deployment(platform, "train/baseline", {"config": ROLLOUT_TRAINING})
    run_deployment(platform, "package/champion", {})
    # The champion's bento (no bento_tag), judged leniently: a small model, a busy machine.
    flow_run = run_deployment(platform, "deploy/rollout", {"config": CONFIG}, check=False)
    assert flow_run["state"]["type"] == "COMPLETED", flow_run["state"]["message"]
    return {"url": f"http://127.0.0.1:{balancer_env['BENTO_PORT']}", "client": client}


@pytest.fixture(scope="module")
def candidate(platform, serving, tmp_path_factory):
    """A good candidate (the production weights as a new version) and its bento;
    deleted afterwards, as the rollout benchmark deletes its own."""
    from bench.candidates import build_candidate, remove_candidate

    os.environ["MLFLOW_TRACKING_URI"] = platform["mlflow_uri"]
    work = tmp_path_factory.mktemp("fault-candidate")
    version, bento_tag = build_candidate(MODEL, production(serving["client"]), work)
    yield version, bento_tag
    remove_candidate(MODEL, version)


def test_a_rollout_killed_before_the_alias_move_is_reconciled_by_make_serve(
    platform, serving, candidate
):
    from catdog_runtime import balancer

    client, url = serving["client"], serving["url"]
    before = production(client)
    stable = balancer.load()
    stable_bento = {r.bento_tag for r in stable}
    version, bento_tag = candidate

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
    assert production(client) == before
    tags = client.get_model_version(MODEL, version).tags
    assert tags["rollout_outcome"] == "promoting"
    assert tags["previous_production_version"] == before  # written before traffic moved

    output = make_serve(platform)
    # As many replicas as the fleet had (earlier tests of the session may have left two).
    started = f"reconcile: start {len(stable)} replica(s) of {stable_bento.pop()}"
    assert started in output, output[-4000:]
    assert "reconcile: retire replica r" in output
    assert f"v{version} rollout_outcome promoting -> interrupted" in output
    assert answering_versions(url) == {before}
    assert production(client) == before
    assert client.get_model_version(MODEL, version).tags["rollout_outcome"] == "interrupted"
    assert set(balancer.running_replicas().values()) == {r.bento_tag for r in balancer.load()}
    assert bento_tag not in balancer.running_replicas().values()

    assert "reconcile: nothing to fix" in make_serve(platform)


def test_make_up_after_make_down_serves_production_again(platform, serving):
    """What a restart of the machine does to the platform: everything stops, the run
    folder stays; `make up` alone (no rollout) brings back what `production` names."""
    from catdog_runtime.waits import http_ok
    from tests.integration.platform import services_cli

    client, url = serving["client"], serving["url"]
    before = production(client)
    stopped = services_cli(platform["env"], "down", timeout=300)
    assert stopped.returncode == 0, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    assert not http_ok(f"{url}/readyz")

    started = services_cli(platform["env"], "up")
    output = started.stdout + started.stderr
    assert started.returncode == 0, output[-4000:]
    assert "reconcile: nothing to fix" in output, output[-4000:]
    assert answering_versions(url) == {before}
