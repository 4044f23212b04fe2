"""EstimateConfig: which checkpoints a trajectory records."""

import pytest

from flipwatch.workers.estimation.config import EstimateConfig


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
