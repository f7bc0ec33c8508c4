"""Rollout candidates for the rollout tests and benchmark: a new MLflow model version
and its bento, either the same weights as an existing version (a good candidate
that answers as a new version) or a deliberately broken one whose model answers
one constant class, whatever the photo.

Made from outside the service: the broken model is an ordinary ONNX file (the
base version's graph with its logits replaced by a constant), registered and
packaged like any other, so the service code is the same for every candidate.
"""

from __future__ import annotations

from pathlib import Path

from model_lib import packaging

CANDIDATES_EXPERIMENT = "catdog-rollout-candidates"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def make_constant(onnx_path: Path, label_index: int, classes: int) -> None:
    """Rewrite the model so its logits are a constant that picks `label_index`."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    output = graph.output[0].name
    for node in graph.node:  # the node producing the output now feeds the constant
        node.output[:] = [f"{output}__raw" if name == output else name for name in node.output]
    bias = np.full((1, classes), -4.0, np.float32)
    bias[0, label_index] = 4.0
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.zeros((), np.float32), f"{output}__zero"),
            numpy_helper.from_array(bias, f"{output}__bias"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Mul", [f"{output}__raw", f"{output}__zero"], [f"{output}__zeroed"]),
            helper.make_node("Add", [f"{output}__zeroed", f"{output}__bias"], [output]),
        ]
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(onnx_path))


def build_candidate(
    model_name: str, base_version: str, work_dir: Path, constant_label: str | None = None
) -> tuple[str, str]:
    """Register a copy of `base_version` (constant-output when `constant_label` is
    given) as a new model version and build its bento; returns (version, bento tag)."""
    import mlflow
    from mlflow import MlflowClient

    from model_lib.onnx_model import OnnxClassifier
    from model_lib.tracking import file_sha256, record_sha256, use_experiment

    client = MlflowClient()
    base = client.get_model_version(model_name, base_version)
    folder = work_dir / f"candidate-from-v{base_version}"
    # The file `package` ships for the base version (its INT8 one when training logged
    # it): a good candidate must answer exactly as the base version serves.
    precision = packaging.download_model_file(client, base, folder)
    if constant_label is not None:
        names = OnnxClassifier(folder / "model.onnx").class_names
        make_constant(folder / "model.onnx", names.index(constant_label), len(names))
    use_experiment(CANDIDATES_EXPERIMENT)
    with mlflow.start_run(run_name=f"candidate from v{base_version}") as run:
        mlflow.log_artifact(str(folder / "model.onnx"), "model")
        mlflow.log_artifact(str(folder / packaging.REFERENCE_STATS_FILE))
        mlflow.set_tag("broken_on_purpose", str(constant_label is not None).lower())
    created = client.create_model_version(
        model_name,
        source=f"{run.info.artifact_uri}/model",
        run_id=run.info.run_id,
        tags={"purpose": "rollout candidate", "constant_label": constant_label or ""},
    )
    candidate = packaging.Champion(
        model_name,
        str(created.version),
        run.info.run_id,
        base.tags.get("val_accuracy", ""),
        folder,
        precision,
    )
    model_tag = packaging.save_to_bento_store(candidate)
    client.set_model_version_tag(model_name, created.version, "bentoml_model", model_tag)
    bento_tag = packaging.build_bento(PROJECT_ROOT)
    client.set_model_version_tag(model_name, created.version, "bento_tag", bento_tag)
    # As training does: `package` ships a version only with its file's recorded sha256.
    record_sha256(
        client,
        model_name,
        created.version,
        run.info.run_id,
        {precision: file_sha256(folder / "model.onnx")},
    )
    return str(created.version), bento_tag


def remove_candidate(model_name: str, version: str, say=print) -> None:
    """Delete a candidate's bento, BentoML model and MLflow model version (with its aliases),
    so that no later command (`make serve`, `make bench`, a `:latest` tag) picks it up.
    A candidate that the `production` or `champion` alias names is kept, and said so."""
    import bentoml
    from bentoml.exceptions import NotFound
    from mlflow import MlflowClient

    from model_lib.config import CHAMPION_ALIAS, PRODUCTION_ALIAS
    from model_lib.tracking import version_by_alias

    client = MlflowClient()
    for alias in (PRODUCTION_ALIAS, CHAMPION_ALIAS):
        named = version_by_alias(client, model_name, alias)
        if named is not None and str(named.version) == str(version):
            say(f"candidate v{version} is {alias} now: kept (bento, model and version)")
            return
    tags = client.get_model_version(model_name, version).tags
    for tag, delete in (
        ("bento_tag", bentoml.bentos.delete),
        ("bentoml_model", bentoml.models.delete),
    ):
        if tags.get(tag):
            try:
                delete(tags[tag])
            except NotFound:
                pass  # deleted already (an earlier cleanup that stopped half way)
    client.delete_model_version(model_name, version)
    say(f"removed candidate v{version} ({tags.get('bento_tag')}, {tags.get('bentoml_model')})")
