"""Embedding-space diagnostics on penultimate features (spec §8): Fréchet distance, k-means,
silhouette score and the centroid shift distance, plus a hook that captures the features.

Features are (N, D) float tensors; statistics are computed in float64. Nothing here is needed to
produce an estimate: these quantities explain why the flips track accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

__all__ = [
    "FeatureExtractor",
    "FeatureStats",
    "centroid_shift",
    "class_distance",
    "feature_stats",
    "find_feature_layer",
    "frechet_distance",
    "kmeans",
    "silhouette_score",
]


def _check_features(features: Tensor, *, min_rows: int = 1) -> None:
    if features.dim() != 2 or features.shape[0] < min_rows or features.shape[1] == 0:
        raise ValueError(
            f"features must be an (N, D) tensor with N >= {min_rows}, got {tuple(features.shape)}"
        )


@dataclass(frozen=True)
class FeatureStats:
    """Gaussian summary of features: mean (D,) and unbiased covariance (D, D), float64."""

    mean: Tensor
    cov: Tensor

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "cov": self.cov.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureStats:
        mean = torch.tensor(data["mean"], dtype=torch.float64)
        cov = torch.tensor(data["cov"], dtype=torch.float64).reshape(mean.numel(), mean.numel())
        return cls(mean=mean, cov=cov)


def feature_stats(features: Tensor) -> FeatureStats:
    """Mean and unbiased covariance of (N, D) features, N >= 2, as float64 on CPU."""
    _check_features(features, min_rows=2)
    x = features.detach().cpu().double()
    return FeatureStats(
        mean=x.mean(dim=0), cov=torch.cov(x.T, correction=1).reshape(x.shape[1], -1)
    )


def _psd_sqrt(matrix: Tensor) -> Tensor:
    """Symmetric square root of a PSD (D, D) matrix; negative rounding noise is clamped to 0."""
    sym = (matrix + matrix.T) / 2
    values, vectors = torch.linalg.eigh(sym)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """FID-style distance between N(mu1, cov1) and N(mu2, cov2); mu: (D,), cov: (D, D).

    ||mu1 − mu2||² + Tr(cov1 + cov2 − 2·(cov1·cov2)^½). Tr((cov1·cov2)^½) equals the sum of the
    square roots of the eigenvalues of the symmetric PSD matrix cov1^½·cov2·cov1^½, which avoids
    the complex values `scipy.linalg.sqrtm` can return. Computed in float64, clamped at 0.
    """
    mu1, mu2 = mu1.detach().cpu().double(), mu2.detach().cpu().double()
    cov1, cov2 = cov1.detach().cpu().double(), cov2.detach().cpu().double()
    d = mu1.numel()
    if mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(
            f"expected means (D,) and covariances (D, D), got {tuple(mu1.shape)}, "
            f"{tuple(cov1.shape)}, {tuple(mu2.shape)}, {tuple(cov2.shape)}"
        )
    root1 = _psd_sqrt(cov1)
    inner = root1 @ cov2 @ root1
    eig = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0)
    trace_term = float(eig.sqrt().sum())
    value = float(((mu1 - mu2) ** 2).sum()) + float(cov1.trace() + cov2.trace()) - 2 * trace_term
    return max(0.0, value)


def _sq_dists(x: Tensor, centers: Tensor) -> Tensor:
    """Squared Euclidean distances (N, K) between x (N, D) and centers (K, D), clamped at 0."""
    d = (x * x).sum(1, keepdim=True) - 2 * x @ centers.T + (centers * centers).sum(1)
    return d.clamp(min=0)


def _kmeans_pp(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding: each next center is drawn with probability ∝ D(x)²; (k, D)."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator, device=generator.device))
    centers = [x[first]]
    closest = _sq_dists(x, x[first : first + 1]).squeeze(1)
    for _ in range(1, k):
        weights = closest.cpu()
        if float(weights.sum()) <= 0:  # all points coincide with a center: draw uniformly
            weights = torch.ones(n, dtype=torch.float64)
        idx = int(torch.multinomial(weights.to(generator.device), 1, generator=generator))
        centers.append(x[idx])
        closest = torch.minimum(closest, _sq_dists(x, x[idx : idx + 1]).squeeze(1))
    return torch.stack(centers)


def _reseed_empty(x: Tensor, centers: Tensor, assign: Tensor, sizes: Tensor) -> Tensor:
    """Move empty clusters' centers to the points farthest from their own centers (as sklearn).

    x: (N, D), centers: (k, D), assign: (N,), sizes: (k,). A cluster stays put when no point is
    away from its center (all points coincide), so the result is always finite.
    """
    empty = torch.nonzero(sizes == 0).flatten()
    if empty.numel() == 0:
        return centers
    far = ((x - centers[assign]) ** 2).sum(1)
    order = torch.argsort(far, descending=True, stable=True)[: empty.numel()]
    centers = centers.clone()
    for cluster, idx in zip(empty.tolist(), order.tolist(), strict=False):
        if float(far[idx]) > 0:
            centers[cluster] = x[idx]
    return centers


def kmeans(
    features: Tensor,
    k: int,
    *,
    generator: torch.Generator,
    iters: int = 50,
    n_init: int = 4,
) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means with k-means++ seeding, best of `n_init` runs by inertia.

    features: (N, D). Returns centroids (k, D) in the features' dtype and assignments (N,) int64.
    An empty cluster is moved to the point farthest from its centroid. Random draws use
    `generator` (its device may differ from the features'); runs are deterministic for a given
    generator state.
    """
    _check_features(features)
    n = features.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and N = {n}, got {k}")
    if iters < 1 or n_init < 1:
        raise ValueError(f"iters and n_init must be at least 1, got {iters} and {n_init}")
    x = features.detach().double()
    best: tuple[float, Tensor, Tensor] | None = None
    for _ in range(n_init):
        centers = _kmeans_pp(x, k, generator)
        assign = _sq_dists(x, centers).argmin(dim=1)
        for _ in range(iters):
            onehot = torch.zeros(n, k, dtype=x.dtype, device=x.device)
            onehot[torch.arange(n, device=x.device), assign] = 1
            sizes = onehot.sum(0)
            sums = onehot.T @ x
            centers = torch.where((sizes > 0)[:, None], sums / sizes.clamp(min=1)[:, None], centers)
            centers = _reseed_empty(x, centers, assign, sizes)
            new_assign = _sq_dists(x, centers).argmin(dim=1)
            if torch.equal(new_assign, assign):
                break
            assign = new_assign
        inertia = float(_sq_dists(x, centers).gather(1, assign[:, None]).sum())
        if best is None or inertia < best[0]:
            best = (inertia, centers, assign)
    assert best is not None
    return best[1].to(features.dtype), best[2]


