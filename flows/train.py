"""Prefect flow `train`: validate data, train, log to MLflow, register, gate the champion.

Thin adapter over model_lib (`pipeline.train` does the work); deployments
`train/baseline` and `train/efficientnet-lite0` in prefect.yaml set the config.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows import events
from model_lib import data as data_lib
from model_lib import pipeline
from model_lib.config import TrainConfig
from model_lib.image_stats import REFERENCE_STATS_FILE, write_reference_statistics
from model_lib.metrics import classification_report, flat_metrics
from model_lib.plots import confusion_matrix_figure, loss_curve
from model_lib.progress import TrainingProgress
from model_lib.promotion import decision_markdown
from model_lib.quantize import (
    INT8_ARTIFACT_PATH,
    INT8_TOLERANCE,
    int8_acceptable,
    quantize_and_score,
)
from model_lib.tracking import ensure_tracking_server, git_commit, log_models, register_and_gate

EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "images_per_second")


@task(cache_policy=NO_CACHE)
def check_tracking_server() -> str:
    return ensure_tracking_server()


@task(cache_policy=NO_CACHE)
def validate_data(config: TrainConfig, report_dir: Path) -> tuple[pipeline.Dataset, Path]:
    """Discover, split and validate the pool; fail the flow when it is unusable."""
    dataset = pipeline.load_dataset(config)
    report = dataset.report
    report_path = report.write_json(report_dir / "data_validation.json")
    get_run_logger().info(
        "data: %d files, classes %s, %d corrupt, %d duplicate groups",
        report.total_files,
        report.class_counts,
        len(report.corrupt),
        len(report.duplicate_groups),
    )
    if not report.ok:
        raise data_lib.DataError("data validation failed: " + "; ".join(report.errors))
    return dataset, report_path


@task(cache_policy=NO_CACHE)
def start_run(config: TrainConfig, dataset: pipeline.Dataset, report_path: Path, work_dir: Path):
    """Create the MLflow run with params, data version, commit and the data reports.

    Each task re-enters the run by id: Prefect may run tasks on other threads,
    and MLflow's active run is per thread.
    """
    mlflow.set_experiment(config.experiment_name)
    with mlflow.start_run(run_name=config.architecture) as run:
        mlflow.log_params(config.to_params())
        mlflow.set_tags(
            {
                "data_version": data_lib.dvc_data_version(
                    Path(config.data_dir).with_suffix(".dvc")
                ),
                "git_commit": git_commit(),
                "val_split_fingerprint": data_lib.split_fingerprint(dataset.val_items),
                "train_images": str(len(dataset.train_items)),
                "val_images": str(len(dataset.val_items)),
            }
        )
        mlflow.log_artifact(str(report_path))
        train_paths = [item.path for item in dataset.train_items]
        reference = write_reference_statistics(train_paths, work_dir / REFERENCE_STATS_FILE)
        mlflow.log_artifact(str(reference))
    return run.info.run_id


@task(cache_policy=NO_CACHE)
def train_model(config: TrainConfig, dataset: pipeline.Dataset, run_id: str):
    client = MlflowClient()

    def log_epoch(event):  # per-epoch metrics appear in MLflow while training runs
        for key in EPOCH_METRICS:
            client.log_metric(run_id, key, event[key], step=event["epoch"])

    return pipeline.train(config, dataset, TrainingProgress(get_run_logger(), log_epoch))


@task(cache_policy=NO_CACHE)
def log_results(result: pipeline.TrainResult, class_names, out_dir: Path, run_id: str):
    """Final metrics, plots and both model formats, logged to the run."""
    report = classification_report(
        result.val_labels, result.val_probabilities.argmax(1), class_names
    )
    final = flat_metrics(report, prefix="val_")
    final.pop("val_accuracy")  # already logged per epoch; the last epoch's value is the final one
    onnx_path, parity = pipeline.export(result, out_dir / "model.onnx")
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({**final, "onnx_max_abs_diff": parity})
        mlflow.log_dict(report, "val_report.json")
        mlflow.log_figure(loss_curve(result.history), "plots/loss_curve.png")
        mlflow.log_figure(
            confusion_matrix_figure(report["confusion_matrix"], class_names),
            "plots/confusion_matrix.png",
        )
        model_uri = log_models(result, onnx_path, result.data.val_inputs[:1])
    return model_uri, report


@task(cache_policy=NO_CACHE)
def quantize(result: pipeline.TrainResult, fp32_accuracy: float, out_dir: Path, run_id: str):
    """An INT8 copy of the exported model, logged only if it keeps its accuracy
    (`package` ships it when present). Returns whether it was logged."""
    int8_path = out_dir / INT8_ARTIFACT_PATH
    accuracy = quantize_and_score(
        out_dir / "model.onnx",
        int8_path,
        result.data.train_pixels,
        result.data.val_inputs,
        result.data.val_labels,
        result.preprocessing,
    )
    acceptable = int8_acceptable(fp32_accuracy, accuracy)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metric("val_accuracy_int8", accuracy)
        if acceptable:
            mlflow.log_artifact(str(int8_path), str(Path(INT8_ARTIFACT_PATH).parent))
    get_run_logger().info(
        "INT8 model: val accuracy %.4f vs %.4f in float32: %s",
        accuracy,
        fp32_accuracy,
        "logged for serving"
        if acceptable
        else f"not logged (loses more than {INT8_TOLERANCE:.1%}); float32 will be served",
    )
    return acceptable


@task(cache_policy=NO_CACHE)
def register(model_uri: str, config: TrainConfig, result, accuracy: float, val_items, run_id: str):
    candidate_correct = result.val_probabilities.argmax(1) == result.val_labels
    with mlflow.start_run(run_id=run_id):
        version, decision = register_and_gate(
            model_uri, config.registered_model_name, accuracy, val_items, run_id, candidate_correct
        )
    get_run_logger().info(
        "registered %s v%s: %s", config.registered_model_name, version, decision.reason
    )
    create_markdown_artifact(
        key="champion-gate",
        markdown=decision_markdown(config.registered_model_name, version, decision),
        description="Promotion decision and the paired test behind it",
    )
    return version, decision


def emit_model_events(config: TrainConfig, version: str, decision, run_id: str) -> None:
    """candidate-registered, then promoted or rejected: `package/champion` reacts to promoted."""
    data_version = data_lib.dvc_data_version(Path(config.data_dir).with_suffix(".dvc"))
    resource = events.model_resource(config.registered_model_name, version)
    related = [events.data_resource(data_version)]
    payload = {
        "model_name": config.registered_model_name,
        "version": str(version),
        "architecture": config.architecture,
        "mlflow_run_id": run_id,
        "data_version": data_version,
    }
    events.emit(events.CANDIDATE_REGISTERED, resource, payload, related)
    decision_payload = decision.to_dict()
    events.emit(
        events.PROMOTED if decision.promoted else events.REJECTED,
        resource,
        payload | decision_payload,
        related,
    )


@flow(name="train", log_prints=True)
def train(config: TrainConfig = TrainConfig()) -> dict:  # noqa: B008 - Prefect shows it
    """Train one model on the DVC-tracked pool and register it in MLflow."""
    logger = get_run_logger()
    check_tracking_server()
    # Reports and the exported model are logged to MLflow; the local copies go.
    with tempfile.TemporaryDirectory(prefix="catdog-train-") as tmp:
        work_dir = Path(tmp)
        dataset, report_path = validate_data(config, work_dir)
        logger.info(
            "split: %d train / %d validation images",
            len(dataset.train_items),
            len(dataset.val_items),
        )
        run_id = start_run(config, dataset, report_path, work_dir)
        result = train_model(config, dataset, run_id)
        model_uri, report = log_results(result, dataset.class_names, work_dir, run_id)
        quantize(result, report["accuracy"], work_dir, run_id)
        version, decision = register(
            model_uri, config, result, report["accuracy"], dataset.val_items, run_id
        )
    emit_model_events(config, version, decision, run_id)

    summary = {
        "run_id": run_id,
        "model_version": version,
        "val_accuracy": report["accuracy"],
        "promoted": decision.promoted,
        "reason": decision.reason,
    }
    create_markdown_artifact(
        key="train-summary",
        markdown=_summary_markdown(config, summary, report),
        description="Training result and champion decision",
    )
    return summary


def _summary_markdown(config: TrainConfig, summary: dict, report: dict) -> str:
    rows = "\n".join(
        f"| {name} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |"
        for name, v in report["per_class"].items()
    )
    return (
        f"# {config.architecture}: val accuracy {summary['val_accuracy']:.4f}\n\n"
        f"- MLflow run `{summary['run_id']}`, registered version **{summary['model_version']}**\n"
        f"- Champion decision: **{'promoted' if summary['promoted'] else 'not promoted'}**"
        f" ({summary['reason']})\n\n"
        f"| class | precision | recall | F1 | support |\n|---|---|---|---|---|\n{rows}\n"
    )


if __name__ == "__main__":
    train()
