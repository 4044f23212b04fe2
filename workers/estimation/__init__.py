"""The Weighted Flips estimator: pure torch, shared by the CLI, the worker, tests and benchmarks.

The public API is listed in `__all__` (documented in docs/estimator-api.md). Names load lazily, so
importing a torch-free submodule (`spec`, `families`) does not import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_PUBLIC = {
    "Calibration": "calibration_result",
    "CalibrationMissing": "calibration_result",
    "builtin_calibration": "calibration_result",
    "calibrate": "calibration",
    "EstimateConfig": "config",
    "EstimateResult": "result",
    "estimate": "estimate",
    "ImageError": "images",
    "decode_image": "images",
    "decode_images": "images",
    "load_image_folder": "images",
    "load_labeled_folder": "images",
    "ModelLoadError": "loading",
    "load_model": "loading",
    "ModelSpec": "spec",
    "SpecError": "spec",
    "read_spec": "spec",
    "resolve_device": "trajectory",
}

__all__ = [
    "Calibration",
    "CalibrationMissing",
    "EstimateConfig",
    "EstimateResult",
    "ImageError",
    "ModelLoadError",
    "ModelSpec",
    "SpecError",
    "builtin_calibration",
    "calibrate",
    "decode_image",
    "decode_images",
    "estimate",
    "load_image_folder",
    "load_labeled_folder",
    "load_model",
    "read_spec",
    "resolve_device",
]

if TYPE_CHECKING:
    from flipwatch.workers.estimation.calibration import calibrate
    from flipwatch.workers.estimation.calibration_result import (
        Calibration,
        CalibrationMissing,
        builtin_calibration,
    )
    from flipwatch.workers.estimation.config import EstimateConfig
    from flipwatch.workers.estimation.estimate import estimate
    from flipwatch.workers.estimation.images import (
        ImageError,
        decode_image,
        decode_images,
        load_image_folder,
        load_labeled_folder,
    )
    from flipwatch.workers.estimation.loading import ModelLoadError, load_model
    from flipwatch.workers.estimation.result import EstimateResult
    from flipwatch.workers.estimation.spec import ModelSpec, SpecError, read_spec
    from flipwatch.workers.estimation.trajectory import resolve_device


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
