"""How good flipwatch's estimate is, per architecture, against every single signal and baseline.

For each model (the demo BN-CNN, and `mnist_resnet` from the zoo trained on the same 3,000 MNIST
images) this runs the real `calibrate()` on the demo's labeled reference split with the default
suite (as `flipwatch calibrate` would: every corruption family at severities 2, 3 and 4, the
skewed class mixes; `--lr-grid` adds the learning-rate/batch grid), then reports, all in accuracy
points:

- nested leave-one-family-out MAE (the calibration's own outer loop, `nested_selection`) of the
  selected estimator; of every single flip signal (its best checkpoint and trajectory setting,
  chosen inside the loop, and its step-0 value); of AC, DoC, ATC, ATC-NE and COT (raw, no fit, over
  the same variants); and per trajectory setting, the best step > 0 signal against the best step-0
  one (does the trajectory earn its place?);
- the same estimators on held-out sets the calibration never saw: the demo's held-out sets
  (held-out MNIST images, under shifts of families calibration also used, and sklearn's digits)
  and held-out MNIST under shift families that are not in the corruption suite at all;
- the 90 % interval: coverage and mean width on the nested residuals and on the held-out sets;
- seconds per estimate (`estimate()`, as the worker runs it);
- class mix: clean held-out windows with skewed class proportions, true accuracy, the estimate of
  a single flip-signal fit selected without class-mix variants or correction (what flipwatch did
  before issue 9) and of the selected estimator, with the label-shift measure (TV distance).

Held-out per-signal values come from `measure_points` (the function calibration measures its
variants with) on each held-out set under every trajectory setting; the selected estimator's
held-out figures come from `estimate()` itself. Prints one JSON object per model, one per line.

    nice -n 10 python benchmarks/estimate_quality.py --model demo|mnist_resnet|all \\
        [--steps 250] [--processes 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._env import environment  # noqa: E402
from benchmarks._models import ensure_model  # noqa: E402
from flipwatch.demos.data import demo_splits  # noqa: E402
from flipwatch.demos.offline import demo_sets  # noqa: E402
from flipwatch.workers.estimation import EstimateConfig, calibrate, estimate, load_model  # noqa: E402
from flipwatch.workers.estimation.calibration import (  # noqa: E402
    LR_GRID,
    measure_points,
    point_row,
    selection_table,
)
from flipwatch.workers.estimation.calibration_result import Calibration  # noqa: E402
from flipwatch.workers.estimation.class_mix import subset_indices  # noqa: E402
from flipwatch.workers.estimation.features import feature_setting, feature_step  # noqa: E402
from flipwatch.workers.estimation.label_shift import total_variation  # noqa: E402
from flipwatch.workers.estimation.result import EstimateResult  # noqa: E402
from flipwatch.workers.estimation.selection import (  # noqa: E402
    Estimator,
    nested_selection,
    select,
)
from flipwatch.workers.estimation.spec import ModelSpec  # noqa: E402
from flipwatch.workers.estimation.trajectory import SIGNALS, predict, resolve_device  # noqa: E402
from flipwatch.workers.estimation.variants import CLEAN, VariantTask  # noqa: E402

MODELS = {"demo": "mnist_cnn", "mnist_resnet": "mnist_resnet"}
BASELINES = ("ac", "doc", "atc", "atc_ne", "cot")
ADJUSTED_SIGNALS = ("uf_source_adj", "wf_source_adj")
MIX_WINDOWS = ("three", "dominant", "longtail", "balanced:250")


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def pts(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(100 * value, 2)


def base_signal(feature: str) -> str:
    """`uf_source@250~lr2e-3` -> `uf_source`."""
    return feature.partition("@")[0]


# --- held-out sets ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeldOut:
    name: str
    group: str  # "demo" (the demo's held-out sets) or "unseen_family"
    images: Tensor
    labels: Tensor


def _as_uint8(x: Tensor) -> Tensor:
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def unseen_family_sets(images: Tensor, labels: Tensor, seed: int = 7) -> list[HeldOut]:
    """Held-out MNIST under shifts whose family is not in the calibration suite (corruptions.py
    has noise, blur, contrast/brightness/fog, inversion, posterize, pixelate, jpeg, elastic,
    rotate, translate, occlusion): stroke thickness, shear, zoom-out, perspective, speckle."""
    gen = torch.Generator().manual_seed(seed)
    x = images.float() / 255.0
    n = len(x)
    out: dict[str, Tensor] = {}
    out["dilate-3x3"] = F.max_pool2d(x, 3, stride=1, padding=1)
    out["erode-2x2"] = -F.max_pool2d(F.pad(-x, (0, 1, 0, 1), value=-1.0), 2, stride=1)
    shear = (torch.rand(n, generator=gen) * 2 - 1).sign() * math.tan(math.radians(35))
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 1] = 1.0, shear, 1.0
    out["shear-35deg"] = _affine(x, theta)
    zoom = torch.zeros(n, 2, 3)
    zoom[:, 0, 0] = zoom[:, 1, 1] = 1 / 0.6  # content at 60 % of its size
    out["zoom-out-0.6"] = _affine(x, zoom)
    # perspective: a random keystone per image (the far edge shrunk by 40 %)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 28), torch.linspace(-1, 1, 28), indexing="ij")
    side = torch.randint(0, 4, (n,), generator=gen)
    grids = []
    for s in side.tolist():
        u, v = (xs, ys) if s < 2 else (ys, xs)
        t = (v + 1) / 2 if s % 2 == 0 else (1 - v) / 2  # 0 at the kept edge, 1 at the far edge
        u = u / (1 - 0.4 * t)
        grids.append(torch.stack((u, v) if s < 2 else (v, u), dim=-1))
    out["perspective-0.4"] = F.grid_sample(
        x, torch.stack(grids), mode="bilinear", padding_mode="zeros", align_corners=False
    )
    noise = torch.randn(x.shape, generator=gen)
    out["speckle-0.8"] = (x + x * 0.8 * noise).clamp(0, 1)
    return [HeldOut(name, "unseen_family", _as_uint8(v), labels) for name, v in out.items()]


def held_out_sets() -> list[HeldOut]:
    splits = demo_splits(0)
    sets = [HeldOut(s.name, "demo", s.images, s.labels) for s in demo_sets()]
    return sets + unseen_family_sets(*splits.heldout)


# --- measurement --------------------------------------------------------------------------------


def measure_set(
    model: nn.Module,
    spec: ModelSpec,
    calibration: Calibration,
    config: EstimateConfig,
    device: torch.device,
    images: Tensor,
    labels: Tensor,
) -> dict[str, float]:
    """Every feature calibration measures on a variant, measured on this set as it is (the same
    `measure_points`, every trajectory setting), with its true accuracy under `_accuracy`."""
    reference = calibration.window_reference()
    assert calibration.baseline_reference is not None and reference is not None
    (point,) = measure_points(
        model,
        images,
        labels,
        spec=spec,
        config=config,
        device=device,
        tasks=[VariantTask(CLEAN, 0, False, seed=config.seed)],
        settings=[s for s in calibration.settings if s.name],
        reference=calibration.baseline_reference,
        window_reference=reference,
    )
    return {**point_row(point), "_accuracy": point.accuracy}


def true_accuracy(
    model: nn.Module, spec: ModelSpec, images: Tensor, labels: Tensor, device: torch.device
) -> float:
    truth = predict(model, images, spec, device=device, chunk_size=500)
    return float((truth.labels == labels).double().mean())


@dataclass(frozen=True)
class _Context:
    """What every held-out measurement shares (sent once to each worker process)."""

    model: nn.Module
    spec: ModelSpec
    calibration: Calibration
    before: Calibration  # the same calibration with the pre-issue-9 estimator
    config: EstimateConfig
    device: torch.device


_context: _Context | None = None


def _start(context: _Context) -> None:
    global _context
    torch.set_num_threads(1)
    _context = context


def _measure_heldout(held: HeldOut) -> tuple[dict[str, float], EstimateResult]:
    c = _context
    assert c is not None
    values = measure_set(
        c.model, c.spec, c.calibration, c.config, c.device, held.images, held.labels
    )
    result = estimate(
        c.model,
        held.images,
        spec=c.spec,
        calibration=c.calibration,
        config=c.config,
        device=c.device,
    )
    return values, result


def _measure_mix(
    window: tuple[Tensor, Tensor],
) -> tuple[float, EstimateResult, EstimateResult]:
    c = _context
    assert c is not None
    images, labels = window
    truth = true_accuracy(c.model, c.spec, images, labels, c.device)
    kwargs = dict(spec=c.spec, config=c.config, device=c.device)
    after = estimate(c.model, images, calibration=c.calibration, **kwargs)  # type: ignore[arg-type]
    old = estimate(c.model, images, calibration=c.before, **kwargs)  # type: ignore[arg-type]
    return truth, after, old


def in_processes(context: _Context, fn: Callable, items: list, processes: int) -> list:
    """`fn` over `items` in `processes` single-threaded spawned processes (in order)."""
    if processes <= 1 or context.device.type != "cpu":
        _start(context)
        return [fn(item) for item in items]
    import torch.multiprocessing as mp

    with mp.get_context("spawn").Pool(processes, initializer=_start, initargs=(context,)) as pool:
        return pool.map(fn, items, chunksize=1)


# --- estimators compared ------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One compared estimator: its nested LOFO MAE and what it evaluates on a held-out row."""

    name: str
    nested_mae: float | None
    estimator: Estimator | None  # None: a raw baseline read from the row
    detail: dict[str, object]


