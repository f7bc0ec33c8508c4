import numpy as np
import pytest

from model_lib.metrics import accuracy, classification_report, flat_metrics, latency_percentiles


def test_confusion_matrix_rows_are_truth():
    report = classification_report([0, 0, 1, 1, 1], [0, 0, 1, 1, 0], ("cat", "dog"))
    assert report["confusion_matrix"] == [[2, 0], [1, 2]]


def test_report_on_known_inputs():
    report = classification_report([0, 0, 1, 1, 1], [0, 1, 1, 1, 0], ("cat", "dog"))
    assert report["accuracy"] == 0.6
    assert report["per_class"]["cat"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    dog = report["per_class"]["dog"]
    assert np.isclose(dog["precision"], 2 / 3) and np.isclose(dog["recall"], 2 / 3)
    assert np.isclose(report["macro_f1"], (0.5 + 2 / 3) / 2)
    flat = flat_metrics(report, "val_")
    assert flat["val_accuracy"] == 0.6 and np.isclose(flat["val_dog_f1"], 2 / 3)


def test_class_never_predicted_has_zero_precision_not_nan():
    report = classification_report([0, 1], [0, 0], ("cat", "dog"))
    assert report["per_class"]["dog"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_latency_percentiles_interpolate_like_numpy():
    values = [3.0, 1.0, 7.5, 2.0, 10.0, 4.0, 6.0]
    result = latency_percentiles(values)
    expected = np.percentile(values, [50, 95, 99])
    assert [result[f"latency_p{p}_ms"] for p in (50, 95, 99)] == pytest.approx(expected)
    assert latency_percentiles([5.0])["latency_p99_ms"] == 5.0
    assert np.isnan(latency_percentiles([])["latency_p50_ms"])


def test_accuracy_counts_rows_whose_best_class_is_the_label():
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    assert accuracy(probabilities, [0, 1, 1, 1]) == 0.75
