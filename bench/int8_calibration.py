"""Which INT8 calibration keeps an exported model's figures? Variants side by side.

Quantizes one float32 file (the ONNX a training run logged) with several activation
calibrations (method x number of training images, model_lib.quantize), fits each
variant's temperature and `neither` threshold on validation as training does
(model_lib.assessment), and prints its figures beside the float32 file's. Training ships
INT8 only when it keeps validation within quantize.INT8_TOLERANCE; validation decides
here too, test is reported.

`--options` adds variants on the first `--images` count (MinMax) with other
quantize_int8 options (named in OPTIONS, joined by "+"), and `--speed` then times every
file at batch 1 on one thread (as the service runs it), files alternating in rounds, so
that a busy machine slows them alike.

    python -m bench.int8_calibration path/to/model.onnx [--images 256 1024]
    python -m bench.int8_calibration path/to/model.onnx --methods minmax --images 256 \
        --options float-depthwise bias-correction float-depthwise+bias-correction --speed 5
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

from bench.flip_tta import FIGURES, load_splits, logits_of
from model_lib import data as data_lib
from model_lib.assessment import calibrate, score
from model_lib.config import TrainConfig
from model_lib.onnx_model import OnnxClassifier, inference_session
from model_lib.pipeline import load_dataset
from model_lib.preprocess import TRAINING_CROP_PCT
from model_lib.quantize import CALIBRATION_IMAGES, calibration_inputs, quantize_int8

METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}
# EfficientNet-Lite2's last two stages (1248 and 1408 channels wide in the expansion).
LAST_STAGES = tuple(f"/blocks/blocks.{block}/" for block in range(16, 21))
# quantize_int8 options by name. The bench's own: "pets" calibrates on pet photos only
# (evenly spaced training photos include the `neither` ones by their share);
# "training-crops" on centre crops of the larger training resize, as training does.
OPTIONS = {
    "float-depthwise": {"float_depthwise": True},
    "float-depthwise-last-stages": {"float_depthwise": LAST_STAGES},
    # quantize_int8 keeps the layer that reads the image float32 unless told otherwise.
    "quantized-input-layer": {"float_input_layer": False},
    "bias-correction": {"bias_correction": True},
    "qoperator": {"quant_format": QuantFormat.QOperator},
    "symmetric": {
        "activation_type": QuantType.QInt8,
        "extra_options": {"ActivationSymmetric": True},
    },
    "reduce-range": {"reduce_range": True},
    "pets": {"pets": True},
    "training-crops": {"training_crops": True},
    "percentile": {"method": CalibrationMethod.Percentile},
}


def options_of(names: str) -> dict:
    """ "a+b": OPTIONS a and b together (their float_prefixes joined)."""
    merged = {}
    for name in names.split("+"):
        for key, value in OPTIONS[name].items():
            merged[key] = merged.get(key, ()) + value if key == "float_prefixes" else value
    return merged


def speeds(paths: dict[str, Path], seconds: float, rounds: int, batch: int) -> dict[str, float]:
    """Median img/s of each file at `batch` on one thread, the files alternating in rounds."""
    sessions = {name: inference_session(path, 1) for name, path in paths.items()}
    runs = {name: [] for name in paths}
    for _ in range(rounds):
        for name, session in sessions.items():
            size = session.get_inputs()[0].shape[-1]
            x = np.zeros((batch, 3, size, size), np.float32)
            session.run(None, {"image": x})
            started, calls = time.perf_counter(), 0
            while time.perf_counter() - started < seconds:
                session.run(None, {"image": x})
                calls += 1
            runs[name].append(batch * calls / (time.perf_counter() - started))
    return {name: float(np.median(r)) for name, r in runs.items()}


def print_rows(variant: str, model: OnnxClassifier, dataset, splits, seconds: float) -> None:
    if not splits:
        return
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
    parser.add_argument(
        "--methods",
        nargs="*",
        choices=METHODS,
        default=list(METHODS),
        help="calibrations to try on each --images count (none: only the --options variants)",
    )
    parser.add_argument("--images", type=int, nargs="+", default=[CALIBRATION_IMAGES, 1024])
    parser.add_argument(
        "--float-prefixes",
        nargs="*",
        default=[],
        help="also try each variant with the nodes named so kept float32, e.g. "
        "/blocks/blocks.20/ /head/ /classifier/ (the trained tail)",
    )
    parser.add_argument(
        "--options",
        nargs="*",
        default=[],
        help="also the first --images count (MinMax unless percentile) with these options: "
        + ", ".join(OPTIONS)
        + ' (join several with "+")',
    )
    parser.add_argument(
        "--speed", type=float, default=0, help="seconds per file and round (0: no timing)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1], help="timed batches")
    parser.add_argument(
        "--no-scores", action="store_true", help="only time the files (with --speed)"
    )
    args = parser.parse_args(argv)

    fp32 = OnnxClassifier(args.model)
    if args.no_scores:
        dataset, splits = (
            load_dataset(TrainConfig(architecture=args.architecture, image_size=args.image_size)),
            {},
        )
    else:
        dataset, splits = load_splits(args.architecture, args.image_size, fp32)
    # Evenly spaced training photos, as training calibrates (never validation or test).
    step = max(1, len(dataset.train_items) // max(args.images))
    sample = dataset.train_items[::step]
    train_pixels = data_lib.load_eval_pixels(sample, fp32.preprocessing)
    train_labels = data_lib.labels_of(sample)
    print("| variant | split | " + " | ".join(FIGURES) + " | quantize s |")
    print("| --- | --- | " + " | ".join("---" for _ in FIGURES) + " | --- |")
    pets = train_labels < len(dataset.class_names)
    print_rows("float32", fp32, dataset, splits, 0)
    files = {"float32": Path(args.model)}

    def run(variant: str, calibration, **options) -> None:
        out = Path(tmp) / f"{len(files)}.onnx"
        started = time.perf_counter()
        quantize_int8(args.model, out, calibration, **options)
        seconds = time.perf_counter() - started
        print_rows(variant, OnnxClassifier(out), dataset, splits, seconds)
        files[variant] = out

    with tempfile.TemporaryDirectory(prefix="catdog-int8-") as tmp:
        for images in args.images:
            calibration = calibration_inputs(train_pixels, fp32.preprocessing, images)
            for method in args.methods:
                for kept in [(), tuple(args.float_prefixes)][: 1 + bool(args.float_prefixes)]:
                    variant = f"{method}, {images} images" + (", tail float32" if kept else "")
                    run(variant, calibration, method=METHODS[method], float_prefixes=kept)
        for names in args.options:
            options = options_of(names)
            chosen = pets if options.pop("pets", False) else np.ones_like(pets)
            pixels = train_pixels
            if options.pop("training_crops", False):
                size = round(fp32.preprocessing.image_size / TRAINING_CROP_PCT)
                pixels = data_lib.load_pixels(sample, size)
            calibration = calibration_inputs(pixels[chosen], fp32.preprocessing, args.images[0])
            run(f"minmax, {args.images[0]} images, {names}", calibration, **options)
        for batch in args.batch_sizes if args.speed else []:
            img_s = speeds(files, args.speed, args.rounds, batch)
            int8 = list(img_s.values())[min(1, len(img_s) - 1)]
            print(f"\n| file | img/s, batch {batch}, 1 thread | vs float32 | vs the first INT8 |")
            print("| --- | --- | --- | --- |")
            for name, speed in img_s.items():
                ratios = f"{speed / img_s['float32']:.2f} | {speed / int8:.2f}"
                print(f"| {name} | {speed:.1f} | {ratios} |", flush=True)


if __name__ == "__main__":
    main()
