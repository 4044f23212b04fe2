"""The stored calibration: its JSON round trip, the fit an estimate uses, the built-in ImageNet
maps."""

import json

import pytest
import torch

from flipwatch.workers.estimation.calibration import fit_points
from flipwatch.workers.estimation.calibration_result import (
    Calibration,
    CalibrationMissing,
    ReferenceData,
    builtin_calibration,
)
from flipwatch.workers.estimation.spec import ModelSpec
from tests.estimation.test_calibration import POINTS


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


def test_reference_class_distance_round_trips_and_reaches_the_window_reference():
    data = ReferenceData(prior=torch.full((2,), 0.5, dtype=torch.float64), class_distance=0.25)
    again = ReferenceData.from_dict(json.loads(json.dumps(data.to_dict())), None, None)
    assert again.class_distance == 0.25
    assert again.window_reference().class_distance == 0.25


def test_a_reference_stored_before_the_mix_guard_has_no_class_distance():
    stored = ReferenceData(prior=torch.full((2,), 0.5, dtype=torch.float64)).to_dict()
    del stored["class_distance"]
    assert ReferenceData.from_dict(stored, None, None).class_distance is None


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
