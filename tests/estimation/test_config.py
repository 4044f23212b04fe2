"""EstimateConfig and the class-count dependent defaults (spec §0, §10)."""

import math

import pytest

from flipwatch.workers.estimation.config import (
    DEFAULT_CHECKPOINTS,
    EstimateConfig,
    default_epsilon,
    entropy_threshold,
)


def test_entropy_threshold_matches_the_reference_constant():
    assert entropy_threshold(1000) == 2.7631021115928547
    assert entropy_threshold(10) == pytest.approx(0.4 * math.log(10), abs=1e-15)


def test_default_epsilon_keeps_the_imagenet_value_and_opens_up_for_ten_classes():
    assert default_epsilon(1000) == 0.05
    assert default_epsilon(10) == pytest.approx(1.25 / math.sqrt(10), abs=1e-15)
    assert default_epsilon(625) == 0.05  # 1.25/25: where the two meet


class TestSnapshotSteps:
    def test_reference_checkpoints_up_to_the_run_length(self):
        assert EstimateConfig().snapshot_steps() == (0, 50, 100, 250)
        assert EstimateConfig(steps=1000).snapshot_steps() == DEFAULT_CHECKPOINTS

    def test_always_include_the_start_and_the_last_step(self):
        assert EstimateConfig(steps=70, checkpoints=(50, 500)).snapshot_steps() == (0, 50, 70)
        assert EstimateConfig(steps=3, checkpoints=(3, 3, -1)).snapshot_steps() == (0, 3)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("steps", 0, "steps must be at least 1, got 0"),
        ("probe_size", 0, "probe_size must be at least 1, got 0"),
        ("batch_size", 1, "batch_size must be at least 2, got 1"),
    ],
)
def test_refuses_settings_that_cannot_run(field, value, message):
    with pytest.raises(ValueError, match=message):
        EstimateConfig(**{field: value})


class TestRecording:
    def test_adds_a_calibrations_checkpoint_the_defaults_skip(self):
        config = EstimateConfig(steps=60).recording(20)
        assert config.snapshot_steps() == (0, 20, 50, 60)

    def test_keeps_the_config_when_the_checkpoint_is_recorded_anyway(self):
        config = EstimateConfig(steps=60)
        assert config.recording(50) is config

    def test_refuses_a_checkpoint_past_the_trajectory(self):
        with pytest.raises(ValueError, match="checkpoint 100 is outside a 60-step trajectory"):
            EstimateConfig(steps=60).recording(100)
