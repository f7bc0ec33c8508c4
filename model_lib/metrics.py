"""Classification metrics as small functions returning plain dicts (scikit-learn)."""

from __future__ import annotations

import statistics

import numpy as np
from sklearn import metrics as skm


def accuracy(probabilities: np.ndarray, labels) -> float:
    """Share of rows whose most probable class is the label."""
    return float(skm.accuracy_score(labels, np.asarray(probabilities).argmax(1)))


def classification_report(y_true, y_pred, class_names) -> dict:
    """Accuracy, per-class precision/recall/F1/support, macro F1 and the confusion matrix
    (rows are true classes). A class never predicted has precision 0, not NaN."""
    labels = list(range(len(class_names)))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }
    return {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
        "macro_f1": float(np.mean(f1)),
        "per_class": per_class,
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "count": len(y_true),
    }


def flat_metrics(report: dict, prefix: str = "") -> dict[str, float]:
    """`classification_report` output as flat name -> float (for MLflow)."""
    flat = {f"{prefix}accuracy": report["accuracy"], f"{prefix}macro_f1": report["macro_f1"]}
    for name, values in report["per_class"].items():
        for key in ("precision", "recall", "f1"):
            flat[f"{prefix}{name}_{key}"] = values[key]
    return flat


def latency_percentiles(latencies_ms) -> dict[str, float]:
    """p50/p95/p99 (linear interpolation, as numpy's default); NaN without data."""
    values = list(latencies_ms)
    if len(values) < 2:
        p50 = p95 = p99 = values[0] if values else float("nan")
    else:
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        p50, p95, p99 = cuts[49], cuts[94], cuts[98]
    return {
        "latency_p50_ms": float(p50),
        "latency_p95_ms": float(p95),
        "latency_p99_ms": float(p99),
    }
