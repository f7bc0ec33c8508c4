"""At what scale should an exported model see a photo? Eval transforms side by side.

Training stores photos at 8/7 of the model's input and takes random crops of the
input size, so a model sees pets larger in training than a plain resize to the
input size shows them (the "FixRes" train/test discrepancy). This scores one
exported file with several eval transforms on the splits training uses:

- `R/C`: resize to R, keep the centre C (C is the model's input size; `297/260`
  is what `Preprocessing.crop_pct = 7/8` does for Lite2);
- `R`: resize the whole photo to R (a model sees a larger input than it was
  exported for: more pixels, more cost per request).

Each variant gets its own temperature and `neither` threshold fitted on
validation, as training does (model_lib.assessment). Validation decides; test is
reported.

    python -m bench.eval_scale path/to/model.onnx --variants 260 297/260 280 297
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from bench.flip_tta import FIGURES, logits_of
from model_lib import data as data_lib
from model_lib.assessment import calibrate, score
from model_lib.config import TrainConfig
from model_lib.onnx_model import OnnxClassifier
from model_lib.pipeline import load_dataset


def any_input_size(model_path: str, folder: Path) -> Path:
    """A copy of the file whose input takes any height and width (the graph pools
    globally, so only the declared shape fixes it)."""
    model = onnx.load(model_path)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    path = folder / "any_size.onnx"
    onnx.save(model, path)
    return path


def transformed(items, prep, resize_to: int, crop: int | None) -> np.ndarray:
    """uint8 NHWC photos resized to `resize_to` (and centre-cropped to `crop`), by the
    service's own eval transform with that resize and crop."""
    size = crop or resize_to
    variant = replace(prep, image_size=size, crop_pct=size / resize_to)
    return data_lib.load_eval_pixels(items, variant)


def parse_variant(text: str, input_size: int) -> tuple[int, int | None]:
    resize_to, _, crop = text.partition("/")
    if crop and int(crop) != input_size:
        raise SystemExit(f"variant {text}: the crop must be the model's input size {input_size}")
    return int(resize_to), int(crop) if crop else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="an exported ONNX file (with its preprocessing metadata)")
    parser.add_argument("--variants", nargs="+", default=["260", "297/260", "280", "297"])
    parser.add_argument("--architecture", default="efficientnet_lite2")
    args = parser.parse_args(argv)

    exported = OnnxClassifier(args.model)
    size = exported.preprocessing.image_size
    variants = [parse_variant(v, size) for v in args.variants]
    dataset = load_dataset(TrainConfig(architecture=args.architecture, image_size=size))
    splits = {"val": dataset.val_items, "test": dataset.test_items}
    labels = {name: data_lib.labels_of(items) for name, items in splits.items()}
    print(f"{args.model}: exported for {size} px, crop_pct {exported.preprocessing.crop_pct:.3f}")
    print("| variant | split | " + " | ".join(FIGURES) + " | model seconds |")
    print("| --- | --- | " + " | ".join("---" for _ in FIGURES) + " | --- |")
    with tempfile.TemporaryDirectory() as folder:
        model = OnnxClassifier(any_input_size(args.model, Path(folder)))
        for text, (resize_to, crop) in zip(args.variants, variants, strict=True):
            logits, seconds = {}, {}
            for name, items in splits.items():
                pixels = transformed(items, exported.preprocessing, resize_to, crop)
                started = time.perf_counter()
                logits[name] = logits_of(model, pixels, flip=False)
                seconds[name] = time.perf_counter() - started
            rule = calibrate(dataset.outputs, logits["val"], labels["val"])
            for name in splits:
                metrics = score(rule, logits[name], labels[name]).metrics
                cells = " | ".join(f"{100 * metrics.get(k, float('nan')):.2f}" for k in FIGURES)
                print(f"| {text} | {name} | {cells} | {seconds[name]:.0f} |", flush=True)


if __name__ == "__main__":
    main()
