"""Which suite a calibrate job measures: the request, then the worker's suite, then Settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from flipwatch.service.core.settings import Settings
from flipwatch.workers.jobs.calibrate import CalibrationSuite, suite_for


def test_settings_choose_the_default_suite_class_mixes_and_learning_rate_grid():
    settings = Settings(
        calibration_severities=[3],
        calibration_class_mixes="none",
        calibration_lr_grid=True,
        calibration_mixes=True,
    )
    assert suite_for({}, settings, default=None) == CalibrationSuite(
        families=None, severities=(3,), mixes=True, class_mixes="none", lr_grid=True
    )


def test_without_settings_the_suite_is_the_measured_default():
    assert suite_for({}, Settings(), default=None) == CalibrationSuite(
        families=None, severities=(2, 3, 4), mixes=False, class_mixes="all", lr_grid=False
    )


def test_a_request_names_families_and_severities_and_keeps_the_rest_of_the_suite():
    worker_suite = CalibrationSuite(families=("fog",), class_mixes="clean", lr_grid=True)
    chosen = suite_for(
        {"families": ["contrast"], "severities": [1, 5]}, Settings(), default=worker_suite
    )
    assert chosen == CalibrationSuite(
        families=("contrast",), severities=(1, 5), class_mixes="clean", lr_grid=True
    )


def test_an_unknown_class_mix_choice_is_a_settings_error():
    with pytest.raises(ValidationError, match="calibration_class_mixes"):
        Settings(calibration_class_mixes="most")
