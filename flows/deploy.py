"""Prefect flow `deploy`: a new bento reaches users through a canary, or not at all.

Deployments (prefect.yaml):
- `deploy/rollout` (`bento_tag`, default: the bento `make package` built from the
  champion): start replica(s) of the bento beside the
  serving ones, wait for /readyz, give them a share of live traffic in HAProxy
  (`canary_share`), score test_images/ on the canary and on the stable
  replicas directly, compare their /metrics (5xx rate, p95 latency), then
  promote (100 %, old replicas drained and stopped, MLflow alias `production`
  moved) or roll back (canary drained and stopped, stable untouched, the run
  ends Failed with the reason). Either way the model version is tagged with
  the outcome and reason, and a `catdog.rollout.*` event is emitted.
- `deploy/rollback`: put the previous production version back the same way
  (replicas beside, traffic moved, old drained), without the canary judgement:
  that version served users before.

The first deployment (nothing serving) is judged against `min_accuracy` alone.
Process and HAProxy control: catdog_runtime.balancer; the verdict: model_lib.rollout.

Crash safety: the MLflow alias `production` is the commit point, and it moves last.
Before traffic moves, the candidate is tagged (`previous_production_version`,
`rollout_bento`, `rollout_outcome=promoting`); then HAProxy switches and the old
replicas retire; then the alias moves (with retries) and the outcome is recorded.
Every run starts by reconciling (catdog_runtime.balancer `reconcile_with_production`):
what serves is made to agree with what `production` names, and it logs what it
fixed. A run killed before the alias move is thereby undone by the next one; a
failure inside the switch does the same at once, so the fleet is never left mixed.
"""

from __future__ import annotations

import os
import signal
import time

import bentoml
from bentoml.exceptions import NotFound
from mlflow import MlflowClient
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from catdog_runtime import balancer
from catdog_runtime.waits import api_retrying, transient_mlflow_error
from flows import events
from model_lib.client import metrics_window
from model_lib.config import CHAMPION_ALIAS, MODEL_NAME, PRODUCTION_ALIAS
from model_lib.live_evaluation import classify_folder, evaluate_outcomes
from model_lib.rollout import (
    Evidence,
    RolloutConfig,
    Verdict,
    Window,
    canary_weights,
    judge,
)
from model_lib.tracking import (
    PROMOTING,
    bento_of,
    ensure_tracking_server,
    version_by_alias,
)

# Tests only (model_lib.settings): the step (see `_step`) at which this process SIGKILLs itself.
KILL_AT_ENV = "CATDOG_TEST_ROLLOUT_KILL_AT"
MLFLOW_PATIENCE_SECONDS = 120


class RolloutRejected(RuntimeError):
    """The candidate was rolled back; the message is the reason."""


# ------------------------------------------------------------------ tasks
@task
def resolve_bento(bento_tag: str) -> str:
    """The exact tag (`name:version`) of a bento in the local store, e.g. of `name:latest`."""
    try:
        return str(bentoml.get(bento_tag).tag)
    except NotFound:
        raise RolloutRejected(
            f"no bento {bento_tag!r} in the BentoML store: package one first (`make package`)"
        ) from None


@task
def champion_bento(model_name: str) -> str:
    """The bento `make package` built from the champion last (its `bento_tag`)."""
    champion = _mlflow(version_by_alias, MlflowClient(), model_name, CHAMPION_ALIAS)
    if champion is None:
        raise RolloutRejected(
            f"{model_name} has no '{CHAMPION_ALIAS}' alias: train a model first (`make train`)"
        )
    if not champion.tags.get("bento_tag"):
        raise RolloutRejected(
            f"the champion {model_name} v{champion.version} has no bento yet: package it "
            "(`make package`)"
        )
    return champion.tags["bento_tag"]


@task
def reconcile(model_name: str) -> list[str]:
    """HAProxy made to serve what `production` names; logs what it fixed."""
    return balancer.reconcile_with_production(model_name, say=get_run_logger().info)


@task
def start_replicas(bento_tag: str, count: int) -> list[balancer.Replica]:
    return balancer.start_replicas(bento_tag, count)


@task
def read_metrics(replicas: list[balancer.Replica]) -> Window:
    """The /classify counts of `replicas`, summed."""
    return metrics_window([replica.url for replica in replicas])


@task
def score(replica: balancer.Replica, test_images_dir: str) -> tuple[float, list[str], list[str]]:
    """test_images/ sent to this replica alone (not through the balancer):
    (accuracy, model versions that answered, labels answered)."""
    outcomes, class_names = classify_folder(replica.url, test_images_dir, concurrency=4)
    result = evaluate_outcomes(outcomes, class_names)
    labels = sorted({o.predicted for o in outcomes if o.predicted is not None})
    return result.report["accuracy"], result.model_versions, labels


@task
def promote(candidates: list[balancer.Replica], old: list[balancer.Replica]) -> None:
    for replica in candidates:
        balancer.set_weight(replica, balancer.FULL_WEIGHT)
    for replica in old:
        balancer.retire(replica)


