"""One label-free accuracy estimate: trajectory -> signals -> calibrated map -> result.

The number estimates the accuracy of the *source* model as deployed (eval mode, no adaptation)
on the window (spec §1, §10.11); the adapted copy is only a measuring instrument.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from flipwatch.workers.estimation.baselines import baseline_estimates_for
from flipwatch.workers.estimation.calibration_result import (
    Calibration,
    CalibrationMissing,
    builtin_calibration,
)
from flipwatch.workers.estimation.config import EstimateConfig, default_epsilon
from flipwatch.workers.estimation.embeddings import (
    centroid_shift,
    feature_stats,
    frechet_distance,
    kmeans,
    silhouette_score,
)
from flipwatch.workers.estimation.result import EstimateResult
from flipwatch.workers.estimation.spec import ModelSpec
from flipwatch.workers.estimation.trajectory import (
    Progress,
    Trajectory,
    resolve_device,
    run_trajectory,
)

MIN_PROBE_FOR_TRUST = 100


def embedding_distances(
    trajectory: Trajectory, calibration: Calibration | None, *, num_classes: int, seed: int
) -> dict[str, float | None]:
    """Fréchet distance of the window's source features to the reference features, and the
    post-adaptation silhouette and centroid shift (spec §8)."""
    out: dict[str, float | None] = {"frechet": None, "silhouette": None, "centroid_shift": None}
    source = trajectory.source.features
    adapted = trajectory.adapted[trajectory.steps].features
    if (
        calibration is not None
        and calibration.reference_features is not None
        and source is not None
    ):
        window = feature_stats(source)
        ref = calibration.reference_features
        out["frechet"] = float(frechet_distance(window.mean, window.cov, ref.mean, ref.cov))
    if adapted is not None and len(adapted) >= 4:
        # k-means with one cluster per class needs ~20 points per cluster to mean anything.
        k = max(2, min(num_classes, len(adapted) // 20))
        generator = torch.Generator().manual_seed(seed)
        centroids, assignments = kmeans(adapted, k, generator=generator)
        if assignments.unique().numel() >= 2:  # collapsed features form a single cluster
            out["silhouette"] = float(silhouette_score(adapted, assignments))
        if calibration is not None and calibration.class_means is not None:
            out["centroid_shift"] = float(centroid_shift(centroids, calibration.class_means))
    return out


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
    fit = calibration.fit_for(config.steps)
    config = config.recording(fit.step)
    device = resolve_device(device)
    started = time.perf_counter()
    trajectory = run_trajectory(
        model, images, spec=spec, config=config, device=device, progress=progress
    )
    value = trajectory.signals[fit.signal][fit.step]
    warnings = _warnings(trajectory, calibration, config)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return EstimateResult(
        estimated_accuracy=fit.map(value),
        signal=fit.key,
        signal_value=value,
        calibration=calibration.source,
        calibration_mae=fit.mae,
        weighted_flips=trajectory.signals["wf"][trajectory.steps],
        signals=trajectory.signals,
        baselines=baseline_estimates_for(
            trajectory.source.probs, calibration.baseline_reference, seed=config.seed
        ),
        embedding=embedding_distances(
            trajectory, calibration, num_classes=spec.num_classes, seed=config.seed
        ),
        steps=config.steps,
        probe_size=trajectory.probe_size,
        num_images=trajectory.num_images,
        seconds=round(time.perf_counter() - started, 3),
        device=str(device),
        used_fraction=trajectory.used_fraction,
        epsilon=config.epsilon if config.epsilon is not None else default_epsilon(spec.num_classes),
        warnings=warnings,
    )


def _warnings(
    trajectory: Trajectory, calibration: Calibration, config: EstimateConfig
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
    if config.steps < calibration.fit(calibration.selected).step:
        notes.append(
            f"{config.steps} steps do not reach the selected checkpoint {calibration.selected}; "
            "used the best fit within reach"
        )
    if trajectory.used_fraction == 0.0 and config.steps > 0:
        notes.append("no sample passed the entropy and redundancy filters: nothing adapted")
    return notes
