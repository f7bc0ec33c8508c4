"""The champion gate and packaging against a real MLflow store (SQLite, in process)."""

from __future__ import annotations

import mlflow
import numpy as np
import onnx
import pytest
from mlflow import MlflowClient

from model_lib.config import CHAMPION_ALIAS, MODEL_NAME
from model_lib.image_stats import REFERENCE_STATS_FILE, write_reference_statistics
from model_lib.onnx_model import OnnxClassifier
from model_lib.packaging import resolve_champion
from model_lib.pipeline import export
from model_lib.preprocess import decode_image
from model_lib.quantize import INT8_ARTIFACT_PATH, calibration_inputs, quantize_int8
from model_lib.tracking import champion_answers_on, file_sha256, record_sha256, sha256_hex
from tests.model.conftest import tiny_training


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """An MLflow store of its own; returns the experiment id runs go to."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return MlflowClient().create_experiment("test", artifact_location=str(tmp_path / "artifacts"))


def register_champion(experiment_id: str, run, onnx_path, int8_path=None) -> str:
    """Log and register a trained run's ONNX model as the champion, as training does."""
    with mlflow.start_run(experiment_id=experiment_id):
        paths = [item.path for item in run.dataset.train_items]
        mlflow.log_artifact(
            str(write_reference_statistics(paths, onnx_path.parent / REFERENCE_STATS_FILE))
        )
        model = onnx.load(str(onnx_path))
        # The hash training records (log_models): packaging checks the stored file against it.
        hashes = {"float32": sha256_hex(model.SerializeToString())}
        info = mlflow.onnx.log_model(model, name="onnx_model", save_as_external_data=False)
        if int8_path is not None:
            mlflow.log_artifact(str(int8_path), "int8")
            hashes["int8"] = file_sha256(int8_path)
    version = str(mlflow.register_model(info.model_uri, MODEL_NAME).version)
    record_sha256(MlflowClient(), MODEL_NAME, version, info.run_id, hashes)
    MlflowClient().set_registered_model_alias(MODEL_NAME, CHAMPION_ALIAS, version)
    return version


def test_the_gate_rescores_a_champion_of_another_architecture_with_its_own_preprocessing(
    registry, tmp_path, tiny_run
):
    champion_run = tiny_training(
        tmp_path / "champion", architecture="efficientnet_lite0", image_size=64
    )
    champion_path, _, _ = export(champion_run.result, tmp_path / "champion.onnx")
    version = register_champion(registry, champion_run, champion_path)
    # The candidate is a baseline at 32 px with other normalisation: feeding the champion
    # the candidate's inputs would fail (its ONNX graph takes 64 px).
    assert champion_run.prep != tiny_run.prep
    assert champion_run.prep.image_size != tiny_run.prep.image_size

    val_items = tiny_run.dataset.val_items
    scored_version, answers = champion_answers_on(MlflowClient(), MODEL_NAME, val_items)

    champion = OnnxClassifier(champion_path)
    images = [decode_image(item.path.read_bytes()) for item in val_items]
    expected = np.asarray(champion.class_names)[
        champion.decision.labels(champion.predict_images(images))
    ]
    truth = np.asarray(tiny_run.result.outputs)[[item.label for item in val_items]]
    assert str(scored_version) == version  # MLflow 3 returns it as an int here
    np.testing.assert_array_equal(answers, expected)
    assert (answers == truth).mean() >= 0.9  # three colours: the champion gets them right


def test_no_champion_means_nothing_to_rescore(registry, tiny_run):
    assert champion_answers_on(MlflowClient(), MODEL_NAME, tiny_run.dataset.val_items) == (
        None,
        None,
    )


def is_int8(path) -> bool:
    return any(node.op_type == "QuantizeLinear" for node in onnx.load(str(path)).graph.node)


def test_packaging_ships_int8_when_training_logged_it_and_float32_otherwise(
    registry, tmp_path, tiny_run
):
    fp32_path, _, _ = export(tiny_run.result, tmp_path / "model.onnx")
    register_champion(registry, tiny_run, fp32_path)
    fallback = resolve_champion(MODEL_NAME, None, tmp_path / "first", precision="int8")
    assert fallback.precision == "float32" and not is_int8(fallback.folder / "model.onnx")
    assert (fallback.folder / REFERENCE_STATS_FILE).is_file()

    int8_path = quantize_int8(
        fp32_path,
        tmp_path / INT8_ARTIFACT_PATH,
        calibration_inputs(tiny_run.result.data.train_pixels, tiny_run.prep),
    )
    version = register_champion(registry, tiny_run, fp32_path, int8_path)
    shipped = resolve_champion(MODEL_NAME, None, tmp_path / "second", precision="int8")
    assert (shipped.version, shipped.precision) == (version, "int8")
    assert is_int8(shipped.folder / "model.onnx")
    asked = resolve_champion(MODEL_NAME, None, tmp_path / "third", precision="float32")
    assert asked.precision == "float32" and not is_int8(asked.folder / "model.onnx")
    inputs = tiny_run.result.data.val_inputs
    np.testing.assert_allclose(
        OnnxClassifier(asked.folder / "model.onnx").predict_proba(inputs),
        OnnxClassifier(fp32_path).predict_proba(inputs),
        atol=1e-6,
    )


def test_a_run_lands_in_its_experiment_when_another_process_created_it_first(registry, monkeypatch):
    """Two flows starting at once both try to create the experiment; MLflow's own
    set_experiment then returns without making it active (the run would land in
    "Default"). use_experiment leaves the named experiment active either way."""
    import mlflow.tracking.fluent
    from mlflow.tracking._tracking_service.client import TrackingServiceClient

    from model_lib.tracking import use_experiment

    # set_experiment keeps the active experiment in a global and the environment.
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    name = "created by another process"
    experiment_id = MlflowClient().create_experiment(name)
    # The race: the other process's experiment is not there yet when this one looks,
    # and already there when it tries to create it.
    lookups = []
    real_lookup = TrackingServiceClient.get_experiment_by_name

    def not_there_at_first(self, wanted):
        lookups.append(wanted)
        return None if len(lookups) == 1 else real_lookup(self, wanted)

    monkeypatch.setattr(TrackingServiceClient, "get_experiment_by_name", not_there_at_first)
    assert use_experiment(name) == experiment_id
    with mlflow.start_run() as run:
        pass
    assert run.info.experiment_id == experiment_id
