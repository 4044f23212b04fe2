"""Calibration fitting, selection and its JSON, on hand-made points (no trajectories)."""

import json

import pytest
import torch

from flipwatch.workers.estimation.calibration import fit_points, leave_one_group_out_mae
from flipwatch.workers.estimation.calibration_result import (
    Calibration,
    CalibrationMissing,
    builtin_calibration,
)
from flipwatch.workers.estimation.spec import ModelSpec
from flipwatch.workers.estimation.variants import CalibrationPoint, calibration_variants


def _point(family: str, accuracy: float, good: float, noise: float) -> CalibrationPoint:
    """`good` tracks accuracy exactly (acc = 1 − good/1000); `noise` does not."""
    return CalibrationPoint(
        family=family,
        severity=1,
        mixed=False,
        accuracy=accuracy,
        signals={"good": {0: good, 50: good}, "noise": {50: noise}},
        baselines={"ac": min(1.0, accuracy + 0.2)},
    )


POINTS = [
    _point(f"family{i % 4}", 1 - x / 1000, x, n)
    for i, (x, n) in enumerate([(0, 9), (50, 1), (100, 7), (150, 3), (200, 8), (300, 2), (400, 5)])
]


def test_leave_one_group_out_predicts_each_group_from_the_others_only():
    x = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    y = torch.tensor([1.0, 0.9, 0.8, 0.7], dtype=torch.float64)
    assert leave_one_group_out_mae(x, y, ["a", "b", "c", "d"]) == pytest.approx(0.0, abs=1e-12)
    jumpy = torch.tensor([1.0, 0.9, 0.8, 0.2], dtype=torch.float64)
    assert leave_one_group_out_mae(x, jumpy, ["a", "b", "c", "d"]) > 0.1


def test_a_signal_that_tracks_accuracy_is_selected_with_near_zero_held_out_error():
    fits = {f.key: f for f in fit_points(POINTS)}
    assert set(fits) == {"good@0", "good@50", "noise@50"}
    assert fits["good@0"].mae == pytest.approx(0.0, abs=1e-9)
    assert fits["noise@50"].mae > 0.05
    best = min(fits.values(), key=lambda f: (f.mae, f.step))
    assert best.key == "good@0"  # ties go to the shorter trajectory


def _calibration() -> Calibration:
    fits = tuple(fit_points(POINTS))
    return Calibration(
        model_name="m",
        num_classes=10,
        probe_size=1000,
        steps=50,
        source="fitted",
        fits=fits,
        selected="noise@50",
        points=tuple(POINTS),
        class_means=torch.arange(6, dtype=torch.float32).view(2, 3),
    )


def test_round_trips_through_json_with_points_and_tensors():
    calibration = _calibration()
    again = Calibration.from_dict(json.loads(json.dumps(calibration.to_dict())))
    assert again.fits == calibration.fits
    assert again.points == calibration.points
    assert torch.equal(again.class_means, calibration.class_means)


def test_runs_too_short_for_the_selected_checkpoint_use_the_best_reachable_fit():
    calibration = _calibration()
    assert calibration.fit_for(50).key == "noise@50"
    assert calibration.fit_for(10).key == "good@0"


def test_unknown_version_is_refused_with_the_fix():
    data = _calibration().to_dict() | {"version": 99}
    with pytest.raises(ValueError, match="recalibrate"):
        Calibration.from_dict(data)


class TestBuiltinCalibration:
    def spec(self, imagenet: bool) -> ModelSpec:
        return ModelSpec(
            name="r50", format="torchvision", arch="resnet50", num_classes=1000, imagenet=imagenet
        )

    def test_only_for_imagenet_specs(self):
        assert builtin_calibration(self.spec(False)) is None

    def test_paper_map_at_1000_steps_and_app_d_refits_below(self):
        calibration = builtin_calibration(self.spec(True))
        assert calibration.fit_for(1000).key == "wf@1000"
        assert calibration.fit_for(250).key == "wf@250"
        assert calibration.fit_for(250).map(0.0) == pytest.approx(0.7383)
        with pytest.raises(CalibrationMissing, match="no fit at or below 10 steps"):
            calibration.fit_for(10)


def test_variants_are_clean_plus_each_family_by_severity_plus_a_mix_on_request():
    variants = calibration_variants(["contrast", "fog"], (1, 3), mixes=True)
    assert variants == [
        ("clean", 0, False),
        ("contrast", 1, False),
        ("contrast", 3, False),
        ("contrast", 3, True),
        ("fog", 1, False),
        ("fog", 3, False),
        ("fog", 3, True),
    ]
    assert len(calibration_variants(severities=(1, 2, 3, 4, 5), mixes=True)) == 1 + 17 * 6


def test_a_suite_too_small_to_score_is_refused_naming_the_fix():
    with pytest.raises(ValueError, match="2 variants cannot be scored: ask for two severities"):
        calibration_variants(["contrast"], (3,))
    assert len(calibration_variants(["contrast"], (3,), mixes=True)) == 3


def test_default_suite_is_every_family_at_severities_two_and_four_without_mixes():
    variants = calibration_variants()
    assert len(variants) == 1 + 17 * 2
    assert {severity for _, severity, _ in variants[1:]} == {2, 4}
    assert not any(mixed for _, _, mixed in variants)


def test_parallel_processes_measure_exactly_what_a_sequential_run_does(
    tiny_model, tiny_spec, tiny_images
):
    from flipwatch.workers.estimation import EstimateConfig, calibrate

    labels = torch.arange(len(tiny_images)) % 10
    config = EstimateConfig(steps=4, checkpoints=(0, 4), probe_size=200, epsilon=1.0)
    kwargs = dict(
        spec=tiny_spec, config=config, families=["contrast", "fog"], severities=(2,), mixes=True
    )
    sequential = calibrate(tiny_model, tiny_images, labels, **kwargs)
    parallel = calibrate(tiny_model, tiny_images, labels, processes=2, **kwargs)
    assert len(parallel.points) == 1 + 2 * 2
    assert parallel.points == sequential.points
    assert parallel.selected == sequential.selected
