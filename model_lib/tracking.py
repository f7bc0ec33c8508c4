"""MLflow: run logging, model registration and the champion gate.

Nothing here runs at import time; `tracking_uri()` is read when a flow starts.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from importlib import metadata

import httpx
import mlflow
import numpy as np
import onnx
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from model_lib import promotion
from model_lib.config import CHAMPION_ALIAS
from model_lib.decision import NEITHER
from model_lib.onnx_model import OnnxClassifier
from model_lib.preprocess import decode_image
from model_lib.settings import PortSettings


def use_experiment(name: str) -> str:
    """Make experiment `name` the active one, creating it if needed; returns its id.

    `mlflow.set_experiment(name)` alone loses a creation race: when another process
    creates the experiment first, it returns the experiment without making it active,
    and the next run lands in "Default" (seen with two workers evaluating at once).
    Setting it again by id cannot race."""
    experiment_id = mlflow.set_experiment(name).experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


class ServiceUnavailable(RuntimeError):
    """A server the flow needs is down; the message says how to start it."""


class ModelIntegrityError(RuntimeError):
    """A model file is not the one training registered; the message says what to do."""


# The sha256 of each ONNX file a training run logs, by precision, under these keys: a tag
# on the model version (shown in the registry) and a param of its run (MLflow refuses to
# change a logged param). Packaging ships a downloaded file only if its hash is both.
SHA256_KEYS = {"float32": "onnx_sha256", "int8": "onnx_int8_sha256"}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_sha256(client, model_name: str, version: str, run_id: str, hashes: dict) -> None:
    """Record `hashes` ({precision: sha256}) for model version `version` of run `run_id`."""
    for precision, digest in hashes.items():
        client.log_param(run_id, SHA256_KEYS[precision], digest)
        client.set_model_version_tag(model_name, version, SHA256_KEYS[precision], digest)


def verify_sha256(client, model_version, precision: str, path) -> str:
    """The sha256 of the file at `path` if it is the `precision` file training recorded
    for `model_version` (a ModelVersion); ModelIntegrityError otherwise."""
    key = SHA256_KEYS[precision]
    name, number = model_version.name, model_version.version
    tagged = model_version.tags.get(key)
    logged = client.get_run(model_version.run_id).data.params.get(key)
    if not tagged or tagged != logged:
        raise ModelIntegrityError(
            f"{name} v{number}: no sha256 of its {precision} ONNX file that the version's tag "
            f"{key!r} and its run's param agree on (tag {tagged!r}, param {logged!r}), so the "
            "download cannot be checked and is not shipped. Versions registered before hashes "
            "were recorded have none: train again (`make train`), which records it."
        )
    actual = file_sha256(path)
    if actual != tagged:
        raise ModelIntegrityError(
            f"{name} v{number}: the {precision} ONNX file downloaded from MLflow has sha256 "
            f"{actual}, but training recorded {tagged}: the file in the artifact store was "
            "changed after registration. It is not shipped. Find out who changed the "
            f"artifacts of run {model_version.run_id}, then train again (`make train`) to "
            "register a version you trust."
        )
    return actual


def tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the local server on $MLFLOW_PORT (model_lib.settings)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or (
        f"http://127.0.0.1:{PortSettings.from_env().mlflow_port}"
    )


def ensure_tracking_server(uri: str | None = None) -> str:
    """Fail fast, before any work, when the MLflow server does not answer."""
    uri = uri or tracking_uri()
    if not uri.startswith("http"):
        return uri  # a local store (sqlite:/// or a folder) needs no server
    try:
        response = httpx.get(f"{uri.rstrip('/')}/health", timeout=5)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise ServiceUnavailable(
            f"MLflow tracking server at {uri} is not reachable ({exc.__class__.__name__}: {exc}). "
            "Start the services with `make up` or point MLFLOW_TRACKING_URI at a running server."
        ) from None
    return uri


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def version_by_alias(client, model_name: str, alias: str):
    """The model version `alias` points at, or None when the alias (or model) does not exist."""
    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        if exc.get_http_status_code() >= 500:  # the server failed: not an answer
            raise
        return None


def bento_of(version) -> str | None:
    """The bento a model version is served from: the one its rollout ran (`rollout_bento`),
    else the one `package` built from it (`bento_tag`)."""
    return version.tags.get("rollout_bento") or version.tags.get("bento_tag")


def alias_bento(client, model_name: str, alias: str) -> tuple[str, str | None] | None:
    """(version, its bento) of the version `alias` names; None without the alias."""
    version = version_by_alias(client, model_name, alias)
    if version is None:
        return None
    return str(version.version), bento_of(version)


# rollout_outcome while a rollout switches traffic, before it moves `production` (the
# deploy flow); one that is still there afterwards was interrupted.
PROMOTING = "promoting"


def settle_rollout_tags(client, model_name: str, production: str | None) -> list[str]:
    """Outcome tags of rollouts killed mid-way, made true: the production version's
    `promoting` became `completed` (its alias move happened), any other version's
    `interrupted` (it never became production). Returns what was changed."""
    changed = []
    for version in client.search_model_versions(f"name='{model_name}'"):
        if version.tags.get("rollout_outcome") != PROMOTING:
            continue
        number = str(version.version)
        outcome = "completed" if number == production else "interrupted"
        reason = (
            "the rollout stopped after moving the production alias; its outcome recorded later"
            if outcome == "completed"
            else "the rollout stopped before moving the production alias: what serves went "
            "back to the production version"
        )
        client.set_model_version_tag(model_name, number, "rollout_outcome", outcome)
        client.set_model_version_tag(model_name, number, "rollout_reason", reason)
        changed.append(f"v{number} rollout_outcome {PROMOTING} -> {outcome}")
    return changed


def champion_answers_on(client, model_name: str, val_items) -> tuple[str | None, np.ndarray | None]:
    """Re-score the current champion on this run's validation files, image by image.

    Comparing against the champion's logged metric would compare different
    splits whenever data_fraction differs, and the champion may preprocess
    differently (size, normalisation); scoring its ONNX file here, with its own
    embedded preprocessing and decision rule, compares like with like.
    Returns (version, the label it answers per image), or (None, None) when
    there is no champion; the gate (model_lib.promotion) pairs it with the
    candidate's. A champion without a `neither` output answers cat or dog.
    """
    version = version_by_alias(client, model_name, CHAMPION_ALIAS)
    if version is None:
        return None, None
    folder = mlflow.artifacts.download_artifacts(f"models:/{model_name}@{CHAMPION_ALIAS}")
    champion = OnnxClassifier(os.path.join(folder, "model.onnx"))
    images = [decode_image(item.path.read_bytes()) for item in val_items]
    answers = champion.decision.labels(champion.predict_images(images))
    return version.version, np.asarray(champion.class_names)[answers]


def gate_inputs(truth: np.ndarray, answers: np.ndarray) -> tuple[np.ndarray, dict]:
    """Per-image correctness, and the guarded figures as per-image good/bad."""
    others = truth == NEITHER
    guards = {
        "unseen kinds answered neither": answers[others] == NEITHER,
        "pets answered with a pet": answers[~others] != NEITHER,
    }
    return answers == truth, guards


def pinned(*packages: str) -> list[str]:
    """`package==<installed version>` for each: what loading a logged model needs.

    Given to log_model, this skips MLflow's requirement inference, which loads the
    model in a subprocess to see what it imports: the slowest part of logging a
    model here (notes/tests.md has the measurement)."""
    return [f"{package}=={metadata.version(package)}" for package in packages]


def log_models(result, onnx_path, example_input: np.ndarray) -> tuple[str, str]:
    """Log the PyTorch and ONNX models of a TrainResult to the active run.

    Returns the ONNX model's URI, the one that gets registered (it is what
    the service runs, and it carries its preprocessing), and the sha256 of the
    model.onnx file it holds.
    """
    probs = OnnxClassifier(onnx_path).predict_proba(example_input)
    signature = infer_signature(example_input, probs)
    metadata = {"preprocessing": result.preprocessing.to_json()}
    mlflow.pytorch.log_model(
        result.model,
        name="pytorch_model",
        signature=signature,
        pip_requirements=pinned("torch", "numpy"),
        input_example=example_input,
        metadata=metadata,
    )
    model = onnx.load(str(onnx_path))
    # MLflow writes this proto's serialization (onnx.save_model): hash those bytes.
    digest = sha256_hex(model.SerializeToString())
    info = mlflow.onnx.log_model(
        model,
        name="onnx_model",
        signature=signature,
        pip_requirements=pinned("onnx", "onnxruntime", "numpy"),
        input_example=example_input,
        metadata=metadata,
        onnx_execution_providers=["CPUExecutionProvider"],
        save_as_external_data=False,  # one self-contained model.onnx, as packaged for serving
    )
    return info.model_uri, digest


def register_and_gate(
    model_uri: str,
    model_name: str,
    val_accuracy: float,
    val_items,
    truth,
    answers,
    run_id,
    sha256: dict[str, str],
):
    """Register a version with the sha256 of its ONNX files (`sha256`: {precision: hash},
    record_sha256); move the champion alias only if the paired gate says it is
    better (model_lib.promotion). `truth`, `answers`: the true and the answered label
    (names) of each of `val_items`."""
    client = MlflowClient()
    # Score the champion before registering, so a failure here leaves nothing behind.
    champion_version, champion_answers = champion_answers_on(client, model_name, val_items)
    candidate_correct, candidate_guards = gate_inputs(np.asarray(truth), np.asarray(answers))
    champion_correct, guards = None, None
    if champion_answers is not None:
        champion_correct, champion_guards = gate_inputs(np.asarray(truth), champion_answers)
        guards = {
            name: (candidate_guards[name], champion_guards[name]) for name in candidate_guards
        }
    decision = promotion.decide(
        candidate_correct, champion_version, champion_correct, guards=guards
    )
    version = mlflow.register_model(model_uri, model_name)
    for key, value in {
        "val_accuracy": f"{val_accuracy:.6f}",
        "run_id": run_id,
        "promotion": "promoted" if decision.promoted else "rejected",
        "promotion_reason": decision.reason,
        "promotion_method": decision.method,
    }.items():
        client.set_model_version_tag(model_name, version.version, key, value)
    # Before the alias moves: a champion always has its hashes.
    record_sha256(client, model_name, version.version, run_id, sha256)
    if decision.promoted:
        client.set_registered_model_alias(model_name, CHAMPION_ALIAS, version.version)
    mlflow.log_dict(decision.to_dict() | {"version": version.version}, "promotion_decision.json")
    mlflow.set_tags({"registered_version": version.version, "promoted": str(decision.promoted)})
    return version.version, decision
