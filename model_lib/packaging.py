"""From the MLflow champion to the BentoML model store and a bento (torch-free).

An adapter module (MLflow client + BentoML store); the flow in
flows/package.py only sequences these calls.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import bentoml
import mlflow
from mlflow import MlflowClient

from model_lib.config import CHAMPION_ALIAS, MODEL_NAME
from model_lib.image_stats import REFERENCE_STATS_FILE
from model_lib.onnx_model import OnnxClassifier
from model_lib.quantize import INT8_ARTIFACT_PATH
from model_lib.tracking import verify_sha256, version_by_alias


class NotAChampion(RuntimeError):
    """Only the champion is shipped."""


@dataclass(frozen=True)
class Champion:
    model_name: str
    version: str
    run_id: str
    val_accuracy: str
    folder: Path  # holds model.onnx and reference_stats.csv
    precision: str  # of folder/model.onnx: "int8" or "float32"


PRECISIONS = ("int8", "float32")


def resolve_champion(
    model_name: str, version: str | None, download_to: Path, precision: str = "int8"
) -> Champion:
    """The champion version's ONNX file and drift reference, downloaded from MLflow.

    `version`, when given, must be the champion: packaging anything else is refused.
    With precision "int8" the run's INT8 model is taken when training logged one
    (it does when it keeps the validation accuracy), the float32 model otherwise.
    A file whose sha256 is not the one training recorded is refused
    (tracking.ModelIntegrityError).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    client = MlflowClient()
    champion = version_by_alias(client, model_name, CHAMPION_ALIAS)
    if champion is None:
        raise NotAChampion(
            f"registered model {model_name!r} has no '{CHAMPION_ALIAS}' alias: train a model first "
            "(`prefect deployment run train/baseline --watch`)"
        )
    if version is not None and str(version) != str(champion.version):
        raise NotAChampion(
            f"{model_name} v{version} is not the champion (v{champion.version} is); only the "
            "champion is packaged. Leave `version` empty to package the champion."
        )
    precision = download_model_file(client, champion, download_to, precision)
    # Only the very file training registered is shipped (ModelIntegrityError otherwise).
    verify_sha256(client, champion, precision, download_to / "model.onnx")
    return Champion(
        model_name,
        str(champion.version),
        champion.run_id,
        champion.tags.get("val_accuracy", ""),
        download_to,
        precision,
    )


def download_model_file(client, version, download_to: Path, precision: str = "int8") -> str:
    """Model version `version`'s ONNX file into download_to/model.onnx, with its drift
    reference beside it: the run's INT8 file when `precision` is "int8" and training
    logged one, the float32 file otherwise. Returns the precision of the file."""
    download_to.mkdir(parents=True, exist_ok=True)
    mlflow.artifacts.download_artifacts(
        f"models:/{version.name}/{version.version}", dst_path=str(download_to / "model")
    )
    mlflow.artifacts.download_artifacts(
        run_id=version.run_id, artifact_path=REFERENCE_STATS_FILE, dst_path=str(download_to)
    )
    shutil.move(download_to / "model" / "model.onnx", download_to / "model.onnx")
    if precision == "int8" and _has_artifact(client, version.run_id, INT8_ARTIFACT_PATH):
        int8 = mlflow.artifacts.download_artifacts(
            run_id=version.run_id, artifact_path=INT8_ARTIFACT_PATH, dst_path=str(download_to)
        )
        shutil.move(int8, download_to / "model.onnx")
        return "int8"
    return "float32"


def _has_artifact(client, run_id: str, path: str) -> bool:
    folder, _, _ = path.rpartition("/")
    return any(item.path == path for item in client.list_artifacts(run_id, folder))


def save_to_bento_store(champion: Champion) -> str:
    """Put the ONNX model, its metadata and the drift reference in the BentoML store."""
    onnx_path = champion.folder / "model.onnx"
    classifier = OnnxClassifier(onnx_path)  # also proves the file loads
    prep, rule = classifier.preprocessing, classifier.decision
    with bentoml.models.create(
        MODEL_NAME,
        labels={
            "mlflow_model": champion.model_name,
            "mlflow_version": champion.version,
            "precision": champion.precision,
        },
        metadata={
            "mlflow_model_name": champion.model_name,
            "mlflow_model_version": champion.version,
            "mlflow_run_id": champion.run_id,
            "val_accuracy": champion.val_accuracy,  # of the float32 model, as registered
            "precision": champion.precision,
            "image_size": prep.image_size,
            "crop_pct": prep.crop_pct,
            "mean": list(prep.mean),
            "std": list(prep.std),
            # The model's outputs (the pet classes, then `neither`) and its decision
            # rule, as the ONNX file's metadata has them (the service reads the file).
            "class_names": list(classifier.class_names),
            "temperature": rule.temperature,
            "neither_threshold": rule.threshold,
        },
    ) as model:
        shutil.copy(onnx_path, model.path_of("model.onnx"))
        shutil.copy(champion.folder / REFERENCE_STATS_FILE, model.path_of(REFERENCE_STATS_FILE))
    return str(model.tag)


def build_bento(project_root: Path, bentofile: str = "bentofile.yaml") -> str:
    """`bentoml build` with the project's bentofile; returns the bento tag."""
    # The CLI next to this interpreter: the flow's venv, whatever PATH says.
    bentoml_cli = Path(sys.executable).parent / "bentoml"
    result = subprocess.run(
        [str(bentoml_cli), "build", "-f", bentofile, "--output", "tag", str(project_root)],
        cwd=project_root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"bentoml build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    # `-o tag` prints `__tag__:name:version` as its last line.
    tag_line = [line for line in result.stdout.splitlines() if line.startswith("__tag__:")][-1]
    return tag_line.removeprefix("__tag__:")
