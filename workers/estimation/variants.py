"""Shifted variants of a labeled reference set, and what one trajectory measures on each.

Calibration measures every variant the same way; `measure_variants` picks how per device: on CUDA
groups of variants run as one grouped computation (`fastpath.run_trajectories`), on CPU variants
run one after another, in parallel single-threaded processes when asked (grouping measured no
faster there: a CPU step is compute-bound already). A variant is fully described by
(family, severity, mixed, seed), so any process can rebuild it.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from flipwatch.workers.estimation.baselines import BaselineReference, baseline_estimates_for
from flipwatch.workers.estimation.config import EstimateConfig
from flipwatch.workers.estimation.corruptions import CORRUPTIONS, corrupt
from flipwatch.workers.estimation.families import DEFAULT_SEVERITIES
from flipwatch.workers.estimation.spec import ModelSpec
from flipwatch.workers.estimation.trajectory import Trajectory, predict, run_trajectory

CLEAN = "clean"
MIX_FRACTION = 0.5
# Variants per grouped computation on CUDA (unmeasured on a GPU so far; see README Performance).
CUDA_GROUP = 8


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


DEFAULT_MIXES = False


def calibration_variants(
    families: Sequence[str] | None = None,
    severities: Sequence[int] = DEFAULT_SEVERITIES,
    *,
    mixes: bool = DEFAULT_MIXES,
) -> list[tuple[str, int, bool]]:
    """(family, severity, mixed) for every variant: clean, each family × severity, and with
    `mixes` per family a half-corrupted mix at the top severity (a moderate shift).

    Raises ValueError below 3 variants: leave-one-family-out scoring needs a family left out
    with at least two points remaining.
    """
    families = list(CORRUPTIONS) if families is None else list(families)
    variants: list[tuple[str, int, bool]] = [(CLEAN, 0, False)]
    for family in families:
        variants.extend((family, severity, False) for severity in severities)
        if mixes:
            variants.append((family, max(severities), True))
    if len(variants) < 3:
        raise ValueError(
            f"a calibration suite of {len(variants)} variants cannot be scored: ask for two "
            "severities, two families or mixes (at least 3 variants with the clean one)"
        )
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
    images, labels = _task_inputs(c, task)
    shifted = make_variant(images, task.family, task.severity, task.mixed, seed=task.seed)
    trajectory = run_trajectory(
        c.model,
        shifted,
        spec=c.spec,
        config=c.config,
        device=c.device,
        features=c.extras is not None,
    )
    return _point(c, task, shifted, labels, trajectory)


def _task_inputs(c: VariantContext, task: VariantTask) -> tuple[Tensor, Tensor]:
    """The reference images and labels of a task: all, or a class-mix subset of them."""
    if task.subset is None:
        return c.images, c.labels
    from flipwatch.workers.estimation.class_mix import subset_indices

    keep = subset_indices(c.labels, task.subset, num_classes=c.spec.num_classes, seed=task.seed)
    return c.images[keep], c.labels[keep]


def _point(
    c: VariantContext,
    task: VariantTask,
    shifted: Tensor,
    labels: Tensor,
    trajectory: Trajectory,
) -> CalibrationPoint:
    """The true accuracy (plain fp32 eval predictions: the ground truth) beside the signals."""
    source = predict(c.model, shifted, c.spec, device=c.device, chunk_size=256)
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


def measure_group(context: VariantContext, tasks: Sequence[VariantTask]) -> list[CalibrationPoint]:
    """Several variants as one grouped computation (fast path): the same points as measuring
    them one by one, up to floating-point rounding."""
    from flipwatch.workers.estimation.fastpath import run_trajectories

    c = context
    inputs = [_task_inputs(c, t) for t in tasks]
    shifted = [
        make_variant(images, t.family, t.severity, t.mixed, seed=t.seed)
        for t, (images, _) in zip(tasks, inputs, strict=True)
    ]
    trajectories = run_trajectories(
        c.model,
        shifted,
        spec=c.spec,
        config=c.config,
        device=c.device,
        features=c.extras is not None,
    )
    return [
        _point(c, task, images, labels, trajectory)
        for task, images, (_, labels), trajectory in zip(
            tasks, shifted, inputs, trajectories, strict=True
        )
    ]


def grouping_for(context: VariantContext, processes: int) -> int:
    """Variants per grouped computation: CUDA_GROUP on a GPU with the fast path, else 1."""
    from flipwatch.workers.estimation.fastpath import fast_path_blocker

    if context.device.type != "cuda" or not context.config.fast:
        return 1
    return CUDA_GROUP if fast_path_blocker(context.model) is None else 1


def measure_variants(
    context: VariantContext,
    tasks: list[VariantTask],
    *,
    processes: int = 1,
    group: int | None = None,
) -> Iterator[CalibrationPoint]:
    """Every task's point, in task order, the fastest way measured for the device.

    `group` variants per grouped computation (default: `grouping_for`); on CPU `processes` > 1
    measures variants in that many single-threaded processes.
    """
    group = group or grouping_for(context, processes)
    if group > 1:
        for chunk in _chunks(tasks, group):
            yield from measure_group(context, chunk)
    elif processes > 1 and context.device.type == "cpu":
        yield from measure_in_processes(context, tasks, processes)
    else:
        for task in tasks:
            yield measure_variant(context, task)


def _chunks(tasks: Iterable[VariantTask], size: int) -> Iterator[list[VariantTask]]:
    chunk: list[VariantTask] = []
    for task in tasks:
        chunk.append(task)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


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
