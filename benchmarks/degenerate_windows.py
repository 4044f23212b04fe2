"""Windows a production stream sends that are no sample of its population, on the demo model.

A camera that is off or overexposed (black, white frames), a stuck camera or a replayed batch (one
image repeated), sensor noise only, a shift that inverts the images, and clean windows that hold
one or two classes only (a production line making one product). For each window, what
`estimate()` answers with the demo model's default calibration: the estimate, its interval,
`used_fraction`, `label_shift`, AC and COT, and the warnings; beside the true accuracy where the
images have labels. Prints ONE JSON object.

The calibration is the real `calibrate()` on the demo's reference split with the default suite,
its measured points kept in `.flipwatch/quality-points` (the same cache as
`estimate_quality.py`, so a run after that one calibrates in seconds).

    python benchmarks/degenerate_windows.py [--processes 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import estimate_quality as quality  # noqa: E402
from benchmarks._env import environment  # noqa: E402
from flipwatch.demos.data import demo_splits  # noqa: E402
from flipwatch.workers.estimation.config import EstimateConfig  # noqa: E402
from flipwatch.workers.estimation.estimate import estimate  # noqa: E402
from flipwatch.workers.estimation.loading import load_model  # noqa: E402

CPU = torch.device("cpu")


def windows() -> dict[str, tuple[Tensor, Tensor | None]]:
    """name -> (uint8 images, labels or None), 1,000 images unless a class has fewer."""
    held = demo_splits(0).heldout
    n = 1000
    noise = torch.randint(
        0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    out: dict[str, tuple[Tensor, Tensor | None]] = {
        "clean": (held.images[:n], held.labels[:n]),
        "black frames": (torch.zeros(n, 1, 28, 28, dtype=torch.uint8), None),
        "white frames": (torch.full((n, 1, 28, 28), 255, dtype=torch.uint8), None),
        "one image repeated": (held.images[:1].repeat(n, 1, 1, 1), held.labels[:1].repeat(n)),
        "uniform noise": (noise, None),
        "inverted": (255 - held.images[:n], held.labels[:n]),
    }
    for c in (0, 3, 7):
        keep = held.labels == c
        out[f"one class ({c})"] = (held.images[keep], held.labels[keep])
    for a, b in ((1, 8), (4, 9)):
        keep = (held.labels == a) | (held.labels == b)
        out[f"two classes ({a}, {b})"] = (held.images[keep], held.labels[keep])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.manual_seed(0)
    spec = quality.ensure_model(quality.MODELS["demo"], Path(".flipwatch/demo"), quality.log)
    model = load_model(spec).eval()
    config = EstimateConfig(steps=250)
    cache = quality.points_cache_dir(Path(".flipwatch/quality-points"), "demo", spec, 250)
    calibration = quality.reference_calibration(
        "demo", model, spec, config, CPU, processes=args.processes, cache=cache, settings=()
    )
    rows = []
    for name, (images, labels) in windows().items():
        started = time.perf_counter()
        result = estimate(model, images, spec=spec, calibration=calibration, config=config)
        truth = None
        if labels is not None:
            truth = round(quality.true_accuracy(model, spec, images, labels, CPU), 4)
        rows.append(
            {
                "window": name,
                "images": len(images),
                "true_accuracy": truth,
                "estimate": round(result.estimated_accuracy, 4),
                "lower": None if result.lower is None else round(result.lower, 4),
                "upper": None if result.upper is None else round(result.upper, 4),
                "used_fraction": round(result.used_fraction, 4),
                "label_shift": round(result.label_shift, 3),
                "ac": round(result.baselines["ac"], 4),
                "cot": round(result.baselines["cot"], 4),
                "warnings": result.warnings,
                "seconds": round(time.perf_counter() - started, 2),
            }
        )
        quality.log(f"{name}: true {truth}, estimate {result.estimated_accuracy:.3f}")
    print(
        json.dumps(
            {
                "benchmark": "degenerate_windows",
                "model": "demo",
                "calibration": calibration.selected_estimator.describe(),
                "reference_accuracy": calibration.reference_accuracy,
                "steps": config.steps,
                "windows": rows,
                "environment": environment(),
            }
        )
    )


if __name__ == "__main__":
    main()
