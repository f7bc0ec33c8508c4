"""The training entry: `train(config)` -> a fitted model with its preprocessing.

The `train` flow, the test fixtures and the service tests all call this, so
the pipeline (find and validate the data, split, load, fit, export) is
written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from model_lib import data as data_lib
from model_lib.assessment import Assessment, assess
from model_lib.config import TrainConfig
from model_lib.decision import NEITHER
from model_lib.export import PARITY_TOLERANCE, export_onnx, onnx_parity
from model_lib.models import build_model, preprocessing_for
from model_lib.preprocess import Preprocessing
from model_lib.training import ProgressFn, fit_from_scratch, set_seed
from model_lib.transfer import fit_transfer


@dataclass
class Dataset:
    """The splits a run uses, after validation dropped corrupt files and copies.

    Each split lists the pet photos, then the photos that are neither (label
    `len(class_names)`, split by kind: see data.discover_outliers)."""

    train_items: list[data_lib.LabeledImage]
    val_items: list[data_lib.LabeledImage]
    test_items: list[data_lib.LabeledImage]
    class_names: tuple[str, ...]  # the pet classes, from the folder names
    report: data_lib.ValidationReport
    outlier_report: data_lib.ValidationReport | None = None

    @property
    def outputs(self) -> tuple[str, ...]:
        """The model's outputs: the pet classes, then `neither` when trained on outliers."""
        return self.class_names + ((NEITHER,) if self.outlier_report else ())

    def pets(self, items: list[data_lib.LabeledImage]) -> list[data_lib.LabeledImage]:
        return [item for item in items if item.label < len(self.class_names)]


def load_dataset(config: TrainConfig) -> Dataset:
    """Find, split and validate the pool; raises DataError when it is unusable."""
    items, class_names = data_lib.discover_images(config.data_dir)
    splits = data_lib.split(
        items,
        config.val_percent,
        config.test_percent,
        config.data_fraction,
        data_lib.near_duplicate_keys(items),  # over the whole pool: a copy shares its split
    )
    # Validate what this run uses (the fraction), so small runs stay small.
    used = splits.train + splits.val + splits.test
    report = data_lib.validate_images(used, class_names, config.data_dir)
    parts = [data_lib.usable(part, report) for part in (splits.train, splits.val, splits.test)]
    outlier_report = None
    if config.outlier_dir:
        outliers, kinds = data_lib.discover_outliers(config.outlier_dir, len(class_names))
        by_kind = data_lib.split(
            outliers,
            data_lib.OUTLIER_VAL_PERCENT,
            data_lib.OUTLIER_TEST_PERCENT,
            config.data_fraction,
            kinds,
        )
        used = by_kind.train + by_kind.val + by_kind.test
        outlier_report = data_lib.validate_images(
            used, class_names + (NEITHER,), config.outlier_dir, min_per_class=0
        )
        if outlier_report.ok and not by_kind.train:
            outlier_report.errors.append("no photo that is neither left to train on")
        for part, extra in zip(parts, (by_kind.train, by_kind.val, by_kind.test), strict=True):
            part.extend(data_lib.usable(extra, outlier_report))
    return Dataset(*parts, class_names, report, outlier_report)


@dataclass
class TrainResult:
    model: nn.Module  # eval mode; takes normalised NCHW float32, returns logits
    preprocessing: Preprocessing
    outputs: tuple[str, ...]  # what the logits stand for: the pet classes (+ neither)
    history: list[dict]  # one dict per epoch
    data: data_lib.PreparedData  # the images as trained on (INT8 calibration reuses them)


def train(
    config: TrainConfig, dataset: Dataset | None = None, on_progress: ProgressFn | None = None
) -> TrainResult:
    """Train `config.architecture` on `dataset` (by default: `load_dataset(config)`)."""
    dataset = dataset or load_dataset(config)
    for report in filter(None, (dataset.report, dataset.outlier_report)):
        if not report.ok:
            raise data_lib.DataError("data validation failed: " + "; ".join(report.errors))
    set_seed(config.seed)
    prep = preprocessing_for(config.architecture, config.image_size, dataset.class_names)
    data = data_lib.prepare_data(dataset.train_items, dataset.val_items, dataset.test_items, prep)
    outputs = dataset.outputs
    if config.architecture == "efficientnet_lite0":
        model, history = fit_transfer(config, data, prep, len(outputs), on_progress)
    else:
        model = build_model(config.architecture, len(outputs))
        history = fit_from_scratch(config, model, data, prep, on_progress)
    return TrainResult(model.eval(), prep, outputs, history, data)


def export(result: TrainResult, path: str | Path) -> tuple[Path, float, Assessment]:
    """The ONNX file the service runs, refused when it does not match PyTorch, with its
    decision rule fitted on validation (stored in the file) and its figures.
    Returns (path, max abs logit difference on validation inputs, assessment)."""
    path = export_onnx(result.model, path, result.preprocessing)
    parity = onnx_parity(result.model, path, result.data.val_inputs[:16])
    if parity > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX export differs from PyTorch by {parity:.2e} > {PARITY_TOLERANCE}")
    return path, parity, assess(path, result.data, result.outputs)
