"""Shifted variants of a labeled reference set, and what one trajectory measures on each.

Calibration measures every variant the same way, sequentially or in parallel CPU processes; a
variant is fully described by (family, severity, mixed, seed), so any process can rebuild it.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from flipwatch.workers.estimation.baselines import BaselineReference, baseline_estimates_for
from flipwatch.workers.estimation.config import EstimateConfig
from flipwatch.workers.estimation.corruptions import CORRUPTIONS, corrupt
from flipwatch.workers.estimation.spec import ModelSpec
from flipwatch.workers.estimation.trajectory import Trajectory, predict, run_trajectory

CLEAN = "clean"
MIX_FRACTION = 0.5


@dataclass(frozen=True)
class CalibrationPoint:
    """One shifted variant of the reference set: what was measured and the true accuracy."""

    family: str
    severity: int
    mixed: bool
    accuracy: float
    signals: dict[str, dict[int, float]]
    baselines: dict[str, float]
    # Quality additions: a class-mix subset of the reference set (class_mix.py), and the window
    # features of window_features.py (embedding distances, label shift, class-mix deltas).
    subset: str | None = None
    features: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "family": self.family,
            "severity": self.severity,
            "mixed": self.mixed,
            "accuracy": self.accuracy,
            "signals": {k: {str(s): v for s, v in d.items()} for k, d in self.signals.items()},
            "baselines": self.baselines,
            "subset": self.subset,
            "features": self.features,
        }

    @classmethod
    def from_dict(cls, data: dict) -> CalibrationPoint:
        return cls(
            family=data["family"],
            severity=int(data["severity"]),
            mixed=bool(data["mixed"]),
            accuracy=float(data["accuracy"]),
            signals={
                k: {int(s): float(v) for s, v in d.items()} for k, d in data["signals"].items()
            },
            baselines={k: float(v) for k, v in data["baselines"].items()},
            subset=data.get("subset"),
            features={k: float(v) for k, v in (data.get("features") or {}).items()},
        )


def calibration_variants(
    families: Sequence[str] | None = None, severities: Sequence[int] = (1, 2, 3, 4, 5)
) -> list[tuple[str, int, bool]]:
    """(family, severity, mixed) for every variant: clean, each family × severity, and per family
    a half-corrupted mix at the top severity (a moderate shift, as production drift often is)."""
    families = list(CORRUPTIONS) if families is None else list(families)
    variants: list[tuple[str, int, bool]] = [(CLEAN, 0, False)]
    for family in families:
        variants.extend((family, severity, False) for severity in severities)
        variants.append((family, max(severities), True))
    return variants


def make_variant(images: Tensor, family: str, severity: int, mixed: bool, *, seed: int) -> Tensor:
    """The reference images under one shift; deterministic for a seed."""
    if family == CLEAN:
        return images
    generator = torch.Generator().manual_seed(seed)
    shifted = corrupt(images, family, severity, generator=generator)
    if not mixed:
        return shifted
    chosen = torch.randperm(len(images), generator=generator)[: int(len(images) * MIX_FRACTION)]
    out = images.clone()
    out[chosen] = shifted[chosen]
    return out


@dataclass(frozen=True)
class VariantTask:
    """One shifted variant to measure; the seed makes its corruption reproducible anywhere."""

    family: str
    severity: int
    mixed: bool
    seed: int
    subset: str | None = None  # a class-mix subset of the reference set (class_mix.py)


# Extra per-variant measurements (window_features.py), given the context, the variant's labels
# and its trajectory; None keeps a point to signals and baselines.
Extras = Callable[["VariantContext", Tensor, Trajectory], dict[str, float]]


@dataclass(frozen=True)
class VariantContext:
    """What every variant measurement shares: the model, the shuffled reference set, settings."""

    model: nn.Module
    images: Tensor
    labels: Tensor
    spec: ModelSpec
    config: EstimateConfig
    device: torch.device
    reference: BaselineReference
    extras: Extras | None = None


def measure_variant(context: VariantContext, task: VariantTask) -> CalibrationPoint:
    """True accuracy, every flip signal and the baselines on one shifted variant."""

    c = context
    images, labels = c.images, c.labels
    if task.subset is not None:
        from flipwatch.workers.estimation.class_mix import subset_indices

        keep = subset_indices(labels, task.subset, num_classes=c.spec.num_classes, seed=task.seed)
        images, labels = images[keep], labels[keep]
    shifted = make_variant(images, task.family, task.severity, task.mixed, seed=task.seed)
    source = predict(c.model, shifted, c.spec, device=c.device, chunk_size=256)
    trajectory = run_trajectory(
        c.model,
        shifted,
        spec=c.spec,
        config=c.config,
        device=c.device,
        features=c.extras is not None,
    )
    baselines = baseline_estimates_for(trajectory.source.probs, c.reference, seed=c.config.seed)
    return CalibrationPoint(
        family=task.family,
        severity=task.severity,
        mixed=task.mixed,
        accuracy=float((source.labels == labels).double().mean()),
        signals=trajectory.signals,
        baselines={k: v for k, v in baselines.items() if v is not None},
        subset=task.subset,
        features={} if c.extras is None else c.extras(c, labels, trajectory),
    )


_worker_context: VariantContext | None = None


def _start_worker(context: VariantContext, scripted: bytes | None) -> None:
    """Spawned process set-up: one thread, and the context (a TorchScript model travels as
    bytes, since script modules do not pickle)."""
    global _worker_context
    torch.set_num_threads(1)
    if scripted is not None:
        model = torch.jit.load(io.BytesIO(scripted), map_location="cpu")
        context = replace(context, model=model)
    _worker_context = context


def _measure_in_worker(task: VariantTask) -> CalibrationPoint:
    assert _worker_context is not None
    return measure_variant(_worker_context, task)


def measure_in_processes(
    context: VariantContext, tasks: list[VariantTask], processes: int
) -> Iterator[CalibrationPoint]:
    """Variants in `processes` spawned CPU processes, yielded in task order as they finish."""
    import torch.multiprocessing as mp

    scripted = None
    if isinstance(context.model, torch.jit.ScriptModule):
        buffer = io.BytesIO()
        torch.jit.save(context.model, buffer)
        scripted = buffer.getvalue()
        context = replace(context, model=nn.Identity())
    with mp.get_context("spawn").Pool(
        processes, initializer=_start_worker, initargs=(context, scripted)
    ) as pool:
        yield from pool.imap(_measure_in_worker, tasks)
