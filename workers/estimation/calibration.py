"""Per-model calibration: measure everything on shifted variants, then select an estimator.

A labeled reference set is shifted by a deterministic corruption suite (and, so that class mix
is not mistaken for failure, skewed class mixes of it); one trajectory per variant and trajectory
setting (a small grid of learning rates and batch sizes sharing the decoded variants) gives every
flip signal at every checkpoint, the confidence baselines and the window features. Selection
(`selection.py`) then keeps the candidate with the lowest leave-one-family-out error, and a nested
run of the whole selection gives the honest error and the conformal interval.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from flipwatch.workers.estimation.baselines import BaselineReference
from flipwatch.workers.estimation.calibration_result import (
    Calibration,
    Fit,
    IntervalSpec,
    ReferenceData,
    fit_rank,
)
from flipwatch.workers.estimation.class_mix import MIX_KINDS
from flipwatch.workers.estimation.config import EstimateConfig
from flipwatch.workers.estimation.conformal import conformal_quantile
from flipwatch.workers.estimation.embeddings import class_distance, feature_stats
from flipwatch.workers.estimation.families import (
    CLASS_MIX_CHOICES,
    DEFAULT_CLASS_MIXES,
    ClassMixes,
)
from flipwatch.workers.estimation.features import DEFAULT_SETTING, TrajectorySetting, row_features
from flipwatch.workers.estimation.flips import fit_monotone_map
from flipwatch.workers.estimation.label_shift import confusion_matrix
from flipwatch.workers.estimation.selection import FeatureTable, nested_selection, select
from flipwatch.workers.estimation.spec import ModelSpec
from flipwatch.workers.estimation.trajectory import (
    Progress,
    Trajectory,
    predict,
    require_finite,
    resolve_device,
)
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
from flipwatch.workers.estimation.window_features import ReferenceSet, measure_window

# The learning-rate/batch grid: trajectory settings a calibration may measure beside the default
# (config.lr, config.batch_size), sharing the decoded variants. Off by default: on both benchmark
# models the trajectory under these settings did not lower the held-out error enough to pay for
# the trajectories it costs (`benchmarks/calibration_suite.py`, README "Signals").
LR_GRID: tuple[TrajectorySetting, ...] = (
    TrajectorySetting("lr2e-3", 2e-3, 64),
    TrajectorySetting("lr2e-3b16", 2e-3, 16),
)
DEFAULT_SETTINGS: tuple[TrajectorySetting, ...] = ()

SPREAD_SUBSET = "balanced:128"  # subsampled variants that measure the small-window spread
SPREAD_VARIANTS = 4
INTERVAL_LEVEL = 0.9


def leave_one_group_out_mae(x: Tensor, y: Tensor, groups: Sequence[str]) -> float:
    """Mean |f(x) − y| over points, each predicted by a fit that never saw its group."""
    errors: list[float] = []
    for group in sorted(set(groups)):
        train = torch.tensor([g != group for g in groups])
        if int(train.sum()) < 2:
            continue
        f = fit_monotone_map(x[train], y[train])
        errors.extend(
            abs(f(float(xi)) - float(yi)) for xi, yi in zip(x[~train], y[~train], strict=True)
        )
    return sum(errors) / len(errors) if errors else math.inf


def fit_points(points: Sequence[CalibrationPoint]) -> list[Fit]:
    """One fit per default-setting flip signal and checkpoint present in every point, with
    held-out and train MAE (the per-signal table the status page and the CLI show)."""
    y = torch.tensor([p.accuracy for p in points], dtype=torch.float64)
    groups = [p.family for p in points]
    fits: list[Fit] = []
    for signal, by_step in points[0].signals.items():
        if "~" in signal:
            continue
        for step in sorted(by_step):
            if not all(step in p.signals.get(signal, {}) for p in points):
                continue
            x = torch.tensor([p.signals[signal][step] for p in points], dtype=torch.float64)
            f = fit_monotone_map(x, y)
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


def point_row(point: CalibrationPoint) -> dict[str, float]:
    """Every feature one variant measured (features.py names)."""
    return row_features(point.signals, point.baselines, point.features)


def is_spread_point(point: CalibrationPoint) -> bool:
    return point.subset == SPREAD_SUBSET


def selection_table(
    points: Sequence[CalibrationPoint], allowed: Callable[[str], bool] | None = None
) -> FeatureTable:
    chosen = [p for p in points if not is_spread_point(p)]
    return FeatureTable.build(
        [point_row(p) for p in chosen],
        [p.accuracy for p in chosen],
        [p.family for p in chosen],
        allowed,
    )


# --- measurement --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowExtras:
    """The variant hook: window features of every variant (picklable for worker processes)."""

    reference: ReferenceSet

    def __call__(
        self, context: VariantContext, labels: Tensor, trajectory: Trajectory
    ) -> dict[str, float]:
        return measure_window(
            context.model,
            trajectory,
            spec=context.spec,
            config=context.config,
            device=context.device,
            reference=self.reference,
        ).values


def calibration_tasks(
    families: Sequence[str] | None,
    severities: Sequence[int],
    *,
    seed: int,
    mixes: bool = DEFAULT_MIXES,
    class_mixes: ClassMixes = DEFAULT_CLASS_MIXES,
) -> list[VariantTask]:
    """Corruption variants (with `mixes`, a half-corrupted mix per family), skewed class mixes
    (`class_mixes`: "clean" = the clean set in each kind; "all" = also each family at its middle
    severity in a kind by turn; "none") and a few subsampled variants for the small-window
    spread."""
    if class_mixes not in CLASS_MIX_CHOICES:
        raise ValueError(f"class_mixes must be one of {CLASS_MIX_CHOICES}, got {class_mixes!r}")
    variants = calibration_variants(families, severities, mixes=mixes)
    tasks = [
        VariantTask(family, severity, mixed, seed=seed + index)
        for index, (family, severity, mixed) in enumerate(variants)
    ]
    shifted = [f for f, _, mixed in variants if f != CLEAN and not mixed]
    fams = list(dict.fromkeys(shifted))
    middle = sorted(severities)[len(severities) // 2]
    skewed = [k for k in MIX_KINDS if k != "balanced"]
    if class_mixes != "none":
        tasks += [
            VariantTask(CLEAN, 0, False, seed=seed + 10_000 + i, subset=kind)
            for i, kind in enumerate(skewed)
        ]
    if class_mixes == "all":
        tasks += [
            VariantTask(f, middle, False, seed=seed + 10_100 + i, subset=skewed[i % len(skewed)])
            for i, f in enumerate(fams)
        ]
    spread = [CLEAN, *fams][:SPREAD_VARIANTS]
    tasks += [
        VariantTask(
            f, 0 if f == CLEAN else middle, False, seed=seed + 10_200 + i, subset=SPREAD_SUBSET
        )
        for i, f in enumerate(spread)
    ]
    return tasks


def _task_file(task: VariantTask, setting: str) -> str:
    subset = (task.subset or "all").replace(":", "-")
    mix = "mix" if task.mixed else "pure"
    name = setting or "default"
    return f"{task.family}-{task.severity}-{mix}-{subset}-{task.seed}-{name}.json"


def _measure(
    context: VariantContext,
    tasks: list[VariantTask],
    processes: int,
    cache: Path | None,
    setting: str,
) -> Iterator[CalibrationPoint]:
    """Points in task order; with `cache`, measured points are read back instead of re-run."""
    todo = [t for t in tasks if cache is None or not (cache / _task_file(t, setting)).exists()]
    fresh = measure_variants(context, todo, processes=processes)
    pending = iter(todo)
    for task in tasks:
        path = None if cache is None else cache / _task_file(task, setting)
        if path is not None and path.exists():
            yield CalibrationPoint.from_dict(json.loads(path.read_text()))
            continue
        assert next(pending) == task
        point = next(fresh)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(point.to_dict()))
        yield point


def measure_points(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    spec: ModelSpec,
    config: EstimateConfig,
    device: torch.device,
    tasks: list[VariantTask],
    settings: Sequence[TrajectorySetting],
    reference: BaselineReference,
    window_reference: ReferenceSet,
    processes: int = 1,
    cache: Path | None = None,
    log: Callable[[str], None] | None = None,
    progress: Progress | None = None,
) -> list[CalibrationPoint]:
    """Every task under the default setting (with window features), then under each extra
    setting (signals only, merged into the same points with a `~<setting>` suffix)."""
    context = VariantContext(
        model, images, labels, spec, config, device, reference, WindowExtras(window_reference)
    )
    total = len(tasks) * (1 + len(settings))
    done = 0
    points: list[CalibrationPoint] = []
    for point in _measure(context, tasks, processes, cache, DEFAULT_SETTING):
        points.append(point)
        done += 1
        if log is not None:
            label = CLEAN if point.family == CLEAN else f"{point.family}-{point.severity}"
            extra = f" [{point.subset}]" if point.subset else ""
            log(f"{label}{' (mix)' if point.mixed else ''}{extra}: accuracy {point.accuracy:.3f}")
        if progress is not None:
            progress(done, total)
    for setting in settings:
        cfg = replace(config, lr=setting.lr, batch_size=setting.batch_size)
        other = replace(context, config=cfg, extras=None)
        for i, point in enumerate(_measure(other, tasks, processes, cache, setting.name)):
            merged = dict(points[i].signals)
            for signal, by_step in point.signals.items():
                merged[f"{signal}~{setting.name}"] = by_step
            points[i] = replace(points[i], signals=merged)
            done += 1
            if progress is not None:
                progress(done, total)
    return points


# --- selection ----------------------------------------------------------------------------------


def interval_spec(
    points: Sequence[CalibrationPoint],
    residuals: np.ndarray,
    estimator_values: Callable[[CalibrationPoint], float],
    *,
    calibration_size: int,
    level: float = INTERVAL_LEVEL,
) -> IntervalSpec:
    """Conformal half-width from the nested residuals; the small-window spread from the
    subsampled variants against their full-size twins (same family and severity)."""
    half = conformal_quantile(np.abs(residuals), level) if len(residuals) else math.inf
    full = {(p.family, p.severity): p for p in points if p.subset is None and not p.mixed}
    spreads = []
    for p in points:
        twin = full.get((p.family, p.severity))
        if not is_spread_point(p) or twin is None:
            continue
        size = int(SPREAD_SUBSET.partition(":")[2])
        err_small = estimator_values(p) - p.accuracy
        err_full = estimator_values(twin) - twin.accuracy
        shrink = max(1e-6, 1 - size / calibration_size)
        spreads.append(size * (err_small - err_full) ** 2 / shrink)
    spread = math.sqrt(sum(spreads) / len(spreads)) if spreads else 0.0
    return IntervalSpec(
        level=level, half_width=half, spread=spread, calibration_size=calibration_size
    )


def calibration_from_points(
    points: Sequence[CalibrationPoint],
    *,
    spec: ModelSpec,
    config: EstimateConfig,
    settings: Sequence[TrajectorySetting],
    reference_data: ReferenceData,
    reference_accuracy: float,
    baseline_reference: BaselineReference,
    probe_size: int,
    created_at: str | None = None,
) -> Calibration:
    """Select the estimator, run the nested selection for its honest error and interval."""
    table = selection_table(points)
    chosen = select(table)
    nested = nested_selection(table, level=INTERVAL_LEVEL)
    interval = interval_spec(
        points,
        nested.residuals,
        lambda p: chosen.estimator(point_row(p)),
        calibration_size=probe_size,
    )
    main_points = [p for p in points if not is_spread_point(p)]
    fits = fit_points(main_points)
    return Calibration(
        model_name=spec.name,
        num_classes=spec.num_classes,
        probe_size=probe_size,
        steps=config.steps,
        source="fitted",
        fits=tuple(fits),
        selected=chosen.estimator.name,
        reference_accuracy=reference_accuracy,
        baseline_reference=baseline_reference,
        reference_features=reference_data.features,
        class_means=reference_data.class_means,
        points=tuple(points),
        baseline_mae=baseline_errors(main_points),
        created_at=created_at or dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        estimator=chosen.estimator,
        candidates=dict(sorted(chosen.candidate_mae.items(), key=lambda kv: kv[1])),
        nested_mae=nested.mae,
        nested_chosen=nested.chosen,
        coverage=nested.coverage,
        interval=interval,
        settings=(TrajectorySetting(DEFAULT_SETTING, config.lr, config.batch_size), *settings),
        reference=reference_data,
    )


def reference_data(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    spec: ModelSpec,
    device: torch.device,
) -> tuple[ReferenceData, BaselineReference, float]:
    """What calibration keeps from the clean reference set: baselines' statistics, features,
    class means, the class prior, the confusion matrix and (when small enough) the images."""
    clean = predict(model, images, spec, device=device, chunk_size=256, features=True)
    require_finite(clean.probs, "reference images")
    reference = BaselineReference.from_labeled(clean.probs, labels)
    features = clean.features
    stats = class_means = distance = None
    if features is not None:
        stats = feature_stats(features)
        class_means = torch.stack(
            [
                features[labels == c].mean(0) if bool((labels == c).any()) else features.mean(0)
                for c in range(spec.num_classes)
            ]
        )
        distance = class_distance(features, clean.labels, class_means, stats)
    prior = torch.bincount(labels, minlength=spec.num_classes).double() / len(labels)
    confusion = confusion_matrix(clean.labels.numpy(), labels.numpy(), spec.num_classes)
    data = ReferenceData.keep(
        images,
        labels,
        prior=prior,
        confusion=torch.from_numpy(confusion),
        features=stats,
        class_means=class_means,
        class_distance=distance,
    )
    accuracy = float((clean.labels == labels).double().mean())
    return data, reference, accuracy


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
    settings: Sequence[TrajectorySetting] = DEFAULT_SETTINGS,
    mixes: bool = DEFAULT_MIXES,
    class_mixes: ClassMixes = DEFAULT_CLASS_MIXES,
    cache: Path | None = None,
) -> Calibration:
    """Fit this model's calibration from a labeled reference set, uint8 (N, C, H, W) + (N,) labels.

    `progress(done, total)` counts measured trajectories (variants × settings). The reference
    set is shuffled with the seed first: a class-sorted folder would otherwise give single-class
    probe chunks (offline-data.md). `processes` > 1 measures variants in that many
    single-threaded CPU processes; the points are identical to a sequential run. On CUDA the
    fast path groups variants (`measure_variants`). `settings` are extra trajectory settings
    measured beside the default (none by default; `LR_GRID` is the measured grid); `mixes` adds
    a half-corrupted mix per family; `class_mixes` picks the skewed class-mix variants that teach
    the estimator to tell a different class mix from a shift; `cache` (a folder) keeps measured
    points.
    """
    device = resolve_device(device)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if int(labels.min()) < 0 or int(labels.max()) >= spec.num_classes:
        raise ValueError(f"labels must lie in [0, {spec.num_classes - 1}]")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(config.seed))
    images, labels = images[order], labels[order]
    model = model.to(device).eval()
    data, baseline_reference, accuracy = reference_data(
        model, images, labels, spec=spec, device=device
    )
    points = measure_points(
        model,
        images,
        labels,
        spec=spec,
        config=config,
        device=device,
        tasks=calibration_tasks(
            families, severities, seed=config.seed, mixes=mixes, class_mixes=class_mixes
        ),
        settings=settings,
        reference=baseline_reference,
        window_reference=data.window_reference(),
        processes=processes,
        cache=cache,
        log=log,
        progress=progress,
    )
    return calibration_from_points(
        points,
        spec=spec,
        config=config,
        settings=settings,
        reference_data=data,
        reference_accuracy=accuracy,
        baseline_reference=baseline_reference,
        probe_size=min(config.probe_size, len(images)),
    )


__all__ = [
    "CLASS_MIX_CHOICES",
    "DEFAULT_CLASS_MIXES",
    "DEFAULT_SETTINGS",
    "LR_GRID",
    "ClassMixes",
    "baseline_errors",
    "calibrate",
    "calibration_from_points",
    "calibration_tasks",
    "fit_points",
    "fit_rank",
    "leave_one_group_out_mae",
    "measure_points",
    "point_row",
    "reference_data",
    "selection_table",
]
