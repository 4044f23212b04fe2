"""Names of everything a calibration variant or a window measures, as one flat feature dict.

A flip signal at a checkpoint is `<signal>@<step>`, suffixed `~<setting>` when it comes from a
non-default trajectory setting (another learning rate or batch size); step-0 signals carry no
suffix, since no adaptation step has run. `<signal>_adj@<step>` is a source-comparison signal
minus the window's class-mix delta (window_features.py). Baselines and window features keep their
names (`ac`, `cot`, `cot_adj`, `frechet`, `label_shift`, ...).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "DEFAULT_SETTING",
    "TrajectorySetting",
    "feature_name",
    "feature_setting",
    "feature_step",
    "row_features",
]

DEFAULT_SETTING = ""
_STEP = re.compile(r"@(\d+)")
# Source-comparison signals and the names of their class-mix adjusted versions.
ADJUSTED = {"uf_source": "uf_source_adj", "wf_source": "wf_source_adj"}
_NOT_PREDICTORS = ("mix_delta_",)


@dataclass(frozen=True)
class TrajectorySetting:
    """One adaptation setting calibration measures; the default one has the empty name."""

    name: str
    lr: float
    batch_size: int

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "lr": self.lr, "batch_size": self.batch_size}

    @classmethod
    def from_dict(cls, data: Mapping) -> TrajectorySetting:
        return cls(str(data["name"]), float(data["lr"]), int(data["batch_size"]))


def feature_name(signal: str, step: int) -> str:
    """`uf_source~lr1e-3`, 250 -> `uf_source@250~lr1e-3`; step 0 drops the setting."""
    base, _, setting = signal.partition("~")
    return f"{base}@{step}" + (f"~{setting}" if setting and step > 0 else "")


def feature_step(name: str) -> int:
    match = _STEP.search(name)
    return int(match.group(1)) if match else 0


def feature_setting(name: str) -> str:
    return name.partition("~")[2]


def row_features(
    signals: Mapping[str, Mapping[int, float]],
    baselines: Mapping[str, float | None],
    window: Mapping[str, float],
) -> dict[str, float]:
    """The flat feature dict of one variant or window (see the module doc)."""
    row: dict[str, float] = {}
    for signal, by_step in signals.items():
        base, _, setting = signal.partition("~")
        delta = window.get(f"mix_delta_{base}")
        for step, value in by_step.items():
            if setting and step == 0:
                continue  # identical to the default setting's step 0
            row[feature_name(signal, step)] = float(value)
            if base in ADJUSTED and delta is not None:
                adjusted = ADJUSTED[base] + (f"~{setting}" if setting else "")
                row[feature_name(adjusted, step)] = float(value) - float(delta)
    row.update({k: float(v) for k, v in baselines.items() if v is not None})
    row.update({k: float(v) for k, v in window.items() if not k.startswith(_NOT_PREDICTORS)})
    return row
