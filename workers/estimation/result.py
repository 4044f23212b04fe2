"""The estimator's output as data: written by the worker, read by the API and the metrics.

Torch-free on purpose: `flipwatch.service` reads stored results through this one typed contract.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class EstimateResult:
    """The estimator's full output; `to_dict()` is what the CLI prints and the service stores."""

    estimated_accuracy: float
    signal: str
    signal_value: float
    calibration: str
    calibration_mae: float | None
    weighted_flips: float
    signals: dict[str, dict[int, float]]
    baselines: dict[str, float | None]
    embedding: dict[str, float | None]
    steps: int
    probe_size: int
    num_images: int
    seconds: float
    device: str
    used_fraction: float
    epsilon: float
    warnings: list[str] = field(default_factory=list)
    # A prediction interval around estimated_accuracy: [lower, upper] at interval_level (split
    # conformal on the calibration's nested held-out residuals, widened for small windows).
    lower: float | None = None
    upper: float | None = None
    interval_level: float | None = None
    # What produced the estimate ("fit:uf_source@0", "stack: ...") and the values it read.
    estimator: str | None = None
    estimator_inputs: dict[str, float] = field(default_factory=dict)
    # The window's class proportions (MLLS on the source model's outputs), the reference set's,
    # and their total-variation distance: a different class mix, not model failure.
    class_proportions: list[float] | None = None
    reference_class_proportions: list[float] | None = None
    label_shift: float | None = None

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["signals"] = {
            name: {str(step): value for step, value in by_step.items()}
            for name, by_step in self.signals.items()
        }
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EstimateResult:
        """A stored result; keys this version does not know are ignored, missing ones default."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["signals"] = {
            name: {int(step): float(v) for step, v in by_step.items()}
            for name, by_step in (data.get("signals") or {}).items()
        }
        return cls(**values)
