"""The calibration procedure: fitting and selection on hand-made points, and calibrate() on the
tiny model. The stored result (JSON, fit choice, built-in maps): test_calibration_result.py."""

import pytest
import torch

from flipwatch.workers.estimation import EstimateConfig, calibrate
from flipwatch.workers.estimation.calibration import (
    LR_GRID,
    calibration_tasks,
    fit_points,
    leave_one_group_out_mae,
)
from flipwatch.workers.estimation.variants import CalibrationPoint, calibration_variants
from tests.tiny_models import confident_tiny


def _point(family: str, accuracy: float, good: float, noise: float) -> CalibrationPoint:
    """`good` tracks accuracy exactly (acc = 1 − good/1000); `noise` does not."""
    return CalibrationPoint(
        family=family,
        severity=1,
        mixed=False,
        accuracy=accuracy,
        signals={"good": {0: good, 50: good}, "noise": {50: noise}},
        baselines={"ac": min(1.0, accuracy + 0.2)},
    )


POINTS = [
    _point(f"family{i % 4}", 1 - x / 1000, x, n)
    for i, (x, n) in enumerate([(0, 9), (50, 1), (100, 7), (150, 3), (200, 8), (300, 2), (400, 5)])
]


def test_leave_one_group_out_predicts_each_group_from_the_others_only():
    x = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    y = torch.tensor([1.0, 0.9, 0.8, 0.7], dtype=torch.float64)
    assert leave_one_group_out_mae(x, y, ["a", "b", "c", "d"]) == pytest.approx(0.0, abs=1e-12)
    jumpy = torch.tensor([1.0, 0.9, 0.8, 0.2], dtype=torch.float64)
    assert leave_one_group_out_mae(x, jumpy, ["a", "b", "c", "d"]) > 0.1


def test_a_signal_that_tracks_accuracy_is_selected_with_near_zero_held_out_error():
    fits = {f.key: f for f in fit_points(POINTS)}
    assert set(fits) == {"good@0", "good@50", "noise@50"}
    assert fits["good@0"].mae == pytest.approx(0.0, abs=1e-9)
    assert fits["noise@50"].mae > 0.05
    best = min(fits.values(), key=lambda f: (f.mae, f.step))
    assert best.key == "good@0"  # ties go to the shorter trajectory


CONFIG = EstimateConfig(steps=4, checkpoints=(0, 4), probe_size=200, epsilon=1.0)


class TestCalibrate:
    def test_measures_every_variant_and_selects_the_best_held_out_fit(
        self, tiny_model, tiny_spec, tiny_images
    ):
        labels = torch.arange(len(tiny_images)) % 10
        seen: list[tuple[int, int]] = []
        calibration = calibrate(
            tiny_model,
            tiny_images,
            labels,
            spec=tiny_spec,
            config=CONFIG,
            families=["contrast"],
            severities=(2, 4),
            class_mixes="none",  # the corruption suite and the spread subsets only
            settings=LR_GRID,
            progress=lambda done, total: seen.append((done, total)),
        )
        assert [(p.family, p.severity, p.mixed, p.subset) for p in calibration.points] == [
            ("clean", 0, False, None),
            ("contrast", 2, False, None),
            ("contrast", 4, False, None),
            ("clean", 0, False, "balanced:128"),
            ("contrast", 4, False, "balanced:128"),
        ]
        assert seen == [(i, 15) for i in range(1, 16)]  # 5 variants × 3 trajectory settings
        # selection runs over every candidate (fits at every setting, baselines, stacks) and
        # keeps the one with the lowest held-out error
        best = min(calibration.candidates.values())
        assert calibration.candidates[calibration.selected_estimator.name] == best
        assert any(name.startswith("raw:") for name in calibration.candidates)  # baselines compete
        assert (calibration.probe_size, calibration.steps, calibration.num_classes) == (200, 4, 10)
        clean = calibration.points[0]
        assert calibration.reference_accuracy == clean.accuracy
        assert calibration.baseline_reference.reference_accuracy == clean.accuracy
        assert calibration.class_means.shape == (10, 16)

    def test_refuses_labels_that_do_not_match(self, tiny_model, tiny_spec, tiny_images):
        with pytest.raises(ValueError, match="300 images but 299 labels"):
            calibrate(tiny_model, tiny_images, torch.zeros(299, dtype=torch.long), spec=tiny_spec)
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 9\]"):
            calibrate(
                tiny_model, tiny_images, torch.full((300,), 10, dtype=torch.long), spec=tiny_spec
            )


def test_a_model_with_nan_outputs_is_refused_before_any_variant_runs(tiny_spec, tiny_images):
    broken = confident_tiny()
    with torch.no_grad():
        broken.fc.bias[0] = float("nan")
    labels = torch.arange(len(tiny_images)) % 10
    with pytest.raises(ValueError, match="NaN or inf on 300 of 300 reference images"):
        calibrate(broken, tiny_images, labels, spec=tiny_spec, config=CONFIG, families=["contrast"])


