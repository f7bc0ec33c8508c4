"""Training and evaluation loops (torch): one epoch, one evaluation, one fit from scratch.

Images are decoded and resized once into memory (`data.prepare_data`);
augmentation runs on those tensors each epoch. Both fits (this one and
`transfer.fit_transfer`) share `batches`, `steps_per_epoch`, `train_one_epoch`,
`evaluate` and the epoch bookkeeping.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from model_lib.config import TrainConfig
from model_lib.data import PreparedData
from model_lib.preprocess import Preprocessing

ProgressFn = Callable[[dict], None]

log = logging.getLogger(__name__)


def precision_used(requested: str) -> str:
    """The training precision this CPU runs: "bf16-mixed" needs native bfloat16
    (oneDNN's check: AVX512-BF16 or AMX), else it would be slower than float32."""
    if requested == "bf16-mixed" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "32-true"
    return requested


def fit_precision(requested: str) -> str:
    """`precision_used`, saying so once per fit when the CPU changes what was asked for."""
    used = precision_used(requested)
    if used != requested:
        log.warning("this CPU has no native bfloat16: training in float32 (%s) instead", used)
    return used


def forward_context(precision: str):
    """Where a training step's forward pass runs: bfloat16 autocast for "bf16-mixed"
    (convolutions and matmuls in bfloat16, parameters and gradients float32)."""
    if precision == "bf16-mixed":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def augment(batch: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """A random `size` crop of the larger stored image (a cheap zoom and shift), flips,
    brightness/contrast jitter. uint8 NCHW in, float [0, 1] out.

    Slicing costs almost nothing, where per-image torchvision transforms cost
    more than the forward and backward pass on this CPU.
    """
    n, _, height, width = batch.shape
    offsets_y = torch.randint(0, height - size + 1, (n,), generator=generator).tolist()
    offsets_x = torch.randint(0, width - size + 1, (n,), generator=generator).tolist()
    flips = (torch.rand(n, generator=generator) < 0.5).tolist()
    crops = []
    for image, y, x, flip in zip(batch, offsets_y, offsets_x, flips, strict=True):
        crop = image[:, y : y + size, x : x + size]
        crops.append(crop.flip(-1) if flip else crop)
    out = torch.stack(crops).float() / 255.0
    contrast = 0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=generator)
    brightness = 0.2 * torch.rand(n, 1, 1, 1, generator=generator) - 0.1
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return ((out - mean) * contrast + mean + brightness).clamp(0, 1)


def _keeps(batch_len: int, batch_size: int) -> bool:
    # A last batch under half a batch would be one noisy step: dropped, unless it is all there is.
    return batch_len >= max(2, batch_size // 2)


def steps_per_epoch(count: int, batch_size: int) -> int:
    """How many batches `batches` yields for `count` examples."""
    full, rest = divmod(count, batch_size)
    return full + (rest > 0 and (full == 0 or _keeps(rest, batch_size)))


def batches(inputs: torch.Tensor, targets: torch.Tensor, batch_size: int, generator):
    """Shuffled (inputs, targets) batches of one epoch."""
    order = torch.randperm(len(targets), generator=generator)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        if start > 0 and not _keeps(len(index), batch_size):
            break
        yield inputs[index], targets[index]


def pixel_tensors(pixels: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NHWC array -> NCHW tensor view (no copy), and the labels."""
    return torch.from_numpy(pixels).permute(0, 3, 1, 2), torch.from_numpy(labels)


class BatchNormalizer:
    """uint8 NCHW batch -> float in [0, 1] (randomly augmented when training) ->
    normalised with the model's mean and std."""

    def __init__(self, prep: Preprocessing, generator: torch.Generator | None = None):
        self.mean = torch.tensor(prep.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(prep.std).view(1, 3, 1, 1)
        self.size = prep.image_size
        self.generator = generator  # augment when given (training), not otherwise

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.generator is not None:
            scaled = augment(batch, self.size, self.generator)
        else:
            scaled = batch.float() / 255.0
        return (scaled - self.mean) / self.std


def train_one_epoch(
    model,
    loader,
    optimizer,
    scheduler,
    normalizer,
    on_batch=None,
    precision: str = "32-true",
    loss_fn: nn.Module | None = None,
) -> dict:
    """One pass over `loader`; `loss_fn` defaults to plain cross-entropy."""
    model.train()
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    total_loss, correct, seen = 0.0, 0, 0
    started = time.perf_counter()
    for images, labels in loader:
        with forward_context(precision):
            logits = model(normalizer(images)).float()
        loss = loss_fn(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total_loss += loss.item() * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
        if on_batch:
            on_batch(
                {"loss": loss.item(), "images_per_second": seen / (time.perf_counter() - started)}
            )
    return {
        "train_loss": total_loss / seen,
        "train_accuracy": correct / seen,
        "images_per_second": seen / (time.perf_counter() - started),
    }


def pet_accuracy(probabilities: np.ndarray, labels: np.ndarray, pet_classes: int) -> float:
    """Share of pet photos whose more probable pet class is right (before any
    `neither` threshold, which is fitted after training)."""
    pets = labels < pet_classes
    if not pets.any():
        return 0.0
    return float((probabilities[pets, :pet_classes].argmax(1) == labels[pets]).mean())


@torch.no_grad()
def evaluate(
    model,
    inputs: np.ndarray,
    labels: np.ndarray,
    pet_classes: int,
    batch_size: int = 128,
    precision: str = "32-true",
) -> dict:
    """Loss (all outputs) and pet accuracy on preprocessed float32 NCHW input, in the
    training precision: this per-epoch figure follows the fit; the exported file's
    figures (assessment) are what count, and the file is float32 either way."""
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total_loss, probabilities = 0.0, []
    for start in range(0, len(labels), batch_size):
        batch = torch.from_numpy(inputs[start : start + batch_size])
        target = torch.from_numpy(labels[start : start + batch_size])
        with forward_context(precision):
            logits = model(batch).float()
        total_loss += loss_fn(logits, target).item()
        probabilities.append(torch.softmax(logits, 1).numpy())
    probs = np.concatenate(probabilities)
    return {
        "val_loss": total_loss / len(labels),
        "val_accuracy": pet_accuracy(probs, labels, pet_classes),
    }


def batch_reporter(on_progress, epoch: int, epochs: int, total: int):
    """The per-batch callback `train_one_epoch` takes (None when nobody listens)."""
    if on_progress is None:
        return None
    return lambda stats: on_progress({"epoch": epoch, "epochs": epochs, "total": total, **stats})


def record_epoch(
    history: list, epoch: int, train_stats: dict, result: dict, started: float, on_progress=None
) -> None:
    """Append one epoch's figures to `history` and report them."""
    history.append(
        {
            "epoch": epoch,
            **train_stats,
            "val_loss": result["val_loss"],
            "val_accuracy": result["val_accuracy"],
            "seconds": time.perf_counter() - started,
        }
    )
    if on_progress:
        on_progress({"epoch_done": True, **history[-1]})


def fit_from_scratch(config: TrainConfig, model, data: PreparedData, prep, on_progress=None):
    """SGD with one-cycle LR over `config.epochs`; returns the per-epoch history."""
    generator = torch.Generator().manual_seed(config.seed)
    steps = steps_per_epoch(len(data.train_labels), config.batch_size)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.learning_rate,
        momentum=0.9,
        nesterov=True,
        weight_decay=config.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=config.epochs * steps, pct_start=0.25
    )
    normalizer = BatchNormalizer(prep, generator)
    images, labels = pixel_tensors(data.train_pixels, data.train_labels)
    precision = fit_precision(config.training_precision)
    history, result = [], None
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        on_batch = batch_reporter(on_progress, epoch, config.epochs, steps)
        loader = batches(images, labels, config.batch_size, generator)
        train_stats = train_one_epoch(
            model, loader, optimizer, scheduler, normalizer, on_batch, precision
        )
        result = evaluate(
            model, data.val_inputs, data.val_labels, data.pet_classes, precision=precision
        )
        record_epoch(history, epoch, train_stats, result, started, on_progress)
    return history
