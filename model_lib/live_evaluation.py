"""Score a labelled folder of photos through the live service: accuracy, per-class
figures, latency and errors (the evaluation flow's and the rollout's check)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from model_lib.client import classify_all
from model_lib.data import discover_images
from model_lib.decision import NEITHER
from model_lib.inference_log import EVALUATION_SOURCE
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
