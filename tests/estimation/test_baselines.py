"""Baselines (spec §9) on tiny hand-computed inputs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.testing import assert_close

from flipwatch.workers.estimation import baselines
from flipwatch.workers.estimation.baselines import (
    BaselineReference,
    atc,
    atc_threshold,
    average_confidence,
    baseline_estimates,
    confidence_optimal_transport,
    difference_of_confidences,
    label_counts,
    max_confidence_score,
    negative_entropy_score,
)


def _official_find_atc_threshold(scores: list[float], correct: list[bool]) -> float:
    """The ATC repo's loop, verbatim in logic (stable sort), as the oracle."""
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    fp, fn = sum(not c for c in correct), 0
    best, thres = abs(fp - fn), 0.0
    for i in order:
        if correct[i]:
            fn += 1
        else:
            fp -= 1
        if abs(fp - fn) < best:
            best, thres = abs(fp - fn), scores[i]
    return thres


def _random_probs(n: int, c: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(n, c, generator=g, dtype=torch.float64), dim=1)


class TestScores:
    def test_max_confidence_is_row_max(self) -> None:
        probs = torch.tensor([[0.2, 0.8], [0.6, 0.4]])
        assert_close(max_confidence_score(probs), torch.tensor([0.8, 0.6]))

    def test_negative_entropy_uses_natural_log_and_zero_log_zero(self) -> None:
        probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
        scores = negative_entropy_score(probs)
        assert_close(scores, torch.tensor([0.0, -math.log(2)], dtype=torch.float64))
        assert torch.isfinite(scores).all()

    def test_rejects_non_matrix_probs(self) -> None:
        with pytest.raises(ValueError, match="probs"):
            max_confidence_score(torch.tensor([0.5, 0.5]))


class TestAverageConfidence:
    def test_is_mean_max_probability(self) -> None:
        probs = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.5, 0.5]])
        assert average_confidence(probs) == pytest.approx(2.0 / 3.0, abs=1e-7)


class TestDifferenceOfConfidences:
    def test_shifts_reference_accuracy_by_confidence_gap(self) -> None:
        probs = torch.tensor([[0.9, 0.1], [0.5, 0.5]])  # mean conf 0.7
        doc = difference_of_confidences(probs, reference_accuracy=0.8, reference_confidence=0.9)
        assert doc == pytest.approx(0.6, abs=1e-7)

    def test_clips_to_unit_interval(self) -> None:
        probs = torch.tensor([[0.99, 0.01]])
        high = difference_of_confidences(probs, reference_accuracy=0.95, reference_confidence=0.5)
        low = difference_of_confidences(
            torch.tensor([[0.5, 0.5]]), reference_accuracy=0.1, reference_confidence=0.9
        )
        assert (high, low) == (1.0, 0.0)


class TestAtcThreshold:
    def test_picks_the_score_balancing_errors_hand_computed(self) -> None:
        scores = torch.tensor([0.9, 0.6, 0.8, 0.3, 0.7])
        correct = torch.tensor([True, False, True, False, True])
        # ascending: 0.3(F) 0.6(F) 0.7(T) 0.8(T) 0.9(T); |fp - fn| = 1, 0, 1, 2, 3 -> t = 0.6
        assert atc_threshold(scores, correct) == pytest.approx(0.6, abs=1e-7)

    def test_matches_official_loop_on_random_inputs(self) -> None:
        g = torch.Generator().manual_seed(3)
        for n in (1, 2, 7, 50):
            scores = torch.rand(n, generator=g, dtype=torch.float64)
            correct = torch.rand(n, generator=g) < 0.6
            if not bool(correct.all()):
                expected = _official_find_atc_threshold(scores.tolist(), correct.tolist())
                assert atc_threshold(scores, correct) == expected

    def test_is_the_kth_smallest_score_for_k_incorrect(self) -> None:
        scores = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0, 0.0])
        correct = torch.tensor([False, True, True, False, True, False])  # 3 incorrect
        assert atc_threshold(scores, correct) == 2.0

    def test_all_correct_returns_lowest_score(self) -> None:
        scores = torch.tensor([-0.5, -0.1, -0.9])
        assert atc_threshold(scores, torch.ones(3, dtype=torch.bool)) == pytest.approx(-0.9)

    def test_rejects_mismatched_shapes(self) -> None:
        with pytest.raises(ValueError, match="scores"):
            atc_threshold(torch.rand(3), torch.ones(4, dtype=torch.bool))


class TestAtc:
    def test_counts_scores_at_or_above_threshold(self) -> None:
        assert atc(torch.tensor([0.5, 0.6, 0.95, 0.2]), 0.6) == 0.5

    def test_float32_scores_compare_exactly_with_their_own_threshold(self) -> None:
        scores = torch.tensor([0.1, 0.3, 0.7], dtype=torch.float32)
        assert atc(scores, float(scores[1])) == pytest.approx(2 / 3)


class TestLabelCounts:
    def test_uniform_gives_floor_plus_seeded_remainder(self) -> None:
        g = torch.Generator().manual_seed(0)
        counts = label_counts(11, 3, label_marginal=None, generator=g)
        assert int(counts.sum()) == 11
        assert bool((counts >= 3).all()) and bool((counts <= 5).all())
        again = label_counts(11, 3, label_marginal=None, generator=torch.Generator().manual_seed(0))
        assert torch.equal(counts, again)

    def test_marginal_without_remainder_is_exact(self) -> None:
        g = torch.Generator().manual_seed(0)
        marginal = torch.tensor([2 / 3, 1 / 3], dtype=torch.float64)
        assert label_counts(3, 2, label_marginal=marginal, generator=g).tolist() == [2, 1]

    def test_rejects_wrong_marginal(self) -> None:
        with pytest.raises(ValueError, match="label_marginal"):
            label_counts(3, 2, label_marginal=torch.tensor([1.0]), generator=torch.Generator())


