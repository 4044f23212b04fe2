"""Spec §5, §6 and §11: percentiles, flip counts and the map f."""

import math

import numpy as np
import pytest
import torch

from flipwatch.workers.estimation.flips import (
    PAPER_IMAGENET_MAP,
    QuadraticMap,
    avg_rank_pct,
    fit_monotone_map,
    fit_monotone_map_np,
    fit_monotone_quadratic,
    per_reference_probe,
    unweighted_flips,
    weighted_flips,
)


class TestAvgRankPct:
    def test_ties_share_the_mean_of_their_ranks(self):
        pct = avg_rank_pct(torch.tensor([0.5, 0.9, 0.9, 0.1]))
        assert pct.tolist() == [0.5, 0.875, 0.875, 0.25]

    def test_percentiles_sum_to_half_of_n_plus_one(self):
        conf = torch.rand(1000, generator=torch.Generator().manual_seed(0))
        conf[:300] = 1.0  # a large tie group, as saturated softmax gives
        assert float(avg_rank_pct(conf).sum()) == pytest.approx(500.5, abs=1e-9)

    def test_all_equal_confidences_get_the_middle_percentile(self):
        assert avg_rank_pct(torch.ones(4)).tolist() == [0.625] * 4


class TestWeightedFlips:
    def test_all_flipped_gives_n_plus_one_over_two(self):
        before = torch.arange(1000) % 10
        after = (before + 1) % 10
        conf = torch.rand(1000, generator=torch.Generator().manual_seed(1))
        assert weighted_flips(before, after, conf) == pytest.approx(500.5)

    def test_none_flipped_gives_zero(self):
        labels = torch.tensor([1, 2, 3])
        assert weighted_flips(labels, labels, torch.tensor([0.2, 0.5, 0.9])) == 0.0

    def test_hand_made_flips_weigh_by_confidence_rank(self):
        before = torch.tensor([0, 1, 2, 3])
        after = torch.tensor([0, 5, 2, 7])  # images 1 and 3 flip
        conf = torch.tensor([0.5, 0.9, 0.9, 0.1])
        assert weighted_flips(before, after, conf) == pytest.approx(0.875 + 0.25)
        assert unweighted_flips(before, after) == 2.0

    def test_mismatched_lengths_are_refused(self):
        with pytest.raises(ValueError, match="same length"):
            weighted_flips(torch.tensor([1, 2]), torch.tensor([1]), torch.tensor([0.1, 0.2]))

    def test_small_probe_scales_to_the_reference_size(self):
        assert per_reference_probe(20.0, 100) == 200.0


class TestPaperMap:
    def test_values_match_spec_section_six(self):
        assert PAPER_IMAGENET_MAP(0.0) == pytest.approx(0.75661858)
        assert PAPER_IMAGENET_MAP(100.0) == pytest.approx(0.4707, abs=1e-4)
        assert PAPER_IMAGENET_MAP(250.0) == pytest.approx(0.1752, abs=1e-4)

    def test_flat_beyond_the_vertex_so_more_flips_never_raise_the_estimate(self):
        assert PAPER_IMAGENET_MAP.x_max == pytest.approx(452.03, abs=0.01)
        at_vertex = PAPER_IMAGENET_MAP(PAPER_IMAGENET_MAP.x_max)
        assert at_vertex == pytest.approx(0.0301, abs=1e-4)
        assert PAPER_IMAGENET_MAP(500.5) == pytest.approx(at_vertex)


