"""BBSE and MLLS recover known class proportions; the total-variation label-shift distance."""

import numpy as np
import pytest

from flipwatch.workers.estimation.label_shift import (
    bbse,
    confusion_matrix,
    mlls,
    total_variation,
)

# P(ŷ = i | y = j) of a 3-class model that confuses classes 1 and 2 now and then.
CONDITIONAL = np.array([[0.9, 0.05, 0.05], [0.05, 0.8, 0.15], [0.05, 0.15, 0.8]])
PRIOR = np.array([0.5, 0.3, 0.2])


def test_confusion_matrix_is_the_joint_distribution_of_prediction_and_label():
    joint = confusion_matrix([0, 0, 1, 2], [0, 1, 1, 2], 3)
    assert joint.tolist() == [[0.25, 0.25, 0.0], [0.0, 0.25, 0.0], [0.0, 0.0, 0.25]]


def test_bbse_recovers_the_target_proportions_from_the_predicted_marginal():
    joint = CONDITIONAL * PRIOR  # P(ŷ = i, y = j) on the reference set
    target = np.array([0.1, 0.1, 0.8])
    predicted = CONDITIONAL @ target  # what the model's predictions on the window add up to
    np.testing.assert_allclose(bbse(predicted, joint), target, atol=1e-12)


def test_mlls_recovers_the_target_proportions_of_an_exact_population():
    # Three input types x with P(x | y) = CONDITIONAL[x, y]; posteriors under the reference prior.
    posteriors = CONDITIONAL * PRIOR / (CONDITIONAL @ PRIOR)[:, None]
    target = np.array([0.7, 0.05, 0.25])
    weights = CONDITIONAL @ target  # P_target(x): the window as an exact population
    q = mlls(posteriors, PRIOR, weights=weights, tol=1e-14, iterations=20_000)
    np.testing.assert_allclose(q, target, atol=1e-6)


def test_mlls_keeps_the_prior_when_the_window_follows_it():
    posteriors = CONDITIONAL * PRIOR / (CONDITIONAL @ PRIOR)[:, None]
    q = mlls(posteriors, PRIOR, weights=CONDITIONAL @ PRIOR)
    np.testing.assert_allclose(q, PRIOR, atol=1e-9)


def test_total_variation_is_the_share_that_changed_class():
    assert total_variation([1.0, 0.0, 0.0], [0.5, 0.25, 0.25]) == pytest.approx(0.5)
    assert total_variation(PRIOR, PRIOR) == 0.0
