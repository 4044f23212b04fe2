"""Split-conformal prediction intervals from held-out residuals, widened for small windows.

Calibration keeps the residuals of the nested leave-one-family-out loop (each point predicted by
an estimator chosen and fitted without its family), so the interval is sized for shifts the
calibration never saw. A window smaller than the calibration variants adds sampling noise; the
half-width grows by the measured per-image spread of the estimate (see `widened_half_width`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

__all__ = ["conformal_quantile", "widened_half_width"]


def conformal_quantile(scores: Sequence[float] | np.ndarray, level: float) -> float:
    """The split-conformal quantile: the ⌈(n + 1)·level⌉-th smallest of n scores.

    With exchangeable scores, a new score is at most this value with probability ≥ level. When
    ⌈(n + 1)·level⌉ > n there are too few scores for that guarantee and the answer is +inf.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    values = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if values.size == 0 or np.isnan(values).any():
        raise ValueError("scores must be a non-empty sequence of numbers")
    rank = math.ceil((values.size + 1) * level - 1e-12)
    return math.inf if rank > values.size else float(values[rank - 1])


def widened_half_width(
    half_width: float,
    *,
    window_size: int,
    calibration_size: int,
    spread: float,
    level: float,
) -> float:
    """Half-width for a window of `window_size` images.

    `spread` is the standard deviation of (estimate − true accuracy) times √n measured on
    subsampled calibration variants; a window of n < calibration_size images adds
    spread²·(1/n − 1/calibration_size) to the error variance, at the normal quantile of `level`.
    """
    if window_size >= calibration_size or spread <= 0:
        return half_width
    z = NormalDist().inv_cdf(0.5 + level / 2)
    extra = spread**2 * (1.0 / window_size - 1.0 / calibration_size)
    return math.sqrt(half_width**2 + (z**2) * extra)
