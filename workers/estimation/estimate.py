"""One label-free accuracy estimate: trajectory -> features -> selected estimator -> result.

The number estimates the accuracy of the *source* model as deployed (eval mode, no adaptation)
on the window (spec §1, §10.11); the adapted copy is only a measuring instrument. The estimator,
its trajectory setting (learning rate, batch size) and its interval come from the calibration.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace

import torch
from torch import Tensor, nn

from flipwatch.workers.estimation.baselines import baseline_estimates_for
from flipwatch.workers.estimation.calibration_result import (
    BUILTIN_SOURCE,
    MAE_TO_HALF_WIDTH_90,
    PAPER_AC_MAE,
    Calibration,
    CalibrationMissing,
    builtin_calibration,
)
from flipwatch.workers.estimation.config import EstimateConfig, default_epsilon
from flipwatch.workers.estimation.conformal import widened_half_width
from flipwatch.workers.estimation.features import row_features
from flipwatch.workers.estimation.result import EstimateResult
from flipwatch.workers.estimation.selection import Estimator, select
from flipwatch.workers.estimation.spec import ModelSpec
from flipwatch.workers.estimation.trajectory import (
    Progress,
    Trajectory,
    require_finite,
    resolve_device,
    run_trajectory,
)
from flipwatch.workers.estimation.window_features import ReferenceSet, measure_window

MIN_PROBE_FOR_TRUST = 100
# Below this share of distinct images the window is mostly copies: say so, size the interval
# for the distinct ones.
DUPLICATE_SHARE_FOR_WARNING = 0.9
EMBEDDING_KEYS = ("frechet", "silhouette", "centroid_shift", "class_distance")


def adaptation_starved(trajectory: Trajectory) -> bool:
    """Fewer samples passed the entropy and redundancy filters over the whole trajectory than one
    adaptation batch holds: the adapted copy barely moved, so its flips measure nothing.

    It happens when the copy on batch statistics is unsure of nearly every image: under a shift
    that leaves no image recognisable, or in a window too uniform for batch statistics (crops of
    one or a few scenes: measured on EfficientNet-Lite0, the batch-statistics copy agreed with the
    source model on 0 % of 64 crops of one photo and 31 % of crops of eight, and no crop passed
    the entropy filter; `benchmarks/imagenet_severity.py`).
    """
    return trajectory.steps > 0 and trajectory.used_fraction * trajectory.steps < 1.0


def estimator_within(calibration: Calibration, steps: int) -> tuple[Estimator, bool]:
    """The calibration's estimator, or when it needs more than `steps` adaptation steps the best
    candidate within reach (re-selected from the stored points); True when it fell back."""
    estimator = calibration.selected_estimator
    if estimator.steps <= steps:
        return estimator, False
    if calibration.estimator is None or not calibration.points:
        fit = calibration.fit_for(steps)
        return Estimator(f"fit:{fit.key}", "fit", (fit.key,), (fit.map,)), True
    from flipwatch.workers.estimation.calibration import selection_table
    from flipwatch.workers.estimation.features import feature_step

    def allowed(name: str) -> bool:
        return feature_step(name) <= steps

    return select(selection_table(calibration.points, allowed), allowed=allowed).estimator, True


def estimate(
    model: nn.Module,
    images: Tensor,
    *,
    spec: ModelSpec,
    calibration: Calibration | None = None,
    config: EstimateConfig = EstimateConfig(),
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> EstimateResult:
    """Estimate the source model's accuracy on `images` (uint8 (N, C, H, W)) without labels.

    Raises CalibrationMissing for a non-ImageNet model without a calibration, and ValueError for
    fewer than `config.min_images` images.
    """
    calibration = calibration or builtin_calibration(spec)
    if calibration is None:
        raise CalibrationMissing(
            f"model {spec.name!r} has no calibration and is not an ImageNet classifier: run "
            "`flipwatch calibrate` on a labeled reference set first"
        )
    if calibration.num_classes != spec.num_classes:
        raise ValueError(
            f"calibration is for {calibration.num_classes} classes, "
            f"the model has {spec.num_classes}"
        )
    estimator, fell_back = estimator_within(calibration, config.steps)
    setting = calibration.setting(estimator.setting) if estimator.setting else None
    run_config = (
        config if setting is None else replace(config, lr=setting.lr, batch_size=setting.batch_size)
    )
    # Record every checkpoint the estimator reads, whatever `steps` the calibration used.
    from flipwatch.workers.estimation.features import feature_step

    for step in sorted({feature_step(name) for name in estimator.features}):
        if 0 < step <= run_config.steps:
            run_config = run_config.recording(step)
    device = resolve_device(device)
    started = time.perf_counter()
    trajectory = run_trajectory(
        model, images, spec=spec, config=run_config, device=device, progress=progress
    )
    require_finite(trajectory.source.probs, "probe images")
    signals = _named_signals(trajectory.signals, estimator.setting)
    baselines = baseline_estimates_for(
        trajectory.source.probs, calibration.baseline_reference, seed=config.seed
    )
    reference = calibration.window_reference() or ReferenceSet(
        prior=torch.full((spec.num_classes,), 1.0 / spec.num_classes, dtype=torch.float64)
    )
    window = measure_window(
        model, trajectory, spec=spec, config=run_config, device=device, reference=reference
    )
    values = row_features(signals, baselines, window.values)
    missing = [name for name in estimator.features if name not in values]
    if missing:
        raise CalibrationMissing(
            f"the calibration's estimator needs {', '.join(missing)}, which this window did "
            "not give (recalibrate the model with this flipwatch version)"
        )
    value = estimator(values)
    distinct = distinct_images(images)
    sized_for = min(trajectory.probe_size, distinct)
    lower, upper, level = _interval(calibration, value, sized_for)
    warnings = _warnings(trajectory, calibration, config, estimator, fell_back)
    if distinct < DUPLICATE_SHARE_FOR_WARNING * len(images):
        warnings.append(
            f"{len(images) - distinct} of the window's {len(images)} images are exact duplicates "
            f"({distinct} distinct): batch statistics and flips see fewer images than the window "
            f"holds (a stuck camera or a replayed batch?); the interval is sized for {sized_for} "
            "images"
        )
    primary = estimator.features[0]
    described = estimator.describe()
    inputs = {name: values[name] for name in estimator.features}
    error = _held_out_error(calibration, estimator, fell_back)
    if calibration.source == BUILTIN_SOURCE and adaptation_starved(trajectory) and "ac" in values:
        # The paper's maps read an adaptation that did not happen: their no-flip end is the
        # model's clean accuracy, the worst possible answer for a window nothing in which is
        # recognisable. Average confidence is what is left without labels; it overestimates
        # under shift (spec §9.1), so it only ever lowers the map's value.
        value = min(value, values["ac"])
        primary, described = "ac", f"fallback: min(ac, {described})"
        inputs["ac"] = values["ac"]
        error = PAPER_AC_MAE
        half = MAE_TO_HALF_WIDTH_90 * PAPER_AC_MAE
        lower, upper, level = max(0.0, value - half), min(1.0, value + half), 0.9
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return EstimateResult(
        estimated_accuracy=value,
        signal=primary,
        signal_value=values[primary],
        calibration=calibration.source,
        calibration_mae=error,
        weighted_flips=trajectory.signals["wf"][trajectory.steps],
        signals=trajectory.signals,
        baselines=baselines,
        embedding={k: window.values.get(k) for k in EMBEDDING_KEYS},
        steps=run_config.steps,
        probe_size=trajectory.probe_size,
        num_images=trajectory.num_images,
        seconds=round(time.perf_counter() - started, 3),
        device=str(device),
        used_fraction=trajectory.used_fraction,
        epsilon=config.epsilon if config.epsilon is not None else default_epsilon(spec.num_classes),
        warnings=warnings,
        lower=lower,
        upper=upper,
        interval_level=level,
        estimator=described,
        estimator_inputs=inputs,
        class_proportions=window.class_proportions,
        reference_class_proportions=[float(v) for v in reference.prior],
        label_shift=window.label_shift,
    )


def distinct_images(images: Tensor) -> int:
    """How many different images (byte for byte) the window holds."""
    flat = images.reshape(len(images), -1).cpu().contiguous().numpy()
    return len({hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat})


def _named_signals(
    signals: dict[str, dict[int, float]], setting: str
) -> dict[str, dict[int, float]]:
    """Signals under the names calibration gave them: `<signal>~<setting>` past step 0."""
    if not setting:
        return signals
    named: dict[str, dict[int, float]] = {}
    for name, by_step in signals.items():
        named[f"{name}~{setting}"] = {s: v for s, v in by_step.items() if s > 0}
        if 0 in by_step:
            named[name] = {0: by_step[0]}
    return named


def _interval(
    calibration: Calibration, value: float, window_size: int
) -> tuple[float | None, float | None, float | None]:
    spec = calibration.interval_spec
    if spec is None:
        return None, None, None
    half = widened_half_width(
        spec.half_width,
        window_size=window_size,
        calibration_size=spec.calibration_size,
        spread=spec.spread,
        level=spec.level,
    )
    return max(0.0, value - half), min(1.0, value + half), spec.level


def _warnings(
    trajectory: Trajectory,
    calibration: Calibration,
    config: EstimateConfig,
    estimator: Estimator,
    fell_back: bool,
) -> list[str]:
    notes: list[str] = []
    if trajectory.probe_size < MIN_PROBE_FOR_TRUST:
        notes.append(
            f"probe of {trajectory.probe_size} images: below {MIN_PROBE_FOR_TRUST} the estimate "
            "degrades clearly (spec §10.1)"
        )
    if trajectory.probe_size != calibration.probe_size:
        notes.append(
            f"probe size {trajectory.probe_size} differs from the calibration's "
            f"{calibration.probe_size}; flips were rescaled to a 1000-image probe"
        )
    if fell_back:
        notes.append(
            f"{config.steps} steps do not reach the selected estimator's checkpoint "
            f"({calibration.selected_estimator.steps}); used {estimator.name}, the best in reach"
        )
    if adaptation_starved(trajectory):
        then = (
            "the estimate is the lower of average confidence and the map (the paper's AC error, "
            "26 points on average, sets the interval)"
            if calibration.source == BUILTIN_SOURCE
            else "read the baselines and label_shift beside this estimate"
        )
        notes.append(
            f"{100 * trajectory.used_fraction:.2f} % of the adaptation samples passed the entropy "
            "and redundancy filters, less than one batch in all: the adapted copy barely moved and "
            "its flips measure nothing (the model on batch statistics is unsure of nearly every "
            "image: a shift nothing survives, or a window too uniform for batch statistics, such "
            f"as crops of one scene); {then}"
        )
    return notes


def _held_out_error(
    calibration: Calibration, estimator: Estimator, fell_back: bool
) -> float | None:
    """The held-out error of what produced the estimate: the selected estimator's, or on a short
    run the error of the single fit it fell back to (when the calibration stored it)."""
    if fell_back and estimator.kind == "fit" and len(estimator.features) == 1:
        try:
            return calibration.fit(estimator.features[0]).mae
        except KeyError:
            return None
    return calibration.selected_mae
