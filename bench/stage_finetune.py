"""What does unfreezing more of EfficientNet-Lite2 buy? Head only vs the last stage(s).

Three variants of the transfer fit (model_lib.transfer.fit_transfer), on the same
data, splits, seed and augmented views:

- `head`: today's recipe, head conv (352->1280 + BN) + classifier;
- `stage7`: also the last stage (one MBConv 208->352 block at 9x9);
- `stage6b`: also the last 2 blocks of stage 6 (208->208 at 9x9).

The frozen part up to the deepest cut runs once per augmented view through ONNX
Runtime (as fit_transfer's backbone) and is cached as float16; each variant's own
frozen blocks after that cut run once per view in PyTorch, and its trainable tail
trains on the cached views with fit_transfer's optimizer, one-cycle schedule,
learning rates (pretrained parts at lr * PRETRAINED_LR_FACTOR) and frozen batch-norm
statistics (`_TrainableTail`). Each variant then gets its temperature and `neither`
threshold fitted on validation (model_lib.assessment, as bench/flip_tta.py does) on
its float32 PyTorch logits. Validation decides; test is reported only.

Run it niced beside other work; `--cache` keeps the backbone pass for a later run:

    python -m bench.stage_finetune [--variants head,stage7,stage6b] [--seeds 42]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model_lib import data as data_lib
from model_lib.assessment import calibrate, score
from model_lib.config import TrainConfig
from model_lib.efficientnet import efficientnet_lite
from model_lib.models import preprocessing_for
from model_lib.pipeline import load_dataset
from model_lib.training import (
    BatchNormalizer,
    batches,
    evaluate,
    pixel_tensors,
    train_one_epoch,
)
from model_lib.transfer import FRESH_VIEWS, OnnxBackbone, _TrainableTail, tail_optimizer

# How many of Lite2's 21 MBConv blocks each variant trains (with the head conv and classifier).
VARIANTS = {"head": 0, "stage7": 1, "stage6b": 3}
FIGURES = ("accuracy", "pets_answered_neither", "others_answered_neither", "ece")
# The cached activations are cut before the deepest variant's first trained block, so every
# variant (and a later run of any of them) reuses the same cache.
CUT = 21 - max(VARIANTS.values())  # Lite2 has 21 MBConv blocks
THREADS = 2  # the machine is shared: at most two threads, for torch and ONNX Runtime alike


def cut_activations(
    config: TrainConfig, cut: int, cache_dir: Path | None, views: int = FRESH_VIEWS
) -> dict:
    """Activations after the first `cut` blocks (float16): `views` augmented views of
    the training split, then validation and test; with the labels and the pass's seconds."""
    suffix = "" if views == FRESH_VIEWS else f"_views{views}"
    path = (
        cache_dir / f"lite2_cut{cut}_seed{config.seed}_{config.data_fraction}{suffix}.npz"
        if cache_dir
        else None
    )
    if path and path.exists():
        return dict(np.load(path))
    dataset = load_dataset(config)
    prep = preprocessing_for(config.architecture, config.image_size, dataset.class_names)
    data = data_lib.prepare_data(dataset.train_items, dataset.val_items, dataset.test_items, prep)
    model = efficientnet_lite(config.architecture, num_classes=len(dataset.outputs)).eval()
    backbone = OnnxBackbone(nn.Sequential(model.stem, model.blocks[:cut]), prep.image_size, THREADS)
    augment = BatchNormalizer(prep, torch.Generator().manual_seed(config.seed))
    images, _ = pixel_tensors(data.train_pixels, data.train_labels)
    started = time.perf_counter()
    out = {}
    for view in range(views):
        chunks = [
            backbone(augment(images[start : start + config.batch_size])).half().numpy()
            for start in range(0, len(images), config.batch_size)
        ]
        out[f"train{view}"] = np.concatenate(chunks)
    out["train_seconds"] = np.float64(time.perf_counter() - started)
    out["val"] = backbone.all(data.val_inputs, config.batch_size).astype(np.float16)
    out["test"] = np.concatenate(
        [
            backbone(data.test_inputs(prep, start, start + 256)).half().numpy()
            for start in range(0, len(data.test_labels), 256)
        ]
    )
    out |= {
        "train_labels": data.train_labels,
        "val_labels": data.val_labels,
        "test_labels": data.test_labels,
        "outputs": np.asarray(dataset.outputs),
    }
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **out)
    return out


@torch.no_grad()
def run_frozen(blocks: nn.Module, features: np.ndarray, dtype=np.float16) -> np.ndarray:
    """The variant's frozen blocks after the cached cut, in PyTorch (eval mode)."""
    chunks = [
        blocks(torch.from_numpy(features[start : start + 256]).float()).numpy().astype(dtype)
        for start in range(0, len(features), 256)
    ]
    return np.concatenate(chunks)


