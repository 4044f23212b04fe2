"""Flip statistics (spec §5) and the quadratic map f from flips to accuracy (spec §6)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

REFERENCE_PROBE_SIZE = 1000


def avg_rank_pct(confidences: Tensor) -> Tensor:
    """Average-rank percentiles of (N,) confidences, ties sharing the mean of their ranks.

    Equals pandas' `Series.rank() / N` (method "average"), so the percentiles sum to (N + 1) / 2.
    Ranks are taken on the float32 values exactly as the softmax produced them (spec §5, §10.8).
    """
    n = confidences.numel()
    _, inverse, counts = torch.unique(
        confidences.flatten(), sorted=True, return_inverse=True, return_counts=True
    )
    last = torch.cumsum(counts, 0).double()
    average = last - (counts.double() - 1) / 2
    return average[inverse] / n


def weighted_flips(labels_before: Tensor, labels_after: Tensor, confidences: Tensor) -> float:
    """WF = Σ flip[i]·pct[i]: each changed prediction weighted by its confidence percentile.

    Range [0, (N+1)/2]; a flip of the most confident image counts ≈ 1, of the least 1/N.
    """
    _check_same_length(labels_before, labels_after, confidences)
    flipped = (labels_before != labels_after).double()
    return float((flipped * avg_rank_pct(confidences)).sum())


def unweighted_flips(labels_before: Tensor, labels_after: Tensor) -> float:
    """UF = Σ flip[i], the plain count of changed predictions (range [0, N])."""
    _check_same_length(labels_before, labels_after)
    return float((labels_before != labels_after).sum())


def per_reference_probe(value: float, probe_size: int) -> float:
    """Scale a flip statistic of an N-image probe to the 1000-image reference (spec §6.3 App. C)."""
    return value * REFERENCE_PROBE_SIZE / probe_size


def _check_same_length(*tensors: Tensor) -> None:
    sizes = {t.numel() for t in tensors}
    if len(sizes) != 1:
        raise ValueError(f"flip inputs must have the same length, got sizes {sorted(sizes)}")


SCALES = ("linear", "sqrt")


def signed_sqrt(x: np.ndarray) -> np.ndarray:
    """sign(x)·√|x|: the `sqrt` map scale (class-mix adjusted signals can be negative)."""
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.sqrt(np.abs(x))


@dataclass(frozen=True)
class QuadraticMap:
    """f(x) = a·u² + b·u + c, clipped to [0, 1]; x is a flip signal, the output an accuracy.

    u is x itself (`scale` "linear", the paper's map) or its signed square root (`scale` "sqrt":
    u = sign(x)·√|x|), which follows a signal that rises steeply at first and then saturates.
    Inside the fitted range [x_min, x_max] (in u) the quadratic is used as is; outside it f
    continues linearly with the slope at the nearest end, so a shift stronger than any seen in
    calibration keeps lowering the estimate instead of following a parabola back up.
    """

    a: float
    b: float
    c: float
    x_min: float = 0.0
    x_max: float = math.inf
    scale: str = "linear"

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"unknown map scale {self.scale!r}; known: {', '.join(SCALES)}")

    def u(self, x: np.ndarray) -> np.ndarray:
        """The map's coordinate of signal values x."""
        x = np.asarray(x, dtype=np.float64)
        return x if self.scale == "linear" else signed_sqrt(x)

    def raw(self, x: float) -> float:
        return self.a * x * x + self.b * x + self.c

    def slope(self, x: float) -> float:
        return 2 * self.a * x + self.b

    def raw_np(self, x: np.ndarray) -> np.ndarray:
        return self.a * x * x + self.b * x + self.c

    def predict(self, x: np.ndarray) -> np.ndarray:
        """`__call__` over a numpy array (linear beyond the fitted range, clipped to [0, 1])."""
        x = self.u(x)
        lo, hi = self.x_min, self.x_max
        y = self.raw_np(x)
        if math.isfinite(lo):
            y = np.where(x < lo, self.raw(lo) + self.slope(lo) * (x - lo), y)
        if math.isfinite(hi):
            y = np.where(x > hi, self.raw(hi) + self.slope(hi) * (x - hi), y)
        return np.clip(y, 0.0, 1.0)

    def __call__(self, x: float) -> float:
        if self.scale == "sqrt":
            x = math.copysign(math.sqrt(abs(x)), x)
        if x < self.x_min:
            y = self.raw(self.x_min) + self.slope(self.x_min) * (x - self.x_min)
        elif x > self.x_max:
            y = self.raw(self.x_max) + self.slope(self.x_max) * (x - self.x_max)
        else:
            y = self.raw(x)
        return min(1.0, max(0.0, y))

    def is_monotone(self) -> bool:
        """True when f has no turning point strictly inside (x_min, x_max)."""
        if self.a == 0:
            return True
        vertex = -self.b / (2 * self.a)
        return not (self.x_min < vertex < self.x_max)

    def to_dict(self) -> dict[str, float | None]:
        return {
            "a": self.a,
            "b": self.b,
            "c": self.c,
            "x_min": self.x_min,
            "x_max": None if math.isinf(self.x_max) else self.x_max,
            "scale": self.scale,
        }

    @classmethod
    def from_dict(cls, data: dict[str, float | None]) -> QuadraticMap:
        x_max = data.get("x_max")
        return cls(
            a=float(data["a"]),  # type: ignore[arg-type]
            b=float(data["b"]),  # type: ignore[arg-type]
            c=float(data["c"]),  # type: ignore[arg-type]
            x_min=float(data.get("x_min") or 0.0),
            x_max=math.inf if x_max is None else float(x_max),
            scale=str(data.get("scale") or "linear"),
        )


