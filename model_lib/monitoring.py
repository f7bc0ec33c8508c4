"""Post-deploy evaluation: score a labelled folder through the live service, and
compare recent inference statistics with the training reference (Evidently).

Traffic is split by answer first (`split_traffic`): the share answered `neither`
is its own figure (people upload other things: a warning, not a reason to
retrain), and drift is judged on the requests answered cat or dog only, so a
wave of non-pet uploads does not look like pet photos that changed.
"""

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
from model_lib.decision import NEITHER
from model_lib.image_stats import STAT_COLUMNS
from model_lib.inference_log import COLUMNS, EVALUATION_SOURCE, PLATFORM_SOURCES, InferenceLog
from model_lib.metrics import classification_report, flat_metrics, latency_percentiles
from model_lib.settings import LoopSettings


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
    answered_neither: int = 0  # labelled pet photos the service answered `neither`

    def metrics(self) -> dict[str, float]:
        counts = {
            "errors": float(self.errors),
            "requests": float(self.requests),
            "answered_neither": float(self.answered_neither),
        }
        return {**flat_metrics(self.report), **counts, **self.latency}


def evaluate_outcomes(outcomes: list[Outcome], class_names) -> EvaluationResult:
    """Accuracy and per-class figures of labelled pet photos sent through the service.

    A pet photo answered `neither` is a wrong answer (it counts against the recall of
    its class, and in accuracy); any label outside `class_names` is treated the same."""
    answered = [o for o in outcomes if o.status == 200]
    index = {name: i for i, name in enumerate(class_names)}
    other = len(class_names)  # outside the report's labels: wrong for every true class
    report = classification_report(
        [index[o.true_label] for o in answered],
        [index.get(o.predicted, other) for o in answered],
        class_names,
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
        answered_neither=sum(o.predicted == NEITHER for o in answered),
    )


# Above this share of `neither` answers in the window, the evaluation warns (event
# catdog.traffic.non-pet-share, Prometheus alert CatdogNonPetShareHigh). A model that
# meets its target answers `neither` for <= 0.5 % of pet photos, so a fifth of the
# traffic is people uploading other things, not noise. CATDOG_MAX_NEITHER_SHARE
# (model_lib.settings.LoopSettings) sets it.
def max_neither_share(environ=None) -> float:
    """$CATDOG_MAX_NEITHER_SHARE (0..1; unset or empty: 0.2)."""
    return LoopSettings.from_env(environ).max_neither_share


@dataclass
class TrafficSplit:
    """The window's user requests split by answer."""

    pets: pd.DataFrame  # answered cat or dog: what drift is judged on
    neither: int  # answered `neither`
    total: int

    @property
    def neither_share(self) -> float:
        return self.neither / self.total if self.total else 0.0

    def warning(self, max_share: float, min_requests: int) -> str | None:
        """The non-pet warning, or None: on at least `min_requests` requests, more
        than `max_share` of them answered `neither`."""
        if self.total < min_requests or self.neither_share <= max_share:
            return None
        return (
            f"non-pet share: {self.neither} of {self.total} requests "
            f"({self.neither_share:.0%}) were answered '{NEITHER}' (warning above "
            f"{max_share:.0%}); people are uploading photos that are not pets. Drift "
            f"was judged on the {len(self.pets)} answered cat or dog"
        )


def split_traffic(frame: pd.DataFrame) -> TrafficSplit:
    """Requests answered `neither` apart from those answered with a pet."""
    is_neither = frame["label"] == NEITHER
    return TrafficSplit(frame[~is_neither], int(is_neither.sum()), len(frame))


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
