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
