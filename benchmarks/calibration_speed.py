"""Calibration wall time: the default suite of the demo model, one way after another.

Modes (each a full `calibrate` of the demo model on its 1000-image labeled reference split, 250
steps, the default suite unless `--families`/`--severities` say otherwise):

- `plain`: the plain reference loop, variants one after another (the old default);
- `plain-processes`: the plain loop in `--processes` single-threaded processes (the old demo);
- `fast`: the fast path, variants one after another, one process;
- `fast-processes`: the fast path in `--processes` single-threaded processes (the CLI default on
  CPU: one per core);
- `fast-grouped`: the fast path with `--group` variants per grouped computation (the CUDA way),
  timed on the corruption variants' measurements under the default setting only (no class
  mixes, extra settings or window features) plus a single-signal fit: it compares grouping, it is
  not a whole calibration.

Every other mode is a whole `calibrate()` with its defaults (class mixes, spread variants, every
trajectory setting of `DEFAULT_SETTINGS`, the selection and its nested run). Prints ONE JSON
object: seconds per mode, trajectories, speed-ups against `plain`, the selected estimator and
its held-out error (nested leave-one-family-out) per mode, load average, hardware and versions.

    python benchmarks/calibration_speed.py [--modes plain,fast,fast-processes,fast-grouped]
        [--device cpu|cuda] [--processes N] [--group 4] [--families a,b] [--severities 2,4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._env import environment  # noqa: E402
from flipwatch.demos.data import demo_splits, ensure_demo_model  # noqa: E402
from flipwatch.workers.estimation import EstimateConfig, calibrate, load_model  # noqa: E402
from flipwatch.workers.estimation.baselines import BaselineReference  # noqa: E402
from flipwatch.workers.estimation.calibration import DEFAULT_SETTINGS, fit_points  # noqa: E402
from flipwatch.workers.estimation.calibration_result import fit_rank  # noqa: E402
from flipwatch.workers.estimation.families import DEFAULT_CLASS_MIXES  # noqa: E402
from flipwatch.workers.estimation.trajectory import predict, resolve_device  # noqa: E402
from flipwatch.workers.estimation.variants import (  # noqa: E402
    DEFAULT_SEVERITIES,
    VariantContext,
    VariantTask,
    calibration_variants,
    measure_variants,
)


def grouped(model, images, labels, *, spec, config, device, families, severities, group):
    """`calibrate`'s variant measurements with `group` variants per grouped computation."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(config.seed))
    images, labels = images[order], labels[order]
    clean = predict(model, images, spec, device=device, chunk_size=256)
    reference = BaselineReference.from_labeled(clean.probs, labels)
    tasks = [
        VariantTask(f, s, m, seed=config.seed + i)
        for i, (f, s, m) in enumerate(calibration_variants(families, severities))
    ]
    context = VariantContext(model, images, labels, spec, config, device, reference)
    points = list(measure_variants(context, tasks, group=group))
    return min(fit_points(points), key=fit_rank), len(points)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modes", default="plain,plain-processes,fast,fast-processes,fast-grouped")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--families", help="comma-separated (default: all 17)")
    parser.add_argument("--severities", default=",".join(map(str, DEFAULT_SEVERITIES)))
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--cache-dir", type=Path, default=Path(".flipwatch/demo"))
    args = parser.parse_args()
    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # the demo CNN: one thread per process is fastest (measured)
    spec, _ = ensure_demo_model(args.cache_dir, log=lambda s: print(s, file=sys.stderr))
    model = load_model(spec)
    ref = demo_splits(0).reference
    families = args.families.split(",") if args.families else None
    severities = [int(s) for s in args.severities.split(",")]
    config = EstimateConfig(steps=args.steps)
    load_before = os.getloadavg()
    runs: dict[str, dict[str, object]] = {}
    for mode in args.modes.split(","):
        cfg = replace(config, fast=not mode.startswith("plain"))
        started = time.perf_counter()
        if mode == "fast-grouped":
            fit, variants = grouped(
                model, ref.images, ref.labels, spec=spec, config=cfg, device=device,
                families=families, severities=severities, group=args.group,
            )  # fmt: skip
            selected, selected_mae = fit.key, fit.mae
        else:
            calibration = calibrate(
                model,
                ref.images,
                ref.labels,
                spec=spec,
                config=cfg,
                device=device,
                families=families,
                severities=severities,
                processes=args.processes if mode.endswith("-processes") else 1,
            )
            selected = calibration.selected_estimator.describe()
            selected_mae = calibration.selected_mae
            variants = len(calibration.points) * len(calibration.settings)
        seconds = time.perf_counter() - started
        runs[mode] = {
            "seconds": round(seconds, 2),
            "trajectories": variants,
            "seconds_per_trajectory": round(seconds / variants, 3),
            "selected": selected,
            "selected_mae_points": round(100 * (selected_mae or 0.0), 2),
            "load_average_after": os.getloadavg(),
        }
        print(f"{mode}: {seconds:.1f} s", file=sys.stderr)
    base = runs.get("plain", {}).get("seconds")
    print(
        json.dumps(
            {
                "benchmark": "calibration_speed",
                "model": spec.name,
                "device": str(device),
                "suite": {
                    "families": families or "all 17",
                    "severities": severities,
                    "mixes": False,
                    "class_mixes": DEFAULT_CLASS_MIXES,
                    "extra_settings": [st.name for st in DEFAULT_SETTINGS],
                },
                "steps": args.steps,
                "processes": args.processes,
                "group": args.group,
                "runs": runs,
                "speedup_vs_plain": {
                    mode: round(base / run["seconds"], 2)  # type: ignore[operator]
                    for mode, run in runs.items()
                    if base
                },
                "load_average_before": load_before,
                "environment": environment(device),
            }
        )
    )


if __name__ == "__main__":
    main()
