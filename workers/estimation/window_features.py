"""What calibration and an estimate measure on a window beside the flips.

- class proportions (MLLS on the source model's probe outputs) and a `label_shift` distance (total
  variation against the reference set's proportions);
- the class-mix deltas: the step-0 source-vs-batch-statistics flips of the labeled reference set
  resampled to the window's estimated proportions, minus those of the reference resampled to its
  own proportions at the same size, times `mix_guard` (none of it once the images themselves
  moved). They measure what the mix alone does to the flips, so the `*_adj` signals (flips minus
  delta) stay put when only the mix changes;
- COT with the estimated proportions as its label marginal (`cot_adj`);
- the embedding distances (spec §8): Fréchet distance to the reference features, post-adaptation
  silhouette and centroid shift; and `class_distance`, each source feature against its predicted
  class's reference mean (a covariate-shift measure that a class-mix change alone barely moves).

Calibration computes the same dict on every variant, so candidates can use any of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from flipwatch.workers.estimation.adapt import prepare_adaptation_copy, set_mode
from flipwatch.workers.estimation.baselines import confidence_optimal_transport
from flipwatch.workers.estimation.class_mix import resample_to
from flipwatch.workers.estimation.config import EstimateConfig
from flipwatch.workers.estimation.embeddings import (
    FeatureStats,
    centroid_shift,
    class_distance,
    feature_stats,
    frechet_distance,
    kmeans,
    silhouette_score,
)
from flipwatch.workers.estimation.features import ADJUSTED
from flipwatch.workers.estimation.flips import per_reference_probe, unweighted_flips, weighted_flips
from flipwatch.workers.estimation.label_shift import mlls, total_variation
from flipwatch.workers.estimation.spec import ModelSpec
from flipwatch.workers.estimation.trajectory import Trajectory, deterministic_kernels, predict

__all__ = ["ReferenceSet", "WindowFeatures", "measure_window", "mix_guard", "step0_flips"]


@dataclass(frozen=True)
class ReferenceSet:
    """What window features need from the labeled reference set (all CPU tensors).

    images/labels: a copy of the reference set (uint8 (N, C, H, W), int64 (N,)), or None when the
    calibration could not keep it (then no class-mix delta); prior: (C,) class proportions.
    """

    prior: Tensor
    images: Tensor | None = None
    labels: Tensor | None = None
    features: FeatureStats | None = None
    class_means: Tensor | None = None
    class_distance: float | None = None  # the reference set's own `class_distance`


@dataclass(frozen=True)
class WindowFeatures:
    """Scalars for candidates (`values`) and the estimated class proportions (C,)."""

    values: dict[str, float]
    class_proportions: list[float]
    label_shift: float


@torch.no_grad()
def step0_flips(
    model: nn.Module,
    batch_copy: nn.Module,
    images: Tensor,
    spec: ModelSpec,
    *,
    device: torch.device,
    chunk_size: int,
) -> dict[str, float]:
    """uf_source and wf_source at step 0 on `images` (no adaptation: two forward passes)."""
    source = predict(model, images, spec, device=device, chunk_size=chunk_size)
    set_mode(batch_copy, train=False)
    batch = predict(batch_copy, images, spec, device=device, chunk_size=chunk_size)
    n = len(images)
    return {
        "uf_source": per_reference_probe(unweighted_flips(source.labels, batch.labels), n),
        "wf_source": per_reference_probe(
            weighted_flips(source.labels, batch.labels, source.confidences), n
        ),
    }


def measure_window(
    model: nn.Module,
    trajectory: Trajectory,
    *,
    spec: ModelSpec,
    config: EstimateConfig,
    device: torch.device,
    reference: ReferenceSet,
    batch_copy: nn.Module | None = None,
) -> WindowFeatures:
    """Every window feature of module doc, from a trajectory run with `features=True`."""
    probs = trajectory.source.probs
    prior = reference.prior.double().cpu()
    q = torch.from_numpy(mlls(probs.double().numpy(), prior.numpy()))
    values: dict[str, float] = {"label_shift": total_variation(q.numpy(), prior.numpy())}
    generator = torch.Generator().manual_seed(config.seed)
    values["cot_adj"] = confidence_optimal_transport(probs, label_marginal=q, generator=generator)
    values.update(_embedding(trajectory, reference, num_classes=spec.num_classes, seed=config.seed))
    if reference.images is not None and reference.labels is not None:
        guard = mix_guard(values.get("class_distance"), reference.class_distance)
        deltas = dict.fromkeys(ADJUSTED, 0.0)
        if guard > 0:  # an uncredited delta needs no measuring
            model = model.to(device).eval()
            copy = batch_copy if batch_copy is not None else prepare_adaptation_copy(model)
            with deterministic_kernels():
                skewed, even = (
                    step0_flips(
                        model,
                        copy,
                        reference.images[
                            resample_to(
                                reference.labels,
                                proportions,
                                trajectory.probe_size,
                                torch.Generator().manual_seed(1),
                            )
                        ],
                        spec,
                        device=device,
                        chunk_size=config.chunk_size,
                    )
                    for proportions in (q, prior)
                )
            deltas = {name: (skewed[name] - even[name]) * guard for name in ADJUSTED}
        values.update({f"mix_delta_{name}": delta for name, delta in deltas.items()})
    return WindowFeatures(
        values=values, class_proportions=[float(v) for v in q], label_shift=values["label_shift"]
    )


def mix_guard(window: float | None, reference: float | None) -> float:
    """How much of the class-mix delta a window's flips are credited: 1 while its
    `class_distance` is at most the reference set's own, 0 from twice that, linear between.

    MLLS reads a shift that collapses the model onto a few classes as a class-mix change, and
    the full delta then removes real failure (the demo CNN's contrast-3 three-class variant: 58 %
    true, corrected flips below zero). A mix change alone leaves `class_distance` near the
    reference's; a collapse raises it. With the guard at 2× (benchmarks/estimate_quality.py,
    docs/estimate-quality.md) the nested error fell 3.16 → 2.10 points on the demo CNN and
    2.61 → 2.15 on the small ResNet, and the skewed clean windows' error to about 1 point on both.
    Unknown distances (calibrations from before the guard) credit the whole delta, as then.
    """
    if window is None or reference is None or reference <= 0:
        return 1.0
    return min(1.0, max(0.0, 2.0 - window / reference))


def _embedding(
    trajectory: Trajectory, reference: ReferenceSet, *, num_classes: int, seed: int
) -> dict[str, float]:
    out: dict[str, float] = {}
    source = trajectory.source.features
    adapted = trajectory.adapted[trajectory.steps].features
    if reference.features is not None and source is not None and len(source) >= 2:
        window = feature_stats(source)
        ref = reference.features
        out["frechet"] = float(frechet_distance(window.mean, window.cov, ref.mean, ref.cov))
        if reference.class_means is not None:
            out["class_distance"] = class_distance(
                source, trajectory.source.labels, reference.class_means, ref
            )
    if adapted is not None and len(adapted) >= 4:
        # k-means with one cluster per class needs ~20 points per cluster to mean anything.
        k = max(2, min(num_classes, len(adapted) // 20))
        centroids, assignments = kmeans(adapted, k, generator=torch.Generator().manual_seed(seed))
        if assignments.unique().numel() >= 2:  # collapsed features form a single cluster
            out["silhouette"] = float(silhouette_score(adapted, assignments))
        if reference.class_means is not None:
            out["centroid_shift"] = float(centroid_shift(centroids, reference.class_means))
    return out
