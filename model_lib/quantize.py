"""Post-training static INT8 quantization of an exported classifier (torch-free).

Weights are quantized per channel; activation ranges are calibrated on
training images (never validation ones, which judge the result). The
quantized file keeps the preprocessing metadata, so it is a drop-in for
`model.onnx`. Speed and accuracy of both (`python -m bench.int8`): README.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from model_lib.onnx_model import inference_session
from model_lib.preprocess import Preprocessing, center_crop, normalize

# The INT8 model ships only if it loses at most this much pet accuracy on validation
# (0.2 points: issue #20), and at most NEITHER_TOLERANCE of the unseen kinds it
# answers `neither` (a smaller share of a smaller set: 1 point is about a dozen photos).
INT8_TOLERANCE = 0.002
NEITHER_TOLERANCE = 0.01
CALIBRATION_IMAGES = 256
INT8_ARTIFACT_PATH = "int8/model.onnx"  # in the training run's artifacts


def calibration_inputs(
    train_pixels: np.ndarray, prep: Preprocessing, count: int = CALIBRATION_IMAGES
) -> np.ndarray:
    """Evenly spaced training images, centre-cropped to the model size and normalised."""
    step = max(1, len(train_pixels) // count)
    return normalize(center_crop(train_pixels[::step][:count], prep.image_size), prep)


def depthwise_convs(graph: onnx.GraphProto) -> list[str]:
    """Names of the depthwise convolutions (one group per channel) of `graph`."""
    shapes = {init.name: init.dims for init in graph.initializer}
    return [
        node.name
        for node in graph.node
        if node.op_type == "Conv"
        and any(
            a.name == "group" and a.i > 1 and a.i == shapes[node.input[1]][0]
            for a in node.attribute
        )
    ]


def quantize_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration: np.ndarray,
    batch_size: int = 16,
    method: CalibrationMethod = CalibrationMethod.MinMax,
    float_prefixes: tuple[str, ...] = (),
    float_input_layer: bool = True,
    float_depthwise: bool | tuple[str, ...] = False,
    bias_correction: bool = False,
    **static_options,
) -> Path:
    """Write the static INT8 (QDQ) version of `fp32_path` to `out_path`, its activation
    ranges from `calibration` by `method`; nodes whose names start with one of
    `float_prefixes` (e.g. "/head/") stay float32 (bench/int8_calibration.py compares),
    so does the first convolution (and what leads to it) if `float_input_layer`, and so
    do the depthwise convolutions if `float_depthwise` (True: all; prefixes: those named
    so).
    `bias_correction` adds to the logits the mean shift (float32 minus INT8) they show on
    `calibration`. `static_options` override quantize_static's."""

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(
                {"image": calibration[start : start + batch_size]}
                for start in range(0, len(calibration), batch_size)
            )

        def get_next(self):
            return next(self.batches, None)

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="catdog-quantize-") as tmp:
        # Shape inference and graph fusions first, as ONNX Runtime recommends.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        graph = onnx.load(str(prepared)).graph
        kept_float = [
            node.name
            for node in graph.node
            if node.name.startswith(float_prefixes) and float_prefixes
        ]
        if float_input_layer:
            # Most of what INT8 cost the last-block model's accuracy came from this layer;
            # kept float, it costs little speed (notes/models.md, fourth session).
            first_conv = next(i for i, n in enumerate(graph.node) if n.op_type == "Conv")
            kept_float += [n.name for n in graph.node[: first_conv + 1]]
        if float_depthwise:
            prefixes = ("",) if float_depthwise is True else float_depthwise
            kept_float += [name for name in depthwise_convs(graph) if name.startswith(prefixes)]
        quantize_static(
            str(prepared),
            str(out_path),
            Batches(),
            **{
                "quant_format": QuantFormat.QDQ,
                "per_channel": True,
                "activation_type": QuantType.QUInt8,
                "weight_type": QuantType.QInt8,
                "calibrate_method": method,
                "nodes_to_exclude": kept_float,
                **static_options,
            },
        )
    quantized = onnx.load(str(out_path))
    if bias_correction:
        shift = mean_logits(fp32_path, calibration) - mean_logits(out_path, calibration)
        add_to_output(quantized.graph, shift.astype(np.float32))
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(onnx.load(str(fp32_path)).metadata_props)
    onnx.save(quantized, str(out_path))
    return out_path


def mean_logits(path: str | Path, inputs: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """The ONNX file's logits on `inputs`, averaged over the images (one per output)."""
    session = inference_session(path)
    name = session.get_inputs()[0].name
    return np.concatenate(
        [
            session.run(None, {name: inputs[start : start + batch_size]})[0]
            for start in range(0, len(inputs), batch_size)
        ]
    ).mean(0)


def add_to_output(graph: onnx.GraphProto, shift: np.ndarray) -> None:
    """Make `graph`'s (single) output `shift` larger: an Add node after its producer."""
    output = graph.output[0].name
    before = output + "_uncorrected"
    for node in graph.node:
        node.output[:] = [before if name == output else name for name in node.output]
    graph.initializer.append(onnx.numpy_helper.from_array(shift, output + "_shift"))
    graph.node.append(
        onnx.helper.make_node("Add", [before, output + "_shift"], [output], name="bias_correction")
    )


def int8_acceptable(fp32: dict, int8: dict) -> bool:
    """On validation figures (`assessment.score(...).metrics`) of both files."""
    if int8["accuracy"] < fp32["accuracy"] - INT8_TOLERANCE:
        return False
    key = "others_answered_neither"
    return key not in fp32 or int8[key] >= fp32[key] - NEITHER_TOLERANCE
