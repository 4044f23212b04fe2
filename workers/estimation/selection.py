"""Which estimator calibration keeps: every candidate judged on shift families it never saw.

Candidates, over everything one calibration run measured (`features.py` names them):
- `raw:<baseline>`: a confidence baseline as it is (AC, DoC, ATC, ATC-NE, COT, COT with the
  estimated class mix);
- `fit:<feature>`: a monotone quadratic map of one feature (a flip signal at one checkpoint and
  trajectory setting, a class-mix adjusted flip signal, a baseline, an embedding distance);
- `stack`: a ridge combination of 2–3 fitted features, shrunk toward their plain average; the
  features and the penalty are chosen by leave-one-family-out error inside the training data.

Selection is **nested** leave-one-family-out: for each outer family, every choice (the candidate,
the stack's features and penalty, hence the checkpoint and the trajectory setting) is made on the
other families only, and the choice then predicts the outer family. The residuals of that outer
loop are what an unseen shift will see: they give the reported MAE and the conformal interval.

Everything here is numpy; maps fitted on a set of rows are cached by the set of excluded groups.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from flipwatch.workers.estimation.conformal import conformal_quantile
from flipwatch.workers.estimation.features import feature_setting, feature_step
from flipwatch.workers.estimation.flips import QuadraticMap, fit_monotone_map_np

__all__ = [
    "Estimator",
    "FeatureTable",
    "Selection",
    "nested_selection",
    "select",
]

RAW_FEATURES = ("ac", "doc", "atc", "atc_ne", "cot", "cot_adj")
STACK_POOL = 6  # best single features considered for a stack
STACK_MAX = 3  # features in a stack at most
ALPHAS = (0.001, 0.01, 0.1, 1.0, 10.0)  # ridge penalty, relative to the features' total variance


@dataclass(frozen=True)
class FeatureTable:
    """Points × features: `x` (n, F) float64 (every value finite), accuracy `y` (n,), group ids."""

    names: tuple[str, ...]
    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray  # (n,) int, index into group_names
    group_names: tuple[str, ...]

    @classmethod
    def build(
        cls,
        rows: Sequence[dict[str, float]],
        accuracy: Sequence[float],
        groups: Sequence[str],
        allowed: Callable[[str], bool] | None = None,
    ) -> FeatureTable:
        """Keep the features every row has, finite, and not constant across rows."""
        names = sorted(set.intersection(*(set(r) for r in rows))) if rows else []
        names = [n for n in names if allowed is None or allowed(n)]
        x = np.array([[r[n] for n in names] for r in rows], dtype=np.float64).reshape(len(rows), -1)
        keep = [j for j in range(x.shape[1]) if np.isfinite(x[:, j]).all() and np.ptp(x[:, j]) > 0]
        group_names = tuple(sorted(set(groups)))
        index = {g: i for i, g in enumerate(group_names)}
        return cls(
            names=tuple(names[j] for j in keep),
            x=x[:, keep],
            y=np.asarray(accuracy, dtype=np.float64),
            groups=np.array([index[g] for g in groups], dtype=np.int64),
            group_names=group_names,
        )


@dataclass(frozen=True)
class Estimator:
    """A fitted candidate: what an estimate evaluates on a window's features."""

    name: str
    kind: str  # "raw", "fit" or "stack"
    features: tuple[str, ...]
    maps: tuple[QuadraticMap | None, ...]
    weights: tuple[float, ...] = (1.0,)
    intercept: float = 0.0
    alpha: float | None = None

    def __call__(self, values: dict[str, float]) -> float:
        parts = []
        for name, f in zip(self.features, self.maps, strict=True):
            parts.append(values[name] if f is None else float(f.predict(np.array(values[name]))))
        total = self.intercept + sum(w * v for w, v in zip(self.weights, parts, strict=True))
        return min(1.0, max(0.0, total))

    @property
    def steps(self) -> int:
        """Adaptation steps the estimator needs (its latest checkpoint)."""
        return max((feature_step(n) for n in self.features), default=0)

    @property
    def setting(self) -> str:
        """The trajectory setting its signals come from ('' = the default one)."""
        return next((s for s in map(feature_setting, self.features) if s), "")

    def describe(self) -> str:
        if self.kind != "stack":
            return self.name
        terms = " + ".join(
            f"{w:.2f}·f({n})" for w, n in zip(self.weights, self.features, strict=True)
        )
        return f"stack: {self.intercept:+.3f} + {terms} (ridge, alpha {self.alpha:g})"

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": self.kind,
            "features": list(self.features),
            "maps": [None if m is None else m.to_dict() for m in self.maps],
            "weights": list(self.weights),
            "intercept": self.intercept,
            "alpha": self.alpha,
            "description": self.describe(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Estimator:
        return cls(
            name=data["name"],
            kind=data["kind"],
            features=tuple(data["features"]),
            maps=tuple(None if m is None else QuadraticMap.from_dict(m) for m in data["maps"]),
            weights=tuple(float(w) for w in data["weights"]),
            intercept=float(data["intercept"]),
            alpha=data.get("alpha"),
        )


class _Maps:
    """Monotone maps of every feature fitted on the rows outside a set of excluded groups."""

    def __init__(self, table: FeatureTable) -> None:
        self.t = table
        self._pred: dict[frozenset[int], np.ndarray] = {}
        self._maps: dict[frozenset[int], list[QuadraticMap]] = {}

    def maps(self, excluded: frozenset[int]) -> list[QuadraticMap]:
        if excluded not in self._maps:
            rows = ~np.isin(self.t.groups, list(excluded))
            if rows.sum() < 2:  # too few groups for this depth of nesting: a constant guess
                level = float(self.t.y[rows].mean()) if rows.any() else 0.5
                self._maps[excluded] = [QuadraticMap(0.0, 0.0, level)] * self.t.x.shape[1]
            else:
                self._maps[excluded] = [
                    fit_monotone_map_np(self.t.x[rows, j], self.t.y[rows])
                    for j in range(self.t.x.shape[1])
                ]
        return self._maps[excluded]

    def predictions(self, excluded: frozenset[int]) -> np.ndarray:
        """(n, F): every feature's map, fitted without `excluded`, on every row."""
        if excluded not in self._pred:
            maps = self.maps(excluded)
            self._pred[excluded] = np.stack(
                [m.predict(self.t.x[:, j]) for j, m in enumerate(maps)], axis=1
            ).reshape(len(self.t.y), -1)
        return self._pred[excluded]

    def out_of_fold(self, excluded: frozenset[int]) -> tuple[np.ndarray, np.ndarray]:
        """Rows outside `excluded` and their (m, F) predictions from maps that never saw the
        row's own group either (one leave-one-group-out level below `excluded`)."""
        rows = np.flatnonzero(~np.isin(self.t.groups, list(excluded)))
        out = np.empty((len(rows), self.t.x.shape[1]))
        for g in np.unique(self.t.groups[rows]):
            at = self.t.groups[rows] == g
            out[at] = self.predictions(excluded | {int(g)})[rows[at]]
        return rows, out


def _ridge(z: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """y ≈ b + z·w with ||w − 1/k||² penalised (k = columns): shrinks toward the plain average."""
    k = z.shape[1]
    w0 = np.full(k, 1.0 / k)
    zm, ym = z.mean(0), y.mean()
    zc = z - zm
    r = (y - ym) - zc @ w0
    gram = zc.T @ zc
    scale = max(float(np.trace(gram)) / k, 1e-12)
    v = np.linalg.solve(gram + alpha * scale * np.eye(k), zc.T @ r)
    w = w0 + v
    return w, float(ym - zm @ w)


def _compatible(names: Sequence[str], extra: str) -> bool:
    """Signals of at most one non-default trajectory setting in one estimator."""
    settings = {feature_setting(n) for n in [*names, extra]} - {""}
    return len(settings) <= 1


@dataclass
class Selection:
    """The outcome of `select`: the chosen fitted estimator and every candidate's held-out MAE."""

    estimator: Estimator
    candidate_mae: dict[str, float]
    chosen: str


@dataclass
class _Selector:
    table: FeatureTable
    allowed: Callable[[str], bool] | None = None
    maps: _Maps = field(init=False)

    def __post_init__(self) -> None:
        self.maps = _Maps(self.table)
        names = self.table.names
        ok = [self.allowed is None or self.allowed(n) for n in names]
        self.fit_idx = [j for j in range(len(names)) if ok[j]]
        self.raw_idx = [j for j in self.fit_idx if names[j] in RAW_FEATURES]

    # -- errors of fixed candidates on the rows outside `excluded` -----------------------------

    def fixed_errors(self, excluded: frozenset[int]) -> dict[str, float]:
        t = self.table
        rows, oof = self.maps.out_of_fold(excluded)
        errors: dict[str, float] = {}
        for j in self.raw_idx:
            errors[f"raw:{t.names[j]}"] = float(np.abs(t.x[rows, j] - t.y[rows]).mean())
        mae = np.abs(oof - t.y[rows, None]).mean(0)
        for j in self.fit_idx:
            errors[f"fit:{t.names[j]}"] = float(mae[j])
        return errors

    # -- the stack: features and penalty chosen on the rows outside `excluded` ----------------

    def _stack_error(self, excluded: frozenset[int], feats: list[int], alpha: float) -> float:
        t = self.table
        rows = np.flatnonzero(~np.isin(t.groups, list(excluded)))
        errors = []
        for g in np.unique(t.groups[rows]):
            pred = self.maps.predictions(excluded | {int(g)})
            train = rows[t.groups[rows] != g]
            test = rows[t.groups[rows] == g]
            w, b = _ridge(pred[np.ix_(train, feats)], t.y[train], alpha)
            out = np.clip(pred[np.ix_(test, feats)] @ w + b, 0.0, 1.0)
            errors.append(np.abs(out - t.y[test]))
        return float(np.concatenate(errors).mean())

    def choose_stack(self, excluded: frozenset[int]) -> tuple[list[int], float]:
        """Greedy forward choice of 2..STACK_MAX features (from the best STACK_POOL single
        fits) and the penalty, by leave-one-group-out error on the rows outside `excluded`."""
        names = self.table.names
        single = self.fixed_errors(excluded)
        ranked = sorted(self.fit_idx, key=lambda j: single[f"fit:{names[j]}"])
        pool = ranked[:STACK_POOL]
        chosen = [pool[0]]
        best = (math.inf, ALPHAS[-1])
        while len(chosen) < STACK_MAX:
            trials = [
                (self._stack_error(excluded, [*chosen, j], a), a, j)
                for j in pool
                if j not in chosen and _compatible([names[i] for i in chosen], names[j])
                for a in ALPHAS
            ]
            if not trials:
                break
            error, alpha, j = min(trials)
            if error >= best[0] - 1e-6:
                break
            chosen.append(j)
            best = (error, alpha)
        if len(chosen) < 2:  # nothing helped: the best pair, so the candidate still exists
            pairs = [
                (self._stack_error(excluded, [pool[0], j], a), a, j)
                for j in pool[1:]
                if _compatible([names[pool[0]]], names[j])
                for a in ALPHAS
            ]
            if not pairs:
                return chosen, ALPHAS[-1]
            _, alpha, j = min(pairs)
            chosen.append(j)
            best = (math.nan, alpha)
        return chosen, best[1]

    def stack_errors(self, excluded: frozenset[int]) -> tuple[float, np.ndarray, np.ndarray]:
        """Leave-one-group-out MAE of the whole stack procedure on the rows outside `excluded`
        (the features chosen again inside every fold), with its rows and predictions."""
        t = self.table
        rows = np.flatnonzero(~np.isin(t.groups, list(excluded)))
        pred = np.empty(len(rows))
        for g in np.unique(t.groups[rows]):
            at = t.groups[rows] == g
            pred[at] = self.stack_predict(excluded | {int(g)}, rows[at])
        return float(np.abs(pred - t.y[rows]).mean()), rows, pred

    def fit_stack(self, excluded: frozenset[int]) -> Estimator:
        t = self.table
        feats, alpha = self.choose_stack(excluded)
        rows = np.flatnonzero(~np.isin(t.groups, list(excluded)))
        pred = self.maps.predictions(excluded)
        w, b = _ridge(pred[np.ix_(rows, feats)], t.y[rows], alpha)
        maps = self.maps.maps(excluded)
        return Estimator(
            name="stack",
            kind="stack",
            features=tuple(t.names[j] for j in feats),
            maps=tuple(maps[j] for j in feats),
            weights=tuple(float(v) for v in w),
            intercept=b,
            alpha=alpha,
        )

    def stack_predict(self, excluded: frozenset[int], rows: np.ndarray) -> np.ndarray:
        feats, alpha = self.choose_stack(excluded)
        train = np.flatnonzero(~np.isin(self.table.groups, list(excluded)))
        pred = self.maps.predictions(excluded)
        w, b = _ridge(pred[np.ix_(train, feats)], self.table.y[train], alpha)
        return np.clip(pred[np.ix_(rows, feats)] @ w + b, 0.0, 1.0)

    # -- selection -----------------------------------------------------------------------------

    def candidate_errors(self, excluded: frozenset[int], stack: bool = True) -> dict[str, float]:
        errors = self.fixed_errors(excluded)
        left = len(set(self.table.groups.tolist()) - excluded)
        if stack and len(self.fit_idx) >= 2 and left >= 4:  # a stack nests two levels deeper
            errors["stack"] = self.stack_errors(excluded)[0]
        return errors

    def choose(self, errors: dict[str, float]) -> str:
        """Lowest held-out error; ties to the simpler candidate, then the shorter trajectory."""
        simplicity = {"raw": 0, "fit": 1, "stack": 2}

        def rank(name: str) -> tuple[float, int, int]:
            kind, _, feature = name.partition(":")
            return (round(errors[name], 12), simplicity[kind], feature_step(feature or "x"))

        return min(errors, key=rank)

    def fit(self, name: str, excluded: frozenset[int]) -> Estimator:
        t = self.table
        if name == "stack":
            return self.fit_stack(excluded)
        kind, _, feature = name.partition(":")
        if kind == "raw":
            return Estimator(name=name, kind="raw", features=(feature,), maps=(None,))
        j = t.names.index(feature)
        return Estimator(
            name=name, kind="fit", features=(feature,), maps=(self.maps.maps(excluded)[j],)
        )

    def predict(self, name: str, excluded: frozenset[int], rows: np.ndarray) -> np.ndarray:
        t = self.table
        if name == "stack":
            return self.stack_predict(excluded, rows)
        kind, _, feature = name.partition(":")
        j = t.names.index(feature)
        if kind == "raw":
            return np.clip(t.x[rows, j], 0.0, 1.0)
        return self.maps.predictions(excluded)[rows, j]


def select(
    table: FeatureTable, *, allowed: Callable[[str], bool] | None = None, stacks: bool = True
) -> Selection:
    """Every candidate's leave-one-family-out MAE on all points, and the best one, fitted.

    `stacks=False` leaves the stacked candidate out (the quality benchmark's single-signal rows).
    """
    selector = _Selector(table, allowed)
    errors = selector.candidate_errors(frozenset(), stack=stacks)
    chosen = selector.choose(errors)
    return Selection(selector.fit(chosen, frozenset()), errors, chosen)


@dataclass(frozen=True)
class NestedResult:
    """Outer leave-one-family-out of the whole selection: per-point predictions (n,), what each
    outer fold chose, and the conformal coverage of intervals built without the fold."""

    predictions: np.ndarray
    chosen: dict[str, str]
    mae: float
    residuals: np.ndarray
    coverage: float
    level: float


def nested_selection(
    table: FeatureTable,
    *,
    allowed: Callable[[str], bool] | None = None,
    level: float = 0.9,
    on_fold: Callable[[str, frozenset[int]], None] | None = None,
    groups: Iterable[int] | None = None,
    stacks: bool = True,
) -> NestedResult:
    """Hold out each family in turn, select on the rest (`select`'s whole procedure), predict it.

    `on_fold(name, excluded)` is called before each outer fold's selection: a test hooks it to
    prove that no choice looks at the held-out family. Coverage: each family's points are
    checked against the conformal half-width of the *other* families' outer residuals.
    `stacks=False` selects among the raw and single-feature candidates only.
    """
    selector = _Selector(table, allowed)
    t = table
    predictions = np.full(len(t.y), np.nan)
    chosen: dict[str, str] = {}
    outer = sorted(set(t.groups.tolist())) if groups is None else list(groups)
    for g in outer:
        excluded = frozenset({int(g)})
        if on_fold is not None:
            on_fold(t.group_names[g], excluded)
        name = selector.choose(selector.candidate_errors(excluded, stack=stacks))
        chosen[t.group_names[g]] = name
        rows = np.flatnonzero(t.groups == g)
        predictions[rows] = selector.predict(name, excluded, rows)
    done = ~np.isnan(predictions)
    residuals = predictions[done] - t.y[done]
    covered = []
    for g in outer:
        inside = t.groups[done] == g
        if not (~inside).any():
            continue  # a single outer fold: no other family to size its interval
        half = conformal_quantile(np.abs(residuals[~inside]), level)
        covered.extend((np.abs(residuals[inside]) <= half).tolist())
    return NestedResult(
        predictions=predictions,
        chosen=chosen,
        mae=float(np.abs(residuals).mean()),
        residuals=residuals,
        coverage=float(np.mean(covered)) if covered else math.nan,
        level=level,
    )
