"""The fast path agrees with the plain reference loop: on the demo model, the same seed and the
same images, every demo held-out set's estimate differs by at most 1 accuracy point (CPU: fp32,
channels_last; CUDA: bf16 autocast and a compiled step, where a GPU is present)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from flipwatch.demos.offline import demo_sets
from flipwatch.workers.estimation import (
    Calibration,
    EstimateConfig,
    calibrate,
    estimate,
    load_model,
)

pytestmark = pytest.mark.e2e

CONFIG = EstimateConfig(steps=250)
FAMILIES = ("gaussian_noise",)
DEVICES = [
    pytest.param("cpu"),
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
        ],
    ),
]


@pytest.fixture(scope="module")
def model_and_spec(demo_model):
    spec, _ = demo_model
    return load_model(spec), spec


@pytest.fixture(scope="module")
def calibration(model_and_spec, splits) -> Calibration:
    """The smallest real calibration (clean and noise at two severities, plus the two spread
    subsets; one trajectory setting), measured with the plain loop: it only has to map the
    signals both paths produce to an accuracy."""
    model, spec = model_and_spec
    ref = splits.reference
    return calibrate(
        model,
        ref.images,
        ref.labels,
        spec=spec,
        config=replace(CONFIG, fast=False),
        device="cpu",
        families=FAMILIES,
        severities=(2, 4),
        settings=(),
        class_mixes="none",
    )


@pytest.mark.parametrize("device", DEVICES)
def test_fast_estimates_are_within_one_point_of_the_plain_loop(model_and_spec, calibration, device):
    model, spec = model_and_spec
    differences = {}
    for demo_set in demo_sets():
        results = {
            fast: estimate(
                model,
                demo_set.images,
                spec=spec,
                calibration=calibration,
                config=replace(CONFIG, fast=fast),
                device=device,
            )
            for fast in (False, True)
        }
        plain, fast = results[False], results[True]
        differences[demo_set.name] = (
            100 * (fast.estimated_accuracy - plain.estimated_accuracy),
            fast.used_fraction - plain.used_fraction,
        )
        assert fast.signal == plain.signal
        assert all(v == v for v in fast.signals["wf_source"].values())  # no NaN
    print(f"fast - plain on {device} (points, used fraction):", differences)
    worst = max(abs(points) for points, _ in differences.values())
    assert worst <= 1.0, differences
