"""Black-box label-shift estimation: a window's class proportions from the source model's outputs.

A window whose classes come in another mix than the reference set's (a night shift, one store)
moves batch-statistics signals although the model is as accurate as ever. These estimators say
what the mix is, so an estimate can tell "other classes" from "the model is failing":

- BBSE (Lipton et al. 2018): the predicted-class marginal of the window is C·w, with C the joint
  confusion matrix P(ŷ = i, y = j) measured on the labeled reference set and w_j = q_j / p_j.
- MLLS (Saerens et al. 2002): EM on the source model's probabilities, re-weighting each class's
  posterior by q_c / p_c until the class marginal stops moving (the maximum-likelihood q).

Everything is numpy float64; probabilities come in as (N, C).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["bbse", "confusion_matrix", "mlls", "total_variation"]


def confusion_matrix(predicted: ArrayLike, labels: ArrayLike, num_classes: int) -> np.ndarray:
    """Joint (C, C) matrix M[i, j] = P(ŷ = i, y = j) over a labeled set; sums to 1."""
    pred = np.asarray(predicted, dtype=np.int64).ravel()
    true = np.asarray(labels, dtype=np.int64).ravel()
    if pred.shape != true.shape or pred.size == 0:
        raise ValueError("predicted and labels must be non-empty and of equal length")
    joint = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(joint, (pred, true), 1.0)
    return joint / pred.size


def _normalise(q: np.ndarray) -> np.ndarray:
    q = np.clip(q, 0.0, None)
    total = q.sum()
    return np.full_like(q, 1.0 / q.size) if total <= 0 else q / total


def bbse(predicted_marginal: ArrayLike, confusion: ArrayLike) -> np.ndarray:
    """Class proportions q (C,) from the window's predicted-class marginal (C,) and the reference
    joint confusion matrix (C, C): solve C·w = μ in least squares, q = w·p, clipped, normalised."""
    mu = np.asarray(predicted_marginal, dtype=np.float64).ravel()
    joint = np.asarray(confusion, dtype=np.float64)
    if joint.shape != (mu.size, mu.size):
        raise ValueError(f"confusion must be ({mu.size}, {mu.size}), got {joint.shape}")
    prior = joint.sum(axis=0)
    w = np.linalg.lstsq(joint, mu, rcond=None)[0]
    return _normalise(np.clip(w, 0.0, None) * prior)


def mlls(
    probs: ArrayLike,
    prior: ArrayLike,
    *,
    weights: ArrayLike | None = None,
    iterations: int = 500,
    tol: float = 1e-10,
) -> np.ndarray:
    """Maximum-likelihood class proportions q (C,) of a window by EM (Saerens et al. 2002).

    probs: (N, C) source-model posteriors, calibrated for the reference prior p (C,). `weights`
    (N,) weigh the samples (default equal), which lets a test feed an exact population.
    """
    f = np.asarray(probs, dtype=np.float64)
    p = np.asarray(prior, dtype=np.float64).ravel()
    if f.ndim != 2 or f.shape[1] != p.size or f.shape[0] == 0:
        raise ValueError(f"probs must be (N, {p.size}), got {f.shape}")
    w = np.full(f.shape[0], 1.0 / f.shape[0]) if weights is None else np.asarray(weights, float)
    w = w / w.sum()
    safe_p = np.where(p > 0, p, 1.0)
    q = p.copy()
    for _ in range(iterations):
        ratio = np.where(p > 0, q / safe_p, 0.0)
        post = f * ratio
        norm = post.sum(axis=1, keepdims=True)
        post = np.divide(post, norm, out=np.zeros_like(post), where=norm > 0)
        new_q = _normalise(w @ post)
        if np.abs(new_q - q).max() < tol:
            return new_q
        q = new_q
    return q


def total_variation(q: ArrayLike, p: ArrayLike) -> float:
    """½·Σ|q − p| in [0, 1]: the share of the window that would have to change class."""
    return float(0.5 * np.abs(np.asarray(q, float) - np.asarray(p, float)).sum())
