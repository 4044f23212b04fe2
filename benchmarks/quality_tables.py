"""The markdown tables of docs/estimate-quality.md, from `estimate_quality.py`'s JSON files.

The doc's figures are copied by this script rather than by hand, so a rerun of the benchmark
updates them exactly:

    python benchmarks/quality_tables.py benchmarks/results/estimate_quality_demo.json \\
        benchmarks/results/estimate_quality_mnist_resnet.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

BASELINES = ("ac", "doc", "atc", "atc_ne", "cot")


def pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def num(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def estimators(run: dict) -> list[str]:
    lines = [
        "| estimator | nested LOFO MAE | held-out MAE, all sets | demo sets | unseen-family sets |",
        "|---|---|---|---|---|",
    ]
    for row in run["table"]:
        name = row["estimator"]
        if name.startswith("selected"):
            name = "**selected**"
        lines.append(
            f"| {name} | {num(row['nested_lofo_mae_points'])} | "
            f"{num(row['heldout_mae_points_all'])} | {num(row['heldout_mae_points_demo_sets'])} | "
            f"{num(row['heldout_mae_points_unseen_family_sets'])} |"
        )
    return lines


def heldout(run: dict) -> list[str]:
    lines = [
        "| held-out set | true | estimate | 90 % interval | `label_shift` | COT |",
        "|---|---|---|---|---|---|",
    ]
    for row in run["heldout"]:
        name = row["set"] + (" (unseen family)" if row["group"] == "unseen_family" else "")
        lines.append(
            f"| {name} | {pct(row['true_accuracy'])} | {pct(row['estimate'])} | "
            f"{pct(row['lower'])}–{pct(row['upper'])} | {row['label_shift']:.3f} | "
            f"{pct(row['others']['cot'])} |"
        )
    return lines


def goal(runs: Sequence[dict]) -> list[str]:
    lines = ["| | " + " | ".join(r["model"] for r in runs) + " |", "|---" * (len(runs) + 1) + "|"]
    cells: dict[str, list[str]] = {"nested": [], "all": [], "unseen": []}
    for run in runs:
        rows = {r["estimator"]: r for r in run["table"]}
        selected = run["table"][0]
        for key, column in (
            ("nested", "nested_lofo_mae_points"),
            ("all", "heldout_mae_points_all"),
            ("unseen", "heldout_mae_points_unseen_family_sets"),
        ):
            name, best = min(((b, rows[b][column]) for b in BASELINES), key=lambda kv: kv[1])
            mine = selected[column]
            verdict = "met" if mine < best else f"missed by {mine - best:.2f}"
            cells[key].append(f"{mine:.2f} vs {best:.2f} ({name.upper()}): {verdict}")
    labels = {
        "nested": "nested LOFO MAE, selected vs best raw baseline",
        "all": "held-out sets, selected vs best baseline",
        "unseen": "unseen-family sets, selected vs best baseline",
    }
    for key, label in labels.items():
        lines.append(f"| {label} | " + " | ".join(cells[key]) + " |")
    return lines


def interval(runs: Sequence[dict]) -> list[str]:
    lines = ["| | " + " | ".join(r["model"] for r in runs) + " |", "|---" * (len(runs) + 1) + "|"]
    rows = (
        ("half-width at 1,000 images (points)", "half_width_points_at_calibration_size", num),
        ("nested coverage", "nested_coverage", lambda v: f"{v:.3f}"),
        ("mean width on the nested residuals (points)", "nested_mean_width_points", num),
        ("held-out coverage", "heldout_coverage", lambda v: f"{v:.3f}"),
        ("mean width on the held-out sets (points, clipped)", "heldout_mean_width_points", num),
    )
    for label, key, fmt in rows:
        lines.append(f"| {label} | " + " | ".join(fmt(r["interval"][key]) for r in runs) + " |")
    return lines


def class_mix(run: dict) -> list[str]:
    lines = [
        "| class mix (clean held-out images) | images | true | before | after | 90 % interval "
        "after | COT | `label_shift` (estimated TV) | true TV |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for w in run["class_mix"]["windows"]:
        lo, hi = w["interval_after"]
        lines.append(
            f"| {w['mix']} | {w['images']} | {pct(w['true_accuracy'])} | "
            f"{pct(w['estimate_before'])} | {pct(w['estimate_after'])} | {pct(lo)}–{pct(hi)} | "
            f"{pct(w['cot'])} | {w['label_shift_tv']:.3f} | {w['true_tv']:.3f} |"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path)
    runs = [json.loads(p.read_text()) for p in parser.parse_args(argv).results]
    for run in runs:
        print(f"### {run['model']}: {run['selected']['description']}\n")
        print("\n".join(estimators(run)), "\n")
        print("\n".join(heldout(run)), "\n")
        print("\n".join(class_mix(run)), "\n")
    print("### goal\n")
    print("\n".join(goal(runs)), "\n")
    print("### interval\n")
    print("\n".join(interval(runs)))


if __name__ == "__main__":
    main()