class TestQuadraticMap:
    def test_output_is_clipped_to_unit_interval(self):
        f = QuadraticMap(a=0.0, b=-0.01, c=1.5, x_min=0.0, x_max=1000.0)
        assert f(0.0) == 1.0
        assert f(200.0) == 0.0
        assert f(60.0) == pytest.approx(0.9)

    def test_continues_linearly_outside_the_fitted_range(self):
        f = QuadraticMap(a=1e-4, b=-0.02, c=0.9, x_min=0.0, x_max=50.0)
        slope = f.slope(50.0)
        assert f(60.0) == pytest.approx(f.raw(50.0) + 10 * slope)

    def test_round_trips_through_dict(self):
        for f in (
            QuadraticMap(1e-5, -2e-3, 0.8, 1.0, math.inf),
            QuadraticMap(-1e-4, -0.02, 0.99, -3.0, 20.0, scale="sqrt"),
        ):
            assert QuadraticMap.from_dict(f.to_dict()) == f

    def test_a_stored_map_without_a_scale_is_the_papers_linear_one(self):
        f = QuadraticMap.from_dict({"a": 0.0, "b": -0.01, "c": 0.9, "x_min": 0.0, "x_max": 50.0})
        assert f.scale == "linear"
        assert f(40.0) == pytest.approx(0.5)

    def test_sqrt_scale_maps_the_signed_square_root_of_the_signal(self):
        f = QuadraticMap(a=0.0, b=-0.01, c=0.95, x_min=-10.0, x_max=30.0, scale="sqrt")
        assert f(400.0) == pytest.approx(0.95 - 0.01 * 20.0)
        assert f(-16.0) == pytest.approx(0.95 + 0.01 * 4.0)  # an adjusted signal below zero
        assert f.predict(np.array([0.0, 100.0, 400.0])) == pytest.approx([0.95, 0.85, 0.75])

    def test_unknown_scale_is_refused(self):
        with pytest.raises(ValueError, match="unknown map scale 'log'"):
            QuadraticMap(0.0, -0.01, 0.9, scale="log")


class TestFitMonotoneQuadratic:
    def test_recovers_an_exact_monotone_quadratic(self):
        x = torch.tensor([0.0, 10.0, 20.0, 40.0, 80.0], dtype=torch.float64)
        y = 1e-5 * x**2 - 0.005 * x + 0.95
        f = fit_monotone_quadratic(x, y)
        assert (f.a, f.b, f.c) == pytest.approx((1e-5, -0.005, 0.95), abs=1e-9)

    def test_turning_points_inside_the_range_are_not_allowed(self):
        x = torch.linspace(0, 10, 11)
        y = 0.9 - 0.02 * (x - 5) ** 2  # a hump: rises then falls
        f = fit_monotone_quadratic(x, y)
        assert f.is_monotone()
        values = [f(float(v)) for v in x]
        diffs = [b - a for a, b in zip(values, values[1:], strict=False)]
        assert all(d <= 1e-12 for d in diffs) or all(d >= -1e-12 for d in diffs)

    def test_needs_two_points(self):
        with pytest.raises(ValueError, match="at least two"):
            fit_monotone_quadratic(torch.tensor([1.0]), torch.tensor([0.5]))


class TestFitMonotoneMap:
    def test_a_saturating_signal_is_fitted_in_the_sqrt_scale_exactly(self):
        x = np.array([0.0, 4.0, 25.0, 100.0, 400.0, 900.0])
        y = 0.98 - 0.02 * np.sqrt(x)  # steep at first, then slow: no quadratic in x fits it
        f = fit_monotone_map_np(x, y)
        assert f.scale == "sqrt"
        assert (f.a, f.b, f.c) == pytest.approx((0.0, -0.02, 0.98), abs=1e-9)
        assert f(625.0) == pytest.approx(0.48)

    def test_a_quadratic_signal_keeps_the_papers_linear_scale(self):
        x = np.array([0.0, 10.0, 20.0, 40.0, 80.0])
        f = fit_monotone_map_np(x, 1e-5 * x**2 - 0.005 * x + 0.95)
        assert f.scale == "linear"
        assert (f.a, f.b, f.c) == pytest.approx((1e-5, -0.005, 0.95), abs=1e-9)

    def test_tensor_and_numpy_fits_agree(self):
        x = torch.tensor([0.0, 4.0, 25.0, 100.0, 400.0], dtype=torch.float64)
        y = 0.98 - 0.02 * x.sqrt()
        assert fit_monotone_map(x, y) == fit_monotone_map_np(x.numpy(), y.numpy())
