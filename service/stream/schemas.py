"""Stream bodies: `StreamCreate`, `StreamRead` and the open window's fill."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

StreamName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        examples=["checkout-camera-3"],
    ),
]


class StreamCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StreamName
    model_id: uuid.UUID
    window_size: int | None = Field(
        default=None,
        ge=64,
        le=1_000_000,
        description="Images per estimate (default 1000; at least 64, one adaptation batch). "
        "Measured error: about 3-4 accuracy points at 64 images, 2-3 at 256, 1.7-2.1 at 1000.",
    )
    steps: int | None = Field(
        default=None, ge=1, le=100_000, description="Adaptation steps per estimate (default 250)."
    )
    auto_estimate: bool = Field(
        default=True, description="Queue an estimate whenever a window fills."
    )
    retain_images: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000_000,
        description="Keep at most this many of the newest images (and their files); older ones "
        "are deleted by the periodic retention task. Unset: keep all.",
    )
    retain_days: float | None = Field(
        default=None,
        gt=0,
        le=36_500,
        description="Delete images (and emptied batches) older than this many days. Unset: keep. "
        "Estimates, alerts and windows an unfinished job needs are always kept.",
    )


class StreamRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    model_id: uuid.UUID
    window_size: int
    steps: int
    auto_estimate: bool
    images_total: int
    current_window_index: int
    window_fill: int = Field(description="Images in the open window.")
    retain_images: int | None = None
    retain_days: float | None = None
    created_at: datetime


class WindowFill(BaseModel):
    index: int
    fill: int
    size: int
