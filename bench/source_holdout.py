"""How often is a photo answered `neither` when its whole source was never trained on?

`other_images/` has four sources (Caltech-101 objects and animals, clothing, BSDS500
photos, SUN scenes). Training splits them by kind, so the `neither` figures it reports
are on kinds the model never saw, but from sources it did see. The photos a site meets,
and the hidden set #19 is checked on, come from other sources. Here each source in turn
is left out of training and out of the decision rule (temperature and threshold are
fitted on validation without it), and the model is scored on that source's validation
and test photos; the first run leaves nothing out and scores the same photos, as the
reference (unseen kinds of a seen source).

The tail is the `transfer` deployment's (bench.tail_recipe's `default` recipe, or
others with `--recipes`), on the cached trunk views (the same cache as
bench.tail_recipe). Nothing here chooses anything for training: it says what to expect
on photos from elsewhere.

    python -m bench.source_holdout [--seeds 42,43] [--cache DIR]

`--outlier-val-percent 10` moves half of the validation kinds into training (the test
kinds stay as they are), to see whether more kinds trained on help a new source. Two such
configurations are compared on the held-out source's photos that are validation kinds in
both (`--common-val-percent`, the first buckets after the test ones), never on test.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from bench.stage_finetune import THREADS, cut_activations, logits_of
from bench.tail_recipe import LITE2_BLOCKS, RECIPES, TRAINED_BLOCKS, train_tail, transfer_config
from model_lib import data as data_lib
from model_lib.assessment import calibrate, score
from model_lib.decision import NEITHER, DecisionRule
from model_lib.pipeline import load_dataset

PETS = "pets"


def sources_of(items, outlier_dir: str, pet_count: int) -> np.ndarray:
    """Each photo's source: `pets`, or the first folder under `outlier_dir`."""
    root = Path(outlier_dir).resolve()
    return np.asarray(
        [
            PETS if item.label < pet_count else item.path.resolve().relative_to(root).parts[0]
            for item in items
        ]
    )


def kind_buckets(items, outlier_dir: str) -> np.ndarray:
    """Each photo's split bucket of its kind (the group key model_lib.data.discover_outliers
    gives it); -1 for pets."""
    _, kinds = data_lib.discover_outliers(outlier_dir, label=-1)
    return np.asarray(
        [
            data_lib.stable_bucket(kinds[item.path], salt="split:") if item.path in kinds else -1
            for item in items
        ]
    )


def without(cached: dict, train_keep: np.ndarray, val_keep: np.ndarray) -> dict:
    """The cached views and validation with only the kept photos."""
    kept = dict(cached)
    for key in cached:
        if key.startswith("train") and key != "train_seconds":
            kept[key] = cached[key][train_keep]
    kept["val"], kept["val_labels"] = cached["val"][val_keep], cached["val_labels"][val_keep]
    return kept


def refused(rule: DecisionRule, logits: np.ndarray) -> float:
    """Share of these photos that the rule answers `neither`."""
    answers = rule.labels(rule.probabilities(logits))
    return float((answers == rule.outputs.index(NEITHER)).mean())


