"""`train/baseline` through a real Prefect worker into a real MLflow server."""

from __future__ import annotations

import json
import re
import sys

import pytest

from catdog_runtime.processes import free_port
from catdog_runtime.processes import run as run_cli
from tests.integration.conftest import (
    SMALL_TRAINING,
    prefect_api,
    python_cli,
    run_deployment,
    set_pool_paused,
)


@pytest.fixture(scope="module")
def first_run(trained):
    return trained


def test_run_has_params_tags_and_per_epoch_metrics(first_run, platform):
    client, run = first_run
    assert run.info.status == "FINISHED"
    assert run.data.params["architecture"] == "baseline_cnn"
    assert run.data.params["epochs"] == "2" and run.data.params["data_fraction"] == "0.04"
    assert run.data.tags["data_version"] == "3a9a37bd483767b91323d5fc9404137c.dir"
    head = run_cli(["git", "rev-parse", "HEAD"], platform["env"]).stdout.strip()
    assert run.data.tags["git_commit"] == head
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    # Per epoch (before calibration), then the exported model's, at the last epoch's step.
    assert [m.step for m in history] == [1, 2, 2]
    # The run's final figures are the reports' (the gate and the reports agree).
    for split in ("val", "test"):
        report = json.loads(
            open(client.download_artifacts(run.info.run_id, f"{split}_report.json")).read()
        )
        images = int(run.data.tags[f"{split}_images"]) + int(
            run.data.tags[f"{split}_neither_images"]
        )
        assert report["count"] == images > 0
        assert set(report["per_class"]) == {"cat", "dog", "neither"}
    assert run.data.tags["test_split_fingerprint"] != run.data.tags["val_split_fingerprint"]
    assert run.data.metrics["onnx_max_abs_diff"] <= 1e-4
    for key in (
        "train_loss",
        "val_loss",
        "val_cat_f1",
        "test_accuracy",
        "test_cat_accuracy",
        "test_pets_answered_neither",
        "test_others_answered_neither",
        "test_auroc_pets_vs_others",
        "val_ece_before_calibration",
        "test_ece",
        "temperature",
        "neither_threshold",
        "served_test_accuracy",
    ):
        assert key in run.data.metrics, key


def test_run_has_reports_plots_and_both_models(first_run):
    client, run = first_run
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {
        "data_validation.json",
        "outlier_validation.json",
        "reference_stats.csv",
        "val_report.json",
        "test_report.json",
        "promotion_decision.json",
        "plots",
    } <= names
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {
        f"plots/{name}.png"
        for name in (
            "loss_curve",
            "confusion_matrix_validation",
            "confusion_matrix_test",
            "reliability_diagram",
            "pet_score_histogram_validation",
            "pet_score_histogram_test",
            "test_errors",
        )
    }
    models = {m.name for m in client.search_logged_models(experiment_ids=[run.info.experiment_id])}
    assert {"pytorch_model", "onnx_model"} <= models
    validation = json.loads(
        open(client.download_artifacts(run.info.run_id, "data_validation.json")).read()
    )
    assert validation["ok"] and set(validation["class_counts"]) == {"cat", "dog"}


def test_int8_model_is_logged_exactly_when_it_keeps_the_accuracy(first_run):
    from model_lib.quantize import INT8_ARTIFACT_PATH, int8_acceptable

    client, run = first_run
    metrics = run.data.metrics
    figures = {
        precision: {
            key: metrics[f"val_{key}{suffix}"] for key in ("accuracy", "others_answered_neither")
        }
        for precision, suffix in (("float32", ""), ("int8", "_int8"))
    }
    acceptable = int8_acceptable(figures["float32"], figures["int8"])
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "int8")}
    assert logged == ({INT8_ARTIFACT_PATH} if acceptable else set())
    assert run.data.tags["served_precision"] == ("int8" if acceptable else "float32")
    served = "_int8" if acceptable else ""
    assert metrics["served_test_accuracy"] == metrics[f"test_accuracy{served}"]