def silhouette_score(features: Tensor, assignments: Tensor, *, chunk_size: int = 1024) -> float:
    """Mean silhouette coefficient (b − a)/max(a, b), Euclidean distances (sklearn's definition).

    features: (N, D); assignments: (N,) cluster ids (any integers). a is the mean distance to the
    other members of the own cluster, b the smallest mean distance to another cluster; members of
    singleton clusters score 0. Needs 2 <= #clusters <= N − 1. Distances are computed in
    row chunks, so memory stays O(chunk_size · N).
    """
    _check_features(features)
    n = features.shape[0]
    if assignments.shape != (n,):
        raise ValueError(f"assignments must have shape ({n},), got {tuple(assignments.shape)}")
    _, labels = torch.unique(assignments.to(features.device), return_inverse=True)
    k = int(labels.max()) + 1
    if not 2 <= k <= n - 1:
        raise ValueError(f"silhouette needs 2 <= number of clusters <= N - 1, got {k} for N = {n}")
    x = features.detach().double()
    onehot = torch.zeros(n, k, dtype=x.dtype, device=x.device)
    onehot[torch.arange(n, device=x.device), labels] = 1
    sizes = onehot.sum(0)
    scores = []
    for start in range(0, n, chunk_size):
        rows = torch.arange(start, min(start + chunk_size, n), device=x.device)
        dist = _sq_dists(x[rows], x).sqrt()
        dist[torch.arange(rows.numel(), device=x.device), rows] = 0.0
        per_cluster = dist @ onehot  # (b, k) summed distances to each cluster
        own = labels[rows]
        own_size = sizes[own]
        a = per_cluster.gather(1, own[:, None]).squeeze(1) / (own_size - 1).clamp(min=1)
        mean_other = per_cluster / sizes
        mean_other[torch.arange(rows.numel(), device=x.device), own] = float("inf")
        b = mean_other.min(dim=1).values
        denom = torch.maximum(a, b)
        s = torch.where(denom > 0, (b - a) / denom.clamp(min=torch.finfo(x.dtype).tiny), 0.0)
        scores.append(torch.where(own_size > 1, s, torch.zeros_like(s)))
    return float(torch.cat(scores).mean())


