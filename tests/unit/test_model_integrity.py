"""Packaging ships only the ONNX file training registered: its sha256 is checked
against the one recorded at registration (a real SQLite registry, real files)."""

from __future__ import annotations

import mlflow
import onnx
import pytest
from mlflow import MlflowClient
from onnx import TensorProto, helper

from model_lib.config import CHAMPION_ALIAS, MODEL_NAME
from model_lib.image_stats import REFERENCE_STATS_FILE
from model_lib.packaging import resolve_champion
from model_lib.tracking import SHA256_KEYS, ModelIntegrityError, file_sha256, record_sha256


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """An MLflow store of its own (SQLite, artifacts in a folder); the experiment id."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return MlflowClient().create_experiment("test", artifact_location=str(tmp_path / "artifacts"))


def onnx_file(path):
    """A small, valid ONNX graph (y = x)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    onnx.save(helper.make_model(graph), path)
    return path


def register(experiment_id, tmp_path, record: bool = True):
    """A champion version whose folder holds model.onnx, as training registers it;
    returns (version, the stored model.onnx)."""
    model = onnx_file(tmp_path / "model.onnx")
    (tmp_path / REFERENCE_STATS_FILE).write_text("brightness\n0.5\n")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_artifact(str(model), "onnx_model")
        mlflow.log_artifact(str(tmp_path / REFERENCE_STATS_FILE))
    client = MlflowClient()
    client.create_registered_model(MODEL_NAME)
    version = client.create_model_version(
        MODEL_NAME, source=f"{run.info.artifact_uri}/onnx_model", run_id=run.info.run_id
    ).version
    if record:
        record_sha256(client, MODEL_NAME, version, run.info.run_id, {"float32": file_sha256(model)})
    client.set_registered_model_alias(MODEL_NAME, CHAMPION_ALIAS, version)
    stored = tmp_path / "artifacts" / run.info.run_id / "artifacts" / "onnx_model" / "model.onnx"
    assert stored.is_file()
    return version, stored


def test_the_registered_file_is_shipped(registry, tmp_path):
    version, stored = register(registry, tmp_path)
    champion = resolve_champion(MODEL_NAME, None, tmp_path / "download", precision="float32")
    assert champion.version == str(version)
    assert file_sha256(champion.folder / "model.onnx") == file_sha256(stored)


def test_a_file_changed_in_the_artifact_store_is_refused(registry, tmp_path):
    version, stored = register(registry, tmp_path)
    recorded = file_sha256(stored)
    # Someone with write access to the artifacts swaps the model: still a valid ONNX file.
    model = onnx.load(str(stored))
    model.graph.node[0].op_type = "Neg"
    onnx.save(model, str(stored))

    with pytest.raises(ModelIntegrityError) as refused:
        resolve_champion(MODEL_NAME, None, tmp_path / "download", precision="float32")
    message = str(refused.value)
    assert file_sha256(stored) in message and recorded in message
    assert "changed after registration" in message and "make train" in message
    assert f"v{version}" in message


def test_a_version_without_a_recorded_hash_is_refused(registry, tmp_path):
    register(registry, tmp_path, record=False)
    with pytest.raises(ModelIntegrityError, match="train again"):
        resolve_champion(MODEL_NAME, None, tmp_path / "download", precision="float32")


def test_a_tag_changed_after_registration_is_refused(registry, tmp_path):
    """The run's param (which MLflow will not change) must agree with the version's tag."""
    version, stored = register(registry, tmp_path)
    client = MlflowClient()
    client.set_model_version_tag(MODEL_NAME, version, SHA256_KEYS["float32"], "0" * 64)
    with pytest.raises(ModelIntegrityError, match="agree on"):
        resolve_champion(MODEL_NAME, None, tmp_path / "download", precision="float32")
