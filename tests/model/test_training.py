import numpy as np
import torch

from model_lib.data import discover_images
from model_lib.export import PARITY_TOLERANCE, export_onnx, onnx_parity
from model_lib.models import build_model, preprocessing_for
from model_lib.onnx_model import OnnxClassifier
from model_lib.training import BatchNormalizer, load_pixels
from tests.images import write_dataset


def test_a_few_training_steps_lower_the_loss():
    torch.manual_seed(0)
    model = build_model("baseline_cnn", 2)
    prep = preprocessing_for("baseline_cnn", 64, ("cat", "dog"))
    images = torch.randint(0, 256, (16, 3, 64, 64), dtype=torch.uint8)
    labels = torch.tensor([0, 1] * 8)
    inputs = BatchNormalizer(prep)(images)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_train_end_to_end_on_tiny_images(tiny_run):
    result = tiny_run.result
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.val_probabilities.shape == (len(tiny_run.val_items), 2)
    assert sum(1 for e in tiny_run.events if e.get("epoch_done")) == 3
    # Two flat colours: a CNN that learns anything separates them.
    assert result.history[-1]["val_accuracy"] >= 0.9


def test_onnx_export_matches_pytorch_and_carries_preprocessing(tmp_path):
    items, class_names = discover_images(write_dataset(tmp_path / "data", per_class=4))
    prep = preprocessing_for("baseline_cnn", 64, class_names)
    model = build_model("baseline_cnn", 2).eval()
    path = export_onnx(model, tmp_path / "model.onnx", prep)
    from model_lib.preprocess import normalize

    inputs = normalize(load_pixels(items, 64), prep)
    assert onnx_parity(model, path, inputs) <= PARITY_TOLERANCE
    classifier = OnnxClassifier(path)
    assert classifier.preprocessing == prep
    probs = classifier.predict_proba(inputs)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