class TestConfidenceOptimalTransport:
    def test_two_samples_hand_computed(self) -> None:
        probs = torch.tensor([[0.9, 0.1], [0.8, 0.2]], dtype=torch.float64)
        # labels {0, 1}: x1->0, x2->1 costs 0.1 + 0.8 (the other matching costs 1.1): err 0.45
        assert confidence_optimal_transport(probs) == pytest.approx(0.55, abs=1e-12)

    def test_non_uniform_marginal_hand_computed(self) -> None:
        probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]], dtype=torch.float64)
        marginal = torch.tensor([2 / 3, 1 / 3], dtype=torch.float64)
        # labels {0, 0, 1}: best x1->0, x2->0, x3->1 costs 0.1 + 0.4 + 0.3 = 0.8
        cot = confidence_optimal_transport(probs, label_marginal=marginal)
        assert cot == pytest.approx(1 - 0.8 / 3, abs=1e-12)

    def test_matches_brute_force_assignment(self) -> None:
        probs = _random_probs(6, 3, seed=1)
        labels = [0, 0, 1, 1, 2, 2]
        best = min(
            sum(1 - float(probs[j, labels[perm[j]]]) for j in range(6)) / 6
            for perm in itertools.permutations(range(6))
        )
        assert confidence_optimal_transport(probs) == pytest.approx(1 - best, abs=1e-12)

    def test_confident_correct_predictions_score_high(self) -> None:
        probs = torch.eye(4, dtype=torch.float64).repeat(3, 1) * 0.97 + 0.0075
        assert confidence_optimal_transport(probs) == pytest.approx(0.97 + 0.0075, abs=1e-12)

    def test_batched_path_averages_batches(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(baselines, "COT_BATCH", 4)
        probs = torch.tensor([[0.7, 0.3]], dtype=torch.float64).repeat(10, 1)
        # every batch of 4 has labels {0, 0, 1, 1}: cost 2·0.3 + 2·0.7 = 2 -> err 0.5
        g = torch.Generator().manual_seed(0)
        assert confidence_optimal_transport(probs, generator=g) == pytest.approx(0.5, abs=1e-12)

    def test_is_deterministic_for_a_seed(self) -> None:
        probs = _random_probs(13, 4, seed=2)
        a = confidence_optimal_transport(probs, generator=torch.Generator().manual_seed(5))
        b = confidence_optimal_transport(probs, generator=torch.Generator().manual_seed(5))
        assert a == b == pytest.approx(0.7444414141600086, abs=1e-12)  # frozen


class TestBaselineReference:
    def test_from_labeled_measures_everything(self) -> None:
        probs = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3], [0.2, 0.8]], dtype=torch.float64)
        labels = torch.tensor([0, 0, 0, 1])  # predictions 0, 1, 0, 1: three correct
        ref = BaselineReference.from_labeled(probs, labels)
        assert ref.reference_accuracy == 0.75
        assert ref.reference_confidence == pytest.approx(0.75, abs=1e-12)
        assert ref.atc_mc_threshold == pytest.approx(0.6)  # one incorrect: smallest MC score
        ne = negative_entropy_score(probs)
        assert ref.atc_ne_threshold == float(ne.min())
        assert ref.label_marginal == [0.75, 0.25]

    def test_dict_round_trip(self) -> None:
        ref = BaselineReference(0.9, 0.95, 0.5, -0.7, [0.5, 0.5])
        assert BaselineReference.from_dict(ref.to_dict()) == ref

    def test_rejects_labels_out_of_range(self) -> None:
        with pytest.raises(ValueError, match="labels"):
            BaselineReference.from_labeled(torch.tensor([[0.5, 0.5]]), torch.tensor([2]))


class TestBaselineEstimates:
    def test_returns_every_baseline_from_one_reference(self) -> None:
        source = _random_probs(40, 3, seed=4)
        labels = torch.randint(3, (40,), generator=torch.Generator().manual_seed(4))
        ref = BaselineReference.from_labeled(source, labels)
        target = _random_probs(25, 3, seed=5)
        out = baseline_estimates(target, ref, generator=torch.Generator().manual_seed(0))
        assert out["ac"] == average_confidence(target)
        # DoC: the reference accuracy minus the confidence drop from reference to target
        gap = ref.reference_confidence - out["ac"]
        assert out["doc"] == pytest.approx(ref.reference_accuracy - gap, abs=1e-12)
        # frozen for these seeded inputs: 8 of 25 target scores clear both ATC thresholds
        assert (out["atc"], out["atc_ne"]) == (0.32, 0.32)
        assert out["cot"] == pytest.approx(0.7244019983831382, abs=1e-12)

    def test_rejects_class_count_mismatch(self) -> None:
        ref = BaselineReference(0.9, 0.95, 0.5, -0.7, [0.5, 0.5])
        with pytest.raises(ValueError, match="classes"):
            baseline_estimates(_random_probs(4, 3, seed=0), ref)
