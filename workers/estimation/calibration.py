"""Per-model calibration: which flip signal predicts accuracy best, and its map f.

A labeled reference set is shifted by a deterministic corruption suite; one trajectory per variant
gives (signal, true accuracy) points; a monotone quadratic is fitted per signal and checkpoint and
judged by leave-one-corruption-family-out error. The best held-out fit is selected.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from flipwatch.workers.estimation.baselines import BaselineReference
from flipwatch.workers.estimation.calibration_result import Calibration, Fit, fit_rank
from flipwatch.workers.estimation.config import EstimateConfig
from flipwatch.workers.estimation.embeddings import feature_stats
from flipwatch.workers.estimation.flips import fit_monotone_quadratic
from flipwatch.workers.estimation.spec import ModelSpec
from flipwatch.workers.estimation.trajectory import Progress, predict, resolve_device
from flipwatch.workers.estimation.variants import (
    CLEAN,
    DEFAULT_MIXES,
    DEFAULT_SEVERITIES,
    CalibrationPoint,
    VariantContext,
    VariantTask,
    calibration_variants,
    measure_variants,
)


def leave_one_group_out_mae(x: Tensor, y: Tensor, groups: Sequence[str]) -> float:
    """Mean |f(x) − y| over points, each predicted by a fit that never saw its group."""
    errors: list[float] = []
    for group in sorted(set(groups)):
        train = torch.tensor([g != group for g in groups])
        if int(train.sum()) < 2:
            continue
        f = fit_monotone_quadratic(x[train], y[train])
        errors.extend(
            abs(f(float(xi)) - float(yi)) for xi, yi in zip(x[~train], y[~train], strict=True)
        )
    return sum(errors) / len(errors) if errors else math.inf


def fit_points(points: Sequence[CalibrationPoint]) -> list[Fit]:
    """One fit per (signal, checkpoint) present in every point, with held-out and train MAE."""
    y = torch.tensor([p.accuracy for p in points], dtype=torch.float64)
    groups = [p.family for p in points]
    fits: list[Fit] = []
    for signal, by_step in points[0].signals.items():
        for step in sorted(by_step):
            x = torch.tensor([p.signals[signal][step] for p in points], dtype=torch.float64)
            f = fit_monotone_quadratic(x, y)
            train_mae = float(
                sum(abs(f(float(a)) - float(b)) for a, b in zip(x, y, strict=True)) / len(y)
            )
            fits.append(Fit(signal, step, f, leave_one_group_out_mae(x, y, groups), train_mae))
    return fits


def baseline_errors(points: Sequence[CalibrationPoint]) -> dict[str, float]:
    """MAE of each confidence baseline over the calibration variants (no fitting involved)."""
    names = sorted({k for p in points for k in p.baselines})
    return {
        name: sum(abs(p.baselines[name] - p.accuracy) for p in points) / len(points)
        for name in names
    }


def calibrate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    spec: ModelSpec,
    config: EstimateConfig = EstimateConfig(),
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    families: Sequence[str] | None = None,
    severities: Sequence[int] = DEFAULT_SEVERITIES,
    log: Callable[[str], None] | None = None,
    processes: int = 1,
    mixes: bool = DEFAULT_MIXES,
) -> Calibration:
    """Fit this model's calibration from a labeled reference set, uint8 (N, C, H, W) + (N,) labels.

    `progress(done, total)` counts variants. The reference set is shuffled with the seed first: a
    class-sorted folder would otherwise give single-class probe chunks (offline-data.md).
    `processes` > 1 measures variants in that many single-threaded CPU processes (small models
    barely use a second thread, so on CPU this is the way to use the cores); the points are
    identical to a sequential run. On CUDA the fast path groups variants (`measure_variants`).
    """
    device = resolve_device(device)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if int(labels.min()) < 0 or int(labels.max()) >= spec.num_classes:
        raise ValueError(f"labels must lie in [0, {spec.num_classes - 1}]")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(config.seed))
    images, labels = images[order], labels[order]

    model = model.to(device).eval()
    clean = predict(model, images, spec, device=device, chunk_size=256, features=True)
    reference = BaselineReference.from_labeled(clean.probs, labels)
    features = clean.features
    class_means = None
    reference_features = None
    if features is not None:
        reference_features = feature_stats(features)
        class_means = torch.stack(
            [
                features[labels == c].mean(0) if bool((labels == c).any()) else features.mean(0)
                for c in range(spec.num_classes)
            ]
        )

    variants = calibration_variants(families, severities, mixes=mixes)
    tasks = [
        VariantTask(family, severity, mixed, seed=config.seed + index)
        for index, (family, severity, mixed) in enumerate(variants)
    ]
    context = VariantContext(model, images, labels, spec, config, device, reference)
    measured = measure_variants(context, tasks, processes=processes)
    points: list[CalibrationPoint] = []
    for point in measured:
        points.append(point)
        if log is not None:
            label = CLEAN if point.family == CLEAN else f"{point.family}-{point.severity}"
            log(f"{label}{' (mix)' if point.mixed else ''}: accuracy {point.accuracy:.3f}")
        if progress is not None:
            progress(len(points), len(tasks))

    fits = fit_points(points)
    selected = min(fits, key=fit_rank)
    return Calibration(
        model_name=spec.name,
        num_classes=spec.num_classes,
        probe_size=min(config.probe_size, len(images)),
        steps=config.steps,
        source="fitted",
        fits=tuple(fits),
        selected=selected.key,
        reference_accuracy=float((clean.labels == labels).double().mean()),
        baseline_reference=reference,
        reference_features=reference_features,
        class_means=class_means,
        points=tuple(points),
        baseline_mae=baseline_errors(points),
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
