"""Baseline CNN options: accuracy and training time of a TrainConfig, or raw step speed.

`train` fits one config exactly as `train/baseline` does (model_lib.pipeline: same
splits, data, fit, ONNX export and decision rule fitted on validation) and prints
validation and test figures (test is reported, never used to choose), the seconds of
each epoch, of loading the images, and in all. `--out` appends the result as a JSON
line, so runs made one after another can be tabulated.

`speed` times training steps (augmentation, forward, backward, SGD step) on random
images for several (image size, batch size) pairs, alternating in rounds, so that the
ratios hold on a shared machine where the absolute figures do not.

    python -m bench.baseline_options train --image-size 160 --epochs 18 --out runs.jsonl
    python -m bench.baseline_options train --data-fraction 0.3      # a quick screen
    python -m bench.baseline_options speed --sizes 224,192,160 --seconds 20 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from model_lib import pipeline
from model_lib.config import TrainConfig
from model_lib.models import build_model, preprocessing_for
from model_lib.training import BatchNormalizer, train_one_epoch

# Figures printed for each split (model_lib.assessment names), when the model has them.
SHOWN = ("accuracy", "pets_answered_neither", "others_answered_neither", "ece")


def print_epoch(event: dict) -> None:
    if event.get("epoch_done"):
        print(
            f"epoch {event['epoch']:2d}: train_acc {event['train_accuracy']:.4f} "
            f"val_acc {event['val_accuracy']:.4f} {event['images_per_second']:.0f} img/s "
            f"{event['seconds']:.0f} s",
            flush=True,
        )


def run_train(config: TrainConfig) -> dict:
    started = time.perf_counter()
    dataset = pipeline.load_dataset(config)
    result = pipeline.train(config, dataset, print_epoch)
    trained = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="baseline-options-") as tmp:
        _, _, assessment = pipeline.export(result, Path(tmp) / "model.onnx")
    epoch_seconds = [round(h["seconds"], 1) for h in result.history]
    return {
        "config": {k: v for k, v in config.to_params().items() if v != getattr(TrainConfig(), k)},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "train_images": len(dataset.train_items),
        "val": {k: assessment.val.metrics[k] for k in SHOWN if k in assessment.val.metrics},
        "test": {k: assessment.test.metrics[k] for k in SHOWN if k in assessment.test.metrics},
        "epoch_seconds": epoch_seconds,
        "fit_seconds": round(sum(epoch_seconds), 1),
        # Loading and validating the photos, decoding and resizing them into memory.
        "data_seconds": round(trained - started - sum(epoch_seconds), 1),
        "total_seconds": round(time.perf_counter() - started, 1),
    }


def step_speed(pairs, seconds: float, rounds: int, outputs: int = 3) -> tuple[dict, dict]:
    """Training images per second, and CPU seconds per image, for each (image_size,
    batch_size), per round. On a busy machine the CPU time (with --threads 1) ranks
    the options where wall time mostly measures the neighbours."""
    generator = torch.Generator().manual_seed(0)
    setups = {}
    for size, batch in pairs:
        prep = preprocessing_for("baseline_cnn", size, ("cat", "dog"))
        model = build_model("baseline_cnn", outputs)
        stored = prep.resize_size
        images = torch.randint(0, 256, (batch, 3, stored, stored), dtype=torch.uint8)
        labels = torch.randint(0, outputs, (batch,))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        setups[(size, batch)] = (model, optimizer, BatchNormalizer(prep, generator), images, labels)
    speeds = {pair: [] for pair in pairs}
    cpu = {pair: [] for pair in pairs}
    for _ in range(rounds):
        for pair, (model, optimizer, normalizer, images, labels) in setups.items():
            train_one_epoch(model, [(images, labels)], optimizer, None, normalizer)  # warm up
            started, cpu_started, seen = time.perf_counter(), time.process_time(), 0
            while time.perf_counter() - started < seconds:
                train_one_epoch(model, [(images, labels)], optimizer, None, normalizer)
                seen += len(labels)
            speeds[pair].append(seen / (time.perf_counter() - started))
            cpu[pair].append((time.process_time() - cpu_started) / seen)
    return speeds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="fit one config, print its figures and times")
    for field in fields(TrainConfig):
        if field.type in ("int", "float", "str"):
            train.add_argument(
                "--" + field.name.replace("_", "-"),
                type={"int": int, "float": float, "str": str}[field.type],
                default=field.default,
            )
    train.add_argument("--out", type=Path, help="append the result as a JSON line")
    speed = commands.add_parser("speed", help="training steps per second, side by side")
    speed.add_argument("--sizes", default="224,192,176,160")
    speed.add_argument("--batches", default="64", help="batch sizes, crossed with --sizes")
    speed.add_argument("--seconds", type=float, default=20.0)
    speed.add_argument("--rounds", type=int, default=3)
    speed.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()}", flush=True)
    if args.command == "speed":
        pairs = [
            (int(size), int(batch))
            for size in args.sizes.split(",")
            for batch in args.batches.split(",")
        ]
        if args.threads:
            torch.set_num_threads(args.threads)
        speeds, cpu = step_speed(pairs, args.seconds, args.rounds)
        reference, cpu_reference = np.mean(speeds[pairs[0]]), np.median(cpu[pairs[0]])
        for pair, rates in speeds.items():
            print(
                f"{pair[0]} px, batch {pair[1]}: {np.mean(rates):.1f} img/s "
                f"(rounds {', '.join(f'{r:.1f}' for r in rates)}), wall time per image "
                f"{reference / np.mean(rates):.2f}x of {pairs[0]}; CPU ms per image "
                f"{1000 * np.median(cpu[pair]):.1f} (median of rounds), "
                f"{np.median(cpu[pair]) / cpu_reference:.2f}x"
            )
        return
    config = TrainConfig(
        **{f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    )
    result = run_train(config)
    print(json.dumps(result, indent=1))
    if args.out:
        with args.out.open("a") as out:
            out.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