# The paper's f for RN-50 on ImageNet (spec §6.1, `main.py:f`), in accuracy fractions: WF at the
# reference step T = 990 (our checkpoint "1000"), probe 1000. Its vertex x* = 452.03 bounds the
# monotone range; WF never exceeds 500.5.
_A, _B, _C = 3.55553868e-4 / 100, -3.21445023e-1 / 100, 75.6618580 / 100
PAPER_IMAGENET_MAP = QuadraticMap(a=_A, b=_B, c=_C, x_min=0.0, x_max=-_B / (2 * _A))


def fit_monotone_quadratic(x: Tensor, y: Tensor) -> QuadraticMap:
    """Least-squares quadratic through (x, y), constrained to be monotone on [min x, max x].

    If the unconstrained fit turns inside the range, the constrained optimum has its vertex on an
    end of the range (or is a line), so those three candidates are fitted and the best kept.
    """
    return fit_monotone_quadratic_np(
        x.detach().double().flatten().cpu().numpy(), y.detach().double().flatten().cpu().numpy()
    )


def fit_monotone_quadratic_np(x: np.ndarray, y: np.ndarray) -> QuadraticMap:
    """`fit_monotone_quadratic` on float64 numpy vectors: selection fits thousands of these."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.size != y.size or x.size < 2:
        raise ValueError("fit needs at least two (x, y) points of equal count")
    lo, hi = float(x.min()), float(x.max())
    ones = np.ones_like(x)
    candidates: list[QuadraticMap] = []
    if x.size >= 3 and hi > lo:
        a, b, c = _lstsq(np.stack([x * x, x, ones], 1), y)
        free = QuadraticMap(a, b, c, lo, hi)
        if free.is_monotone():
            candidates.append(free)
        for vertex in (lo, hi):
            # f = a·(x − v)² + c  <=>  a·x² − 2av·x + (a·v² + c)
            a_v, c_v = _lstsq(np.stack([(x - vertex) ** 2, ones], 1), y)
            candidates.append(QuadraticMap(a_v, -2 * a_v * vertex, a_v * vertex**2 + c_v, lo, hi))
    if hi > lo:
        b_l, c_l = _lstsq(np.stack([x, ones], 1), y)
        candidates.append(QuadraticMap(0.0, b_l, c_l, lo, hi))
    else:
        candidates.append(QuadraticMap(0.0, 0.0, float(y.mean()), lo, hi))
    return min(candidates, key=lambda f: float(((f.raw_np(x) - y) ** 2).sum()))


def fit_monotone_map_np(x: np.ndarray, y: np.ndarray) -> QuadraticMap:
    """The monotone quadratic of `fit_monotone_quadratic_np` in either scale, whichever has the
    lower squared error on (x, y) (ties keep the paper's linear scale).

    Flip signals saturate: they rise steeply over the first accuracy points lost and slowly
    after, which one quadratic in x fits poorly at both ends (the small ResNet's noise-4 variant
    was estimated 13 points too high). In √x the curve is close to a line. Selection judges the
    choice like any other, by nested leave-one-family-out error.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    linear = fit_monotone_quadratic_np(x, y)
    s = fit_monotone_quadratic_np(signed_sqrt(x), y)
    root = QuadraticMap(s.a, s.b, s.c, s.x_min, s.x_max, scale="sqrt")

    def sse(f: QuadraticMap) -> float:
        return float(((f.predict(x) - y) ** 2).sum())

    return root if sse(root) < sse(linear) - 1e-12 else linear


def fit_monotone_map(x: Tensor, y: Tensor) -> QuadraticMap:
    """`fit_monotone_map_np` on tensors."""
    return fit_monotone_map_np(
        x.detach().double().flatten().cpu().numpy(), y.detach().double().flatten().cpu().numpy()
    )


def _lstsq(design: np.ndarray, y: np.ndarray) -> list[float]:
    return [float(v) for v in np.linalg.lstsq(design, y, rcond=None)[0]]
