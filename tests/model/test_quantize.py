from pathlib import Path

import numpy as np
import onnx
import pytest

from model_lib.efficientnet import WEIGHTS_MEAN, WEIGHTS_STD, efficientnet_lite
from model_lib.export import export_onnx
from model_lib.models import preprocessing_for
from model_lib.onnx_model import OnnxClassifier
from model_lib.preprocess import Preprocessing, normalize
from model_lib.quantize import (
    INT8_TOLERANCE,
    NEITHER_TOLERANCE,
    calibration_inputs,
    depthwise_convs,
    int8_acceptable,
    mean_logits,
    quantize_int8,
)


def test_int8_model_is_quantized_keeps_preprocessing_and_agrees_with_float32(tmp_path, tiny_run):
    data, prep = tiny_run.result.data, tiny_run.prep
    fp32_path = export_onnx(tiny_run.result.model, tmp_path / "model.onnx", prep)

    int8_path = quantize_int8(
        fp32_path, tmp_path / "int8" / "model.onnx", calibration_inputs(data.train_pixels, prep)
    )

    ops = {node.op_type for node in onnx.load(str(int8_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    fp32, int8 = OnnxClassifier(fp32_path), OnnxClassifier(int8_path)
    assert int8.preprocessing == prep
    fp32_probs = fp32.predict_proba(data.val_inputs)
    int8_probs = int8.predict_proba(data.val_inputs)
    assert (fp32_probs.argmax(1) == int8_probs.argmax(1)).mean() >= 0.95
    assert (int8_probs.argmax(1) == data.val_labels).mean() >= 0.9


def test_calibration_uses_centre_crops_of_training_images():
    prep = preprocessing_for("baseline_cnn", 4, ("cat", "dog"))
    pixels = np.random.default_rng(0).integers(0, 256, (10, 6, 6, 3), dtype=np.uint8)
    calibration = calibration_inputs(pixels, prep, count=5)
    assert calibration.shape == (5, 3, 4, 4)
    np.testing.assert_array_equal(calibration, normalize(pixels[::2, 1:5, 1:5], prep))


def test_int8_ships_only_within_the_tolerance():
    def figures(accuracy, neither=0.97):
        return {"accuracy": accuracy, "others_answered_neither": neither}

    assert int8_acceptable(figures(0.990), figures(0.990 - INT8_TOLERANCE))
    assert int8_acceptable(figures(0.990), figures(0.991))
    assert not int8_acceptable(figures(0.990), figures(0.990 - INT8_TOLERANCE - 0.001))
    assert not int8_acceptable(figures(0.99), figures(0.99, 0.97 - NEITHER_TOLERANCE - 0.001))
    assert int8_acceptable({"accuracy": 0.99}, {"accuracy": 0.99})  # a cat/dog-only model


def test_nodes_named_in_float_prefixes_keep_float32_weights(tmp_path, tiny_run):
    data, prep = tiny_run.result.data, tiny_run.prep
    fp32_path = export_onnx(tiny_run.result.model, tmp_path / "model.onnx", prep)
    last = onnx.load(str(fp32_path)).graph.node[-1].name  # the classifier's matmul
    calibration = calibration_inputs(data.train_pixels, prep)

    def weight_is_dequantized(float_prefixes) -> bool:
        path = quantize_int8(
            fp32_path,
            tmp_path / f"{len(float_prefixes)}.onnx",
            calibration,
            float_prefixes=float_prefixes,
        )
        graph = onnx.load(str(path)).graph
        dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        (node,) = [n for n in graph.node if n.name == last]
        return node.input[1] in dequantized

    assert weight_is_dequantized(())
    assert not weight_is_dequantized((last,))


@pytest.fixture
def lite0_onnx(tmp_path) -> Path:
    """EfficientNet-Lite0 (ImageNet trunk, fresh 3-output head) exported at 32 px."""
    prep = Preprocessing(32, WEIGHTS_MEAN, WEIGHTS_STD, ("cat", "dog"))
    model = efficientnet_lite("efficientnet_lite0", num_classes=3, pretrained=True).eval()
    return export_onnx(model, tmp_path / "model.onnx", prep)


def dequantized_conv_weights(fp32_path: Path, out_path: Path, **options) -> dict[str, bool]:
    """Whether each convolution of the INT8 file reads an 8-bit (dequantized) weight."""
    calibration = np.random.default_rng(0).normal(0, 1, (8, 3, 32, 32)).astype(np.float32)
    graph = onnx.load(str(quantize_int8(fp32_path, out_path, calibration, **options))).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name: n.input[1] in dequantized for n in graph.node if n.op_type == "Conv"}


def test_the_layer_that_reads_the_image_stays_float32_by_default(tmp_path, lite0_onnx):
    default = dequantized_conv_weights(lite0_onnx, tmp_path / "default.onnx")
    first = next(iter(default))  # the graph's first convolution: the stem's
    quantized = dequantized_conv_weights(lite0_onnx, tmp_path / "all.onnx", float_input_layer=False)

    assert not default[first]
    assert all(default[name] for name in default if name != first)
    assert all(quantized.values())


def test_float_depthwise_keeps_the_depthwise_convolutions_float32(tmp_path, lite0_onnx):
    """Depthwise convolutions (group == channels) keep float32 weights; the other
    convolutions are still quantized."""
    depthwise = depthwise_convs(onnx.load(str(lite0_onnx)).graph)
    assert len(depthwise) == 16  # one per MBConv block

    kept = dequantized_conv_weights(
        lite0_onnx, tmp_path / "int8.onnx", float_input_layer=False, float_depthwise=True
    )

    assert not any(kept[name] for name in depthwise)
    assert all(kept[name] for name in kept if name not in depthwise)


def test_bias_correction_removes_the_mean_logit_shift_on_the_calibration_images(tmp_path, tiny_run):
    data, prep = tiny_run.result.data, tiny_run.prep
    fp32_path = export_onnx(tiny_run.result.model, tmp_path / "model.onnx", prep)
    calibration = calibration_inputs(data.train_pixels, prep)
    reference = mean_logits(fp32_path, calibration)

    def shift(bias_correction: bool) -> np.ndarray:
        path = tmp_path / f"{bias_correction}.onnx"
        quantize_int8(fp32_path, path, calibration, bias_correction=bias_correction)
        return np.abs(reference - mean_logits(path, calibration))

    plain, corrected = shift(False), shift(True)
    assert plain.max() > 1e-3  # INT8 moved the logits: there is something to correct
    assert corrected.max() < plain.max() / 100