def single_rows(calibration: Calibration) -> list[Row]:
    """Per flip signal: the best checkpoint/setting (chosen inside the nested loop) and step 0;
    per trajectory setting: the best step > 0 signal; the best step-0 signal; raw baselines."""
    points = calibration.points
    rows: list[Row] = []

    def nested(name: str, allowed: Callable[[str], bool], **detail: object) -> None:
        table = selection_table(points, allowed)
        if not table.names:
            return
        result = nested_selection(table, allowed=allowed, stacks=False)
        chosen = select(table, allowed=allowed, stacks=False)
        rows.append(
            Row(
                name,
                result.mae,
                chosen.estimator,
                {
                    **detail,
                    "selected_on_all_points": chosen.chosen,
                    "lofo_mae_points": pts(chosen.candidate_mae[chosen.chosen]),
                    "outer_choices": sorted(set(result.chosen.values())),
                },
            )
        )

    flips = (*SIGNALS, *ADJUSTED_SIGNALS)
    for signal in flips:
        nested(
            f"{signal} (best checkpoint/setting)",
            lambda n, s=signal: base_signal(n) == s,
            kind="signal",
        )
        if signal not in ("wf", "uf"):  # no step 0: those compare the copy with itself
            nested(f"{signal}@0", lambda n, s=signal: n == f"{s}@0", kind="signal step 0")
    nested(
        "best step-0 flip signal",
        lambda n: base_signal(n) in flips and feature_step(n) == 0,
        kind="trajectory",
    )
    for setting in calibration.settings:
        label = setting.name or "default"
        nested(
            f"best trajectory signal (step > 0), setting {label}",
            lambda n, name=setting.name: (
                base_signal(n) in flips and feature_step(n) > 0 and feature_setting(n) == name
            ),
            kind="trajectory",
            setting=setting.to_dict(),
        )
    for name in BASELINES:
        mae = calibration.candidates.get(f"raw:{name}")
        rows.append(Row(name, mae, None, {"kind": "baseline (raw, no fit)"}))
    return rows


