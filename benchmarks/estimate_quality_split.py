"""The nested leave-one-family-out error split by kind of calibration variant, from the points
`estimate_quality.py` cached (no trajectory is re-run).

The nested MAE that `calibrate()` reports averages over corruption variants and skewed class-mix
variants; the raw baselines (COT above all) fail on the second kind. This rebuilds the points the
way `calibration.measure_points` merges them (default setting plus each extra setting's signals
as `<signal>~<setting>`), re-runs the same `nested_selection`, and prints one JSON object with the
selected estimator's and every raw baseline's MAE (points) per kind.

    python benchmarks/estimate_quality_split.py \
        .flipwatch/quality-points/<model>-<weights>-s<steps>-<suite>
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flipwatch.workers.estimation.calibration import (  # noqa: E402
    INTERVAL_LEVEL,
    LR_GRID,
    is_spread_point,
    selection_table,
)
from flipwatch.workers.estimation.selection import nested_selection  # noqa: E402
from flipwatch.workers.estimation.variants import CalibrationPoint  # noqa: E402

BASELINES = ("ac", "doc", "atc", "atc_ne", "cot")


def load_points(folder: Path) -> list[CalibrationPoint]:
    points: dict[str, CalibrationPoint] = {}
    for path in sorted(folder.glob("*-default.json")):
        points[path.name.removesuffix("-default.json")] = CalibrationPoint.from_dict(
            json.loads(path.read_text())
        )
    for setting in LR_GRID:  # whichever grid settings the run measured
        for key, point in points.items():
            path = folder / f"{key}-{setting.name}.json"
            if not path.exists():
                continue
            other = json.loads(path.read_text())
            merged = dict(point.signals)
            for signal, by_step in CalibrationPoint.from_dict(other).signals.items():
                merged[f"{signal}~{setting.name}"] = by_step
            points[key] = replace(point, signals=merged)
    return list(points.values())


def main() -> None:
    folder = Path(sys.argv[1])
    points = load_points(folder)
    kept = [p for p in points if not is_spread_point(p)]
    table = selection_table(points)
    nested = nested_selection(table, level=INTERVAL_LEVEL)
    residuals = nested.predictions - table.y
    mix = np.array([p.subset is not None for p in kept])

    def mae(values: np.ndarray) -> float:
        return round(100 * float(np.abs(values).mean()), 2)

    kinds = {"corruption_variants": ~mix, "class_mix_variants": mix}
    print(
        json.dumps(
            {
                "benchmark": "estimate_quality_split",
                "points": str(folder),
                "nested_mae_points_all": mae(residuals),
                "selected_nested_mae_points": {k: mae(residuals[m]) for k, m in kinds.items()},
                "variants": {k: int(m.sum()) for k, m in kinds.items()},
                "selected_mean_signed_error_points": {
                    k: round(100 * float(residuals[m].mean()), 2) for k, m in kinds.items()
                },
                "raw_baseline_mae_points": {
                    k: {
                        b: mae(
                            np.array(
                                [
                                    p.baselines[b] - p.accuracy
                                    for p, i in zip(kept, m, strict=True)
                                    if i
                                ]
                            )
                        )
                        for b in BASELINES
                    }
                    for k, m in kinds.items()
                },
            }
        )
    )


if __name__ == "__main__":
    main()
