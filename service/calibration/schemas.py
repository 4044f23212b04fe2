"""Calibration bodies; the options arrive as form fields beside the archive and are parsed here."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from flipwatch.service.core.errors import InvalidCalibrationOptions
from flipwatch.service.core.tables import Calibration
from flipwatch.service.job.schemas import job_url
from flipwatch.workers.estimation.families import FAMILIES as CORRUPTIONS
from flipwatch.workers.estimation.families import SEVERITIES


class CalibrationOptions(BaseModel):
    """Per-request calibration suite and trajectory; unset fields use the deployment's Settings."""

    model_config = ConfigDict(extra="forbid")

    steps: int | None = Field(
        default=None, ge=1, le=5000, description="Adaptation steps per variant (checkpoints ≤ it)."
    )
    families: list[str] | None = Field(
        default=None, min_length=1, description="Corruption families (default: all)."
    )
    severities: list[int] | None = Field(default=None, min_length=1)

    @classmethod
    def parse_form(
        cls, *, steps: int | None, families: str | None, severities: str | None
    ) -> CalibrationOptions:
        """Comma-separated form fields -> options; names and ranges checked, errors name them."""
        names = [f.strip() for f in families.split(",") if f.strip()] if families else None
        unknown = sorted(set(names or []) - set(CORRUPTIONS))
        if unknown:
            raise InvalidCalibrationOptions(
                f"unknown corruption families {unknown}; choose from {sorted(CORRUPTIONS)}"
            )
        try:
            levels = [int(s) for s in severities.split(",") if s.strip()] if severities else None
        except ValueError as exc:
            raise InvalidCalibrationOptions(
                f"severities must be comma-separated integers, got {severities!r}"
            ) from exc
        if levels is not None and not set(levels) <= set(SEVERITIES):
            raise InvalidCalibrationOptions(f"severities must lie in 1..5, got {levels}")
        if steps is not None and not 1 <= steps <= 5000:
            raise InvalidCalibrationOptions(f"steps must lie in 1..5000, got {steps}")
        return cls(steps=steps, families=names or None, severities=levels or None)


class CalibrationRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    model_id: uuid.UUID
    job_id: uuid.UUID | None
    state: Literal["queued", "running", "succeeded", "failed"]
    reference_images: int
    reference_classes: list[str]
    reference_accuracy: float | None
    options: dict[str, Any] = Field(
        default_factory=dict, description="The suite and steps requested for this calibration."
    )
    result: dict[str, Any] | None = Field(
        description="The estimator's calibration (coefficients, leave-one-family-out MAE, "
        "selected signal) once succeeded."
    )
    created_at: datetime
    finished_at: datetime | None
    job_url: str | None = None

    @classmethod
    def of(cls, calibration: Calibration) -> CalibrationRead:
        read = cls.model_validate(calibration)
        read.job_url = job_url(calibration.job_id) if calibration.job_id else None
        return read
