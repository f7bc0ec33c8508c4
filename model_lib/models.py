"""Model architectures (torch) and the preprocessing each expects. No I/O here."""

from __future__ import annotations

import torch
from torch import nn

from model_lib.efficientnet import VARIANTS, WEIGHTS_MEAN, WEIGHTS_STD, efficientnet_lite
from model_lib.preprocess import TRAINING_CROP_PCT, Preprocessing

# Conventional ImageNet statistics; the scratch CNN could use anything, these
# keep inputs near zero mean / unit variance on natural photos.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def conv_bn_relu(
    in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel,
            stride,
            padding=kernel // 2 if kernel % 2 else 0,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class BaselineCNN(nn.Module):
    """A small VGG-style CNN with batch norm and global average pooling.

    The stem is a 4x4 stride-4 convolution ("patchify", as in ConvNeXt): it
    sees every pixel but goes from 224x224 straight to 56x56. On two CPU cores
    the high-resolution layers are what a from-scratch CNN spends its time on;
    this stem trains several times faster per epoch than a 3x3 stride-2 conv +
    max pool, and the epochs it buys are worth more than the resolution
    (figures in the README, Results). The 14x14 and 7x7 stages get two convs
    each, where depth is cheap.
    """

    def __init__(self, num_classes: int = 2, widths=(32, 64, 128, 256), dropout: float = 0.3):
        super().__init__()
        layers = [conv_bn_relu(3, widths[0], kernel=4, stride=4)]  # 224 -> 56
        in_channels = widths[0]
        for index, width in enumerate(widths[1:]):
            # ceil_mode: small test images never shrink to 0x0
            layers += [nn.MaxPool2d(2, ceil_mode=True), conv_bn_relu(in_channels, width)]
            if index >= 1:  # at 14x14 and below
                layers.append(conv_bn_relu(width, width))
            in_channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(in_channels, num_classes),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels_last is faster for these convs on CPU.
        return self.head(self.features(x.contiguous(memory_format=torch.channels_last)))


def preprocessing_for(architecture: str, image_size: int, class_names) -> Preprocessing:
    if architecture in VARIANTS:
        mean, std = WEIGHTS_MEAN, WEIGHTS_STD
    else:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    return Preprocessing(
        image_size, tuple(mean), tuple(std), tuple(class_names), crop_pct=TRAINING_CROP_PCT
    )


def build_model(architecture: str, num_classes: int) -> nn.Module:
    if architecture == "baseline_cnn":
        return BaselineCNN(num_classes).to(memory_format=torch.channels_last)
    if architecture in VARIANTS:
        return efficientnet_lite(architecture, num_classes=num_classes, pretrained=True)
    raise ValueError(f"unknown architecture {architecture!r}")
