"""The calibration page (GET /models/{id}/calibration): what the estimate of a model rests on.

The fitted curve of the selected signal (signal value -> accuracy) with the calibration's shifted
variants as points (true accuracy on the reference set), and every candidate (signal, checkpoint)
with its held-out (leave-one-family-out) error, best first. Server-rendered SVG: nothing to fetch.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

WIDTH, HEIGHT = 640, 320
LEFT, RIGHT, TOP, BOTTOM = 50, 16, 14, 40


def map_value(m: dict[str, Any], x: float) -> float:
    """The stored QuadraticMap at x (flips.py's rule: x in the map's scale, the signed square root
    for `scale` "sqrt"; quadratic inside [x_min, x_max], linear with the end slope outside,
    clipped to [0, 1])."""
    a, b, c = float(m["a"]), float(m["b"]), float(m["c"])
    lo = float(m.get("x_min") or 0.0)
    hi = math.inf if m.get("x_max") is None else float(m["x_max"])
    if m.get("scale") == "sqrt":
        x = math.copysign(math.sqrt(abs(x)), x)

    def raw(v: float) -> float:
        return a * v * v + b * v + c

    if x < lo:
        y = raw(lo) + (2 * a * lo + b) * (x - lo)
    elif x > hi:
        y = raw(hi) + (2 * a * hi + b) * (x - hi)
    else:
        y = raw(x)
    return min(1.0, max(0.0, y))


def map_x_max(m: dict[str, Any]) -> float:
    """The end of the map's fitted range as a signal value (x_max is in the map's scale)."""
    hi = float(m.get("x_max") or 1.0)
    return math.copysign(hi * hi, hi) if m.get("scale") == "sqrt" else hi


def render_calibration(model_name: str, result: dict[str, Any]) -> str:
    """The page body: curve with variants, then the candidates table."""
    fits = [f for f in result.get("fits", []) if isinstance(f, dict)]
    selected = str(result.get("selected", ""))
    chosen = next((f for f in fits if f"{f['signal']}@{f['step']}" == selected), None)
    return _curve(result, chosen, selected) + _candidates(fits, selected, result)


def _points(result: dict[str, Any], fit: dict[str, Any]) -> list[tuple[float, float, str]]:
    out = []
    for p in result.get("points", []):
        by_step = (p.get("signals") or {}).get(fit["signal"]) or {}
        x = by_step.get(str(fit["step"]), by_step.get(fit["step"]))
        if isinstance(x, int | float) and math.isfinite(x):
            label = (
                "clean"
                if p.get("family") == "clean"
                else (f"{p.get('family')} {p.get('severity')}" + (" mix" if p.get("mixed") else ""))
            )
            out.append((float(x), float(p["accuracy"]), label))
    return out


def _curve(result: dict[str, Any], fit: dict[str, Any] | None, selected: str) -> str:
    if fit is None:
        return '<p class="empty">No fitted curve (built-in calibration or none selected).</p>'
    points = _points(result, fit)
    xmax = max([x for x, _, _ in points] + [map_x_max(fit["map"]), 1e-9]) * 1.05
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + x / xmax * pw

    def sy(y: float) -> float:
        return TOP + (1 - y) * ph

    parts = [
        f'<svg class="chart-svg calibration" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'data-selected="{escape(selected)}" aria-label="calibration curve of {escape(selected)}">'
    ]
    for v in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        parts.append(
            f'<g class="grid"><line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{sy(v):.1f}" '
            f'y2="{sy(v):.1f}"/><text class="tick y" x="{LEFT - 6}" y="{sy(v) + 4:.1f}">'
            f"{v:.0%}</text></g>"
        )
    for i in range(6):
        x = xmax * i / 5
        parts.append(f'<text class="tick x" x="{sx(x):.1f}" y="{HEIGHT - 22}">{x:.3g}</text>')
    parts.append(
        f'<text class="axis-label" x="{WIDTH - RIGHT}" y="{HEIGHT - 6}">'
        f"{escape(selected)} (signal value)</text>"
    )
    path = " ".join(
        f"{'M' if i == 0 else 'L'}{sx(xmax * i / 80):.1f},"
        f"{sy(map_value(fit['map'], xmax * i / 80)):.1f}"
        for i in range(81)
    )
    parts.append(f'<path class="fit-curve" d="{path}"/>')
    for x, y, label in points:
        parts.append(
            f'<circle class="variant" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" '
            f'data-x="{x:.6g}" data-accuracy="{y:.6g}"><title>{escape(label)}: '
            f"signal {x:.4g}, accuracy {y:.1%}</title></circle>"
        )
    parts.append("</svg>")
    caption = (
        '<figcaption class="chart-legend"><span class="legend-item">line: the fitted map '
        f'f({escape(selected)}) → accuracy</span><span class="legend-item">dots: the '
        f"{len(points)} shifted variants of the reference set (true accuracy)</span></figcaption>"
    )
    return f'<figure class="chart">{"".join(parts)}{caption}</figure>'


def _candidates(fits: list[dict[str, Any]], selected: str, result: dict[str, Any]) -> str:
    def mae(f: dict[str, Any]) -> float:
        return f["mae"] if isinstance(f.get("mae"), int | float) else math.inf

    rows = []
    for f in sorted(fits, key=lambda f: (mae(f), f["step"])):
        key = f"{f['signal']}@{f['step']}"
        held = "-" if math.isinf(mae(f)) else f"{mae(f):.2%}"
        train = f.get("train_mae")
        train_text = "-" if not isinstance(train, int | float) else f"{train:.2%}"
        mark = ' class="selected"' if key == selected else ""
        rows.append(
            f'<tr{mark} data-candidate="{escape(key)}"><td>{escape(key)}</td><td>{held}</td>'
            f"<td>{train_text}</td><td>{'selected' if key == selected else ''}</td></tr>"
        )
    baselines = result.get("baseline_mae") or {}
    base_rows = "".join(
        f'<tr data-baseline="{escape(str(k))}"><td>{escape(str(k))}</td><td>{v:.2%}</td></tr>'
        for k, v in sorted(baselines.items(), key=lambda kv: kv[1])
        if isinstance(v, int | float)
    )
    base = (
        '<h2>Baselines on the same variants</h2><table class="history"><thead><tr>'
        f"<th>baseline</th><th>MAE</th></tr></thead><tbody>{base_rows}</tbody></table>"
        if base_rows
        else ""
    )
    return (
        "<h2>Every candidate, by held-out error</h2>"
        '<table class="history candidates"><thead><tr><th>signal@step</th>'
        "<th>held-out MAE</th><th>train MAE</th><th></th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>{base}"
    )
