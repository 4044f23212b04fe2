"""Split-conformal quantiles and the small-window widening, on hand-made numbers."""

import math

import pytest

from flipwatch.workers.estimation.conformal import conformal_quantile, widened_half_width


class TestConformalQuantile:
    def test_nine_residuals_at_90_percent_take_the_ninth_smallest(self):
        # ceil((9 + 1) * 0.9) = 9: the largest of the nine.
        residuals = [0.05, 0.01, 0.09, 0.03, 0.02, 0.08, 0.04, 0.07, 0.06]
        assert conformal_quantile(residuals, 0.9) == 0.09

    def test_nineteen_residuals_at_90_percent_take_the_eighteenth_smallest(self):
        # ceil(20 * 0.9) = 18.
        residuals = [i / 100 for i in range(1, 20)]
        assert conformal_quantile(residuals, 0.9) == pytest.approx(0.18)

    def test_too_few_residuals_give_an_unbounded_interval(self):
        # ceil(5 * 0.9) = 5 > 4 residuals.
        assert conformal_quantile([0.1, 0.2, 0.3, 0.4], 0.9) == math.inf

    def test_refuses_a_level_outside_zero_one(self):
        with pytest.raises(ValueError, match="level"):
            conformal_quantile([0.1, 0.2], 1.0)


class TestWidenedHalfWidth:
    def test_windows_at_the_calibration_size_keep_the_conformal_width(self):
        half = widened_half_width(
            0.04, window_size=1000, calibration_size=1000, spread=0.5, level=0.9
        )
        assert half == 0.04

    def test_a_small_window_adds_the_sampling_spread_at_the_normal_quantile(self):
        half = widened_half_width(
            0.04, window_size=100, calibration_size=1000, spread=0.5, level=0.9
        )
        z = 1.6448536269514722
        assert half == pytest.approx(math.sqrt(0.04**2 + z**2 * 0.25 * (1 / 100 - 1 / 1000)))
