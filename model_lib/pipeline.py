"""The training entry: `train(config)` -> a fitted model with its preprocessing.

The `train` flow, the test fixtures and the service tests all call this, so
the pipeline (find and validate the data, split, load, fit, export) is
written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from model_lib import data as data_lib
from model_lib.config import TrainConfig
from model_lib.export import PARITY_TOLERANCE, export_onnx, onnx_parity
from model_lib.models import build_model, preprocessing_for
from model_lib.preprocess import Preprocessing
from model_lib.training import ProgressFn, fit_from_scratch, set_seed
from model_lib.transfer import fit_transfer


@dataclass
class Dataset:
    """The split a run trains on, after validation dropped corrupt files and copies."""

    train_items: list[data_lib.LabeledImage]
    val_items: list[data_lib.LabeledImage]
    class_names: tuple[str, ...]
    report: data_lib.ValidationReport


def load_dataset(config: TrainConfig) -> Dataset:
    """Find, split and validate the pool; raises DataError when it is unusable."""
    items, class_names = data_lib.discover_images(config.data_dir)
    # Validate what this run uses (the fraction), so small runs stay small.
    train_items, val_items = data_lib.split(items, config.val_percent, config.data_fraction)
    report = data_lib.validate_images(train_items + val_items, class_names, config.data_dir)
    dataset = Dataset(
        data_lib.usable(train_items, report),
        data_lib.usable(val_items, report),
        class_names,
        report,
    )
    return dataset


@dataclass
class TrainResult:
    model: nn.Module  # eval mode; takes normalised NCHW float32, returns logits
    preprocessing: Preprocessing
    history: list[dict]  # one dict per epoch
    val_probabilities: np.ndarray
    data: data_lib.PreparedData  # the images as trained on (INT8 calibration reuses them)

    @property
    def val_labels(self) -> np.ndarray:
        return self.data.val_labels


def train(
    config: TrainConfig, dataset: Dataset | None = None, on_progress: ProgressFn | None = None
) -> TrainResult:
    """Train `config.architecture` on `dataset` (by default: `load_dataset(config)`)."""
    dataset = dataset or load_dataset(config)
    if not dataset.report.ok:
        raise data_lib.DataError("data validation failed: " + "; ".join(dataset.report.errors))
    set_seed(config.seed)
    prep = preprocessing_for(config.architecture, config.image_size, dataset.class_names)
    data = data_lib.prepare_data(dataset.train_items, dataset.val_items, prep)
    if config.architecture == "efficientnet_lite0":
        model, history, val_probs = fit_transfer(config, data, prep, on_progress)
    else:
        model = build_model(config.architecture, len(dataset.class_names))
        history, val_probs = fit_from_scratch(config, model, data, prep, on_progress)
    return TrainResult(model.eval(), prep, history, val_probs, data)


def export(result: TrainResult, path: str | Path) -> tuple[Path, float]:
    """The ONNX file the service runs; refused when it does not match PyTorch.
    Returns (path, max abs logit difference on validation inputs)."""
    path = export_onnx(result.model, path, result.preprocessing)
    parity = onnx_parity(result.model, path, result.data.val_inputs[:16])
    if parity > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX export differs from PyTorch by {parity:.2e} > {PARITY_TOLERANCE}")
    return path, parity