def centroid_shift(centroids: Tensor, class_means: Tensor) -> float:
    """Shift distance (spec §8): the minimal mean Euclidean distance of a one-to-one matching.

    centroids: (k, D) k-means centroids of the target; class_means: (m, D) per-class source means.
    Hungarian matching (scipy `linear_sum_assignment`) pairs min(k, m) of them.
    """
    _check_features(centroids)
    _check_features(class_means)
    if centroids.shape[1] != class_means.shape[1]:
        raise ValueError(
            f"dimension mismatch: centroids {tuple(centroids.shape)}, "
            f"class_means {tuple(class_means.shape)}"
        )
    a = centroids.detach().cpu().double()
    b = class_means.detach().cpu().double()
    cost = torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").numpy()
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


def class_distance(
    features: Tensor, predicted: Tensor, class_means: Tensor, reference: FeatureStats
) -> float:
    """Mean squared distance of each feature to its predicted class's reference mean, over the
    reference features' total variance: ≈ the reference's own within-class spread when only
    the class mix changed, larger when the images changed.

    The batch-statistics flips and MLLS both move when only the class proportions move; this
    compares each image with its own class, so it measures covariate shift and not the mix.
    features: (N, D); predicted: (N,) class indices; class_means: (C, D).
    """
    _check_features(features)
    _check_features(class_means)
    if features.shape[1] != class_means.shape[1] or len(predicted) != len(features):
        raise ValueError(
            f"shape mismatch: features {tuple(features.shape)}, predicted "
            f"{tuple(predicted.shape)}, class_means {tuple(class_means.shape)}"
        )
    x = features.detach().cpu().double()
    means = class_means.detach().cpu().double()[predicted.cpu().long()]
    variance = max(float(torch.diagonal(reference.cov).sum()), 1e-12)
    return float(((x - means) ** 2).sum(1).mean()) / variance


def find_feature_layer(model: nn.Module, module_name: str | None = None) -> nn.Module | None:
    """The module whose input is the penultimate feature: `module_name`, else the last nn.Linear.

    Returns None for TorchScript modules (their compiled forward bypasses Python hooks) and for
    models without any nn.Linear (for example a 1×1-conv head).
    """
    if isinstance(model, torch.jit.ScriptModule):
        return None
    if module_name is not None:
        modules = dict(model.named_modules())
        if module_name not in modules:
            raise ValueError(f"model has no submodule named {module_name!r}")
        return modules[module_name]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


class FeatureExtractor:
    """Captures the penultimate features (the input of the classifier head) during forwards.

    Usage::

        with FeatureExtractor(model) as fx:
            for batch in batches:
                logits = model(batch)
        feats = fx.features  # (N, D) over all forwards inside the block, or None

    The head is `module_name` if given, else the last `nn.Linear` in `model.modules()` order.
    Limitation: TorchScript (scripted or traced) modules run their compiled graph and never call
    Python hooks, and models without an `nn.Linear` head have nothing to hook; in both cases
    `supported` is False and `features` is None. Inputs with more than 2 dims are flattened to
    (N, −1).
    """

    def __init__(self, model: nn.Module, *, module_name: str | None = None) -> None:
        self.model = model
        self.layer = find_feature_layer(model, module_name)
        self._captured: list[Tensor] = []
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    @property
    def supported(self) -> bool:
        return self.layer is not None

    def _hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], Tensor):
            feats = args[0].detach()
            self._captured.append(feats.flatten(1) if feats.dim() > 2 else feats)

    def __enter__(self) -> FeatureExtractor:
        self._captured = []
        if self.layer is not None:
            self._handle = self.layer.register_forward_pre_hook(self._hook)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @property
    def features(self) -> Tensor | None:
        """Features (N, D) captured so far, concatenated over forwards; None if none were."""
        if not self._captured:
            return None
        return torch.cat(self._captured)

    def clear(self) -> None:
        self._captured = []
