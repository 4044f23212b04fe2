"""Skewed class-mix subsets and resampling to given proportions."""

import pytest
import torch

from flipwatch.workers.estimation.class_mix import parse_mix, resample_to, subset_indices
from flipwatch.workers.estimation.window_features import mix_guard

LABELS = torch.arange(1000) % 10  # 100 images per class


def test_resampling_gives_each_class_its_share_of_the_size():
    q = torch.tensor([0.5, 0.3, 0.2] + [0.0] * 7, dtype=torch.float64)
    index = resample_to(LABELS, q, 200, torch.Generator().manual_seed(0))
    counts = torch.bincount(LABELS[index], minlength=10)
    assert counts.tolist() == [100, 60, 40, 0, 0, 0, 0, 0, 0, 0]
    assert len(set(index.tolist())) == 200  # without replacement while a class has enough


def test_three_class_subset_keeps_every_image_of_three_classes():
    index = subset_indices(LABELS, "three", num_classes=10, seed=3)
    counts = torch.bincount(LABELS[index], minlength=10)
    assert sorted(counts.tolist()) == [0] * 7 + [100] * 3


def test_dominant_subset_gives_one_class_half_of_the_window():
    index = subset_indices(LABELS, "dominant:180", num_classes=10, seed=1)
    counts = torch.bincount(LABELS[index], minlength=10)
    assert counts.max().item() == 90 and counts.sum().item() == 180


@pytest.mark.parametrize("kind", ["balanced", "three", "dominant", "longtail"])
def test_mixes_draw_only_classes_the_labeled_set_holds(kind):
    # a 1000-class model's reference set rarely holds every class: here 4 of 100
    labels = torch.tensor([7, 19, 42, 88]).repeat(50)
    index = subset_indices(labels, f"{kind}:120", num_classes=100, seed=3)
    held = set(labels[index].tolist())
    assert len(index) == 120 and held <= {7, 19, 42, 88}
    assert len(held) == {"three": 3}.get(kind, 4)


def test_one_class_in_the_labeled_set_makes_every_mix_that_class():
    labels = torch.full((150,), 5)
    for kind in ("three", "dominant", "longtail"):
        assert set(labels[subset_indices(labels, kind, num_classes=10, seed=0)].tolist()) == {5}


def test_unknown_mix_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="balanced, three, dominant, longtail"):
        parse_mix("bimodal")


@pytest.mark.parametrize(
    ("window", "reference", "credited"),
    [
        (0.10, 0.20, 1.0),  # closer to the class means than the reference itself: a mix change
        (0.20, 0.20, 1.0),
        (0.30, 0.20, 0.5),  # halfway to twice the reference's distance
        (0.40, 0.20, 0.0),  # the images moved: no class-mix credit
        (3.00, 0.20, 0.0),
    ],
)
def test_mix_guard_credits_the_class_mix_delta_only_while_the_images_stay_put(
    window, reference, credited
):
    assert mix_guard(window, reference) == pytest.approx(credited)


def test_mix_guard_credits_the_whole_delta_when_a_distance_is_unknown():
    assert mix_guard(None, 0.2) == 1.0
    assert mix_guard(0.3, None) == 1.0
    assert mix_guard(0.3, 0.0) == 1.0