def old_estimator(calibration: Calibration) -> Estimator:
    """What flipwatch selected before issue 9: one default-setting flip signal fit, selected by
    leave-one-family-out over corruption variants only (no class-mix variants, no `_adj`)."""
    points = [p for p in calibration.points if p.subset is None]

    def allowed(name: str) -> bool:
        return base_signal(name) in SIGNALS and not feature_setting(name)

    return select(selection_table(points, allowed), allowed=allowed, stacks=False).estimator


# --- one model ----------------------------------------------------------------------------------


def points_cache_dir(
    root: Path, key: str, spec: ModelSpec, steps: int, suite_key: str = "all/default"
) -> Path:
    """Where calibration points of one model, weights, step count and suite are kept."""
    weights = hashlib.sha256(Path(spec.weights or "").read_bytes()).hexdigest()[:12]
    suite = hashlib.sha256(suite_key.encode()).hexdigest()[:8]
    return root / f"{key}-{weights}-s{steps}-{suite}"


def reference_calibration(
    key: str,
    model: nn.Module,
    spec: ModelSpec,
    config: EstimateConfig,
    device: torch.device,
    *,
    processes: int,
    cache: Path | None,
    **suite: object,
) -> Calibration:
    """The real `calibrate()` on the demo's labeled reference split (`suite`: its keywords)."""
    splits = demo_splits(0)
    return calibrate(
        model,
        splits.reference.images,
        splits.reference.labels,
        spec=spec,
        config=config,
        device=device,
        processes=processes,
        cache=cache,
        log=lambda line: log(f"[{key}]   {line}"),
        **suite,  # type: ignore[arg-type]
    )


