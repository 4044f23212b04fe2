"""Estimate bodies: the stored row plus the estimator's full result document."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


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
