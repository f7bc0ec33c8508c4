"""Post-deploy evaluation: score a labelled folder through the live service, and
compare recent inference statistics with the training reference (Evidently)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset

from model_lib.client import classify_all
from model_lib.data import discover_images
from model_lib.image_stats import STAT_COLUMNS
from model_lib.inference_log import COLUMNS, EVALUATION_SOURCE, PLATFORM_SOURCES, InferenceLog
from model_lib.metrics import classification_report, flat_metrics, latency_percentiles


@dataclass
class Outcome:
    path: str
    true_label: str
    status: int
    predicted: str | None = None
    latency_ms: float | None = None
    model_version: str | None = None
    error: str | None = None


def classify_folder(url: str, folder: str | Path, concurrency: int = 8, timeout: float = 30.0):
    """POST every image of `folder/<class>/` to the service as evaluation traffic;
    returns (outcomes, class_names)."""
    items, class_names = discover_images(folder)
    photos = [(item.path.name, item.path.read_bytes()) for item in items]
    answers = classify_all(url, photos, EVALUATION_SOURCE, concurrency, timeout)
    outcomes = [
        Outcome(
            str(item.path),
            class_names[item.label],
            answer.status,
            answer.label,
            answer.latency_ms if answer.status else None,
            answer.model_version,
            answer.error,
        )
        for item, answer in zip(items, answers, strict=True)
    ]
    return outcomes, class_names


@dataclass
class EvaluationResult:
    report: dict  # classification_report of the answered requests
    latency: dict  # latency_p50_ms ...
    errors: int
    requests: int
    model_versions: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        counts = {"errors": float(self.errors), "requests": float(self.requests)}
        return {**flat_metrics(self.report), **counts, **self.latency}


def evaluate_outcomes(outcomes: list[Outcome], class_names) -> EvaluationResult:
    answered = [o for o in outcomes if o.status == 200]
    index = {name: i for i, name in enumerate(class_names)}
    report = classification_report(
        [index[o.true_label] for o in answered], [index[o.predicted] for o in answered], class_names
    )
    # Accuracy is over everything sent: a failed request is not a correct answer.
    correct = sum(o.predicted == o.true_label for o in answered)
    report["accuracy"] = correct / len(outcomes) if outcomes else 0.0
    return EvaluationResult(
        report=report,
        latency=latency_percentiles([o.latency_ms for o in answered]),
        errors=len(outcomes) - len(answered),
        requests=len(outcomes),
        model_versions=sorted({o.model_version for o in answered if o.model_version}),
    )


@dataclass
class DriftResult:
    drifted_columns: list[str]
    p_values: dict[str, float]
    share: float
    drift_share: float
    detected: bool
    current_rows: int
    reference_rows: int


def drift_report(
    reference, current, html_path: str | Path, drift_share: float = 0.3, threshold: float = 0.05
) -> DriftResult:
    """Evidently data-drift report on the image statistic columns.

    The test is pinned to Kolmogorov-Smirnov (Evidently would otherwise switch
    method with sample size), and dataset drift is declared when at least
    `drift_share` of the 11 columns drift: a darker or greyscale stream moves
    4-7 of them, chance alone rarely moves more than one at p < 0.05.
    """
    columns = list(STAT_COLUMNS)
    definition = DataDefinition(numerical_columns=columns)
    report = Report(
        [DataDriftPreset(num_method="ks", num_threshold=threshold, drift_share=drift_share)]
    )
    with warnings.catch_warnings():
        # Constant columns (all training photos are 200x200) make numpy warn
        # about a zero std in correlations; the KS test itself is fine.
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = report.run(
            current_data=Dataset.from_pandas(current[columns], data_definition=definition),
            reference_data=Dataset.from_pandas(reference[columns], data_definition=definition),
        )
    snapshot.save_html(str(html_path))
    p_values, share = {}, 0.0
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config["type"].endswith("ValueDrift"):
            p_values[config["column"]] = float(metric["value"])
        elif config["type"].endswith("DriftedColumnsCount"):
            share = float(metric["value"]["share"])
    drifted = sorted(c for c, p in p_values.items() if p < threshold)
    return DriftResult(
        drifted, p_values, share, drift_share, share >= drift_share, len(current), len(reference)
    )


def inference_frame(
    log: InferenceLog, since: datetime | None = None, exclude_sources=PLATFORM_SOURCES
) -> pd.DataFrame:
    """`InferenceLog.query` as a DataFrame with a UTC `timestamp` column."""
    frame = pd.DataFrame(log.query(since, exclude_sources), columns=list(COLUMNS))
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], unit="s", utc=True)
    return frame
