"""`train/baseline` through a real Prefect worker into a real MLflow server."""

from __future__ import annotations

import json

import pytest

from catdog_runtime.processes import free_port
from catdog_runtime.processes import run as run_cli
from tests.integration.conftest import SMALL_TRAINING, python_cli, run_deployment


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
    assert [m.step for m in history] == [1, 2]
    # The run's final accuracy is the validation report's (the gate and the report agree).
    report = json.loads(open(client.download_artifacts(run.info.run_id, "val_report.json")).read())
    assert run.data.metrics["val_accuracy"] == pytest.approx(report["accuracy"])
    assert report["count"] == int(run.data.tags["val_images"])
    assert run.data.metrics["onnx_max_abs_diff"] <= 1e-4
    for key in ("train_loss", "val_loss", "val_cat_f1", "val_dog_recall"):
        assert key in run.data.metrics


def test_run_has_reports_plots_and_both_models(first_run):
    client, run = first_run
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {
        "data_validation.json",
        "reference_stats.csv",
        "val_report.json",
        "promotion_decision.json",
        "plots",
    } <= names
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/loss_curve.png", "plots/confusion_matrix.png"}
    models = {m.name for m in client.search_logged_models(experiment_ids=[run.info.experiment_id])}
    assert {"pytorch_model", "onnx_model"} <= models
    validation = json.loads(
        open(client.download_artifacts(run.info.run_id, "data_validation.json")).read()
    )
    assert validation["ok"] and set(validation["class_counts"]) == {"cat", "dog"}


def test_int8_model_is_logged_exactly_when_it_keeps_the_accuracy(first_run):
    from model_lib.quantize import INT8_ARTIFACT_PATH, int8_acceptable

    client, run = first_run
    int8_accuracy = run.data.metrics["val_accuracy_int8"]
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "int8")}
    expected = (
        {INT8_ARTIFACT_PATH}
        if int8_acceptable(run.data.metrics["val_accuracy"], int8_accuracy)
        else set()
    )
    assert logged == expected


def test_first_version_is_champion(first_run):
    # Other modules of the session register (and promote) later versions: the first
    # run's own version records that it became champion.
    client, run = first_run
    (version,) = client.search_model_versions(f"run_id='{run.info.run_id}'")
    assert version.tags["promotion"] == "promoted"
    assert "first registered model becomes champion" in version.tags["promotion_reason"]


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
