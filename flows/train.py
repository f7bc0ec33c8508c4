"""Prefect flow `train`: validate data, train, log to MLflow, register, gate the champion.

Thin adapter over model_lib (`pipeline.train` does the work); deployments
`train/baseline`, `train/transfer` (the default transfer model), `train/efficientnet-lite0`,
`train/small` and `train/retrain` in prefect.yaml set the config.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as prefect_flow_run

from flows import events
from model_lib import data as data_lib
from model_lib import pipeline
from model_lib.assessment import Assessment, assess
from model_lib.config import TrainConfig
from model_lib.decision import NEITHER
from model_lib.image_stats import REFERENCE_STATS_FILE, write_reference_statistics
from model_lib.plots import (
    confusion_matrix_figure,
    error_grid,
    loss_curve,
    reliability_diagram,
    score_histogram,
)
from model_lib.progress import TrainingProgress
from model_lib.promotion import decision_markdown
from model_lib.quantize import (
    INT8_ARTIFACT_PATH,
    calibration_inputs,
    int8_acceptable,
    quantize_int8,
)
from model_lib.tracking import (
    ensure_tracking_server,
    file_sha256,
    git_commit,
    log_models,
    register_and_gate,
    use_experiment,
)
from model_lib.training import precision_used

EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "images_per_second")
# The error grid shows the first this many wrongly answered test photos.
MAX_ERRORS_SHOWN = 36


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
    if dataset.outlier_report:
        dataset.outlier_report.write_json(report_dir / "outlier_validation.json")
        get_run_logger().info(
            "photos that are neither: %d files from %s, %d corrupt",
            dataset.outlier_report.total_files,
            config.outlier_dir,
            len(dataset.outlier_report.corrupt),
        )
    for checked in filter(None, (report, dataset.outlier_report)):
        if not checked.ok:
            raise data_lib.DataError("data validation failed: " + "; ".join(checked.errors))
    return dataset, report_path


@task(cache_policy=NO_CACHE)
def start_run(config: TrainConfig, dataset: pipeline.Dataset, report_path: Path, work_dir: Path):
    """Create the MLflow run with params, data version, commit and the data reports.

    Each task re-enters the run by id: Prefect may run tasks on other threads,
    and MLflow's active run is per thread.
    """
    use_experiment(config.experiment_name)
    with mlflow.start_run(run_name=config.architecture) as run:
        mlflow.log_params(config.to_params())
        mlflow.set_tags(
            {
                "data_version": data_lib.dvc_data_version(
                    Path(config.data_dir).with_suffix(".dvc")
                ),
                "git_commit": git_commit(),
                # What training_precision became on this CPU (bf16-mixed needs native bfloat16).
                "training_precision_used": precision_used(config.training_precision),
                # Which Prefect flow run this is, to go from either UI to the other.
                "prefect_flow_run_id": str(prefect_flow_run.id),
                "val_split_fingerprint": data_lib.split_fingerprint(dataset.val_items),
                "test_split_fingerprint": data_lib.split_fingerprint(dataset.test_items),
                **{
                    f"{name}_images": str(len(dataset.pets(items)))
                    for name, items in _splits(dataset)
                },
                **{
                    f"{name}_neither_images": str(len(items) - len(dataset.pets(items)))
                    for name, items in _splits(dataset)
                },
            }
        )
        mlflow.log_artifact(str(report_path))
        if dataset.outlier_report:
            mlflow.log_artifact(str(report_path.with_name("outlier_validation.json")))
        # The drift reference is what users upload: pet photos only.
        train_paths = [item.path for item in dataset.pets(dataset.train_items)]
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


def _splits(dataset: pipeline.Dataset):
    return (
        ("train", dataset.train_items),
        ("val", dataset.val_items),
        ("test", dataset.test_items),
    )


def log_assessment(assessment: Assessment, result: pipeline.TrainResult, step: int, suffix=""):
    """Figures and plots of one exported file into the active run. Validation chose its
    decision rule; the test figures are what a user should expect."""
    mlflow.log_metrics(assessment.metrics(suffix), step=step)
    folder = "plots" if not suffix else f"plots{suffix}"
    mlflow.log_dict(assessment.val.report, f"val_report{suffix}.json")
    mlflow.log_dict(assessment.test.report, f"test_report{suffix}.json")
    for split, figures in (("validation", assessment.val), ("test", assessment.test)):
        mlflow.log_figure(
            confusion_matrix_figure(
                figures.report["confusion_matrix"], result.outputs, f"Confusion matrix ({split})"
            ),
            f"{folder}/confusion_matrix_{split}.png",
        )
    val = assessment.val
    mlflow.log_figure(
        reliability_diagram(
            val.reliability_before,
            val.reliability_after,
            val.metrics["ece_before_calibration"],
            val.metrics["ece"],
        ),
        f"{folder}/reliability_diagram.png",
    )
    if NEITHER in result.outputs:
        for split, figures in (("validation", assessment.val), ("test", assessment.test)):
            pets = figures.labels != result.outputs.index(NEITHER)
            mlflow.log_figure(
                score_histogram(
                    figures.pet_scores[pets],
                    figures.pet_scores[~pets],
                    assessment.rule.threshold,
                    split,
                ),
                f"{folder}/pet_score_histogram_{split}.png",
            )
    test = assessment.test
    wrong = np.flatnonzero(~test.correct)[:MAX_ERRORS_SHOWN]
    captions = [
        f"true {result.outputs[test.labels[i]]}\nanswer {result.outputs[test.answers[i]]}"
        f" ({test.confidence[i]:.2f})"
        for i in wrong
    ]
    mlflow.log_figure(
        error_grid(
            result.data.test_pixels[wrong],
            captions,
            f"Test photos answered wrongly: {len(np.flatnonzero(~test.correct))} of "
            f"{len(test.labels)} (at most {MAX_ERRORS_SHOWN} shown)",
        ),
        f"{folder}/test_errors.png",
    )


@task(cache_policy=NO_CACHE)
def log_results(result: pipeline.TrainResult, out_dir: Path, run_id: str):
    """The exported model (its decision rule fitted on validation), its figures on
    validation and test, plots, and both model formats, logged to the run."""
    onnx_path, parity, assessment = pipeline.export(result, out_dir / "model.onnx")
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metric("onnx_max_abs_diff", parity)
        log_assessment(assessment, result, step=len(result.history))
        mlflow.log_figure(loss_curve(result.history), "plots/loss_curve.png")
        model_uri, onnx_sha256 = log_models(result, onnx_path, result.data.val_inputs[:1])
    get_run_logger().info(
        "float32: val accuracy %.4f, test accuracy %.4f (%s)",
        assessment.val.metrics["accuracy"],
        assessment.test.metrics["accuracy"],
        _neither_summary(assessment),
    )
    return model_uri, onnx_sha256, assessment


def _neither_summary(assessment: Assessment) -> str:
    test = assessment.test.metrics
    if "pets_answered_neither" not in test:
        return "no neither output"
    return (
        f"test: pets answered neither {test['pets_answered_neither']:.2%}, unseen kinds "
        f"answered neither {test['others_answered_neither']:.2%}, ECE {test['ece']:.2%}"
    )


@task(cache_policy=NO_CACHE)
def quantize(result: pipeline.TrainResult, fp32: Assessment, out_dir: Path, run_id: str):
    """An INT8 copy of the exported model with its own decision rule, logged only if it
    keeps its validation figures (`package` ships it when present). Returns its sha256
    if it was logged, else None."""
    int8_path = out_dir / INT8_ARTIFACT_PATH
    quantize_int8(
        out_dir / "model.onnx",
        int8_path,
        calibration_inputs(result.data.train_pixels, result.preprocessing),
    )
    int8 = assess(int8_path, result.data, result.outputs)
    acceptable = int8_acceptable(fp32.val.metrics, int8.val.metrics)
    with mlflow.start_run(run_id=run_id):
        log_assessment(int8, result, step=len(result.history), suffix="_int8")
        if acceptable:
            mlflow.log_artifact(str(int8_path), str(Path(INT8_ARTIFACT_PATH).parent))
        served = int8 if acceptable else fp32
        mlflow.log_metrics({f"served_{k}": v for k, v in served.metrics().items()})
        mlflow.set_tag("served_precision", "int8" if acceptable else "float32")
    get_run_logger().info(
        "INT8 model: val accuracy %.4f vs %.4f in float32 (test %.4f vs %.4f): %s",
        int8.val.metrics["accuracy"],
        fp32.val.metrics["accuracy"],
        int8.test.metrics["accuracy"],
        fp32.test.metrics["accuracy"],
        "logged for serving"
        if acceptable
        else "not logged (it loses more on validation than INT8_TOLERANCE allows): "
        "float32 will be served",
    )
    return file_sha256(int8_path) if acceptable else None


@task(cache_policy=NO_CACHE)
def register(
    model_uri: str,
    config: TrainConfig,
    result,
    assessment: Assessment,
    val_items,
    run_id: str,
    sha256: dict[str, str],
):
    truth = np.asarray(result.outputs)[assessment.val.labels]
    answers = np.asarray(result.outputs)[assessment.val.answers]
    with mlflow.start_run(run_id=run_id):
        version, decision = register_and_gate(
            model_uri,
            config.registered_model_name,
            assessment.val.metrics["accuracy"],
            val_items,
            truth,
            answers,
            run_id,
            sha256,
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
        model_uri, onnx_sha256, assessment = log_results(result, work_dir, run_id)
        int8_sha256 = quantize(result, assessment, work_dir, run_id)
        # Packaging ships a file only if its hash is the one recorded here.
        sha256 = {"float32": onnx_sha256, **({"int8": int8_sha256} if int8_sha256 else {})}
        version, decision = register(
            model_uri, config, result, assessment, dataset.val_items, run_id, sha256
        )
    emit_model_events(config, version, decision, run_id)

    summary = {
        "run_id": run_id,
        "model_version": version,
        "val_accuracy": assessment.val.metrics["accuracy"],
        "test_accuracy": assessment.test.metrics["accuracy"],
        "promoted": decision.promoted,
        "reason": decision.reason,
    }
    create_markdown_artifact(
        key="train-summary",
        markdown=_summary_markdown(config, summary, assessment),
        description="Training result and champion decision",
    )
    return summary


def _summary_markdown(config: TrainConfig, summary: dict, assessment: Assessment) -> str:
    figures = [(split, getattr(assessment, split).metrics) for split in ("val", "test")]
    names = [
        ("accuracy", "pet accuracy (neither counts as wrong)"),
        ("pets_answered_neither", "pets answered neither"),
        ("others_answered_neither", "unseen kinds answered neither"),
        ("auroc_pets_vs_others", "AUROC pets vs others"),
        ("ece", "ECE on pets (after calibration)"),
    ]
    rows = "\n".join(
        f"| {label} | " + " | ".join(f"{m[key]:.4f}" for _, m in figures) + " |"
        for key, label in names
        if key in figures[0][1]
    )
    return (
        f"# {config.architecture}: test accuracy {summary['test_accuracy']:.4f}"
        f" (validation {summary['val_accuracy']:.4f})\n\n"
        f"- MLflow run `{summary['run_id']}`, registered version **{summary['model_version']}**\n"
        f"- Champion decision: **{'promoted' if summary['promoted'] else 'not promoted'}**"
        f" ({summary['reason']})\n"
        f"- Decision rule: temperature {assessment.rule.temperature:.3f}, neither below a pet"
        f" score of {assessment.rule.threshold:.4f}\n\n"
        f"| float32 model | validation (chooses) | test (expect this) |\n|---|---|---|\n{rows}\n"
    )


if __name__ == "__main__":
    train()
