"""Which INT8 calibration keeps an exported model's figures? Variants side by side.

Quantizes one float32 file (the ONNX a training run logged) with several activation
calibrations (method x number of training images, model_lib.quantize), fits each
variant's temperature and `neither` threshold on validation as training does
(model_lib.assessment), and prints its figures beside the float32 file's. Training ships
INT8 only when it keeps validation within quantize.INT8_TOLERANCE; validation decides
here too, test is reported.

    python -m bench.int8_calibration path/to/model.onnx [--images 256 1024]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from onnxruntime.quantization import CalibrationMethod

from bench.flip_tta import FIGURES, load_splits, logits_of
from model_lib import data as data_lib
from model_lib.assessment import calibrate, score
from model_lib.onnx_model import OnnxClassifier
from model_lib.quantize import CALIBRATION_IMAGES, calibration_inputs, quantize_int8

METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}


def print_rows(variant: str, model: OnnxClassifier, dataset, splits, seconds: float) -> None:
    logits = {name: logits_of(model, pixels, flip=False) for name, (pixels, _) in splits.items()}
    rule = calibrate(dataset.outputs, logits["val"], splits["val"][1])
    for name, (_, labels) in splits.items():
        metrics = score(rule, logits[name], labels).metrics
        cells = " | ".join(f"{100 * metrics.get(k, float('nan')):.2f}" for k in FIGURES)
        print(f"| {variant} | {name} | {cells} | {seconds:.0f} |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="an exported float32 ONNX file (with its metadata)")
    parser.add_argument("--architecture", default="efficientnet_lite2")
    parser.add_argument("--image-size", type=int, default=260)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--images", type=int, nargs="+", default=[CALIBRATION_IMAGES, 1024])
    parser.add_argument(
        "--float-prefixes",
        nargs="*",
        default=[],
        help="also try each variant with the nodes named so kept float32, e.g. "
        "/blocks/blocks.20/ /head/ /classifier/ (the trained tail)",
    )
    args = parser.parse_args(argv)

    fp32 = OnnxClassifier(args.model)
    dataset, splits = load_splits(args.architecture, args.image_size, fp32)
    # Evenly spaced training photos, as training calibrates (never validation or test).
    step = max(1, len(dataset.train_items) // max(args.images))
    train_pixels = data_lib.load_pixels(dataset.train_items[::step], fp32.preprocessing.image_size)
    print("| variant | split | " + " | ".join(FIGURES) + " | quantize s |")
    print("| --- | --- | " + " | ".join("---" for _ in FIGURES) + " | --- |")
    print_rows("float32", fp32, dataset, splits, 0)
    with tempfile.TemporaryDirectory(prefix="catdog-int8-") as tmp:
        for images in args.images:
            calibration = calibration_inputs(train_pixels, fp32.preprocessing, images)
            for method in args.methods:
                for kept in [(), tuple(args.float_prefixes)][: 1 + bool(args.float_prefixes)]:
                    out = Path(tmp) / f"{method}-{images}-{len(kept)}.onnx"
                    started = time.perf_counter()
                    quantize_int8(
                        args.model, out, calibration, method=METHODS[method], float_prefixes=kept
                    )
                    seconds = time.perf_counter() - started
                    variant = f"{method}, {images} images" + (", tail float32" if kept else "")
                    print_rows(variant, OnnxClassifier(out), dataset, splits, seconds)


if __name__ == "__main__":
    main()
