"""Prefect flow `evaluate`: post-deploy accuracy and drift of the running service.

Scheduled by deployment `evaluate/scheduled` (prefect.yaml). Ends Failed, with
the cause in the state message, when accuracy is below threshold, drift is
detected, the service is down, or the window holds too few requests to judge.

The window's requests are split by answer first: the share answered `neither`
is reported on its own, and drift is judged on those answered cat or dog. Above
`max_neither_share` (CATDOG_MAX_NEITHER_SHARE, default 0.2) the flow warns
(event catdog.traffic.non-pet-share, state message): people uploading other
things is not a reason to retrain, so no alarm event is raised for it.
"""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.states import Completed

from flows import events
from model_lib import monitoring
from model_lib.client import check_ready
from model_lib.config import MODEL_NAME
from model_lib.image_stats import REFERENCE_STATS_FILE
from model_lib.inference_log import InferenceLog
from model_lib.live_evaluation import classify_folder, evaluate_outcomes
from model_lib.pushgateway import push_evaluation, pushgateway_url
from model_lib.tracking import ensure_tracking_server, use_experiment

MONITORING_EXPERIMENT = "catdog-monitoring"


class EvaluationFailed(RuntimeError):
    """The deployed model or its inputs need attention; the message lists why."""


@task
def check_service(service_url: str) -> None:
    check_ready(service_url)


@task
def score_test_images(service_url: str, test_images_dir: str, concurrency: int):
    outcomes, class_names = classify_folder(service_url, test_images_dir, concurrency)
    return evaluate_outcomes(outcomes, class_names)


@task
def reference_for(model_versions: list[str], model_name: str) -> pd.DataFrame:
    """The training-time image statistics of the model version the service runs."""
    if len(model_versions) != 1:
        raise EvaluationFailed(f"expected one serving model version, saw {model_versions}")
    version = MlflowClient().get_model_version(model_name, model_versions[0])
    path = mlflow.artifacts.download_artifacts(
        run_id=version.run_id, artifact_path=REFERENCE_STATS_FILE
    )
    return pd.read_csv(path)


@task
def recent_inferences(log_path: str, window_minutes: int) -> pd.DataFrame:
    since = datetime.now(UTC) - timedelta(minutes=window_minutes)
    return monitoring.inference_frame(InferenceLog(log_path), since)


@task
def compare_with_reference(reference, current, html_path: Path, drift_share: float):
    # Imported here: Evidently is this flow's slowest import, and a run that stops
    # before drift (or `prefect deploy` reading the flow) never needs it.
    from model_lib.drift import drift_report

    return drift_report(reference, current, html_path, drift_share=drift_share)


