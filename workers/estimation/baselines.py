"""Label-free accuracy baselines from softmax probabilities (spec §9): AC, DoC, ATC (MC, NE), COT.

Every estimate is an accuracy fraction in [0, 1] (the paper reports %). Inputs are softmax
probabilities `probs` of shape (N, C). Whatever needs labels (acc_S, mean_S conf, the ATC
thresholds, the label marginal) is measured once on a labeled reference set by
`BaselineReference.from_labeled`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

__all__ = [
    "BaselineReference",
    "atc",
    "atc_threshold",
    "average_confidence",
    "baseline_estimates",
    "confidence_optimal_transport",
    "difference_of_confidences",
    "label_counts",
    "max_confidence_score",
    "negative_entropy_score",
]

COT_BATCH = 10_000  # COT repo: batches of 10,000 target samples once n >= 2 * COT_BATCH


def _check_probs(probs: Tensor) -> None:
    if probs.dim() != 2 or probs.shape[0] == 0 or probs.shape[1] == 0:
        raise ValueError(f"probs must be a non-empty (N, C) tensor, got shape {tuple(probs.shape)}")


def _clip01(value: float) -> float:
    return min(1.0, max(0.0, value))


def max_confidence_score(probs: Tensor) -> Tensor:
    """ATC-MC score conf(x) = max_k p_k(x): (N, C) -> (N,)."""
    _check_probs(probs)
    return probs.max(dim=1).values


def negative_entropy_score(probs: Tensor) -> Tensor:
    """ATC-NE score Σ_k p_k ln p_k (≤ 0, natural log): (N, C) -> (N,).

    `xlogy` defines 0·ln 0 = 0, so zero probabilities need no +1e-20 (the ATC repo's trick).
    """
    _check_probs(probs)
    return torch.xlogy(probs, probs).sum(dim=1)


def average_confidence(probs: Tensor) -> float:
    """AC (Hendrycks & Gimpel): the mean max-probability over the target, (N, C) -> float."""
    return float(max_confidence_score(probs).double().mean())


def difference_of_confidences(
    probs: Tensor, *, reference_accuracy: float, reference_confidence: float
) -> float:
    """DoC: acc_S − (mean_S conf − mean_T conf), clipped to [0, 1]; (N, C) -> float.

    AC shifted by the overconfidence gap measured on the labeled reference set S.
    """
    gap = reference_confidence - average_confidence(probs)
    return _clip01(reference_accuracy - gap)


def atc_threshold(scores: Tensor, correct: Tensor) -> float:
    """The ATC threshold t fitted on labeled source scores (ATC repo `find_ATC_threshold`).

    scores: (N,) source scores; correct: (N,) bool, whether each source prediction is right.
    The official loop walks the scores in ascending order and after element i has
    fp = #incorrect above position i and fn = #correct at or below it; it keeps the first i that
    strictly minimises |fp − fn| and returns t = sorted_scores[i]. Here the same sweep runs on
    cumulative sums (O(N log N)); the sort is stable, so tied scores keep their input order.
    Since fp − fn = I − (i + 1) with I = #incorrect, the winner is the I-th smallest score.
    When every prediction is correct (I = 0) no step improves on the start; the official code then
    returns 0.0, which is wrong for NE scores (all ≤ 0), so this returns the smallest score.
    """
    if scores.dim() != 1 or correct.shape != scores.shape or scores.numel() == 0:
        raise ValueError(
            f"scores and correct must be non-empty (N,) tensors, got {tuple(scores.shape)} "
            f"and {tuple(correct.shape)}"
        )
    order = torch.sort(scores.detach().cpu().double(), stable=True)
    ok = correct.detach().cpu().bool()[order.indices].long()
    wrong_total = int((1 - ok).sum())
    if wrong_total == 0:
        return float(order.values[0])
    fp = wrong_total - torch.cumsum(1 - ok, dim=0)  # incorrect above position i
    fn = torch.cumsum(ok, dim=0)  # correct at or below position i
    best = int(torch.argmin((fp - fn).abs()))  # first minimum, like the strict `<` of the loop
    return float(order.values[best])


def atc(scores_target: Tensor, threshold: float) -> float:
    """ATC estimate: the fraction of target scores (N,) at or above the fitted threshold."""
    if scores_target.numel() == 0:
        raise ValueError("scores_target is empty")
    return float((scores_target >= threshold).double().mean())


def label_counts(
    n: int, num_classes: int, *, label_marginal: Tensor | None, generator: torch.Generator
) -> Tensor:
    """How many of n pseudo-labels each class gets (COT step 1): (C,) int64 summing to n.

    Each class gets ⌊n·m_c⌋ (⌊n/C⌋ for the uniform default) and the remainder is drawn from the
    marginal m with replacement using `generator`.
    """
    if label_marginal is None:
        counts = torch.full((num_classes,), n // num_classes, dtype=torch.int64)
        weights = torch.ones(num_classes, dtype=torch.float64)
    else:
        weights = label_marginal.detach().cpu().double()
        if weights.shape != (num_classes,) or bool((weights < 0).any()) or weights.sum() <= 0:
            raise ValueError(
                f"label_marginal must be {num_classes} non-negative weights with a positive sum, "
                f"got shape {tuple(weights.shape)}"
            )
        weights = weights / weights.sum()
        counts = torch.floor(n * weights + 1e-9).long()
    remainder = n - int(counts.sum())
    if remainder > 0:
        extra = torch.multinomial(weights, remainder, replacement=True, generator=generator)
        counts += torch.bincount(extra, minlength=num_classes)
    return counts


def _cot_error(probs: np.ndarray, counts: np.ndarray) -> float:
    """Exact balanced OT between (n, C) float64 probabilities and n one-hot labels with `counts`.

    Half the cost 2·(1 − p_y(x)) is 1 − p_y(x). The OT problem with uniform weights is an
    assignment problem (Birkhoff), solved exactly on the (n, n) sample-by-label matrix. A
    transportation LP with C sources (scipy linprog/HiGHS) is also exact but measured 10-100×
    slower than `linear_sum_assignment` here, so it is not used.
    """
    labels = np.repeat(np.arange(probs.shape[1]), counts)
    cost = probs[:, labels]
    np.subtract(1.0, cost, out=cost)  # in place: the (n, n) matrix is the memory peak
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


def confidence_optimal_transport(
    probs: Tensor,
    *,
    label_marginal: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> float:
    """COT (Lu et al. 2023): 1 − the optimal-transport error between predictions and labels.

    probs: (N, C). Pseudo-labels match `label_marginal` ((C,), uniform when None); see
    `label_counts`. The error is half the mean optimal cost under the L1 cost ||e_y − p(x)||_1.
    For N ≥ 20,000 it averages ⌊N/10,000⌋ batches of 10,000 samples drawn with replacement.
    `generator` (CPU) draws the remainder labels and the batches; None means seed 0.
    """
    _check_probs(probs)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    n, num_classes = probs.shape
    p = probs.detach().cpu().double()
    batches = n // COT_BATCH
    if batches > 1:
        errors = []
        for _ in range(batches):
            idx = torch.randint(n, (COT_BATCH,), generator=generator)
            counts = label_counts(
                COT_BATCH, num_classes, label_marginal=label_marginal, generator=generator
            )
            errors.append(_cot_error(p[idx].numpy(), counts.numpy()))
        error = float(np.mean(errors))
    else:
        counts = label_counts(n, num_classes, label_marginal=label_marginal, generator=generator)
        error = _cot_error(p.numpy(), counts.numpy())
    return _clip01(1.0 - error)


@dataclass(frozen=True)
class BaselineReference:
    """What the baselines measure once on a labeled reference set S (JSON-able)."""

    reference_accuracy: float
    reference_confidence: float
    atc_mc_threshold: float
    atc_ne_threshold: float
    label_marginal: list[float]

    @classmethod
    def from_labeled(cls, probs: Tensor, labels: Tensor) -> BaselineReference:
        """probs: (N, C) softmax on S; labels: (N,) int class indices in [0, C)."""
        _check_probs(probs)
        n, num_classes = probs.shape
        labels = labels.detach().to(probs.device).long()
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
        if bool((labels < 0).any()) or bool((labels >= num_classes).any()):
            raise ValueError(f"labels must lie in [0, {num_classes})")
        correct = probs.argmax(dim=1) == labels
        marginal = torch.bincount(labels.cpu(), minlength=num_classes).double() / n
        return cls(
            reference_accuracy=float(correct.double().mean()),
            reference_confidence=average_confidence(probs),
            atc_mc_threshold=atc_threshold(max_confidence_score(probs), correct),
            atc_ne_threshold=atc_threshold(negative_entropy_score(probs), correct),
            label_marginal=marginal.tolist(),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BaselineReference:
        return cls(
            reference_accuracy=float(data["reference_accuracy"]),
            reference_confidence=float(data["reference_confidence"]),
            atc_mc_threshold=float(data["atc_mc_threshold"]),
            atc_ne_threshold=float(data["atc_ne_threshold"]),
            label_marginal=[float(v) for v in data["label_marginal"]],
        )


def baseline_estimates(
    probs: Tensor, reference: BaselineReference, *, generator: torch.Generator | None = None
) -> dict[str, float]:
    """All baselines on target probs (N, C): keys `ac`, `doc`, `atc` (MC), `atc_ne`, `cot`."""
    _check_probs(probs)
    if len(reference.label_marginal) != probs.shape[1]:
        raise ValueError(
            f"reference has {len(reference.label_marginal)} classes, probs have {probs.shape[1]}"
        )
    return {
        "ac": average_confidence(probs),
        "doc": difference_of_confidences(
            probs,
            reference_accuracy=reference.reference_accuracy,
            reference_confidence=reference.reference_confidence,
        ),
        "atc": atc(max_confidence_score(probs), reference.atc_mc_threshold),
        "atc_ne": atc(negative_entropy_score(probs), reference.atc_ne_threshold),
        "cot": confidence_optimal_transport(
            probs,
            label_marginal=torch.tensor(reference.label_marginal, dtype=torch.float64),
            generator=generator,
        ),
    }


def baseline_estimates_for(
    probs: Tensor, reference: BaselineReference | None, *, seed: int
) -> dict[str, float | None]:
    """AC, DoC, ATC (MC, NE) and COT; without labeled reference data only AC and COT exist."""
    generator = torch.Generator().manual_seed(seed)
    if reference is not None:
        return dict(baseline_estimates(probs, reference, generator=generator))
    return {
        "ac": average_confidence(probs),
        "doc": None,
        "atc": None,
        "atc_ne": None,
        "cot": confidence_optimal_transport(probs, generator=generator),
    }