def run_model(key: str, args: argparse.Namespace, device: torch.device) -> dict[str, object]:
    spec = ensure_model(MODELS[key], args.cache_dir, log)
    model = load_model(spec).to(device).eval()
    splits = demo_splits(0)
    config = EstimateConfig(steps=args.steps)
    suite_key = f"{args.families or 'all'}/{args.severities or 'default'}"
    suite_key += "/grid" if args.lr_grid else ""
    points_cache = (
        points_cache_dir(args.points_cache, key, spec, args.steps, suite_key)
        if args.points_cache
        else None
    )
    log(f"[{key}] calibrating (default suite, {args.steps} steps, {args.processes} processes)")
    started = time.perf_counter()
    calibration = reference_calibration(
        key,
        model,
        spec,
        config,
        device,
        processes=args.processes,
        cache=points_cache,
        families=args.families.split(",") if args.families else None,
        **({"severities": tuple(args.severities)} if args.severities else {}),
        settings=LR_GRID if args.lr_grid else (),
    )
    calibration_seconds = time.perf_counter() - started
    selected = calibration.selected_estimator
    log(f"[{key}] calibrated in {calibration_seconds:.0f} s: {selected.describe()}")

    rows = single_rows(calibration)
    log(f"[{key}] nested single-signal rows done")

    # held-out sets: every feature under every setting, and the real estimate()
    before = old_estimator(calibration)
    context = _Context(
        model.cpu() if device.type == "cpu" else model,
        spec,
        calibration,
        replace(calibration, estimator=before),
        config,
        device,
    )
    sets = held_out_sets()
    measured = in_processes(context, _measure_heldout, sets, args.processes)
    heldout: list[dict[str, object]] = []
    for held, (values, result) in zip(sets, measured, strict=True):
        truth = values["_accuracy"]
        heldout.append(
            {
                "set": held.name,
                "group": held.group,
                "images": len(held.images),
                "true_accuracy": round(truth, 4),
                "estimate": round(result.estimated_accuracy, 4),
                "lower": result.lower,
                "upper": result.upper,
                "covered": result.lower is not None
                and result.upper is not None
                and result.lower <= truth <= result.upper,
                "label_shift": result.label_shift,
                "seconds": result.seconds,
                "selected_on_measured_row": round(selected(values), 4),
                "others": {
                    r.name: round(values[r.name] if r.estimator is None else r.estimator(values), 4)
                    for r in rows
                    if r.estimator is not None or r.name in values
                },
            }
        )
        log(f"[{key}] {held.name}: true {truth:.3f}, estimate {result.estimated_accuracy:.3f}")

    def heldout_mae(value: Callable[[dict], float | None], group: str | None) -> float | None:
        errors = [
            abs(v - h["true_accuracy"])
            for h in heldout
            if group is None or h["group"] == group
            for v in [value(h)]
            if v is not None
        ]
        return pts(sum(errors) / len(errors)) if errors else None

    groups = {"all": None, "demo_sets": "demo", "unseen_family_sets": "unseen_family"}
    table = [
        {
            "estimator": f"selected: {selected.describe()}",
            "nested_lofo_mae_points": pts(calibration.nested_mae),
            "lofo_mae_points": pts(calibration.candidates.get(selected.name)),
            **{
                f"heldout_mae_points_{g}": heldout_mae(lambda h: h["estimate"], v)
                for g, v in groups.items()
            },
        }
    ]
    for r in rows:
        table.append(
            {
                "estimator": r.name,
                "nested_lofo_mae_points": pts(r.nested_mae),
                **{
                    f"heldout_mae_points_{g}": heldout_mae(
                        lambda h, n=r.name: h["others"].get(n), v
                    )
                    for g, v in groups.items()
                },
                **r.detail,
            }
        )

    # interval: nested residuals and held-out sets
    interval = calibration.interval
    widths = [h["upper"] - h["lower"] for h in heldout if h["upper"] is not None]
    interval_report = {
        "level": None if interval is None else interval.level,
        "half_width_points_at_calibration_size": None
        if interval is None
        else pts(interval.half_width),
        "calibration_size": None if interval is None else interval.calibration_size,
        "spread": None if interval is None else interval.spread,
        "nested_coverage": calibration.coverage,
        "nested_mean_width_points": None if interval is None else pts(2 * interval.half_width),
        "heldout_coverage": round(sum(bool(h["covered"]) for h in heldout) / len(heldout), 4),
        "heldout_mean_width_points": pts(sum(widths) / len(widths)) if widths else None,
        "heldout_sets": len(heldout),
    }

    # class mix on clean held-out images
    held = splits.heldout
    prior = calibration.window_reference().prior.numpy()  # type: ignore[union-attr]
    windows = []
    for index, kind in enumerate(MIX_WINDOWS):
        idx = subset_indices(held.labels, kind, num_classes=spec.num_classes, seed=100 + index)
        windows.append((held.images[idx], held.labels[idx]))
    mix_results = in_processes(context, _measure_mix, windows, args.processes)
    mixes = []
    for kind, (images, labels), (truth, after, old) in zip(
        MIX_WINDOWS, windows, mix_results, strict=True
    ):
        true_q = np.bincount(labels.numpy(), minlength=spec.num_classes) / len(labels)
        mixes.append(
            {
                "mix": kind,
                "images": len(images),
                "true_accuracy": round(truth, 4),
                "estimate_before": round(old.estimated_accuracy, 4),
                "estimate_after": round(after.estimated_accuracy, 4),
                "interval_after": [after.lower, after.upper],
                "cot": after.baselines.get("cot"),
                "label_shift_tv": after.label_shift,
                "true_tv": round(total_variation(true_q, prior), 4),
            }
        )
        log(
            f"[{key}] mix {kind}: true {truth:.3f}, before {old.estimated_accuracy:.3f}, "
            f"after {after.estimated_accuracy:.3f}, TV {after.label_shift:.3f}"
        )

    trajectory = {
        "settings": [s.to_dict() for s in calibration.settings],
        "selected_setting": selected.setting or "default",
        "selected_steps": selected.steps,
        "best_step0_nested_mae_points": next(
            pts(r.nested_mae) for r in rows if r.name == "best step-0 flip signal"
        ),
        "best_trajectory_nested_mae_points": {
            str(r.detail["setting"]["name"] or "default"): pts(r.nested_mae)  # type: ignore[index]
            for r in rows
            if r.name.startswith("best trajectory signal")
        },
        "best_step0_candidate_lofo": _best_candidate(calibration, lambda n: feature_step(n) == 0),
        "best_trajectory_candidate_lofo": {
            (s.name or "default"): _best_candidate(
                calibration,
                lambda n, name=s.name: feature_step(n) > 0 and feature_setting(n) == name,
            )
            for s in calibration.settings
        },
    }
    trajectory["trajectory_beats_step0_nested"] = any(
        v is not None and v < trajectory["best_step0_nested_mae_points"]
        for v in trajectory["best_trajectory_nested_mae_points"].values()
    )

    return {
        "benchmark": "estimate_quality",
        "model": key,
        "architecture": MODELS[key],
        "spec_name": spec.name,
        "steps": args.steps,
        "suite": {
            "families": args.families or "all",
            "severities": args.severities or "default",
            "lr_grid": args.lr_grid,
        },
        "probe_size": calibration.probe_size,
        "calibration_variants": len(calibration.points),
        "families": sorted({p.family for p in calibration.points}),
        "reference_accuracy": calibration.reference_accuracy,
        "selected": {
            "name": selected.name,
            "description": selected.describe(),
            "setting": selected.setting or "default",
            "steps": selected.steps,
            "nested_lofo_mae_points": pts(calibration.nested_mae),
            "outer_fold_choices": calibration.nested_chosen,
        },
        "table": table,
        "interval": interval_report,
        "trajectory": trajectory,
        "class_mix": {
            "before": f"{before.name} (single default-setting flip fit, selected without "
            "class-mix variants or correction)",
            "after": selected.describe(),
            "windows": mixes,
        },
        "heldout": heldout,
        "seconds_per_estimate": round(sum(h["seconds"] for h in heldout) / len(heldout), 2),
        "calibration_seconds": round(calibration_seconds, 1),
        "points_cache": None if points_cache is None else str(points_cache),
        "device": str(device),
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "environment": {**environment(device), **_versions()},
    }