def test_a_suite_too_small_to_score_is_refused_naming_the_fix():
    with pytest.raises(ValueError, match="2 variants cannot be scored: ask for two severities"):
        calibration_variants(["contrast"], (3,))
    assert len(calibration_variants(["contrast"], (3,), mixes=True)) == 3


def test_default_suite_is_every_family_at_severities_two_to_four_without_mixes():
    variants = calibration_variants()
    assert len(variants) == 1 + 17 * 3
    assert {severity for _, severity, _ in variants[1:]} == {2, 3, 4}
    assert not any(mixed for _, _, mixed in variants)


def _task_keys(tasks: list) -> list[tuple[str, int, bool, str | None]]:
    return [(t.family, t.severity, t.mixed, t.subset) for t in tasks]


def test_default_tasks_hold_every_class_mix_and_mixes_adds_a_half_corrupted_variant():
    # Regression: after the speed/quality merge `mixes` (the half-corrupted variant per family,
    # off by default) also switched the class-mix variants off, so no default calibration
    # measured a skewed class mix and `--mixes` added class mixes instead of half mixes.
    corruption = [
        ("clean", 0, False, None),
        ("contrast", 2, False, None),
        ("contrast", 4, False, None),
        ("fog", 2, False, None),
        ("fog", 4, False, None),
    ]
    clean_mixes = [
        ("clean", 0, False, "three"),
        ("clean", 0, False, "dominant"),
        ("clean", 0, False, "longtail"),
    ]
    family_mixes = [
        ("contrast", 4, False, "three"),
        ("fog", 4, False, "dominant"),
    ]
    spread = [
        ("clean", 0, False, "balanced:128"),
        ("contrast", 4, False, "balanced:128"),
        ("fog", 4, False, "balanced:128"),
    ]
    families = ["contrast", "fog"]
    assert _task_keys(calibration_tasks(families, (2, 4), seed=0)) == (
        corruption + clean_mixes + family_mixes + spread
    )
    half = [
        ("clean", 0, False, None),
        ("contrast", 2, False, None),
        ("contrast", 4, False, None),
        ("contrast", 4, True, None),
        ("fog", 2, False, None),
        ("fog", 4, False, None),
        ("fog", 4, True, None),
    ]
    assert _task_keys(calibration_tasks(families, (2, 4), seed=0, mixes=True)) == (
        half + clean_mixes + family_mixes + spread
    )
    assert _task_keys(calibration_tasks(families, (2, 4), seed=0, class_mixes="clean")) == (
        corruption + clean_mixes + spread
    )
    assert _task_keys(calibration_tasks(families, (2, 4), seed=0, class_mixes="none")) == (
        corruption + spread
    )


def test_an_unknown_class_mix_choice_is_refused():
    with pytest.raises(ValueError, match="class_mixes must be one of"):
        calibration_tasks(["fog"], (2, 4), seed=0, class_mixes="some")  # type: ignore[arg-type]


def test_a_default_calibration_is_severities_2_to_4_with_every_class_mix_and_no_grid(
    tiny_model, tiny_spec, tiny_images
):
    labels = torch.arange(len(tiny_images)) % 10
    calibration = calibrate(
        tiny_model, tiny_images, labels, spec=tiny_spec, config=CONFIG, families=["contrast"]
    )
    assert [(p.family, p.severity, p.mixed, p.subset) for p in calibration.points] == [
        ("clean", 0, False, None),
        ("contrast", 2, False, None),
        ("contrast", 3, False, None),
        ("contrast", 4, False, None),
        ("clean", 0, False, "three"),
        ("clean", 0, False, "dominant"),
        ("clean", 0, False, "longtail"),
        ("contrast", 3, False, "three"),
        ("clean", 0, False, "balanced:128"),
        ("contrast", 3, False, "balanced:128"),
    ]
    assert [s.name for s in calibration.settings] == [""]  # the default setting only
    assert not any("~" in signal for p in calibration.points for signal in p.signals)


@pytest.mark.slow
def test_parallel_processes_measure_exactly_what_a_sequential_run_does(
    tiny_model, tiny_spec, tiny_images
):
    labels = torch.arange(len(tiny_images)) % 10
    config = EstimateConfig(steps=4, checkpoints=(0, 4), probe_size=200, epsilon=1.0)
    kwargs = dict(
        spec=tiny_spec,
        config=config,
        families=["contrast", "fog"],
        severities=(2,),
        mixes=True,
    )
    # Worker processes run one thread each; the sequential run does too, so that both reduce
    # floats in the same order (another thread count flips a few borderline predictions).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sequential = calibrate(tiny_model, tiny_images, labels, **kwargs)
    finally:
        torch.set_num_threads(threads)
    parallel = calibrate(tiny_model, tiny_images, labels, processes=2, **kwargs)
    # clean, 2 families at severity 2 and their half mixes, 3 clean class mixes, 2 skewed
    # shifted variants, 3 subsampled ones for the small-window spread
    assert len(parallel.points) == 1 + 2 * 2 + 3 + 2 + 3
    assert parallel.points == sequential.points
    assert parallel.selected == sequential.selected
