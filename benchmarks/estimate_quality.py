"""How well each signal predicts accuracy on the demo model, against the confidence baselines.

Leave-one-corruption-family-out on the demo's labeled reference split: one trajectory per shifted
variant (the calibration run), then for every signal and checkpoint the MAE of a fit that never saw
the held-out family. `selected_nested` repeats the signal *selection* inside each fold too, so it
carries no selection bias. Baselines need no fit (DoC and ATC use the clean reference split).
Finally the calibrated estimator runs on held-out images the calibration never saw (clean MNIST,
shifted MNIST, sklearn's digits). Prints one JSON object; errors are in accuracy points.

    python benchmarks/estimate_quality.py [--steps 250] [--families all|a,b,c] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._env import environment  # noqa: E402
from flipwatch.demos.data import demo_splits, ensure_demo_model  # noqa: E402
from flipwatch.demos.offline import estimate_demo_sets  # noqa: E402
from flipwatch.workers.estimation import EstimateConfig, calibrate, load_model  # noqa: E402
from flipwatch.workers.estimation.calibration import baseline_errors, fit_points  # noqa: E402
from flipwatch.workers.estimation.calibration_result import Calibration  # noqa: E402
from flipwatch.workers.estimation.flips import fit_monotone_quadratic  # noqa: E402
from flipwatch.workers.estimation.trajectory import resolve_device  # noqa: E402


def nested_selected_mae(calibration: Calibration) -> float:
    """Per held-out family: choose the signal by LOFO on the other families, fit, predict."""
    points = list(calibration.points)
    families = sorted({p.family for p in points})
    errors: list[float] = []
    for held in families:
        train = [p for p in points if p.family != held]
        test = [p for p in points if p.family == held]
        best = min(fit_points(train), key=lambda f: (f.mae, f.step))
        x = torch.tensor([p.signals[best.signal][best.step] for p in train], dtype=torch.float64)
        y = torch.tensor([p.accuracy for p in train], dtype=torch.float64)
        f = fit_monotone_quadratic(x, y)
        errors += [abs(f(p.signals[best.signal][best.step]) - p.accuracy) for p in test]
    return sum(errors) / len(errors)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--families", default="all")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-dir", type=Path, default=Path(".flipwatch/demo"))
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    spec, _ = ensure_demo_model(args.cache_dir, log=lambda s: print(s, file=sys.stderr))
    model = load_model(spec)
    splits = demo_splits(0)
    config = EstimateConfig(steps=args.steps)
    families = None if args.families == "all" else args.families.split(",")

    started = time.perf_counter()
    calibration = calibrate(
        model,
        splits.reference.images,
        splits.reference.labels,
        spec=spec,
        config=config,
        device=device,
        families=families,
    )
    calibration_seconds = time.perf_counter() - started

    heldout = [
        {
            "set": name,
            "true_accuracy": round(accuracy, 4),
            "estimated_accuracy": round(result.estimated_accuracy, 4),
            "baselines": {
                k: None if v is None else round(v, 4) for k, v in result.baselines.items()
            },
            "seconds": result.seconds,
        }
        for name, accuracy, result in estimate_demo_sets(
            model, spec, calibration, config, device=device
        )
    ]

    def pts(v: float) -> float:
        return round(100 * v, 2)

    def heldout_mae(key: str) -> float:
        def value(h: dict) -> float:
            return h["estimated_accuracy"] if key == "flipwatch" else h["baselines"][key]

        return pts(sum(abs(value(h) - h["true_accuracy"]) for h in heldout) / len(heldout))

    selected = calibration.fit(calibration.selected)
    print(
        json.dumps(
            {
                "benchmark": "estimate_quality",
                "model": spec.name,
                "steps": args.steps,
                "probe_size": config.probe_size,
                "variants": len(calibration.points),
                "families": sorted({p.family for p in calibration.points}),
                "reference_accuracy": calibration.reference_accuracy,
                "lofo_mae_points": {f.key: pts(f.mae) for f in calibration.fits},
                "selected": calibration.selected,
                "selected_lofo_mae_points": pts(selected.mae),
                "selected_nested_mae_points": pts(nested_selected_mae(calibration)),
                "baseline_mae_points": {
                    k: pts(v) for k, v in baseline_errors(calibration.points).items()
                },
                "heldout": heldout,
                "heldout_mae_points": {
                    k: heldout_mae(k) for k in ("flipwatch", "ac", "doc", "atc", "atc_ne", "cot")
                },
                "seconds_per_estimate": round(sum(h["seconds"] for h in heldout) / len(heldout), 2),
                "calibration_seconds": round(calibration_seconds, 1),
                "device": str(device),
                "environment": environment(device),
            }
        )
    )


if __name__ == "__main__":
    main()
