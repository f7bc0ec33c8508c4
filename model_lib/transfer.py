"""Transfer learning: fine-tune the head (and optionally the last blocks) of a
pretrained EfficientNet-Lite (torch).

The frozen layers run through ONNX Runtime (exported in memory from the very
modules that end up in the returned model), the trainable tail in PyTorch.
Speeds and the accuracy each choice below bought: notes/efficientnet.md.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from model_lib.config import TrainConfig
from model_lib.data import PreparedData
from model_lib.efficientnet import efficientnet_lite
from model_lib.export import onnx_bytes
from model_lib.onnx_model import inference_session
from model_lib.preprocess import Preprocessing
from model_lib.training import (
    BatchNormalizer,
    batch_reporter,
    batches,
    evaluate,
    fit_precision,
    pixel_tensors,
    record_epoch,
    steps_per_epoch,
    train_one_epoch,
)

# Epochs 1..FRESH_VIEWS each see a new random augmentation of every training
# image, pushed through the frozen backbone; later epochs replay those cached
# features. Backbone passes are most of the cost, and a second fresh view bought
# nothing measurable on validation over replaying one (notes/models.md), so one.
FRESH_VIEWS = 1
# The trainable part is the last `config.trained_blocks` MBConv blocks, the
# 1280-channel head conv (+BN) and the classifier, at `learning_rate` for the new
# classifier and this fraction of it for the pretrained parts, which only need nudging.
PRETRAINED_LR_FACTOR = 0.1


class OnnxBackbone:
    """The frozen layers, run through ONNX Runtime: several times faster than eager
    PyTorch for this trunk on a CPU, and the frozen pass is most of the fit's time."""

    def __init__(self, frozen: nn.Module, image_size: int, threads: int):
        # Without spinning: ONNX Runtime's idle threads would otherwise busy-wait through
        # the tail's PyTorch step that follows each batch (measured: notes/models.md).
        self.session = inference_session(
            onnx_bytes(frozen, image_size, "features"), threads, spinning=False
        )

    def __call__(self, inputs: torch.Tensor | np.ndarray) -> torch.Tensor:
        inputs = np.ascontiguousarray(inputs, dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {"image": inputs})[0])

    def all(self, inputs: np.ndarray, batch_size: int) -> np.ndarray:
        return np.concatenate(
            [
                self(inputs[start : start + batch_size]).numpy()
                for start in range(0, len(inputs), batch_size)
            ]
        )


class _TrainableTail(nn.Sequential):
    """Trained blocks + head conv + pooling + dropout + classifier, trained on
    backbone features.

    Its batch norm keeps the pretrained running statistics even in training
    mode: with TF's momentum (0.01) they would need hundreds of steps to catch
    up with batch statistics, so a short fit would validate with statistics
    that do not match what the layer was trained on. Its scale and shift
    still learn (as accurate as updating the statistics, on the full data).
    """

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self


def _fresh_view(images, labels, batch_size, generator, augment, backbone, cache: list):
    """Augmented training batches -> backbone features, kept in `cache` (float16)."""
    for batch, targets in batches(images, labels, batch_size, generator):
        features = backbone(augment(batch))
        cache.append((features.half(), targets))
        yield features, targets


def tail_optimizer(model, trained_blocks: nn.Module, config: TrainConfig, train_count: int):
    """AdamW over the trained blocks, head and classifier (the pretrained parts at
    PRETRAINED_LR_FACTOR of the classifier's rate), one-cycle over `config.epochs`."""
    lr = config.learning_rate
    optimizer = torch.optim.AdamW(
        [
            {
                "params": [*trained_blocks.parameters(), *model.head.parameters()],
                "lr": lr * PRETRAINED_LR_FACTOR,
            },
            {"params": model.classifier.parameters(), "lr": lr},
        ],
        weight_decay=config.weight_decay,
    )
    steps = steps_per_epoch(train_count, config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[lr * PRETRAINED_LR_FACTOR, lr],
        total_steps=config.epochs * steps,
        pct_start=0.15,
    )
    return optimizer, scheduler


def fit_transfer(
    config: TrainConfig, data: PreparedData, prep: Preprocessing, outputs: int, on_progress=None
):
    """Fine-tune a pretrained EfficientNet-Lite (`config.architecture`) on `data`: its
    head, classifier and last `config.trained_blocks` MBConv blocks.

    The stem and the other blocks stay frozen: ImageNet features already separate
    cats from dogs. Training the last block as well refuses more photos of unseen
    kinds and calibrates better, at several times the tail's cost (notes/models.md).
    Returns (model in eval mode, per-epoch history).
    """
    model = efficientnet_lite(config.architecture, num_classes=outputs, pretrained=True).eval()
    if not 0 <= config.trained_blocks <= len(model.blocks):
        raise ValueError(
            f"trained_blocks must be in [0, {len(model.blocks)}] for {config.architecture}, "
            f"got {config.trained_blocks}"
        )
    # Frozen by construction: only the tail's parameters reach the optimizer, and
    # the frozen part runs outside autograd (ONNX Runtime).
    first_trained = len(model.blocks) - config.trained_blocks
    trained_blocks = model.blocks[first_trained:]
    frozen = nn.Sequential(model.stem, model.blocks[:first_trained])
    tail = _TrainableTail(trained_blocks, model.head, model.pool, model.dropout, model.classifier)
    backbone = OnnxBackbone(frozen, prep.image_size, torch.get_num_threads())

    generator = torch.Generator().manual_seed(config.seed)
    augment = BatchNormalizer(prep, generator)  # random crop + flip + jitter, normalised
    optimizer, scheduler = tail_optimizer(model, trained_blocks, config, len(data.train_labels))
    steps = steps_per_epoch(len(data.train_labels), config.batch_size)

    train = pixel_tensors(data.train_pixels, data.train_labels)
    precision = fit_precision(config.training_precision)  # of the tail; the trunk is ONNX
    views: list[tuple[torch.Tensor, torch.Tensor]] = []
    val_features, history = None, []
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        if epoch <= FRESH_VIEWS:
            cache: list = []
            loader = _fresh_view(*train, config.batch_size, generator, augment, backbone, cache)
        else:
            loader = batches(*views[(epoch - 1) % len(views)], config.batch_size, generator)
        on_batch = batch_reporter(on_progress, epoch, config.epochs, steps)
        train_stats = train_one_epoch(
            tail, loader, optimizer, scheduler, lambda f: f.float(), on_batch, precision
        )
        if epoch <= FRESH_VIEWS:
            views.append((torch.cat([f for f, _ in cache]), torch.cat([y for _, y in cache])))
        if val_features is None:  # once; part of epoch 1's time
            val_features = backbone.all(data.val_inputs, config.batch_size)
        result = evaluate(
            tail, val_features, data.val_labels, data.pet_classes, precision=precision
        )
        record_epoch(history, epoch, train_stats, result, started, on_progress)
    return model.eval(), history
