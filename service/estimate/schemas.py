"""Estimate bodies: the stored row plus the estimator's full result document."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field


class EstimateRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    stream_id: uuid.UUID
    job_id: uuid.UUID | None
    window_index: int
    model_id: uuid.UUID
    model_version: int
    image_count: int | None
    estimated_accuracy: float
    signal: str
    weighted_flips: float | None
    result: dict[str, Any] = Field(
        description="The estimator's full output: signals, checkpoints, baselines, embedding "
        "distances, steps, probe size, seconds, device."
    )
    created_at: datetime
    labeled_count: int = Field(
        default=0, description="Images of the window labeled so far (POST .../labels)."
    )
    realized_accuracy: float | None = Field(
        default=None,
        description="Accuracy measured on the posted labels, once the window has "
        "FLIPWATCH_REALIZED_MIN_LABELS of them; None until then.",
    )
    realized_at: datetime | None = None

    @computed_field(description="estimated_accuracy - realized_accuracy; None without labels.")
    def estimator_error(self) -> float | None:
        if self.realized_accuracy is None:
            return None
        return self.estimated_accuracy - self.realized_accuracy

    @computed_field(
        description="Lower bound of the 90 % prediction interval (split conformal "
        "on the calibration's held-out shift families, widened for small windows)."
    )
    @property
    def lower(self) -> float | None:
        return self.result.get("lower")

    @computed_field(description="Upper bound of the prediction interval.")
    @property
    def upper(self) -> float | None:
        return self.result.get("upper")

    @computed_field(description="Nominal coverage of [lower, upper] (0.9).")
    @property
    def interval_level(self) -> float | None:
        return self.result.get("interval_level")

    @computed_field(
        description="Total variation between the window's estimated class "
        "proportions (MLLS) and the reference set's: high means another class mix."
    )
    @property
    def label_shift(self) -> float | None:
        return self.result.get("label_shift")

    @computed_field(description="What produced the estimate, e.g. 'fit:uf_source@100~lr2e-3'.")
    @property
    def estimator(self) -> str | None:
        return self.result.get("estimator")