@flow(name="evaluate")
def evaluate(
    service_url: str = "http://127.0.0.1:3000",
    test_images_dir: str = "test_images",
    min_accuracy: float = 0.85,
    window_minutes: int = 60,
    min_requests: int = 30,
    drift_share: float = 0.3,
    inference_log: str | None = None,
    model_name: str = MODEL_NAME,
    concurrency: int = 8,
    max_neither_share: float | None = None,
):
    """Score `test_images/` through the service; compare recent traffic with the training
    data. `max_neither_share` None: $CATDOG_MAX_NEITHER_SHARE, else 0.2."""
    logger = get_run_logger()
    if max_neither_share is None:
        max_neither_share = monitoring.max_neither_share()
    ensure_tracking_server()
    inference_log = inference_log or str(InferenceLog().path)  # $CATDOG_INFERENCE_LOG
    check_service(service_url)
    result = score_test_images(service_url, test_images_dir, concurrency)
    logger.info(
        "accuracy %.4f on %d images, %d errors, p50 %.1f ms",
        result.report["accuracy"],
        result.requests,
        result.errors,
        result.latency["latency_p50_ms"],
    )

    problems = []
    if result.report["accuracy"] < min_accuracy:
        problems.append(f"accuracy {result.report['accuracy']:.3f} is below {min_accuracy}")
    if result.errors:
        problems.append(f"{result.errors} of {result.requests} requests failed")

    # The report is logged to MLflow and Prefect; the local file is not kept.
    with tempfile.TemporaryDirectory(prefix="catdog-drift-") as tmp:
        traffic = monitoring.split_traffic(recent_inferences(inference_log, window_minutes))
        warning = traffic.warning(max_neither_share, min_requests)
        logger.info(
            "%d requests in the last %d min, %d answered neither (%.1f%%)",
            traffic.total,
            window_minutes,
            traffic.neither,
            100 * traffic.neither_share,
        )
        drift, html_path = None, None
        if len(traffic.pets) < min_requests:
            problems.append(
                f"not enough data to judge drift: {len(traffic.pets)} requests answered cat "
                f"or dog in the last {window_minutes} min (need {min_requests}; "
                f"{traffic.neither} more answered neither)"
            )
        else:
            reference = reference_for(result.model_versions, model_name)
            html_path = Path(tmp) / "drift_report.html"
            drift = compare_with_reference(reference, traffic.pets, html_path, drift_share)
            if drift.detected:
                problems.append(
                    f"data drift: {len(drift.drifted_columns)} of {len(drift.p_values)} image "
                    f"statistics drifted ({', '.join(drift.drifted_columns)})"
                )
        if warning:
            logger.warning(warning)

        run_id = log_to_mlflow(
            result, drift, traffic, html_path, service_url, window_minutes, problems, warning
        )
        publish_artifacts(result, drift, traffic, run_id, problems, warning)
        push_figures(result, drift, traffic, min_accuracy, max_neither_share)
    emit_evaluation_events(result, drift, traffic, model_name, min_accuracy, run_id, problems)
    if warning:
        emit_non_pet_warning(traffic, max_neither_share, model_name, result, run_id)
    if problems:
        raise EvaluationFailed("; ".join(problems + ([f"warning: {warning}"] if warning else [])))
    outcome = {
        "accuracy": result.report["accuracy"],
        "mlflow_run_id": run_id,
        "drift_detected": bool(drift and drift.detected),
        "neither_share": traffic.neither_share,
    }
    # A warning is not a failure: the run completes, with the warning as its message.
    return Completed(message=f"warning: {warning}", data=outcome) if warning else outcome


def emit_non_pet_warning(traffic, max_share, model_name, result, run_id) -> None:
    """Its own event, which no automation retrains on (prefect.yaml): a person looks."""
    version = ",".join(result.model_versions) or "unknown"
    payload = {
        "model_name": model_name,
        "version": version,
        "neither_share": traffic.neither_share,
        "max_neither_share": max_share,
        "neither_requests": traffic.neither,
        "window_requests": traffic.total,
        "mlflow_run_id": run_id,
    }
    events.emit(events.NON_PET_SHARE, events.model_resource(model_name, version), payload)


def emit_evaluation_events(
    result, drift, traffic, model_name, min_accuracy, run_id, problems
) -> None:
    """The alarms `train/retrain` reacts to (prefect.yaml), or `ok` when all is well.

    A window too small to judge or failed requests are problems for a person,
    not reasons to retrain, so they raise no alarm event."""
    version = ",".join(result.model_versions) or "unknown"
    resource = events.model_resource(model_name, version)
    payload = {
        "model_name": model_name,
        "version": version,
        "accuracy": result.report["accuracy"],
        "min_accuracy": min_accuracy,
        "drift_share": None if drift is None else drift.share,
        "drifted_columns": [] if drift is None else list(drift.drifted_columns),
        "neither_share": traffic.neither_share,  # of the window; drift saw only pet answers
        "mlflow_run_id": run_id,
        "problems": problems,
    }
    low = result.report["accuracy"] < min_accuracy
    if drift is not None and drift.detected:
        events.emit(events.DRIFT_DETECTED, resource, payload)
    if low:
        events.emit(events.ACCURACY_LOW, resource, payload)
    if not problems:
        events.emit(events.EVALUATION_OK, resource, payload)


