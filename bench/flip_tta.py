"""Is horizontal-flip test-time augmentation worth its cost? One exported model, side by side.

Scores an exported file (the INT8 or float32 ONNX a training run logged) on the
splits training uses, once as served and once averaging its logits over the photo
and its mirror image. Each variant gets its own temperature and `neither`
threshold fitted on validation, exactly as training does (model_lib.assessment),
so the two are compared as they would ship. Validation decides; test is reported.
Flipping doubles the model's share of a request's cost.

    python -m bench.flip_tta path/to/model.onnx [--architecture efficientnet_lite2 --image-size 260]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from model_lib import data as data_lib
from model_lib.assessment import calibrate, score
from model_lib.config import TrainConfig
from model_lib.onnx_model import OnnxClassifier
from model_lib.pipeline import load_dataset
from model_lib.preprocess import normalize

FIGURES = (
    "accuracy",
    "pets_answered_neither",
    "others_answered_neither",
    "auroc_pets_vs_others",
    "ece",
)


def logits_of(model: OnnxClassifier, pixels: np.ndarray, flip: bool) -> np.ndarray:
    """Logits of uint8 NHWC photos (averaged with their mirror images when `flip`)."""
    chunks = []
    for start in range(0, len(pixels), 128):
        chunk = pixels[start : start + 128]
        logits = model.logits(normalize(chunk, model.preprocessing))
        if flip:
            mirrored = np.ascontiguousarray(chunk[:, :, ::-1])
            logits = (logits + model.logits(normalize(mirrored, model.preprocessing))) / 2
        chunks.append(logits)
    return np.concatenate(chunks)


def load_splits(architecture: str, image_size: int, model: OnnxClassifier):
    """The dataset as training splits it, and the validation and test photos
    (uint8 pixels through the model's eval transform, labels)."""
    dataset = load_dataset(TrainConfig(architecture=architecture, image_size=image_size))
    splits = {
        name: (data_lib.load_eval_pixels(items, model.preprocessing), data_lib.labels_of(items))
        for name, items in (("val", dataset.val_items), ("test", dataset.test_items))
    }
    return dataset, splits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="an exported ONNX file (with its preprocessing metadata)")
    parser.add_argument("--architecture", default="efficientnet_lite2")
    parser.add_argument("--image-size", type=int, default=260)
    args = parser.parse_args(argv)

    model = OnnxClassifier(args.model)
    dataset, splits = load_splits(args.architecture, args.image_size, model)
    print(f"{args.model}: val {len(splits['val'][1])} photos, test {len(splits['test'][1])}")
    print("| variant | split | " + " | ".join(FIGURES) + " | model seconds |")
    print("| --- | --- | " + " | ".join("---" for _ in FIGURES) + " | --- |")
    for flip in (False, True):
        logits, seconds = {}, {}
        for name, (pixels, _) in splits.items():
            started = time.perf_counter()
            logits[name] = logits_of(model, pixels, flip)
            seconds[name] = time.perf_counter() - started
        rule = calibrate(dataset.outputs, logits["val"], splits["val"][1])
        for name, (_, labels) in splits.items():
            metrics = score(rule, logits[name], labels).metrics
            cells = " | ".join(f"{100 * metrics.get(k, float('nan')):.2f}" for k in FIGURES)
            variant = "photo + mirror" if flip else "as served"
            print(f"| {variant} | {name} | {cells} | {seconds[name]:.0f} |", flush=True)


if __name__ == "__main__":
    main()
