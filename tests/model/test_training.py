import numpy as np
import pytest
import torch

from model_lib.data import discover_images, load_pixels
from model_lib.export import PARITY_TOLERANCE, export_onnx, onnx_parity
from model_lib.models import build_model, preprocessing_for
from model_lib.onnx_model import OnnxClassifier
from model_lib.pipeline import export
from model_lib.preprocess import normalize
from model_lib.training import (
    BatchNormalizer,
    batches,
    evaluate,
    fit_precision,
    precision_used,
    steps_per_epoch,
    train_one_epoch,
)
from tests.images import write_dataset


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_train_one_epoch_lowers_the_loss_on_a_fixed_batch(precision):
    torch.manual_seed(0)
    model = build_model("baseline_cnn", 2)
    prep = preprocessing_for("baseline_cnn", 64, ("cat", "dog"))
    images = torch.randint(0, 256, (16, 3, 64, 64), dtype=torch.uint8)
    labels = torch.tensor([0, 1] * 8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    normalizer = BatchNormalizer(prep)  # no generator: no augmentation, the same inputs
    losses = [
        train_one_epoch(model, [(images, labels)], optimizer, None, normalizer, None, precision)[
            "train_loss"
        ]
        for _ in range(5)
    ]
    assert losses[-1] < losses[0]
    # Mixed precision computes in bfloat16 but keeps float32 weights (what gets exported).
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_evaluation_in_bf16_agrees_with_float32():
    torch.manual_seed(0)
    model = build_model("baseline_cnn", 3)
    inputs = torch.randn(40, 3, 64, 64).numpy()
    labels = np.array([0, 1, 2, 1] * 10)
    exact = evaluate(model, inputs, labels, pet_classes=2)
    mixed = evaluate(model, inputs, labels, pet_classes=2, precision="bf16-mixed")
    assert isinstance(mixed["val_loss"], float)
    assert mixed["val_loss"] == pytest.approx(exact["val_loss"], rel=0.05)
    assert 0.0 <= mixed["val_accuracy"] <= 1.0


def test_bf16_falls_back_to_float32_where_the_cpu_has_no_native_bfloat16(monkeypatch, caplog):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert precision_used("bf16-mixed") == "32-true"
    assert precision_used("32-true") == "32-true"
    assert caplog.text == ""  # the flow's tag asks too; only the fit says it
    assert fit_precision("bf16-mixed") == "32-true"
    assert caplog.text.count("no native bfloat16") == 1


@pytest.mark.parametrize("count", [1, 5, 8, 9, 12, 16, 17, 100])
def test_steps_per_epoch_counts_what_batches_yields(count):
    generator = torch.Generator().manual_seed(0)
    yielded = list(batches(torch.arange(count), torch.arange(count), 8, generator))
    assert len(yielded) == steps_per_epoch(count, 8)
    assert all(len(x) >= 4 for x, _ in yielded[1:])  # no tiny last batch


def test_train_end_to_end_on_tiny_images(tiny_run):
    result = tiny_run.result
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.outputs == ("cat", "dog", "neither")
    assert len(result.data.val_labels) == len(tiny_run.dataset.val_items)
    assert sum(1 for e in tiny_run.events if e.get("epoch_done")) == 3
    # Two flat colours: a CNN that learns anything separates them.
    assert result.history[-1]["val_accuracy"] >= 0.9


def test_onnx_export_matches_pytorch_and_carries_preprocessing(tmp_path):
    items, class_names = discover_images(write_dataset(tmp_path / "data", per_class=4))
    prep = preprocessing_for("baseline_cnn", 64, class_names)
    model = build_model("baseline_cnn", 2).eval()
    path = export_onnx(model, tmp_path / "model.onnx", prep)
    inputs = normalize(load_pixels(items, 64), prep)
    assert onnx_parity(model, path, inputs) <= PARITY_TOLERANCE
    classifier = OnnxClassifier(path)
    assert classifier.preprocessing == prep
    probs = classifier.predict_proba(inputs)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_pipeline_export_checks_parity_and_stores_the_fitted_decision_rule(tiny_run, tmp_path):
    path, parity, assessment = export(tiny_run.result, tmp_path / "model.onnx")
    assert parity <= PARITY_TOLERANCE
    served = OnnxClassifier(path)
    assert served.decision == assessment.rule and served.class_names == tiny_run.result.outputs
    data = tiny_run.result.data
    # What the file answers is what the assessment scored.
    np.testing.assert_array_equal(served.predict_labels(data.val_inputs), assessment.val.answers)
    # Three flat colours: pets get their class, the unseen kinds (other colour) `neither`.
    assert assessment.val.metrics["accuracy"] >= 0.9
    assert assessment.val.metrics["others_answered_neither"] >= 0.9
    assert assessment.test.metrics["accuracy"] >= 0.9
    assert {"val_ece", "test_ece", "test_auroc_pets_vs_others", "temperature"} <= set(
        assessment.metrics()
    )
