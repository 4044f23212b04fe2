"""How large a window must be: estimate error and interval width against window size and steps.

For each model (the demo BN-CNN and the small ResNet, as in `estimate_quality.py`) this takes the
default-suite calibration (the points `estimate_quality.py` cached, or measured afresh), draws
random windows of 64, 128, 256, 512 and 1000 images from each of the 13 held-out sets (3 seeds
below 1000), and measures every feature on each window with `measure_set` (the function
calibration measures its variants with: the probe is the whole window up to 1000 images, the
trajectory cycles the window for its 250 steps). It then reports per window size, in accuracy
points against each window's own true accuracy:

- the MAE of the calibration's selected estimator, and of the estimator selection picks when it
  may use no checkpoint later than 0, 50, 100 or 250 steps (the same `select`, restricted);
- the 90 % interval the estimate would carry (`widened_half_width`: the calibration's conformal
  half-width, widened for windows smaller than its variants) and its empirical coverage;
- seconds per window (the measurement of all features, a little more than one estimate).

The README's window guidance and the API's minimum window come from this output.

    nice -n 10 python benchmarks/window_size.py [--models demo,mnist_resnet] [--processes 2]

Prints ONE JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._env import environment  # noqa: E402
from benchmarks._models import ensure_model  # noqa: E402
from benchmarks.calibration_suite import _measure_set, _pool_map  # noqa: E402
from benchmarks.estimate_quality import (  # noqa: E402
    MODELS,
    held_out_sets,
    log,
    points_cache_dir,
    pts,
    reference_calibration,
)
from flipwatch.workers.estimation import EstimateConfig, load_model  # noqa: E402
from flipwatch.workers.estimation.calibration import selection_table  # noqa: E402
from flipwatch.workers.estimation.conformal import widened_half_width  # noqa: E402
from flipwatch.workers.estimation.features import feature_step  # noqa: E402
from flipwatch.workers.estimation.selection import select  # noqa: E402
from flipwatch.workers.estimation.trajectory import resolve_device  # noqa: E402

SIZES = (64, 128, 256, 512, 1000)
STEP_LIMITS = (0, 50, 100, 250)
SEEDS = 3
STEPS = 250


def windows(sizes: Sequence[int], seeds: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name|size|seed, images, labels) random windows of each held-out set."""
    items = []
    for held in held_out_sets():
        for size in sizes:
            n = min(size, len(held.images))
            for seed in range(1 if n == len(held.images) else seeds):
                order = torch.randperm(
                    len(held.images), generator=torch.Generator().manual_seed(seed)
                )
                idx = order[:n].sort().values
                items.append((f"{held.name}|{size}|{seed}", held.images[idx], held.labels[idx]))
    return items


def run_model(key: str, args: argparse.Namespace) -> dict[str, object]:
    device = resolve_device("cpu")
    spec = ensure_model(MODELS[key], args.cache_dir, log)
    model = load_model(spec).eval()
    cache = points_cache_dir(args.points_cache, key, spec, STEPS)  # estimate_quality's points
    config = EstimateConfig(steps=STEPS)
    log(f"[{key}] calibration (points cache {cache})")
    calibration = reference_calibration(
        key, model, spec, config, device, processes=args.processes, cache=cache
    )
    table = selection_table(list(calibration.points))
    limited = {
        s: select(table, allowed=lambda n, s=s: feature_step(n) <= s).estimator for s in STEP_LIMITS
    }
    items = windows(SIZES, SEEDS)
    log(f"[{key}] measuring {len(items)} windows")
    started = time.perf_counter()
    rows = _pool_map(
        _measure_set, items, (model, spec, calibration, config, device), args.processes
    )
    per_window = (time.perf_counter() - started) * args.processes / len(items)
    interval = calibration.interval_spec
    assert interval is not None and calibration.estimator is not None
    out: dict[str, object] = {}
    for size in SIZES:
        at = [r for r in rows if int(str(r["_name"]).split("|")[1]) == size]
        truth = np.array([r["_accuracy"] for r in at])
        estimate = np.array([calibration.estimator(r) for r in at])
        n = np.array([min(size, 1000) for _ in at])
        half = np.array(
            [
                widened_half_width(
                    interval.half_width,
                    window_size=int(k),
                    calibration_size=interval.calibration_size,
                    spread=interval.spread,
                    level=interval.level,
                )
                for k in n
            ]
        )
        lower, upper = np.clip(estimate - half, 0, 1), np.clip(estimate + half, 0, 1)
        out[str(size)] = {
            "windows": len(at),
            "mae_points": pts(float(np.abs(estimate - truth).mean())),
            "worst_error_points": pts(float(np.abs(estimate - truth).max())),
            "mae_points_by_max_steps": {
                str(s): pts(float(np.mean([abs(e(r) - r["_accuracy"]) for r in at])))
                for s, e in limited.items()
            },
            "interval_half_width_points": pts(float(half.mean())),
            "interval_coverage": round(float(((truth >= lower) & (truth <= upper)).mean()), 3),
        }
        log(f"[{key}] {size}: {out[str(size)]}")
    return {
        "model": key,
        "steps": STEPS,
        "selected": calibration.estimator.describe(),
        "estimators_by_max_steps": {str(s): e.describe() for s, e in limited.items()},
        "heldout_sets": len(held_out_sets()),
        "seeds_below_full_set": SEEDS,
        "seconds_per_window": round(per_window, 2),
        "by_window_size": out,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="demo,mnist_resnet")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cache-dir", type=Path, default=Path(".flipwatch/demo"))
    parser.add_argument("--points-cache", type=Path, default=Path(".flipwatch/quality-points"))
    args = parser.parse_args(argv)
    runs = [run_model(key, args) for key in args.models.split(",")]
    print(json.dumps({"benchmark": "window_size", "runs": runs, "environment": environment()}))


if __name__ == "__main__":
    main()
