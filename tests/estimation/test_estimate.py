"""`estimate()` itself on the tiny model: golden outputs, the fit it picks, its warnings, refusals.

The calibration is made by hand (known maps, a measured baseline reference), so these tests
check estimate() alone; calibrate() has its own tests. Golden values were computed once with
`python -m tests.estimation.test_estimate` (CPU, torch 2.14.1, 1 thread, seed 0) on the plain
fp32 loop and are frozen here: the fast path's CPU plan depends on the processor (bf16 where it is
native), so its numbers are checked against the plain loop's elsewhere
(tests/e2e/test_fast_path_agreement.py), not frozen.
Tolerance: 1e-5 absolute on every number (float32 kernels may differ in the last bits on another
CPU; a flip caused by such a difference would move a signal by 5 per 1000, far outside it).
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from torch.testing import assert_close

from flipwatch.workers.estimation import (
    CalibrationMissing,
    EstimateConfig,
    EstimateResult,
    estimate,
)
from flipwatch.workers.estimation.baselines import BaselineReference
from flipwatch.workers.estimation.calibration_result import (
    PAPER_AC_MAE,
    Calibration,
    Fit,
    IntervalSpec,
)
from flipwatch.workers.estimation.conformal import widened_half_width
from flipwatch.workers.estimation.embeddings import feature_stats
from flipwatch.workers.estimation.estimate import adaptation_starved
from flipwatch.workers.estimation.flips import QuadraticMap
from flipwatch.workers.estimation.spec import ModelSpec
from flipwatch.workers.estimation.trajectory import Predictions, Trajectory, predict
from flipwatch.workers.estimation.variants import make_variant
from flipwatch.workers.estimation.zoo import tiny
from tests.tiny_models import blob_images, confident_tiny

ATOL = 1e-5
CPU = torch.device("cpu")
CONFIG = EstimateConfig(steps=8, checkpoints=(0, 4, 8), probe_size=200, epsilon=1.0)
PLAIN = EstimateConfig(steps=8, checkpoints=(0, 4, 8), probe_size=200, epsilon=1.0, fast=False)
SPEC = ModelSpec(
    name="tiny",
    format="entrypoint",
    entrypoint="tiny",
    num_classes=10,
    input={"color": "RGB", "size": [32, 32], "mean": [0.5], "std": [0.25]},
)
SELECTED = Fit("wf", 8, QuadraticMap(-1e-4, -1e-2, 0.9, 0.0, 40.0), mae=0.03)
SHORT = Fit("uf", 4, QuadraticMap(0.0, -1e-3, 0.9, 0.0, 1000.0), mae=0.05)
OTHER = Fit("wf_source", 8, QuadraticMap(0.0, -1e-3, 0.9, 0.0, 1000.0), mae=0.04)

# Frozen golden outputs (see the module docstring); identical with 1 and 2 threads.
GOLDEN: dict[str, object] = {
    "estimated_accuracy": 0.85133775,
    "signal_value": 4.65,
    "weighted_flips": 4.65,
    "signals": {
        "wf": {4: 0.575, 8: 4.65},
        "wf_source": {0: 467.775, 4: 467.775, 8: 467.775},
        "uf": {4: 10.0, 8: 45.0},
        "uf_source": {0: 955.0, 4: 955.0, 8: 955.0},
    },
    "baselines": {
        "ac": 0.38571509197354314,
        "doc": 0.8687144447863102,
        "atc": 1.0,
        "atc_ne": 1.0,
        "cot": 0.3439221708849073,
    },
    "embedding": {
        "frechet": 0.003024853914922888,
        "silhouette": 0.10239596768180047,
        "centroid_shift": 1.5349264748259575,
        "class_distance": 4.7826381253907995,
    },
    "used_fraction": 0.421875,
}


def make_calibration(model: torch.nn.Module, *, probe_size: int = 200) -> Calibration:
    """The tiny model's reference statistics on 300 blob images, whose labels are its own
    predictions with every fifth one changed (reference accuracy 0.8)."""
    reference = blob_images(300, seed=0)
    clean = predict(model, reference, SPEC, device=CPU, chunk_size=100, features=True)
    labels = clean.labels.clone()
    labels[::5] = (labels[::5] + 1) % 10
    assert clean.features is not None
    mean = clean.features.mean(0)
    return Calibration(
        model_name="tiny",
        num_classes=10,
        probe_size=probe_size,
        steps=8,
        source="fitted",
        fits=(SHORT, OTHER, SELECTED),
        selected=SELECTED.key,
        reference_accuracy=0.8,
        baseline_reference=BaselineReference.from_labeled(clean.probs, labels),
        reference_features=feature_stats(clean.features),
        class_means=torch.stack(  # as calibrate(): the overall mean for a class never seen
            [
                clean.features[labels == c].mean(0) if bool((labels == c).any()) else mean
                for c in range(10)
            ]
        ),
    )


def window() -> torch.Tensor:
    """300 blob images the calibration never saw, under Gaussian noise (flips happen)."""
    return make_variant(blob_images(300, seed=1), "gaussian_noise", 3, False, seed=7)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return confident_tiny()


@pytest.fixture(scope="module")
def result(model: torch.nn.Module) -> EstimateResult:
    return estimate(
        model, window(), spec=SPEC, calibration=make_calibration(model), config=PLAIN, device=CPU
    )


def numbers(result: EstimateResult) -> dict[str, object]:
    """Every number of a result (what GOLDEN freezes)."""
    return {
        "estimated_accuracy": result.estimated_accuracy,
        "signal_value": result.signal_value,
        "weighted_flips": result.weighted_flips,
        "signals": result.signals,
        "baselines": result.baselines,
        "embedding": result.embedding,
        "used_fraction": result.used_fraction,
    }


class TestEstimate:
    def test_matches_the_golden_outputs(self, result: EstimateResult) -> None:
        assert_close(numbers(result), GOLDEN, rtol=0, atol=ATOL)

    def test_maps_the_selected_signal_at_its_step_through_the_selected_fit(
        self, result: EstimateResult
    ) -> None:
        assert (result.signal, result.calibration, result.calibration_mae) == (
            "wf@8",
            "fitted",
            0.03,
        )
        assert result.signal_value == result.signals["wf"][8]
        assert result.estimated_accuracy == SELECTED.map(result.signal_value)
        assert result.weighted_flips == result.signals["wf"][8]
        assert (result.steps, result.probe_size, result.num_images) == (8, 200, 300)
        assert (result.epsilon, result.device, result.warnings) == (1.0, "cpu", [])

    def test_every_number_is_finite(self, result: EstimateResult) -> None:
        values = [
            result.estimated_accuracy,
            result.signal_value,
            result.weighted_flips,
            result.used_fraction,
            *(v for by_step in result.signals.values() for v in by_step.values()),
            *result.baselines.values(),
            *result.embedding.values(),
        ]
        assert all(v is not None and math.isfinite(v) for v in values), values

    def test_a_short_run_on_a_small_probe_uses_the_best_reachable_fit_and_says_why(
        self, model: torch.nn.Module
    ) -> None:
        config = EstimateConfig(steps=4, checkpoints=(0, 4), probe_size=80, epsilon=1.0)
        calibration = make_calibration(model)
        short = estimate(model, window(), spec=SPEC, calibration=calibration, config=config)

        assert (short.signal, short.calibration_mae) == ("uf@4", 0.05)
        assert short.signal_value == short.signals["uf"][4]
        assert short.estimated_accuracy == SHORT.map(short.signal_value)
        assert short.warnings == [
            "probe of 80 images: below 100 the estimate degrades clearly (spec §10.1)",
            "probe size 80 differs from the calibration's 200; flips were rescaled to a "
            "1000-image probe",
            "4 steps do not reach the selected estimator's checkpoint (8); used fit:uf@4, the "
            "best in reach",
        ]

    def test_refuses_a_model_without_calibration_naming_the_fix(
        self, model: torch.nn.Module
    ) -> None:
        with pytest.raises(CalibrationMissing, match="run `flipwatch calibrate`"):
            estimate(model, window(), spec=SPEC, config=CONFIG)

    @pytest.mark.parametrize("config", [CONFIG, PLAIN], ids=["fast", "plain"])
    def test_a_model_whose_outputs_overflow_is_refused_saying_on_how_many_images(
        self, model: torch.nn.Module, config: EstimateConfig
    ) -> None:
        broken = copy.deepcopy(model)
        with torch.no_grad():
            broken.fc.bias[3] = float("inf")  # softmax of an infinite logit is NaN
        with pytest.raises(ValueError, match="outputs are NaN or inf on 200 of 200 probe images"):
            estimate(
                broken, window(), spec=SPEC, calibration=make_calibration(model), config=config
            )

    def test_a_window_of_copies_says_so_and_sizes_its_interval_for_the_distinct_images(
        self, model: torch.nn.Module
    ) -> None:
        interval = IntervalSpec(level=0.9, half_width=0.05, spread=0.3, calibration_size=200)
        calibration = dataclasses.replace(make_calibration(model), interval=interval)
        copies = window()[:30].repeat(10, 1, 1, 1)  # 300 images, 30 distinct (a stuck camera)
        result = estimate(model, copies, spec=SPEC, calibration=calibration, config=CONFIG)
        half = widened_half_width(0.05, window_size=30, calibration_size=200, spread=0.3, level=0.9)
        value = result.estimated_accuracy
        assert (result.lower, result.upper) == (max(0.0, value - half), min(1.0, value + half))
        assert (
            "270 of the window's 300 images are exact duplicates (30 distinct): batch statistics "
            "and flips see fewer images than the window holds (a stuck camera or a replayed "
            "batch?); the interval is sized for 30 images"
        ) in result.warnings

    def test_refuses_a_calibration_for_another_class_count(self, model: torch.nn.Module) -> None:
        spec = SPEC.model_copy(update={"num_classes": 5})
        with pytest.raises(ValueError, match="calibration is for 10 classes, the model has 5"):
            estimate(model, window(), spec=spec, calibration=make_calibration(model))


class TestStarvedAdaptation:
    """A trajectory on which fewer samples passed the filters than one batch holds."""

    @pytest.mark.parametrize(
        ("used_fraction", "steps", "starved"),
        [(0.0, 50, True), (0.019, 50, True), (0.02, 50, False), (0.5, 8, False), (0.0, 0, False)],
    )
    def test_is_fewer_selected_samples_than_one_batch_over_the_trajectory(
        self, used_fraction: float, steps: int, starved: bool
    ) -> None:
        trajectory = Trajectory(
            probe_size=100,
            num_images=100,
            steps=steps,
            source=Predictions(torch.full((100, 10), 0.1)),
            adapted={},
            signals={},
            used_fraction=used_fraction,
        )
        assert adaptation_starved(trajectory) is starved

    def test_the_builtin_imagenet_estimate_falls_back_to_average_confidence(self) -> None:
        """A 1000-class head whose softmax is nearly flat: no sample gets under the entropy
        threshold, nothing adapts, and the paper's map would answer its no-flip value (about
        71 %). The estimate is average confidence instead, with AC's own error as interval."""
        torch.manual_seed(0)
        model = tiny(num_classes=1000, in_channels=3).eval()
        spec = SPEC.model_copy(update={"num_classes": 1000, "imagenet": True})
        config = EstimateConfig(steps=50, checkpoints=(0, 50), probe_size=100)

        result = estimate(model, blob_images(128, seed=2), spec=spec, config=config)

        ac = result.baselines["ac"]
        assert ac is not None and ac < 0.01
        assert (result.used_fraction, result.weighted_flips) == (0.0, 0.0)
        assert result.estimated_accuracy == ac
        assert (result.signal, result.signal_value) == ("ac", ac)
        assert result.estimator == "fallback: min(ac, fit:wf@50)"
        assert result.estimator_inputs == {"wf@50": 0.0, "ac": ac}
        assert result.calibration == "builtin-imagenet"
        assert result.calibration_mae == PAPER_AC_MAE
        assert result.lower == 0.0
        assert result.upper == pytest.approx(ac + math.log(10) * PAPER_AC_MAE)
        assert any("less than one batch in all" in w for w in result.warnings)

    def test_a_fitted_calibration_keeps_its_estimator_and_only_warns(self) -> None:
        """A fitted calibration measured what its own estimator does on such windows."""
        torch.manual_seed(0)
        model = tiny(num_classes=1000, in_channels=3).eval()
        spec = SPEC.model_copy(update={"num_classes": 1000})
        fit = Fit("wf", 50, QuadraticMap(0.0, -1e-3, 0.6, 0.0, 1000.0), mae=0.05)
        calibration = Calibration(
            model_name="tiny",
            num_classes=1000,
            probe_size=100,
            steps=50,
            source="fitted",
            fits=(fit,),
            selected=fit.key,
        )
        config = EstimateConfig(steps=50, checkpoints=(0, 50), probe_size=100)

        result = estimate(
            model, blob_images(128, seed=2), spec=spec, calibration=calibration, config=config
        )

        assert result.used_fraction == 0.0
        assert (result.estimator, result.signal) == ("fit:wf@50", "wf@50")
        assert result.estimated_accuracy == pytest.approx(0.6)
        assert any("less than one batch in all" in w for w in result.warnings)


if __name__ == "__main__":  # prints the golden values (CPU, 1 thread)
    import pprint

    torch.set_num_threads(1)
    tiny = confident_tiny()
    out = estimate(
        tiny, window(), spec=SPEC, calibration=make_calibration(tiny), config=PLAIN, device=CPU
    )
    pprint.pprint(numbers(out), width=100)
