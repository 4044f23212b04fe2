"""Embedding diagnostics (spec §8): Fréchet distance, k-means, silhouette, centroid shift."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn
from torch.testing import assert_close

from flipwatch.workers.estimation.embeddings import (
    FeatureExtractor,
    FeatureStats,
    _reseed_empty,
    centroid_shift,
    class_distance,
    feature_stats,
    frechet_distance,
    kmeans,
    silhouette_score,
)

F64 = torch.float64


class TestFeatureStats:
    def test_mean_and_unbiased_covariance(self) -> None:
        x = torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]])
        stats = feature_stats(x)
        assert stats.mean.dtype == F64
        assert_close(stats.mean, torch.tensor([2.0, 2.0], dtype=F64))
        assert_close(stats.cov, torch.tensor([[4.0, 3.0], [3.0, 3.0]], dtype=F64))

    def test_dict_round_trip(self) -> None:
        stats = feature_stats(torch.randn(5, 3, generator=torch.Generator().manual_seed(0)))
        back = FeatureStats.from_dict(stats.to_dict())
        assert torch.equal(back.mean, stats.mean) and torch.equal(back.cov, stats.cov)

    def test_rejects_single_row(self) -> None:
        with pytest.raises(ValueError, match="N >= 2"):
            feature_stats(torch.zeros(1, 3))


class TestFrechetDistance:
    def test_diagonal_gaussians_match_closed_form(self) -> None:
        mu1, mu2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 0.5])
        s1, s2 = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([3.0, 0.5, 0.5])
        expected = float(((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum())  # 7.25 + 6.25
        got = frechet_distance(mu1, torch.diag(s1**2), mu2, torch.diag(s2**2))
        assert_close(got, expected, rtol=0, atol=1e-10)

    def test_general_covariances_match_scipy_sqrtm(self) -> None:
        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(4, 4, generator=g, dtype=F64), torch.randn(4, 4, generator=g, dtype=F64)
        cov1, cov2 = a @ a.T + 0.1 * torch.eye(4, dtype=F64), b @ b.T
        mu1, mu2 = torch.randn(4, generator=g, dtype=F64), torch.randn(4, generator=g, dtype=F64)
        root = scipy.linalg.sqrtm(cov1.numpy() @ cov2.numpy()).real
        expected = float(((mu1 - mu2) ** 2).sum() + cov1.trace() + cov2.trace()) - 2 * float(
            np.trace(root)
        )
        assert_close(frechet_distance(mu1, cov1, mu2, cov2), expected, rtol=1e-9, atol=1e-9)

    def test_identical_gaussians_are_at_distance_zero(self) -> None:
        stats = feature_stats(torch.randn(50, 6, generator=torch.Generator().manual_seed(1)))
        d = frechet_distance(stats.mean, stats.cov, stats.mean, stats.cov)
        assert_close(d, 0.0, rtol=0, atol=1e-9)

    def test_singular_covariances_stay_finite(self) -> None:
        x = torch.randn(3, 8, generator=torch.Generator().manual_seed(2))  # rank-2 covariance
        s = feature_stats(x)
        d = frechet_distance(s.mean, s.cov, s.mean + 1, s.cov)
        assert math.isfinite(d)
        assert_close(d, 8.0, rtol=0, atol=1e-6)

    def test_rejects_shape_mismatch(self) -> None:
        with pytest.raises(ValueError, match="covariances"):
            frechet_distance(torch.zeros(2), torch.eye(3), torch.zeros(2), torch.eye(2))


class TestKmeans:
    @staticmethod
    def _blobs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
        truth = torch.arange(3).repeat_interleave(20)
        x = centers[truth] + 0.3 * torch.randn(60, 2, generator=g)
        return x, truth, centers

    def test_recovers_well_separated_clusters(self) -> None:
        x, truth, centers = self._blobs()
        centroids, assign = kmeans(x, 3, generator=torch.Generator().manual_seed(0))
        assert centroids.shape == (3, 2) and assign.dtype == torch.int64
        # the same partition up to relabelling: each true cluster maps to one k-means label
        mapping = {int(t): set(assign[truth == t].tolist()) for t in range(3)}
        assert all(len(v) == 1 for v in mapping.values())
        assert len(set().union(*mapping.values())) == 3
        for t in range(3):
            label = next(iter(mapping[t]))
            assert_close(centroids[label], x[truth == t].mean(0), rtol=0, atol=1e-5)
            assert float((centroids[label] - centers[t]).norm()) < 0.3

    def test_is_deterministic_for_a_seed(self) -> None:
        x, _, _ = self._blobs()
        a = kmeans(x, 4, generator=torch.Generator().manual_seed(7))
        b = kmeans(x, 4, generator=torch.Generator().manual_seed(7))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])

    def test_runs_on_device_with_a_cpu_generator(self, device: torch.device) -> None:
        x, truth, _ = self._blobs()
        centroids, assign = kmeans(x.to(device), 3, generator=torch.Generator().manual_seed(0))
        assert centroids.device == x.to(device).device and assign.device == centroids.device
        assert torch.isfinite(centroids).all()
        groups = {frozenset(assign[(truth == t).to(device)].tolist()) for t in range(3)}
        assert len(groups) == 3 and all(len(g) == 1 for g in groups)
        s = silhouette_score(x.to(device), assign)
        assert math.isfinite(s) and s > 0.9

    def test_handles_duplicate_points(self) -> None:
        x = torch.zeros(5, 2)
        centroids, assign = kmeans(x, 2, generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(centroids).all() and assign.shape == (5,)

    def test_empty_cluster_moves_to_the_farthest_point(self) -> None:
        x = torch.tensor([[0.0], [1.0], [10.0]], dtype=F64)
        centers = torch.tensor([[0.5], [100.0]], dtype=F64)
        assign = torch.tensor([0, 0, 0])
        moved = _reseed_empty(x, centers, assign, torch.tensor([3.0, 0.0], dtype=F64))
        assert moved.tolist() == [[0.5], [10.0]]

    def test_rejects_k_above_n(self) -> None:
        with pytest.raises(ValueError, match="k must"):
            kmeans(torch.zeros(2, 2), 3, generator=torch.Generator())


class TestSilhouetteScore:
    def test_four_points_hand_computed(self) -> None:
        x = torch.tensor([[0.0], [1.0], [4.0], [5.0]])
        # a = 1 for all; b = 4.5, 3.5, 3.5, 4.5 -> s = 7/9, 5/7, 5/7, 7/9
        expected = (7 / 9 + 5 / 7) / 2
        got = silhouette_score(x, torch.tensor([0, 0, 1, 1]))
        assert_close(got, expected, rtol=0, atol=1e-12)

    def test_singleton_cluster_scores_zero(self) -> None:
        x = torch.tensor([[0.0], [1.0], [10.0]])
        # points 0, 1: a = 1, b = 10, 9 -> 0.9, 8/9; the singleton contributes 0
        got = silhouette_score(x, torch.tensor([5, 5, 2]))
        assert_close(got, (0.9 + 8 / 9) / 3, rtol=0, atol=1e-12)

    def test_chunking_does_not_change_the_result(self) -> None:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(30, 4, generator=g)
        labels = torch.randint(3, (30,), generator=g)
        assert_close(
            silhouette_score(x, labels, chunk_size=7),
            silhouette_score(x, labels),
            rtol=0,
            atol=1e-12,
        )

    def test_matches_sklearn_when_available(self) -> None:
        metrics = pytest.importorskip("sklearn.metrics")
        g = torch.Generator().manual_seed(1)
        x = torch.randn(40, 5, generator=g, dtype=F64)
        labels = torch.randint(4, (40,), generator=g)
        expected = float(metrics.silhouette_score(x.numpy(), labels.numpy()))
        assert_close(silhouette_score(x, labels), expected, rtol=0, atol=1e-10)

    def test_rejects_a_single_cluster(self) -> None:
        with pytest.raises(ValueError, match="clusters"):
            silhouette_score(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))


class TestCentroidShift:
    def test_recovers_known_permutation(self) -> None:
        means = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]], dtype=F64)
        perm = torch.tensor([2, 0, 3, 1])
        offsets = torch.tensor([[0.1, 0.0], [0.0, 0.2], [-0.3, 0.0], [0.0, -0.4]], dtype=F64)
        centroids = means[perm] + offsets
        assert_close(centroid_shift(centroids, means), 0.25, rtol=0, atol=1e-12)

    def test_matches_min_of_k_and_m(self) -> None:
        means = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
        centroids = torch.tensor([[9.0, 0.0], [0.0, 2.0], [50.0, 50.0]])
        assert_close(centroid_shift(centroids, means), 1.5, rtol=0, atol=1e-12)
        assert_close(centroid_shift(means, centroids), 1.5, rtol=0, atol=1e-12)

    def test_rejects_dimension_mismatch(self) -> None:
        with pytest.raises(ValueError, match="dimension"):
            centroid_shift(torch.zeros(2, 3), torch.zeros(2, 2))


class TestClassDistance:
    MEANS = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]], dtype=F64)
    REFERENCE = FeatureStats(mean=torch.zeros(2, dtype=F64), cov=torch.eye(2, dtype=F64) * 2.0)
    OFFSETS = torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=F64)  # squared distance 1 each

    def _window(self, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        predicted = torch.tensor(classes)
        return self.MEANS[predicted] + self.OFFSETS[torch.arange(len(classes)) % 2], predicted

    def test_mean_squared_distance_to_the_predicted_class_over_the_total_variance(self) -> None:
        features, predicted = self._window([0, 1, 2, 1])  # squared distances 1, variance 2 + 2
        assert class_distance(features, predicted, self.MEANS, self.REFERENCE) == 1.0 / 4.0

    def test_a_window_of_one_class_scores_like_a_balanced_one(self) -> None:
        balanced = class_distance(*self._window([0, 1, 2, 0, 1, 2]), self.MEANS, self.REFERENCE)
        one_class = class_distance(*self._window([1, 1, 1, 1]), self.MEANS, self.REFERENCE)
        assert one_class == balanced == 0.25

    def test_moved_features_score_higher(self) -> None:
        features, predicted = self._window([0, 1, 2, 1])
        moved = class_distance(features + 1.0, predicted, self.MEANS, self.REFERENCE)
        # shifted by (1, 1): squared distances 5, 1, 5, 1, mean 3, over the total variance 4
        assert moved == pytest.approx(3.0 / 4.0)

    def test_rejects_mismatched_shapes(self) -> None:
        with pytest.raises(ValueError, match="shape mismatch"):
            class_distance(torch.zeros(3, 2), torch.zeros(2), self.MEANS, self.REFERENCE)


def _small_classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
        nn.ReLU(),
        nn.Linear(5, 3),
    )


class TestFeatureExtractor:
    def test_captures_input_of_last_linear_over_several_forwards(self) -> None:
        model = _small_classifier().eval()
        x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        with torch.no_grad(), FeatureExtractor(model) as fx:
            model(x[:4])
            model(x[4:])
        expected = model[:6](x)
        assert fx.supported and fx.features is not None
        assert_close(fx.features, expected.detach())

    def test_hook_is_removed_after_the_block(self) -> None:
        model = _small_classifier()
        with FeatureExtractor(model) as fx:
            pass
        model(torch.zeros(1, 1, 8, 8))
        assert fx.features is None

    def test_named_module_selects_the_layer(self) -> None:
        model = _small_classifier()
        with torch.no_grad(), FeatureExtractor(model, module_name="4") as fx:
            model(torch.zeros(2, 1, 8, 8))
        assert fx.features is not None and fx.features.shape == (2, 4)

    @pytest.mark.filterwarnings("ignore::FutureWarning")
    def test_torchscript_model_is_unsupported_and_gives_none(self) -> None:
        model = torch.jit.trace(_small_classifier().eval(), torch.zeros(1, 1, 8, 8))
        with torch.no_grad(), FeatureExtractor(model) as fx:
            model(torch.zeros(2, 1, 8, 8))
        assert not fx.supported and fx.features is None

    def test_unknown_module_name_raises(self) -> None:
        with pytest.raises(ValueError, match="no submodule"):
            FeatureExtractor(_small_classifier(), module_name="head")
