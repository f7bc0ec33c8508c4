"""Prefect flow `package`: MLflow champion -> BentoML model store -> `bentoml build`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

from mlflow import MlflowClient
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows import events
from model_lib import packaging
from model_lib.config import MODEL_NAME
from model_lib.tracking import ensure_tracking_server

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@task
def fetch_champion(
    model_name: str, version: str | None, work_dir: Path, precision: str
) -> packaging.Champion:
    return packaging.resolve_champion(model_name, version, work_dir, precision)


@task
def store_model(champion: packaging.Champion) -> str:
    return packaging.save_to_bento_store(champion)


@task
def build(bentofile: str) -> str:
    return packaging.build_bento(PROJECT_ROOT, bentofile)


@task
def record(champion: packaging.Champion, model_tag: str, bento_tag: str) -> None:
    client = MlflowClient()
    client.set_model_version_tag(champion.model_name, champion.version, "bento_tag", bento_tag)
    client.set_model_version_tag(champion.model_name, champion.version, "bentoml_model", model_tag)


def emit_bento_built(champion: packaging.Champion, bento_tag: str) -> None:
    """`deploy/rollout` reacts to this event with `bento_tag` from its payload."""
    events.emit(
        events.BENTO_BUILT,
        events.model_resource(champion.model_name, champion.version),
        {
            "bento_tag": bento_tag,
            "model_name": champion.model_name,
            "version": str(champion.version),
            "precision": champion.precision,
            "val_accuracy": champion.val_accuracy,
        },
        [events.bento_resource(bento_tag)],
    )


@flow(name="package")
def package(
    model_name: str = MODEL_NAME,
    version: str | None = None,
    bentofile: str = "bentofile.yaml",
    precision: Literal["int8", "float32"] = "int8",
) -> str:
    """Package the champion (a `version` that is not the champion is refused).

    `precision` "int8" ships the run's INT8 model when training logged one
    (it does when it keeps the validation accuracy), else float32.
    Returns the bento tag."""
    logger = get_run_logger()
    ensure_tracking_server()
    # The download is only needed until the model store holds its copy.
    with tempfile.TemporaryDirectory(prefix="catdog-package-") as work_dir:
        champion = fetch_champion(model_name, version, Path(work_dir), precision)
        logger.info(
            "champion: %s v%s (run %s), %s model",
            champion.model_name,
            champion.version,
            champion.run_id,
            champion.precision,
        )
        model_tag = store_model(champion)
    logger.info("saved to the BentoML model store as %s", model_tag)
    bento_tag = build(bentofile)
    logger.info("built bento %s", bento_tag)
    record(champion, model_tag, bento_tag)
    emit_bento_built(champion, bento_tag)
    create_markdown_artifact(
        key="package-summary",
        markdown=(
            f"# Packaged {champion.model_name} v{champion.version}\n\n"
            f"| | |\n|---|---|\n| bento | `{bento_tag}` |\n| BentoML model | `{model_tag}` |\n"
            f"| MLflow run | `{champion.run_id}` |\n| val accuracy | {champion.val_accuracy} |\n"
            f"| precision | {champion.precision} |\n\n"
            f"Serve: `bentoml serve {bento_tag}`; image: `bentoml containerize {bento_tag}`"
        ),
        description="Bento built from the champion",
    )
    return bento_tag


if __name__ == "__main__":
    package()
