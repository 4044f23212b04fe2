"""`flipwatch demo`: the whole estimator offline, on MNIST-5k and sklearn's digits.

Trains the demo CNN (cached), calibrates it on the labeled reference split (cached), then estimates
on held-out sets the model never saw, printing estimated vs true accuracy beside the baselines.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from flipwatch.demos.data import DEMO_FAMILIES, demo_splits, ensure_demo_model
from flipwatch.workers.estimation import (
    Calibration,
    EstimateConfig,
    EstimateResult,
    calibrate,
    estimate,
    load_model,
)
from flipwatch.workers.estimation.spec import ModelSpec
from flipwatch.workers.estimation.trajectory import predict, resolve_device
from flipwatch.workers.estimation.variants import make_variant

Log = Callable[[str], None]


@dataclass(frozen=True)
class DemoSet:
    """A labeled held-out set: the labels only score the estimate, the estimator never sees them."""

    name: str
    images: Tensor
    labels: Tensor


def demo_sets(seed: int = 0) -> list[DemoSet]:
    """Clean held-out MNIST, the same images under rising shifts, and sklearn's digits."""
    splits = demo_splits(seed)
    held = splits.heldout
    sets = [DemoSet("mnist held-out (clean)", held.images, held.labels)]
    for family, severity, mixed in [
        ("gaussian_noise", 2, False),
        ("gaussian_noise", 4, False),
        ("contrast", 3, False),
        ("gaussian_blur", 3, False),
        ("pixelate", 5, True),
    ]:
        shifted = make_variant(held.images, family, severity, mixed, seed=seed + 1000)
        label = f"mnist held-out {family}-{severity}{' (half)' if mixed else ''}"
        sets.append(DemoSet(label, shifted, held.labels))
    sets.append(DemoSet("sklearn digits 8x8 upscaled", splits.digits.images, splits.digits.labels))
    return sets


def cached_calibration(
    cache_dir: Path, spec: ModelSpec, config: EstimateConfig, *, device: torch.device, log: Log
) -> Calibration:
    """Calibrate once per (weights, settings); later runs read the JSON."""
    weights = Path(spec.weights or "").read_bytes()
    key = hashlib.sha256(weights + repr((config, DEMO_FAMILIES)).encode()).hexdigest()[:12]
    path = cache_dir / f"demo-calibration-{key}.json"
    if path.exists():
        return Calibration.from_dict(json.loads(path.read_text()))
    splits = demo_splits(0)
    log(
        f"calibrating on {len(splits.reference.images)} labeled reference images "
        "(one trajectory per shifted variant; cached afterwards)..."
    )
    started = time.perf_counter()
    calibration = calibrate(
        load_model(spec),
        splits.reference.images,
        splits.reference.labels,
        spec=spec,
        config=config,
        device=device,
        families=DEMO_FAMILIES,
        log=lambda line: log(f"  {line}"),
        processes=os.cpu_count() or 1,  # single-threaded processes: the demo owns the machine
    )
    log(f"calibrated in {time.perf_counter() - started:.0f} s: selected {calibration.selected}")
    path.write_text(json.dumps(calibration.to_dict()))
    return calibration


def run_demo(
    *, cache_dir: Path, steps: int = 250, device: str = "auto", log: Log | None = None
) -> int:
    log = log or (lambda line: print(line, file=sys.stderr))
    cache_dir.mkdir(parents=True, exist_ok=True)
    torch_device = resolve_device(device)
    if torch_device.type == "cpu":
        # The demo CNN is tiny: one thread is as fast as two on an idle 2-core machine and 10-20x
        # faster on a busy one (OpenMP oversubscription, measured).
        torch.set_num_threads(1)
    spec, _ = ensure_demo_model(cache_dir, log=log)
    config = EstimateConfig(steps=steps)
    calibration = cached_calibration(cache_dir, spec, config, device=torch_device, log=log)
    rows = estimate_demo_sets(
        load_model(spec), spec, calibration, config, device=torch_device, log=log
    )
    print(format_demo_table(rows, calibration))
    return 0


def estimate_demo_sets(
    model: torch.nn.Module,
    spec: ModelSpec,
    calibration: Calibration,
    config: EstimateConfig,
    *,
    device: torch.device,
    log: Log | None = None,
) -> list[tuple[str, float, EstimateResult]]:
    """(set name, true accuracy, estimate) for every held-out demo set."""
    rows = []
    for demo_set in demo_sets():
        truth = predict(model, demo_set.images, spec, device=device, chunk_size=500)
        accuracy = float((truth.labels == demo_set.labels).double().mean())
        result = estimate(
            model, demo_set.images, spec=spec, calibration=calibration, config=config, device=device
        )
        rows.append((demo_set.name, accuracy, result))
        if log is not None:
            log(f"estimated {demo_set.name} in {result.seconds:.1f} s")
    return rows


def format_demo_table(rows: list, calibration: Calibration) -> str:
    methods = " ".join(f"{m:>6}" for m in ("AC", "DoC", "ATC", "COT"))
    header = f"{'held-out set':34} {'true':>6} {'flipwatch':>9} {methods}"
    lines = [
        f"signal {calibration.selected} (leave-one-family-out MAE "
        f"{100 * (calibration.selected_mae or 0):.1f} pts)",
        header,
        "-" * len(header),
    ]
    errors: dict[str, list[float]] = {}
    for name, truth, result in rows:
        b = result.baselines
        values = {
            "flipwatch": result.estimated_accuracy,
            "AC": b["ac"],
            "DoC": b["doc"],
            "ATC": b["atc"],
            "COT": b["cot"],
        }
        for method, value in values.items():
            errors.setdefault(method, []).append(abs(value - truth))
        lines.append(
            f"{name:34} {100 * truth:5.1f}% {100 * values['flipwatch']:8.1f}% "
            + " ".join(f"{100 * values[m]:5.1f}%" for m in ("AC", "DoC", "ATC", "COT"))
        )
    lines.append("-" * len(header))
    lines.append(
        f"{'mean absolute error (points)':34} {'':6} {100 * _mean(errors['flipwatch']):8.1f}  "
        + " ".join(f"{100 * _mean(errors[m]):5.1f} " for m in ("AC", "DoC", "ATC", "COT"))
    )
    return "\n".join(lines)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