def log_to_mlflow(
    result, drift, traffic, html_path, service_url, window_minutes, problems, warning
) -> str:
    use_experiment(MONITORING_EXPERIMENT)
    with mlflow.start_run(run_name=f"evaluate {datetime.now(UTC):%Y-%m-%d %H:%M}") as run:
        mlflow.log_params(
            {
                "service_url": service_url,
                "window_minutes": window_minutes,
                "model_versions": ",".join(result.model_versions),
            }
        )
        mlflow.log_metrics(result.metrics())
        mlflow.log_metrics(
            {
                "window_requests": traffic.total,
                "neither_requests": traffic.neither,
                "neither_share": traffic.neither_share,
            }
        )
        mlflow.log_dict(result.report, "evaluation_report.json")
        if drift is not None:
            mlflow.log_metrics(
                {
                    "drift_share": drift.share,
                    "drift_rows": drift.current_rows,
                    "drifted_columns": len(drift.drifted_columns),
                }
            )
            mlflow.log_metrics({f"drift_p_{c}": p for c, p in drift.p_values.items()})
            mlflow.log_artifact(str(html_path))
        mlflow.set_tag("status", "failed: " + "; ".join(problems) if problems else "ok")
        if warning:
            mlflow.set_tag("warning", warning)
    return run.info.run_id


def push_figures(result, drift, traffic, min_accuracy: float, max_neither_share: float) -> None:
    """To the Pushgateway when CATDOG_PUSHGATEWAY_URL is set (PROFILE=scale)."""
    url = pushgateway_url()
    if url is None:
        return
    try:
        push_evaluation(
            url,
            accuracy=result.report["accuracy"],
            min_accuracy=min_accuracy,
            errors=result.errors,
            requests=result.requests,
            window_requests=traffic.total,
            neither_share=traffic.neither_share,
            max_neither_share=max_neither_share,
            drift_share=drift.share if drift is not None else None,
            drift_detected=drift.detected if drift is not None else None,
        )
    except OSError as exc:
        # The evaluation's verdict stands without Prometheus; the missing push
        # shows up there as CatdogEvaluationStale.
        get_run_logger().warning("could not push the figures to %s: %s", url, exc)


def publish_artifacts(result, drift, traffic, run_id: str, problems: list[str], warning) -> None:
    verdict = "FAILED" if problems else "OK, with a warning" if warning else "OK"
    lines = [
        f"# Post-deploy evaluation: {verdict}",
        "",
        *(f"- {p}" for p in problems),
        *([f"- warning: {warning}"] if warning else []),
        "",
        "| metric | value |",
        "|---|---|",
        f"| accuracy ({result.requests} test images) | {result.report['accuracy']:.4f} |",
        f"| macro F1 | {result.report['macro_f1']:.4f} |",
        f"| test images answered neither | {result.answered_neither} |",
        f"| errors | {result.errors} |",
        f"| user requests in the window | {traffic.total} |",
        f"| answered neither (non-pet share) | {traffic.neither} ({traffic.neither_share:.1%}) |",
        *(f"| {k.replace('_', ' ')} | {v:.1f} |" for k, v in result.latency.items()),
        f"| model versions | {', '.join(result.model_versions)} |",
        "",
    ]
    if drift is not None:
        lines += [
            f"## Drift: {'detected' if drift.detected else 'none'} "
            f"({drift.share:.0%} of columns drifted, threshold {drift.drift_share:.0%}; "
            f"{drift.current_rows} requests answered cat or dog vs {drift.reference_rows} "
            "training images)",
            "",
            "| statistic | KS p-value | drifted |",
            "|---|---|---|",
            *(
                f"| {c} | {p:.4f} | {'yes' if c in drift.drifted_columns else ''} |"
                for c, p in sorted(drift.p_values.items(), key=lambda kv: kv[1])
            ),
        ]
    create_markdown_artifact(
        key="evaluation",
        markdown="\n".join(lines),
        description="Post-deploy accuracy, latency and drift",
    )
    tracking = os.environ.get("MLFLOW_TRACKING_URI", "")
    if drift is not None and tracking.startswith("http"):
        experiment = mlflow.get_experiment_by_name(MONITORING_EXPERIMENT)
        create_link_artifact(
            key="drift-report",
            link=f"{tracking}/#/experiments/{experiment.experiment_id}/runs/{run_id}/artifacts",
            link_text="Evidently drift report (MLflow run artifacts: drift_report.html)",
        )


if __name__ == "__main__":
    evaluate()
