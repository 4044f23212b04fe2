"""`flipwatch estimate` and `flipwatch calibrate`: the estimator from a shell.

Bad input ends with one readable line on stderr and exit status 2, never a traceback. torch is
imported only when one of these commands runs, so `flipwatch api` starts without it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from flipwatch.workers.estimation.families import CLASS_MIX_CHOICES, DEFAULT_CLASS_MIXES

if TYPE_CHECKING:
    from flipwatch.workers.estimation import Calibration, EstimateConfig


class CommandError(Exception):
    """A failure the user can fix; printed as one line."""


def register(subparsers: argparse._SubParsersAction) -> None:
    est = subparsers.add_parser(
        "estimate", help="estimate accuracy on a folder of unlabeled images"
    )
    est.add_argument(
        "folder", metavar="DIR", type=Path, help="folder of images (searched recursively)"
    )
    _model_arguments(est)
    est.add_argument("--calibration", type=Path, help="calibration JSON from `flipwatch calibrate`")
    est.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    est.set_defaults(handler=run_estimate)

    cal = subparsers.add_parser("calibrate", help="fit a model's calibration on labeled images")
    _model_arguments(cal)
    cal.add_argument("--labeled", type=Path, required=True, help="ImageFolder root: DIR/<class>/*")
    cal.add_argument("--out", type=Path, required=True, help="where to write the calibration JSON")
    cal.add_argument("--families", help="comma-separated corruption families (default: all)")
    cal.add_argument(
        "--severities", help="comma-separated severities 1..5 (default: 2,3,4, the measured suite)"
    )
    cal.add_argument(
        "--mixes", action="store_true", help="add a half-corrupted mix per family (off by default)"
    )
    cal.add_argument(
        "--class-mixes",
        choices=CLASS_MIX_CHOICES,
        default=DEFAULT_CLASS_MIXES,
        help="skewed class-mix variants: of the clean set and each family (default), of the clean "
        "set only, or none",
    )
    cal.add_argument(
        "--lr-grid",
        action="store_true",
        help="also measure every variant under the learning-rate/batch grid (2.25x the cost)",
    )
    cal.add_argument(
        "--processes",
        type=int,
        help="CPU: measure variants in N single-threaded processes (default: one per core)",
    )
    cal.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    cal.set_defaults(handler=run_calibrate)


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="model spec JSON")
    parser.add_argument("--steps", type=int, default=250, help="adaptation steps (default 250)")
    parser.add_argument("--probe-size", type=int, default=1000, help="probe images (default 1000)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: one per core; 1 is faster for small models or busy CPUs)",
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="run the plain reference loop instead of the fast path (slower; for comparison)",
    )


def _config(args: argparse.Namespace) -> EstimateConfig:
    from flipwatch.workers.estimation import EstimateConfig
    from flipwatch.workers.estimation.config import DEFAULT_CHECKPOINTS

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    checkpoints = tuple(sorted({c for c in DEFAULT_CHECKPOINTS if c <= args.steps} | {args.steps}))
    return EstimateConfig(
        steps=args.steps,
        probe_size=args.probe_size,
        seed=args.seed,
        checkpoints=checkpoints,
        fast=not args.plain,
    )


@contextmanager
def progress_bar(description: str, unit: str) -> Iterator[Callable[[int, int], None] | None]:
    """A tqdm bar on stderr when it is a terminal; nothing otherwise (logs stay clean)."""
    if not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(desc=description, unit=unit, file=sys.stderr, leave=False)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)  # through update(), so tqdm's rate and ETA follow

    try:
        yield update
    finally:
        bar.close()


def user_errors() -> tuple[type[Exception], ...]:
    """Exceptions that mean "fix your input": printed as one line, exit status 2."""
    from flipwatch.workers.estimation import (
        CalibrationMissing,
        ImageError,
        ModelLoadError,
        SpecError,
    )

    return (
        CommandError,
        SpecError,
        ModelLoadError,
        ImageError,
        CalibrationMissing,
        ValueError,
        OSError,
    )


def guard(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except user_errors() as exc:
            print(f"flipwatch {args.command}: error: {exc}", file=sys.stderr)
            return 2

    return wrapped


@guard
def run_estimate(args: argparse.Namespace) -> int:
    from flipwatch.workers.estimation import estimate, load_image_folder, load_model, read_spec

    config = _config(args)
    spec = read_spec(args.model)
    calibration = read_calibration(args.calibration) if args.calibration else None
    model = load_model(spec)
    # A trajectory sees at most steps·batch images (and the probe): decode no more than that.
    limit = max(config.probe_size, config.steps * config.batch_size)
    images = load_image_folder(args.folder, spec, limit=limit, seed=config.seed)
    with progress_bar("adapting", "step") as progress:
        result = estimate(
            model,
            images,
            spec=spec,
            calibration=calibration,
            config=config,
            device=args.device,
            progress=progress,
        )
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(format_estimate(result.to_dict(), folder=str(args.folder)))
    return 0


@guard
def run_calibrate(args: argparse.Namespace) -> int:
    from flipwatch.workers.estimation import (
        calibrate,
        load_labeled_folder,
        load_model,
        read_spec,
        resolve_device,
    )
    from flipwatch.workers.estimation.calibration import LR_GRID

    families = [f.strip() for f in args.families.split(",")] if args.families else None
    suite: dict[str, object] = {"mixes": args.mixes, "class_mixes": args.class_mixes}
    if args.severities:
        try:
            suite["severities"] = [int(s) for s in args.severities.split(",") if s.strip()]
        except ValueError:
            raise CommandError(
                f"--severities must be integers 1..5, got {args.severities!r}"
            ) from None
    processes = args.processes
    if processes is None:
        on_cpu = resolve_device(args.device).type == "cpu"
        processes = (os.cpu_count() or 1) if on_cpu else 1
    config = _config(args)
    spec = read_spec(args.model)
    model = load_model(spec)
    images, labels, _classes = load_labeled_folder(args.labeled, spec)
    with progress_bar("calibrating", "trajectory") as progress:
        calibration = calibrate(
            model,
            images,
            labels,
            spec=spec,
            config=config,
            device=args.device,
            progress=progress,
            families=families,
            processes=processes,
            settings=LR_GRID if args.lr_grid else (),
            **suite,  # type: ignore[arg-type]
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(calibration.to_dict()))
    summary = calibration_summary(calibration)
    print(json.dumps(summary) if args.json else format_calibration(summary, out=str(args.out)))
    return 0


def read_calibration(path: Path) -> Calibration:
    from flipwatch.workers.estimation import Calibration

    try:
        return Calibration.from_dict(json.loads(path.read_text()))
    except FileNotFoundError as exc:
        raise CommandError(f"calibration file {path} does not exist") from exc
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CommandError(
            f"calibration file {path} is not a flipwatch calibration: {exc}"
        ) from exc


def calibration_summary(calibration: Calibration) -> dict[str, object]:
    return {
        "model": calibration.model_name,
        "selected": calibration.selected,
        "selected_mae": calibration.selected_mae,
        "estimator": calibration.selected_estimator.describe(),
        "coverage": calibration.coverage,
        "interval_half_width": (
            None if calibration.interval_spec is None else calibration.interval_spec.half_width
        ),
        "reference_accuracy": calibration.reference_accuracy,
        "variants": len(calibration.points),
        "fits": {f.key: f.mae for f in calibration.fits},
        "baseline_mae": calibration.baseline_mae,
    }


def pct(value: object) -> str:
    return "   n/a" if value is None else f"{100 * float(value):5.1f}%"


def format_estimate(result: dict, *, folder: str) -> str:
    base = result["baselines"]
    emb = result["embedding"]
    mae = result["calibration_mae"]
    lines = [
        f"{folder}: {result['num_images']} images, probe {result['probe_size']}, "
        f"{result['steps']} steps on {result['device']} in {result['seconds']:.1f} s",
        f"estimated accuracy  {pct(result['estimated_accuracy'])}   "
        f"(signal {result['signal']} = {result['signal_value']:.1f}, calibration "
        f"{result['calibration']}" + (f", held-out MAE {100 * mae:.1f} pts)" if mae else ")"),
        f"90% interval        {pct(result.get('lower'))} .. {pct(result.get('upper'))}   "
        f"(estimator {result.get('estimator')})",
        f"class mix           label_shift {_number(result.get('label_shift'))} against the "
        "reference set (0 = same mix; high = other classes, not necessarily failure)",
        "baselines           " + "  ".join(f"{k} {pct(v)}" for k, v in base.items()),
        "embedding           "
        + "  ".join(f"{k} {'n/a' if v is None else f'{v:.3g}'}" for k, v in emb.items()),
        f"samples adapted on  {100 * result['used_fraction']:.0f}% per step "
        f"(epsilon {result['epsilon']:.3g})",
    ]
    lines.extend(f"warning: {w}" for w in result["warnings"])
    return "\n".join(lines)


def _number(value: object) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


def format_calibration(summary: dict, *, out: str) -> str:
    best = sorted(summary["fits"].items(), key=lambda kv: kv[1])[:5]
    lines = [
        f"calibrated {summary['model']} on {summary['variants']} shifted variants -> {out}",
        f"reference accuracy {pct(summary['reference_accuracy'])}; selected {summary['selected']} "
        f"(leave-one-family-out MAE {100 * summary['selected_mae']:.1f} pts)",
        "best fits: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in best),
        "baselines: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in summary["baseline_mae"].items()),
    ]
    return "\n".join(lines)