def run(
    held_out: str | None,
    recipe: str,
    seed: int,
    cached: dict,
    sources: dict,
    config,
    common_val: np.ndarray,
) -> dict:
    """Train without `held_out` (None: with every source); figures on each source's
    validation and test photos, under the rule fitted on validation without it."""
    train_keep = sources["train"] != held_out
    val_keep = sources["val"] != held_out
    trimmed = without(cached, train_keep, val_keep)
    tail, history, _ = train_tail(RECIPES[recipe], seed, trimmed, config)
    outputs = tuple(str(name) for name in cached["outputs"])
    val_logits = logits_of(tail, trimmed["val"].astype(np.float32))
    rule = calibrate(outputs, val_logits, trimmed["val_labels"])
    fitted = score(rule, val_logits, trimmed["val_labels"]).metrics
    pooled = {
        split: (logits_of(tail, cached[split].astype(np.float32)), cached[f"{split}_labels"])
        for split in ("val", "test")
    }
    pet_test = sources["test"] == PETS
    test_pets = score(rule, pooled["test"][0][pet_test], pooled["test"][1][pet_test]).metrics
    common = (sources["val"] == held_out) & common_val
    common_refused = (refused(rule, pooled["val"][0][common]), int(common.sum()))
    held_test = sources["test"] == held_out
    test_refused = (refused(rule, pooled["test"][0][held_test]), int(held_test.sum()))
    by_source = {}
    for source in sorted((set(sources["val"]) | set(sources["test"])) - {PETS}):
        picks = [(split, sources[split] == source) for split in ("val", "test")]
        logits = np.concatenate([pooled[split][0][mask] for split, mask in picks])
        by_source[source] = (refused(rule, logits), len(logits))
    return {
        "held_out": held_out or "nothing",
        "recipe": recipe,
        "seed": seed,
        "val_pets_answered_neither": fitted["pets_answered_neither"],
        "val_others_answered_neither": fitted["others_answered_neither"],
        "test_pet_accuracy": test_pets["accuracy"],
        "by_source": by_source,
        "held_out_common_val": common_refused,
        "held_out_test": test_refused,
        "history": history,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="42", help="comma-separated")
    parser.add_argument("--recipes", default="default", help="bench.tail_recipe's, comma-separated")
    parser.add_argument("--held-out", help="comma-separated sources (default: each in turn)")
    parser.add_argument("--data-fraction", type=float, default=1.0, help="for a quick try")
    parser.add_argument("--cache", type=Path, help="keep the backbone pass in this folder")
    parser.add_argument(
        "--outlier-val-percent",
        type=int,
        default=data_lib.OUTLIER_VAL_PERCENT,
        help="share of kinds for validation (a separate --cache per value)",
    )
    parser.add_argument("--common-val-percent", type=int, default=10)
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(THREADS)
    # The split reads this module constant at load time; a bench-only override.
    data_lib.OUTLIER_VAL_PERCENT = args.outlier_val_percent

    # The cached views belong to the first seed's config, as in bench.tail_recipe.
    config = transfer_config(seeds[0], args.data_fraction)
    dataset = load_dataset(config)
    pet_count = len(dataset.class_names)
    sources = {
        split: sources_of(getattr(dataset, f"{split}_items"), config.outlier_dir, pet_count)
        for split in ("train", "val", "test")
    }
    views = max(RECIPES[name].views for name in args.recipes.split(","))  # trunk passes needed
    cached = cut_activations(config, LITE2_BLOCKS - TRAINED_BLOCKS, args.cache, views)
    for split in ("train", "val", "test"):
        if len(sources[split]) != len(cached[f"{split}_labels"]):
            raise SystemExit(f"the cache's {split} split does not match the data: delete it")
    first = data_lib.OUTLIER_TEST_PERCENT
    val_buckets = kind_buckets(dataset.val_items, config.outlier_dir)
    common_val = (val_buckets >= first) & (val_buckets < first + args.common_val_percent)
    outliers = sorted(set(sources["train"]) - {PETS})
    held = args.held_out.split(",") if args.held_out else outliers
    rows = []
    for seed in seeds:
        for recipe in args.recipes.split(","):
            for held_out in [None, *held]:
                print(f"held out: {held_out or 'nothing'}, {recipe}, seed {seed}", flush=True)
                rows.append(run(held_out, recipe, seed, cached, sources, config, common_val))
                print_table(rows, outliers)


def print_table(rows: list[dict], outliers: list[str]) -> None:
    cells = " | ".join(f"{source} answered neither" for source in outliers)
    print(
        f"| left out of training | recipe | seed | val pets answered neither | val others answered "
        f"neither | test pet accuracy | held out, common val kinds | held out, test | {cells} |"
    )
    print("| --- " * (8 + len(outliers)) + "|")
    for r in rows:
        figures = []
        for source in outliers:
            share, count = r["by_source"][source]
            cell = f"{100 * share:.2f} % ({count})"
            figures.append(f"**{cell}**" if source == r["held_out"] else cell)
        print(
            f"| {r['held_out']} | {r['recipe']} | {r['seed']} | "
            f"{100 * r['val_pets_answered_neither']:.2f} % | "
            f"{100 * r['val_others_answered_neither']:.2f} % | "
            f"{100 * r['test_pet_accuracy']:.2f} % | {share_cell(r['held_out_common_val'])} | "
            f"{share_cell(r['held_out_test'])} | {' | '.join(figures)} |",
            flush=True,
        )


def share_cell(figure: tuple[float, int]) -> str:
    share, count = figure
    return f"{100 * share:.2f} % ({count})" if count else "-"


if __name__ == "__main__":
    main()
