"""Tiny models and images shared by estimator, worker and API tests."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from flipwatch.workers.estimation.zoo import tiny


def no_batchnorm(num_classes: int = 10) -> nn.Module:
    """An entrypoint without BatchNorm, which loading and registration must refuse."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, num_classes),
    )


def confident_tiny(num_classes: int = 10, *, seed: int = 0) -> nn.Module:
    """The random-init tiny CNN with its head scaled up, so predictions are confident (low
    entropy, as a trained model's are) and samples pass the reliability filter."""
    torch.manual_seed(seed)
    model = tiny(num_classes=num_classes, in_channels=3).eval()
    with torch.no_grad():
        model.fc.weight.mul_(40.0)
    return model


def blob_images(n: int, *, seed: int = 0) -> torch.Tensor:
    """n structured 32×32 RGB images (smooth random blobs), uint8 (n, 3, 32, 32)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 8, 8, generator=g)
    up = torch.nn.functional.interpolate(base, size=32, mode="bilinear", align_corners=False)
    return (up * 255).round().to(torch.uint8)


class AuxOutputs(NamedTuple):
    logits: torch.Tensor
    aux_logits: torch.Tensor


class WithAuxHead(nn.Module):
    """`model` with an auxiliary head in train mode, like torchvision's GoogLeNet and Inception
    v3: a named tuple (logits, aux_logits) there, the logits alone in eval mode. The aux head
    pools its input to `aux_size` pixels and so fails on smaller inputs, as theirs do."""

    def __init__(self, model: nn.Module, *, aux_size: int = 8) -> None:
        super().__init__()
        self.model = model
        self.aux_size = aux_size

    def forward(self, x: torch.Tensor) -> torch.Tensor | AuxOutputs:
        logits = self.model(x)
        if not self.training:
            return logits
        if min(x.shape[-2:]) < self.aux_size:
            raise RuntimeError(f"aux head needs {self.aux_size} px, got {tuple(x.shape[-2:])}")
        pooled = nn.functional.adaptive_avg_pool2d(x, self.aux_size).flatten(1)
        return AuxOutputs(logits, pooled[:, : logits.shape[1]])


class TwoLogits(nn.Module):
    """A one-logit (sigmoid) binary `model` written as its two-class softmax: (−z/2, z/2)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.model(x) / 2
        return torch.cat([-half, half], dim=1)


class ViewFlattenNet(nn.Module):
    """A hand-written 32×32 CNN that flattens its conv features with `.view`, which fails on
    channels_last tensors (the fast path's layout), as many user models do."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 8 * 8, num_classes)
        with torch.no_grad():
            self.fc.weight.mul_(40.0)  # confident, so samples pass the reliability filter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = nn.functional.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        return self.fc(x.view(x.size(0), -1))
