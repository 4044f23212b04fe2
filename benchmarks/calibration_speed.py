"""Calibration wall time on CPU: variants measured sequentially vs in parallel processes.

Demo model, its 1000-image labeled reference split, a few corruption families. Prints one JSON
object with seconds per run, the speed-up, and whether both runs measured identical points.

    python benchmarks/calibration_speed.py [--families contrast,fog,pixelate] [--steps 250]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._env import environment  # noqa: E402
from flipwatch.demos.data import demo_splits, ensure_demo_model  # noqa: E402
from flipwatch.workers.estimation import EstimateConfig, calibrate, load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", default="gaussian_noise,contrast,fog")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cache-dir", type=Path, default=Path(".flipwatch/demo"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec, _ = ensure_demo_model(args.cache_dir, log=lambda s: print(s, file=sys.stderr))
    model = load_model(spec)
    ref = demo_splits(0).reference
    kwargs = {
        "spec": spec,
        "config": EstimateConfig(steps=args.steps),
        "device": "cpu",
        "families": args.families.split(","),
    }
    runs = {}
    results = {}
    for processes in (1, args.processes):
        started = time.perf_counter()
        results[processes] = calibrate(model, ref.images, ref.labels, processes=processes, **kwargs)
        runs[processes] = round(time.perf_counter() - started, 2)
    one, many = results[1], results[args.processes]
    print(
        json.dumps(
            {
                "benchmark": "calibration_speed",
                "model": spec.name,
                "variants": len(one.points),
                "steps": args.steps,
                "seconds": {f"processes={p}": s for p, s in runs.items()},
                "speedup": round(runs[1] / runs[args.processes], 2),
                "identical_points": one.points == many.points,
                "environment": environment(),
            }
        )
    )


if __name__ == "__main__":
    main()