def _best_candidate(calibration: Calibration, keep: Callable[[str], bool]) -> dict | None:
    """The lowest top-level LOFO MAE among single flip-signal fits that `keep` accepts."""
    fits = {
        name: mae
        for name, mae in calibration.candidates.items()
        if name.startswith("fit:")
        and base_signal(name[4:]) in (*SIGNALS, *ADJUSTED_SIGNALS)
        and keep(name[4:])
    }
    if not fits:
        return None
    name = min(fits, key=fits.__getitem__)
    return {"candidate": name, "lofo_mae_points": pts(fits[name])}


def _versions() -> dict[str, object]:
    import numpy
    import sklearn

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {"numpy": numpy.__version__, "sklearn": sklearn.__version__, "git_commit": commit}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=[*MODELS, "all"], default="all")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cache-dir", type=Path, default=Path(".flipwatch/demo"))
    parser.add_argument(
        "--points-cache",
        type=Path,
        default=Path(".flipwatch/quality-points"),
        help="keeps measured calibration points per model, weights and steps (resumable runs)",
    )
    parser.add_argument(
        "--families", help="comma-separated corruption families (default: all, the default suite)"
    )
    parser.add_argument(
        "--severities",
        type=lambda v: [int(x) for x in v.split(",")],
        help="comma-separated severities (default: the default suite's 2,3,4)",
    )
    parser.add_argument(
        "--lr-grid",
        action="store_true",
        help="measure the learning-rate grid too (the results in benchmarks/results/ did: they "
        "were run with the former default suite, --severities 2,4 --lr-grid)",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    for key in MODELS if args.model == "all" else [args.model]:
        print(json.dumps(run_model(key, args, device)), flush=True)


if __name__ == "__main__":
    main()
