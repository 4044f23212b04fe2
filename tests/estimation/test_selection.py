"""Candidate selection: held-out errors, stacks, and nested selection that never peeks."""

import numpy as np
import pytest

from flipwatch.workers.estimation.selection import (
    Estimator,
    FeatureTable,
    nested_selection,
    select,
)


def _table(y_override: dict[str, float] | None = None) -> FeatureTable:
    """6 families × 6 points: accuracy = 1 − (a + b)/2 with a, b independent; `ac` knows only a;
    `noise` is unrelated."""
    rng = np.random.default_rng(0)
    rows, accuracy, groups = [], [], []
    for f in range(6):
        for _ in range(6):
            a, b = rng.uniform(0, 0.6, 2)
            rows.append({"a@0": a, "b@0": b, "ac": 1.0 - a, "noise": rng.uniform()})
            accuracy.append(1 - (a + b) / 2)
            groups.append(f"family{f}")
    if y_override:
        accuracy = [y_override.get(g, acc) for acc, g in zip(accuracy, groups, strict=True)]
    return FeatureTable.build(rows, accuracy, groups)


def test_a_stack_of_two_complementary_features_beats_each_alone():
    selection = select(_table())
    assert selection.chosen == "stack"
    assert set(selection.estimator.features) >= {"a@0", "b@0"}
    best_single = min(selection.candidate_mae["fit:a@0"], selection.candidate_mae["fit:b@0"])
    assert best_single > 0.05
    assert selection.candidate_mae["stack"] < best_single / 2
    assert selection.candidate_mae["raw:ac"] > 0.05


def test_nested_selection_never_looks_at_the_outer_family():
    held = "family2"
    seen: list[tuple[str, frozenset]] = []
    honest = nested_selection(
        _table(), groups=[2], on_fold=lambda name, excluded: seen.append((name, excluded))
    )
    # Replace the held-out family's accuracies by garbage that any look at it would fit to.
    poisoned = nested_selection(_table({held: 0.0}), groups=[2])
    rows = ~np.isnan(honest.predictions)
    assert seen == [(held, frozenset({2}))]
    assert rows.sum() == 6
    np.testing.assert_array_equal(honest.predictions[rows], poisoned.predictions[rows])
    assert honest.chosen == poisoned.chosen
    # Control: a selection that does see the family moves with its accuracies.
    leaky = select(_table({held: 0.0})).estimator
    table = _table()
    values = [dict(zip(table.names, row, strict=True)) for row in table.x[table.groups == 2]]
    assert [leaky(v) for v in values] != pytest.approx(list(honest.predictions[rows]), abs=1e-3)


def test_nested_error_and_coverage_are_reported_over_every_family():
    result = nested_selection(_table())
    assert set(result.chosen) == {f"family{f}" for f in range(6)}
    assert result.mae < 0.05  # the best single fit is off by 0.07
    assert 0.0 <= result.coverage <= 1.0 and result.level == 0.9


def test_estimator_round_trips_and_clips_to_accuracy_range():
    estimator = select(_table()).estimator
    again = Estimator.from_dict(estimator.to_dict())
    values = {"a@0": 0.1, "b@0": 0.2, "ac": 0.9, "noise": 0.5}
    assert again(values) == pytest.approx(estimator(values))
    assert 0.0 <= estimator({"a@0": -50.0, "b@0": -50.0, "ac": 0.0, "noise": 0.0}) <= 1.0
    assert estimator.describe().startswith("stack:")
