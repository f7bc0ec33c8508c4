"""What does the transfer fit's recipe buy, at the same serving cost?

The `transfer` deployment trains Lite2's last MBConv block, head conv and classifier
(`trained_blocks: 1`) for 5 epochs: `FRESH_VIEWS` (one) fresh augmented view through the
frozen trunk, then replays of it. Each recipe below changes one thing, on the same cached views
(the trunk up to block 20 runs once per view through ONNX Runtime, as fit_transfer's
backbone), the same optimizer, one-cycle schedule, learning rates and bf16-mixed tail
(float32 on a CPU without native bfloat16, as the flow):

- `default`: as the deployment;
- `epochs8`: 8 epochs (3 more replays, about 31 s each in the flow);
- `swa`: the tail's weights averaged over the ends of epochs 3-5 (free at serving;
  batch-norm statistics are frozen in this fit, so the average needs no BN update);
- `smooth`: label smoothing 0.1;
- `views1`, `views2`, `views3`: that many fresh views, then replays (each view is one
  trunk pass in the flow: about 160-200 s; the default was `views2` until 2026-12-08);
- `neither2`: the photos that are neither weigh twice as much in the loss;
- `mixup`: each batch's tail inputs (block 20's input) mixed in pairs, the loss mixed
  alike (manifold mixup, alpha 0.2; free at serving).

Each recipe then gets its temperature and `neither` threshold fitted on validation
(model_lib.assessment) on its float32 PyTorch logits. Validation decides; test is
reported only. Several `--seeds` change the initial classifier, dropout and batch
order (the cached views stay those of the first seed), which says how much of a
difference is noise.

    python -m bench.tail_recipe [--recipes default,swa] [--seeds 42,43] [--cache DIR]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from bench.stage_finetune import FIGURES, THREADS, cut_activations, scored
from model_lib.config import TrainConfig
from model_lib.efficientnet import efficientnet_lite
from model_lib.training import batches, evaluate, fit_precision, train_one_epoch
from model_lib.transfer import FRESH_VIEWS, _TrainableTail, tail_optimizer

LITE2_BLOCKS = 21
TRAINED_BLOCKS = 1  # as the `transfer` deployment


@dataclass(frozen=True)
class Recipe:
    epochs: int = 5
    views: int = FRESH_VIEWS
    average_from: int = 0  # average the weights of epochs >= this (0: the last epoch's)
    label_smoothing: float = 0.0
    neither_weight: float = 1.0  # the loss weight of the last output (`neither`)
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) mixing of tail inputs (0: none)


RECIPES = {
    "default": Recipe(),
    "epochs8": Recipe(epochs=8),
    "swa": Recipe(average_from=3),
    "smooth": Recipe(label_smoothing=0.1),
    "views1": Recipe(views=1),
    "views2": Recipe(views=2),
    "views3": Recipe(views=3),
    "neither2": Recipe(neither_weight=2.0),
    "mixup": Recipe(mixup_alpha=0.2),
}


def fit_recipe(recipe: Recipe, seed: int, cached: dict, config: TrainConfig) -> dict:
    """Train the tail with `recipe` on the cached views; its figures and history."""
    tail, history, seconds = train_tail(recipe, seed, cached, config)
    outputs = tuple(str(name) for name in cached["outputs"])
    val, test = cached["val"].astype(np.float32), cached["test"].astype(np.float32)
    return {
        **scored(tail, outputs, val, test, cached),
        "history": history,
        "seconds": seconds,
    }


def train_tail(recipe: Recipe, seed: int, cached: dict, config: TrainConfig):
    """The tail trained with `recipe` on the cached views (eval mode), the validation
    pet accuracy after each epoch, and the training seconds."""
    outputs = tuple(str(name) for name in cached["outputs"])
    torch.manual_seed(seed)
    model = efficientnet_lite(config.architecture, num_classes=len(outputs)).eval()
    trained = model.blocks[LITE2_BLOCKS - TRAINED_BLOCKS :]
    tail = _TrainableTail(trained, model.head, model.pool, model.dropout, model.classifier)
    labels = torch.from_numpy(cached["train_labels"])
    views = [(torch.from_numpy(cached[f"train{v}"]), labels) for v in range(recipe.views)]
    val = cached["val"].astype(np.float32)

    optimizer, scheduler = tail_optimizer(
        model, trained, replace(config, epochs=recipe.epochs), len(labels)
    )
    generator = torch.Generator().manual_seed(seed)
    weights = torch.ones(len(outputs))
    weights[-1] = recipe.neither_weight
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights, label_smoothing=recipe.label_smoothing)
    if recipe.mixup_alpha:
        mixer = _Mixup(recipe.mixup_alpha, generator, loss_fn)
        loss_fn = mixer.loss
    averaged, history, seconds = None, [], 0.0
    for epoch in range(1, recipe.epochs + 1):
        loader = batches(*views[(epoch - 1) % len(views)], config.batch_size, generator)
        if recipe.mixup_alpha:
            loader = mixer.mixed(loader)
        started = time.perf_counter()
        train_one_epoch(
            tail,
            loader,
            optimizer,
            scheduler,
            lambda f: f.float(),
            precision=config.training_precision,
            loss_fn=loss_fn,
        )
        seconds += time.perf_counter() - started
        if recipe.average_from and epoch >= recipe.average_from:
            weights = {k: v.detach().clone().float() for k, v in tail.state_dict().items()}
            averaged = _running_mean(averaged, weights, epoch - recipe.average_from + 1)
        history.append(round(100 * evaluate(tail, val, cached["val_labels"], 2)["val_accuracy"], 2))
        print(f"  epoch {epoch}: val pet accuracy {history[-1]:.2f} %", flush=True)
    if averaged is not None:
        tail.load_state_dict(averaged)
        history.append(round(100 * evaluate(tail, val, cached["val_labels"], 2)["val_accuracy"], 2))
        print(f"  averaged: val pet accuracy {history[-1]:.2f} %", flush=True)

    return tail.eval(), history, seconds


class _Mixup:
    """Mixes each batch with a shuffled copy of itself; `loss` mixes the two targets'
    losses with the same weight (train_one_epoch sees the unmixed labels)."""

    def __init__(self, alpha: float, generator: torch.Generator, loss_fn) -> None:
        self.beta = torch.distributions.Beta(alpha, alpha)
        self.generator, self.loss_fn = generator, loss_fn
        self.weight, self.partner = 1.0, None

    def mixed(self, loader):
        for inputs, labels in loader:
            self.weight = float(self.beta.sample())
            self.partner = torch.randperm(len(labels), generator=self.generator)
            inputs = inputs.float()
            yield self.weight * inputs + (1 - self.weight) * inputs[self.partner], labels

    def loss(self, logits, labels):
        return self.weight * self.loss_fn(logits, labels) + (1 - self.weight) * self.loss_fn(
            logits, labels[self.partner]
        )


def _running_mean(mean: dict | None, weights: dict, count: int) -> dict:
    if mean is None:
        return weights
    return {k: mean[k] + (weights[k] - mean[k]) / count for k in mean}


def transfer_config(seed: int, data_fraction: float) -> TrainConfig:
    """The `transfer` deployment's settings that the tail benches depend on."""
    return TrainConfig(
        architecture="efficientnet_lite2",
        image_size=260,
        learning_rate=0.003,
        seed=seed,
        data_fraction=data_fraction,
        # as the flow: float32 where the CPU has no native bfloat16 (emulated is far slower)
        training_precision=fit_precision("bf16-mixed"),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated")
    parser.add_argument("--seeds", default="42", help="comma-separated")
    parser.add_argument("--data-fraction", type=float, default=1.0, help="for a quick try")
    parser.add_argument("--cache", type=Path, help="keep the backbone pass in this folder")
    args = parser.parse_args(argv)
    recipes = args.recipes.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(THREADS)

    config = transfer_config(seeds[0], args.data_fraction)
    views = max(RECIPES[name].views for name in recipes)
    cached = cut_activations(config, LITE2_BLOCKS - TRAINED_BLOCKS, args.cache, views)
    print(
        f"trunk to block {LITE2_BLOCKS - TRAINED_BLOCKS}: {len(cached['train_labels'])} "
        f"training images x {views} views in {float(cached['train_seconds']):.0f} s",
        flush=True,
    )
    rows = []
    for seed in seeds:
        for name in recipes:
            print(f"{name}, seed {seed}:", flush=True)
            rows.append((name, seed, fit_recipe(RECIPES[name], seed, cached, config)))
            print_table(rows)


def print_table(rows, first_column: str = "recipe") -> None:
    """A Markdown table of (name, seed, figures) rows: validation and test figures."""
    cells = " | ".join(f"{split} {k}" for split in ("val", "test") for k in FIGURES)
    print(f"| {first_column} | seed | {cells} | val pet acc. per epoch | tail s |")
    print("| --- " * (4 + 2 * len(FIGURES)) + "|")
    for name, seed, r in rows:
        figures = [f"{100 * r[split][k]:.2f}" for split in ("val", "test") for k in FIGURES]
        print(
            f"| {name} | {seed} | {' | '.join(figures)} | {' / '.join(map(str, r['history']))}"
            f" | {r['seconds']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