@torch.no_grad()
def logits_of(tail: nn.Module, features: np.ndarray) -> np.ndarray:
    tail.eval()
    return np.concatenate(
        [
            tail(torch.from_numpy(features[s : s + 256])).numpy()
            for s in range(0, len(features), 256)
        ]
    )


def scored(tail: nn.Module, outputs: tuple, val: np.ndarray, test: np.ndarray, cached: dict):
    """Validation and test figures of `tail` under the decision rule fitted on validation."""
    rule = calibrate(outputs, logits_of(tail, val), cached["val_labels"])
    return {
        "val": score(rule, logits_of(tail, val), cached["val_labels"]).metrics,
        "test": score(rule, logits_of(tail, test), cached["test_labels"]).metrics,
    }


def fit_variant(config: TrainConfig, trained_blocks: int, cached: dict, cut: int) -> dict:
    """Train one variant on the cached views; its figures, per-epoch history and seconds."""
    outputs = tuple(str(name) for name in cached["outputs"])
    torch.manual_seed(config.seed)  # the same fresh classifier for every variant
    model = efficientnet_lite(config.architecture, num_classes=len(outputs)).eval()
    first_trained = len(model.blocks) - trained_blocks
    frozen = model.blocks[cut:first_trained]  # after the cache's cut, before the trained ones
    trained = model.blocks[first_trained:]
    tail = _TrainableTail(trained, model.head, model.pool, model.dropout, model.classifier)

    started = time.perf_counter()
    views = [
        (
            torch.from_numpy(run_frozen(frozen, cached[f"train{v}"])),
            torch.from_numpy(cached["train_labels"]),
        )
        for v in range(FRESH_VIEWS)
    ]
    val = run_frozen(frozen, cached["val"], np.float32)
    test = run_frozen(frozen, cached["test"], np.float32)
    frozen_seconds = time.perf_counter() - started

    optimizer, scheduler = tail_optimizer(model, trained, config, len(cached["train_labels"]))
    generator = torch.Generator().manual_seed(config.seed)
    train_seconds, history = 0.0, []
    for epoch in range(1, config.epochs + 1):
        loader = batches(*views[(epoch - 1) % len(views)], config.batch_size, generator)
        epoch_started = time.perf_counter()
        stats = train_one_epoch(tail, loader, optimizer, scheduler, lambda f: f.float())
        train_seconds += time.perf_counter() - epoch_started
        result = evaluate(tail, val, cached["val_labels"], len(outputs) - 1)
        history.append(round(100 * result["val_accuracy"], 2))
        print(
            f"  epoch {epoch}: val pet accuracy {history[-1]:.2f} %, "
            f"{stats['images_per_second']:.0f} img/s",
            flush=True,
        )

    return {
        **scored(tail, outputs, val, test, cached),
        "history": history,
        "train_seconds": train_seconds,
        "images_per_second": config.epochs * len(views[0][1]) / train_seconds,
        "frozen_seconds": frozen_seconds,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--seeds", default="42", help="comma-separated")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--data-fraction", type=float, default=1.0, help="for a quick try")
    parser.add_argument("--cache", type=Path, help="keep the backbone pass in this folder")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    torch.set_num_threads(THREADS)

    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        config = TrainConfig(
            architecture="efficientnet_lite2",
            image_size=260,
            epochs=args.epochs,
            learning_rate=0.003,
            seed=seed,
            data_fraction=args.data_fraction,
        )
        cached = cut_activations(config, CUT, args.cache)
        print(
            f"seed {seed}: backbone to block {CUT}, {len(cached['train_labels'])} training "
            f"images x {FRESH_VIEWS} views in {float(cached['train_seconds']):.0f} s",
            flush=True,
        )
        for name in variants:
            print(f"{name}, seed {seed}:", flush=True)
            result = fit_variant(config, VARIANTS[name], cached, CUT)
            rows.append((name, seed, float(cached["train_seconds"]), result))
            print_table(rows)


def print_table(rows) -> None:
    cells = (
        " | ".join(f"val {k}" for k in FIGURES) + " | " + " | ".join(f"test {k}" for k in FIGURES)
    )
    print(
        f"| variant | seed | {cells} | val pet acc. per epoch | tail train s (img/s) | "
        "frozen blocks s | backbone s |"
    )
    print("| --- " * (7 + 2 * len(FIGURES)) + "|")
    for name, seed, backbone_seconds, r in rows:
        figures = [f"{100 * r[split][k]:.2f}" for split in ("val", "test") for k in FIGURES]
        print(
            f"| {name} | {seed} | "
            + " | ".join(figures)
            + f" | {' / '.join(map(str, r['history']))}"
            + f" | {r['train_seconds']:.0f} ({r['images_per_second']:.0f})"
            + f" | {r['frozen_seconds']:.0f} | {backbone_seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
