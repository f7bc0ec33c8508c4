"""Which pretrained backbone to fine-tune: frozen-feature probes and serving cost, side by side.

For each EfficientNet-Lite variant at its native resolution: pooled ImageNet
features of the pool and of other_images (ONNX Runtime), a logistic-regression
probe with three outputs (cat, dog, neither) fitted on the training split, its
temperature and `neither` threshold fitted on validation exactly as training does
(model_lib.assessment), and the figures on validation and test; then the INT8
model's raw ONNX Runtime speed at batch 1, variants alternating in rounds.

A probe is a lower bound of what the fine-tuned head reaches, but it ranks the
backbones on the same splits at a fraction of a training run's cost.

    python -m bench.model_options                 # every photo (about 15 min on 2 quiet cores)
    python -m bench.model_options --every 3       # a third of them
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from torch import nn
from tqdm import tqdm

from model_lib import data as data_lib
from model_lib.assessment import calibrate, score
from model_lib.efficientnet import VARIANTS, WEIGHTS_MEAN, WEIGHTS_STD, efficientnet_lite
from model_lib.export import export_onnx, onnx_bytes
from model_lib.onnx_model import inference_session
from model_lib.preprocess import Preprocessing, decode_image, normalize, resize
from model_lib.quantize import quantize_int8

OUTPUTS = ("cat", "dog", "neither")


def photos(every: int):
    """(items with labels 0/1/2, split name per item), the splits training uses."""
    pets, class_names = data_lib.discover_images("data")
    keys = data_lib.near_duplicate_keys(pets)
    pet_split = {
        p.path: data_lib.split_of(keys[p.path], 15, 10) for p in pets
    }  # TrainConfig's defaults
    others, kinds = data_lib.discover_outliers("other_images", len(class_names))
    other_split = {
        o.path: data_lib.split_of(
            kinds[o.path], data_lib.OUTLIER_VAL_PERCENT, data_lib.OUTLIER_TEST_PERCENT
        )
        for o in others
    }
    items = (pets + others)[::every]
    return items, np.array([(pet_split | other_split)[i.path] for i in items])


def features(variant: str, items) -> np.ndarray:
    size = VARIANTS[variant].resolution
    model = efficientnet_lite(variant, 1000, pretrained=True).eval()
    trunk = nn.Sequential(model.stem, model.blocks, model.head, model.pool)
    session = inference_session(onnx_bytes(trunk, size, "features"))
    prep = Preprocessing(size, WEIGHTS_MEAN, WEIGHTS_STD, OUTPUTS[:2])
    out = []
    for start in tqdm(range(0, len(items), 32), desc=f"{variant} features", unit="batch"):
        batch = items[start : start + 32]
        pixels = np.stack([resize(decode_image(i.path.read_bytes()), size) for i in batch])
        out.append(session.run(None, {"image": normalize(pixels, prep)})[0])
    return np.concatenate(out)


def probe(feats: np.ndarray, labels: np.ndarray, splits: np.ndarray) -> dict:
    train = splits == "train"
    clf = LogisticRegression(C=0.1, max_iter=3000).fit(feats[train], labels[train])
    logits = clf.decision_function(feats)
    val, test = splits == "val", splits == "test"
    rule = calibrate(OUTPUTS, logits[val], labels[val])
    return {
        "val": score(rule, logits[val], labels[val]).metrics,
        "test": score(rule, logits[test], labels[test]).metrics,
    }


def int8_speed(variants, seconds: float, rounds: int) -> dict[str, list[float]]:
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in variants:
            size = VARIANTS[variant].resolution
            prep = Preprocessing(size, WEIGHTS_MEAN, WEIGHTS_STD, OUTPUTS[:2])
            model = efficientnet_lite(variant, len(OUTPUTS), pretrained=True).eval()
            fp32 = export_onnx(model, Path(tmp) / f"{variant}.onnx", prep)
            calibration = np.random.default_rng(0).normal(0, 1, (32, 3, size, size))
            int8 = quantize_int8(fp32, Path(tmp) / f"{variant}.int8.onnx", calibration.astype("f4"))
            sessions[variant] = (inference_session(int8, 1), size)
    speeds = {v: [] for v in variants}
    for _ in range(rounds):
        for variant, (session, size) in sessions.items():
            x = np.zeros((1, 3, size, size), np.float32)
            session.run(None, {"image": x})
            started, calls = time.perf_counter(), 0
            while time.perf_counter() - started < seconds:
                session.run(None, {"image": x})
                calls += 1
            speeds[variant].append(calls / (time.perf_counter() - started))
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--variants", default="efficientnet_lite0,efficientnet_lite1,efficientnet_lite2"
    )
    parser.add_argument("--every", type=int, default=1, help="use every N-th photo")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    variants = args.variants.split(",")
    items, splits = photos(args.every)
    labels = np.array([i.label for i in items])
    print(
        f"{len(items)} photos; per split: "
        + ", ".join(f"{s} {int((splits == s).sum())}" for s in data_lib.SPLITS)
    )
    speeds = int8_speed(variants, args.seconds, args.rounds)
    base = np.median(speeds[variants[0]])
    print(
        "\n| backbone | px | val / test pet accuracy | test: pets answered neither | "
        "test: unseen kinds answered neither | test ECE | INT8 img/s, 1 thread (ratio) |"
    )
    print("|---|---|---|---|---|---|---|")
    for variant in variants:
        figures = probe(features(variant, items), labels, splits)
        val, test = figures["val"], figures["test"]
        speed = np.median(speeds[variant])
        print(
            f"| {variant} | {VARIANTS[variant].resolution} | {val['accuracy']:.2%} / "
            f"{test['accuracy']:.2%} | {test['pets_answered_neither']:.2%} | "
            f"{test['others_answered_neither']:.2%} | {test['ece']:.2%} | "
            f"{speed:.0f} ({speed / base:.2f}) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