@task
def withdraw(candidates: list[balancer.Replica]) -> None:
    for replica in candidates:
        balancer.retire(replica)


def _mlflow(call, *args):
    """An MLflow call with the platform's retry policy (a server restarting, a timeout)."""
    say = get_run_logger().warning
    return api_retrying(MLFLOW_PATIENCE_SECONDS, retry_on=transient_mlflow_error, say=say)(
        call, *args
    )


@task
def tag(model_name: str, version: str | None, tags: dict[str, str]) -> None:
    if version is None:
        get_run_logger().warning("the bento names no MLflow model version: no tags written")
        return
    client = MlflowClient()
    for key, value in tags.items():
        _mlflow(client.set_model_version_tag, model_name, version, key, value[:4000])


@task
def move_production(model_name: str, version: str | None) -> None:
    """The commit point: from here on `version` is what serves."""
    if version is None:
        get_run_logger().warning("the bento names no MLflow model version: alias not moved")
        return
    _mlflow(MlflowClient().set_registered_model_alias, model_name, PRODUCTION_ALIAS, version)


def _step(name: str) -> None:
    """A named point of the rollout; the fault-injection test kills the process here."""
    if os.environ.get(KILL_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _emit(name: str, model_name: str, version: str | None, bento_tag: str, reason: str, **extra):
    events.emit(
        name,
        events.model_resource(model_name, version or "unknown"),
        {"reason": reason, "bento_tag": bento_tag, **extra},
        related=[events.bento_resource(bento_tag)],
    )


def _served_version(versions: list[str]) -> str | None:
    if len(versions) > 1:
        raise RolloutRejected(f"the candidate answered as several versions {versions}")
    return versions[0] if versions else None


def _summary(bento_tag: str, verdict: Verdict, outcome: str) -> None:
    rows = "\n".join(f"| {k} | {v if v is not None else '-'} |" for k, v in verdict.figures.items())
    create_markdown_artifact(
        key="rollout-summary",
        markdown=(
            f"# Rollout of `{bento_tag}`: {outcome}\n\n{verdict.reason}\n\n| | |\n|---|---|\n{rows}"
        ),
        description="Canary figures and verdict",
    )


# ------------------------------------------------------------------ flows
@flow(name="deploy", log_prints=True)
def rollout(
    bento_tag: str | None = None,
    replicas: int | None = None,
    config: RolloutConfig = RolloutConfig(),  # noqa: B008 - Prefect shows it
    test_images_dir: str = "test_images",
    model_name: str = MODEL_NAME,
) -> str:
    """Canary rollout of `bento_tag` (default: the champion's bento; `replicas`: how many,
    default as many as serve now, or 1)."""
    logger = get_run_logger()
    ensure_tracking_server()
    bento_tag = resolve_bento(bento_tag or champion_bento(model_name))
    with balancer.exclusive(f"roll out {bento_tag}"):
        reconcile(model_name)
        stable = balancer.load()
        if stable and all(r.bento_tag == bento_tag for r in stable):
            if replicas and replicas != len(stable):  # `make serve REPLICAS=N` on what serves
                logger.info(
                    "%s already serves all traffic: %d -> %d replica(s)",
                    bento_tag,
                    len(stable),
                    replicas,
                )
                balancer.resize(stable, replicas)
            else:
                logger.info("%s already serves all traffic: nothing to do", bento_tag)
            return bento_tag
        count = replicas or len(stable) or 1
        logger.info("starting %d replica(s) of %s beside %d serving", count, bento_tag, len(stable))
        version = None
        candidates: list[balancer.Replica] = []
        try:
            candidates = start_replicas(bento_tag, count)
            verdict, version = canary(candidates, stable, config, test_images_dir)
        except Exception as exc:
            # A candidate that cannot start, or a check that cannot run, is a rollback too.
            verdict = Verdict(False, (f"{type(exc).__name__}: {exc}",))
        decision = "promote" if verdict.promote else "roll back"
        logger.info("verdict: %s (%s)", decision, verdict.reason)
        if verdict.promote:
            switch(model_name, version, bento_tag, candidates, stable, verdict)
            _emit(
                events.ROLLOUT_COMPLETED,
                model_name,
                version,
                bento_tag,
                verdict.reason,
                **verdict.figures,
            )
            _summary(bento_tag, verdict, "promoted")
            return bento_tag
        try:
            withdraw(candidates)
        except Exception:
            restore_on_failure(model_name, stable)
            raise
        outcome = {"rollout_outcome": "rolled-back", "rollout_reason": verdict.reason}
        tag(model_name, version, outcome | {"rollout_bento": bento_tag})
        _emit(events.ROLLED_BACK, model_name, version, bento_tag, verdict.reason, **verdict.figures)
        _summary(bento_tag, verdict, "rolled back")
        raise RolloutRejected(f"{bento_tag} rolled back: {verdict.reason}")


def switch(model_name, version, bento_tag, candidates, stable, verdict: Verdict) -> None:
    """Tags first, then traffic (old replicas retired), then the `production` alias, last.

    A failure on the way puts back what `production` names (the alias has not moved),
    so the fleet is never left half switched."""
    previous = _mlflow(version_by_alias, MlflowClient(), model_name, PRODUCTION_ALIAS)
    intent = {"rollout_outcome": PROMOTING, "rollout_reason": verdict.reason}
    intent["rollout_bento"] = bento_tag
    if previous is not None and str(previous.version) != str(version):
        intent["previous_production_version"] = str(previous.version)
    try:
        tag(model_name, version, intent)
        promote(candidates, stable)
        _step("switched")
        move_production(model_name, version)
    except Exception as exc:
        get_run_logger().error("the switch failed (%s): back to the production version", exc)
        restore_on_failure(model_name, stable)
        tag(model_name, version, {"rollout_outcome": "failed", "rollout_reason": str(exc)})
        raise
    tag(model_name, version, {"rollout_outcome": "completed"})


def restore_on_failure(model_name: str, stable: list[balancer.Replica]) -> None:
    """After a failed switch or withdrawal: serve what `production` names again (the
    stable replicas, when nothing was rolled out before)."""
    if _mlflow(version_by_alias, MlflowClient(), model_name, PRODUCTION_ALIAS) is not None:
        reconcile(model_name)
        return
    served = {r.bento_tag for r in stable}
    if len(served) > 1:
        raise RolloutRejected(
            f"no '{PRODUCTION_ALIAS}' alias and the replicas serve several bentos {served}: "
            "roll one out (`make serve`)"
        )
    balancer.reconcile(served.pop() if served else None, get_run_logger().info)


def canary(candidates, stable, config: RolloutConfig, test_images_dir: str):
    """Give `candidates` their share, measure both sides; returns (verdict, model version)."""
    logger = get_run_logger()
    stable_weight, canary_weight = canary_weights(config.canary_share, len(stable), len(candidates))
    canary_before, stable_before = read_metrics(candidates), read_metrics(stable)
    for replica in candidates:
        balancer.attach(replica, canary_weight)
    logger.info(
        "canary in HAProxy: weight %d per canary replica vs %d per stable one (%.0f %% of traffic)",
        canary_weight,
        stable_weight,
        100 * config.canary_share if stable else 100,
    )
    canary_accuracy, versions, canary_labels = score(candidates[0], test_images_dir)
    version = _served_version(versions)
    stable_score = score(stable[0], test_images_dir) if stable else None
    time.sleep(config.observe_seconds)  # live traffic keeps flowing through both
    canary_side = Evidence(
        canary_accuracy, read_metrics(candidates) - canary_before, tuple(canary_labels)
    )
    stable_side = None
    if stable_score is not None:
        accuracy, _, labels = stable_score
        stable_side = Evidence(accuracy, read_metrics(stable) - stable_before, tuple(labels))
    return judge(config, canary_side, stable_side), version


@flow(name="deploy", log_prints=True)
def rollback(model_name: str = MODEL_NAME, replicas: int | None = None) -> str:
    """Put the version that served before the current `production` one back."""
    logger = get_run_logger()
    ensure_tracking_server()
    client = MlflowClient()
    current = _mlflow(version_by_alias, client, model_name, PRODUCTION_ALIAS)
    if current is None:
        raise RolloutRejected(
            f"{model_name} has no '{PRODUCTION_ALIAS}' alias: nothing was rolled out to roll back"
        )
    previous = current.tags.get("previous_production_version")
    if previous is None:
        raise RolloutRejected(
            f"{model_name} v{current.version} is the first production version: "
            "there is no previous one to put back"
        )
    bento_tag = bento_of(_mlflow(client.get_model_version, model_name, previous))
    if bento_tag is None:
        raise RolloutRejected(f"{model_name} v{previous} records no bento to serve it from")
    bento_tag = resolve_bento(bento_tag)
    reason = f"on demand (deploy/rollback): v{current.version} replaced by v{previous}"
    with balancer.exclusive(f"roll back to {bento_tag}"):
        reconcile(model_name)
        serving = balancer.load()
        try:
            candidates = start_replicas(bento_tag, replicas or len(serving) or 1)
            for replica in candidates:
                balancer.attach(replica, balancer.FULL_WEIGHT)
            promote([], serving)  # the old ones drain while the restored ones take over
            move_production(model_name, previous)  # last: the commit point
        except Exception as exc:
            logger.error("the rollback failed (%s): back to the production version", exc)
            reconcile(model_name)
            raise
    logger.info("%s serves again", bento_tag)
    tag(model_name, current.version, {"rollout_outcome": "rolled-back", "rollout_reason": reason})
    _emit(events.ROLLED_BACK, model_name, current.version, bento_tag, reason, restored=previous)
    return bento_tag


if __name__ == "__main__":
    rollout()
