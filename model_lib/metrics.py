"""Classification metrics as small functions returning plain dicts (NumPy only)."""

from __future__ import annotations

import numpy as np


def accuracy(probabilities: np.ndarray, labels) -> float:
    """Share of rows whose most probable class is the label."""
    return float((np.asarray(probabilities).argmax(1) == np.asarray(labels)).mean())


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return matrix


def classification_report(y_true, y_pred, class_names) -> dict:
    """Accuracy, per-class precision/recall/F1/support, macro F1 and the confusion matrix."""
    y_true = np.asarray(y_true, int)
    y_pred = np.asarray(y_pred, int)
    matrix = confusion_matrix(y_true, y_pred, len(class_names))
    per_class = {}
    for index, name in enumerate(class_names):
        true_positive = matrix[index, index]
        predicted = matrix[:, index].sum()
        actual = matrix[index, :].sum()
        precision = true_positive / predicted if predicted else 0.0
        recall = true_positive / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "support": int(actual),
        }
    return {
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "macro_f1": float(np.mean([c["f1"] for c in per_class.values()])),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
        "count": int(len(y_true)),
    }


def flat_metrics(report: dict, prefix: str = "") -> dict[str, float]:
    """`classification_report` output as flat name -> float (for MLflow)."""
    flat = {f"{prefix}accuracy": report["accuracy"], f"{prefix}macro_f1": report["macro_f1"]}
    for name, values in report["per_class"].items():
        for key in ("precision", "recall", "f1"):
            flat[f"{prefix}{name}_{key}"] = values[key]
    return flat


def latency_percentiles(latencies_ms) -> dict[str, float]:
    values = np.asarray(latencies_ms, float)
    if values.size == 0:
        return {
            "latency_p50_ms": float("nan"),
            "latency_p95_ms": float("nan"),
            "latency_p99_ms": float("nan"),
        }
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {
        "latency_p50_ms": float(p50),
        "latency_p95_ms": float(p95),
        "latency_p99_ms": float(p99),
    }