def test_first_version_is_champion(first_run):
    # Other modules of the session register (and promote) later versions, and may train
    # before this one: version 1, whoever trained it, records that it became champion.
    client, _ = first_run
    version = client.get_model_version("catdog-classifier", "1")
    assert version.tags["promotion"] == "promoted"
    assert "first registered model becomes champion" in version.tags["promotion_reason"]


def test_registration_records_the_sha256_of_each_onnx_file(
    first_run, platform, tmp_path, monkeypatch
):
    """What `package` checks its download against (model_lib.tracking.verify_sha256)."""
    import mlflow

    from model_lib.quantize import INT8_ARTIFACT_PATH
    from model_lib.tracking import SHA256_KEYS, file_sha256

    client, run = first_run
    (version,) = client.search_model_versions(f"run_id='{run.info.run_id}'")
    # The registry (models:/) and the artifacts of the platform's server, as the flows see it.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", platform["mlflow_uri"])
    folder = mlflow.artifacts.download_artifacts(
        f"models:/{version.name}/{version.version}", dst_path=str(tmp_path / "model")
    )
    files = {"float32": f"{folder}/model.onnx"}
    if run.data.tags["served_precision"] == "int8":
        files["int8"] = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path=INT8_ARTIFACT_PATH, dst_path=str(tmp_path)
        )
    assert {k for k in version.tags if k.endswith("sha256")} == {SHA256_KEYS[p] for p in files}
    for precision, path in files.items():
        key = SHA256_KEYS[precision]
        assert version.tags[key] == run.data.params[key] == file_sha256(path)


def test_worse_model_does_not_take_the_champion_alias(first_run, platform):
    client, first = first_run
    before = client.get_model_version_by_alias("catdog-classifier", "champion")
    # One epoch on a quarter of the data at a learning rate of ~0: no better than chance.
    run_deployment(
        platform,
        "train/baseline",
        {"config": {**SMALL_TRAINING, "epochs": 1, "learning_rate": 1e-9}},
    )
    champion = client.get_model_version_by_alias("catdog-classifier", "champion")
    assert champion.version == before.version
    latest = max(
        client.search_model_versions("name='catdog-classifier'"), key=lambda v: int(v.version)
    )
    assert latest.tags["promotion"] == "rejected"
    assert "does not beat" in latest.tags["promotion_reason"]


def test_missing_data_fails_the_flow_with_a_hint(platform):
    config = {**SMALL_TRAINING, "data_dir": "no-such-folder"}
    flow_run = run_deployment(platform, "train/baseline", {"config": config}, check=False)
    assert flow_run["state"]["type"] == "FAILED"
    assert "no-such-folder does not exist: run `dvc pull`" in flow_run["state"]["message"]


def test_mlflow_down_fails_fast_with_a_hint(platform):
    env = {**platform["env"], "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    with pytest.raises(AssertionError) as failed:
        python_cli(
            {**platform, "env": env},
            "-c",
            "from flows.train import train; from model_lib.config import TrainConfig; "
            "train(TrainConfig(data_fraction=0.01, epochs=1, image_size=32))",
        )
    assert "MLflow tracking server" in str(failed.value) and "make up" in str(failed.value)


def test_a_run_no_worker_picks_up_is_cancelled_with_the_reason(platform):
    """A paused pool stands in for a worker that is busy or gone: the make target does not
    wait forever, and the run does not start later by surprise."""
    set_pool_paused(platform, True)
    try:
        env = {**platform["env"], "CATDOG_PICKUP_TIMEOUT": "5"}
        args = [sys.executable, "-m", "catdog_runtime.run_deployment", "train/baseline"]
        result = run_cli(
            args + ["--params", json.dumps({"config": SMALL_TRAINING})], env, check=False
        )
    finally:
        set_pool_paused(platform, False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no worker picked up flow run" in result.stderr, result.stderr
    assert "CATDOG_PICKUP_TIMEOUT" in result.stderr
    run_id = re.search(r"flow run '[^']+' \(([0-9a-f-]{36})\)", result.stdout).group(1)
    assert prefect_api(platform, "GET", f"/flow_runs/{run_id}")["state"]["type"] == "CANCELLED"
