"""Estimator settings (spec §0 constants) and the class-count dependent defaults of spec §10."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

DEFAULT_CHECKPOINTS = (0, 50, 100, 250, 500, 1000)


def entropy_threshold(num_classes: int, factor: float = 0.4) -> float:
    """E0 = 0.4·ln C (spec §10.4); 2.7631021115928547 for C = 1000."""
    return factor * math.log(num_classes)


def default_epsilon(num_classes: int) -> float:
    """Redundancy threshold ε for C classes.

    The reference ε = 0.05 is an ImageNet value: with C = 10 a one-hot prediction already has
    cosine 1/√10 ≈ 0.32 with the uniform mean, so ε = 0.05 blocks every update (offline-data.md).
    ε = max(0.05, 1.25/√C) keeps 0.05 for C = 1000 and gives ≈ 0.4 (EATA's CIFAR-10 value)
    for C = 10.
    """
    return max(0.05, 1.25 / math.sqrt(num_classes))


@dataclass(frozen=True)
class EstimateConfig:
    """One trajectory's settings; defaults follow the reference configuration (spec §0)."""

    steps: int = 250
    checkpoints: tuple[int, ...] = DEFAULT_CHECKPOINTS
    probe_size: int = 1000
    batch_size: int = 64
    chunk_size: int = 100
    lr: float = 2.5e-4
    momentum: float = 0.9
    entropy_factor: float = 0.4
    epsilon: float | None = None  # None: default_epsilon(C)
    ema: float = 0.9
    reset_interval: int = 1000
    seed: int = 0
    min_images: int = 64
    # The fast path (fastpath.py: grouped BN, masked on-device steps, a per-device plan) where
    # the model allows it; False forces the plain reference loop (`--plain`).
    fast: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.probe_size < 1:
            raise ValueError(f"probe_size must be at least 1, got {self.probe_size}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be at least 2, got {self.batch_size}")

    def snapshot_steps(self) -> tuple[int, ...]:
        """Checkpoints not past `steps`, always including `steps` itself, sorted."""
        return tuple(
            sorted({c for c in self.checkpoints if 0 <= c <= self.steps} | {0, self.steps})
        )

    def recording(self, step: int) -> EstimateConfig:
        """This config with `step` among its snapshots: the checkpoint a calibration's fit reads.

        A calibration run with other `steps` (say 20) fitted checkpoints this run would not record
        otherwise (0/50/100/… up to its own steps), so the estimate asks for the one it needs.
        """
        if not 0 <= step <= self.steps:
            raise ValueError(f"checkpoint {step} is outside a {self.steps}-step trajectory")
        if step in self.snapshot_steps():
            return self
        return replace(self, checkpoints=tuple(sorted({*self.checkpoints, step})))
