"""Training and evaluation loops (torch), composed by `train`.

Images are decoded and resized once into memory (uint8); augmentation runs on
those tensors each epoch. Validation input comes from `preprocess.to_model_input`,
the same code the service runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from model_lib.config import TrainConfig
from model_lib.data import LabeledImage
from model_lib.metrics import accuracy
from model_lib.models import build_model, preprocessing_for
from model_lib.preprocess import Preprocessing, decode_image, normalize, resize

ProgressFn = Callable[[dict], None]


def set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def load_pixels(items: list[LabeledImage], image_size: int, progress=None) -> np.ndarray:
    """Decode and resize every image once: uint8 array (N, S, S, 3)."""
    pixels = np.empty((len(items), image_size, image_size, 3), np.uint8)
    iterator = progress(items) if progress else items
    for index, item in enumerate(iterator):
        pixels[index] = resize(decode_image(item.path.read_bytes()), image_size)
    return pixels


def labels_of(items: list[LabeledImage]) -> np.ndarray:
    return np.asarray([i.label for i in items], np.int64)


TRAIN_MARGIN = 8 / 7  # training images are stored this much larger (256 px for 224) ...


def augment(batch: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """... so a random `size` crop is a cheap zoom + shift; plus flips and
    brightness/contrast jitter. uint8 NCHW in, float [0, 1] out.

    Slicing costs almost nothing; per-image torchvision transforms cost ~90 ms
    an image on this CPU, more than the forward and backward pass.
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


def batches(pixels: np.ndarray, labels: np.ndarray, batch_size: int, generator: torch.Generator):
    """Shuffled (uint8 NCHW, labels) batches; a last batch smaller than half is dropped."""
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2)  # a view, no copy
    targets = torch.from_numpy(labels)
    order = torch.randperm(len(labels), generator=generator)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        if len(index) < max(2, batch_size // 2) and start > 0:
            break
        yield images[index], targets[index]


class BatchNormalizer:
    """uint8 NCHW batch -> float in [0, 1] (randomly cropped to `augment_to` and
    jittered when training) -> normalised with the model's mean and std."""

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


def train_one_epoch(model, loader, optimizer, scheduler, normalizer, on_batch=None) -> dict:
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    total_loss, correct, seen = 0.0, 0, 0
    started = time.perf_counter()
    for images, labels in loader:
        logits = model(normalizer(images))
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


@torch.no_grad()
def evaluate(model, inputs: np.ndarray, labels: np.ndarray, batch_size: int = 128) -> dict:
    """Loss and class probabilities on preprocessed float32 NCHW input."""
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total_loss, probabilities = 0.0, []
    for start in range(0, len(labels), batch_size):
        batch = torch.from_numpy(inputs[start : start + batch_size])
        target = torch.from_numpy(labels[start : start + batch_size])
        logits = model(batch)
        total_loss += loss_fn(logits, target).item()
        probabilities.append(torch.softmax(logits, 1).numpy())
    probs = np.concatenate(probabilities)
    return {
        "val_loss": total_loss / len(labels),
        "val_accuracy": accuracy(probs, labels),
        "probabilities": probs,
    }


@dataclass
class TrainResult:
    model: nn.Module  # eval mode; takes normalised NCHW float32, returns logits
    preprocessing: Preprocessing
    history: list[dict]  # one dict per epoch
    val_probabilities: np.ndarray
    val_labels: np.ndarray


@dataclass
class PreparedData:
    train_pixels: np.ndarray  # uint8 NHWC, resized to image_size * TRAIN_MARGIN
    train_labels: np.ndarray
    val_inputs: np.ndarray  # float32 NCHW, the eval transform's output
    val_labels: np.ndarray


def prepare_data(
    config, train_items, val_items, prep: Preprocessing, progress=None
) -> PreparedData:
    train_pixels = load_pixels(train_items, round(config.image_size * TRAIN_MARGIN), progress)
    val_pixels = load_pixels(val_items, config.image_size, progress)
    return PreparedData(
        train_pixels=train_pixels,
        train_labels=labels_of(train_items),
        # Same arithmetic as to_model_input (resize then normalize), batched.
        val_inputs=normalize(val_pixels, prep),
        val_labels=labels_of(val_items),
    )


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
    """SGD with one-cycle LR over `config.epochs`; returns per-epoch history."""
    generator = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = len(list(range(0, len(data.train_labels), config.batch_size)))
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.learning_rate,
        momentum=0.9,
        nesterov=True,
        weight_decay=config.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=config.learning_rate,
        total_steps=config.epochs * steps_per_epoch + 1,
        pct_start=0.25,
    )
    normalizer = BatchNormalizer(prep, generator)
    history, result = [], None
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        on_batch = batch_reporter(on_progress, epoch, config.epochs, steps_per_epoch)
        loader = batches(data.train_pixels, data.train_labels, config.batch_size, generator)
        train_stats = train_one_epoch(model, loader, optimizer, scheduler, normalizer, on_batch)
        result = evaluate(model, data.val_inputs, data.val_labels)
        record_epoch(history, epoch, train_stats, result, started, on_progress)
    return history, result["probabilities"]


def train(
    config: TrainConfig, data: PreparedData, class_names, on_progress: ProgressFn | None = None
):
    set_seed(config.seed)
    prep = preprocessing_for(config.architecture, config.image_size, class_names)
    if config.architecture == "efficientnet_lite0":
        from model_lib.efficientnet import fit_transfer

        model, history, val_probs = fit_transfer(config, data, prep, on_progress)
    else:
        model = build_model(config.architecture, len(class_names))
        history, val_probs = fit_from_scratch(config, model, data, prep, on_progress)
    model.eval()
    return TrainResult(model, prep, history, val_probs, data.val_labels)
