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
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from model_lib.preprocess import Preprocessing, normalize

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
    sample = train_pixels[::step][:count]
    size = prep.image_size
    top = (sample.shape[1] - size) // 2
    left = (sample.shape[2] - size) // 2
    return normalize(sample[:, top : top + size, left : left + size], prep)


def quantize_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration: np.ndarray,
    batch_size: int = 16,
    method: CalibrationMethod = CalibrationMethod.MinMax,
    float_prefixes: tuple[str, ...] = (),
) -> Path:
    """Write the static INT8 (QDQ) version of `fp32_path` to `out_path`, its activation
    ranges from `calibration` by `method`; nodes whose names start with one of
    `float_prefixes` (e.g. "/head/") stay float32 (bench/int8_calibration.py compares)."""

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
        kept_float = [
            node.name
            for node in onnx.load(str(prepared)).graph.node
            if node.name.startswith(float_prefixes) and float_prefixes
        ]
        quantize_static(
            str(prepared),
            str(out_path),
            Batches(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=method,
            nodes_to_exclude=kept_float,
        )
    quantized = onnx.load(str(out_path))
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(onnx.load(str(fp32_path)).metadata_props)
    onnx.save(quantized, str(out_path))
    return out_path


def int8_acceptable(fp32: dict, int8: dict) -> bool:
    """On validation figures (`assessment.score(...).metrics`) of both files."""
    if int8["accuracy"] < fp32["accuracy"] - INT8_TOLERANCE:
        return False
    key = "others_answered_neither"
    return key not in fp32 or int8[key] >= fp32[key] - NEITHER_TOLERANCE
