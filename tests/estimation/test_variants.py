"""The shifted variants a calibration measures: which ones, how each is made, what is recorded."""

import json

import torch

from flipwatch.workers.estimation.corruptions import corrupt
from flipwatch.workers.estimation.variants import (
    CalibrationPoint,
    calibration_variants,
    make_variant,
)
from tests.tiny_models import blob_images


def test_variants_are_clean_plus_each_family_by_severity_plus_a_mix():
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


class TestMakeVariant:
    def test_clean_is_the_reference_itself(self):
        images = blob_images(8)
        assert make_variant(images, "clean", 0, False, seed=3) is images

    def test_is_the_seeded_corruption_of_every_image(self):
        images = blob_images(8)
        shifted = make_variant(images, "fog", 3, False, seed=3)
        expected = corrupt(images, "fog", 3, generator=torch.Generator().manual_seed(3))
        assert torch.equal(shifted, expected)
        assert not torch.equal(shifted, make_variant(images, "fog", 3, False, seed=4))

    def test_a_mix_corrupts_exactly_half_of_the_images(self):
        images = blob_images(10)
        full = make_variant(images, "gaussian_noise", 5, False, seed=3)
        mixed = make_variant(images, "gaussian_noise", 5, True, seed=3)
        changed = [i for i in range(10) if not torch.equal(mixed[i], images[i])]
        assert len(changed) == 5
        assert all(torch.equal(mixed[i], full[i]) for i in changed)
        assert torch.equal(mixed, make_variant(images, "gaussian_noise", 5, True, seed=3))


def test_a_point_round_trips_through_json():
    point = CalibrationPoint(
        family="fog",
        severity=3,
        mixed=True,
        accuracy=0.625,
        signals={"wf": {4: 1.5, 8: 2.25}, "uf_source": {0: 10.0}},
        baselines={"ac": 0.75, "cot": 0.5},
    )
    assert CalibrationPoint.from_dict(json.loads(json.dumps(point.to_dict()))) == point
