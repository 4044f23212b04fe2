"""The answer to a batch upload, stored with the batch so a retried Idempotency-Key replays it."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, Field

from flipwatch.service.job.schemas import JobLink
from flipwatch.service.stream.schemas import WindowFill


class BatchAccepted(BaseModel):
    """The 202 answer; replayed as-is for a retried Idempotency-Key."""

    batch_id: uuid.UUID
    stream_id: uuid.UUID
    image_count: int
    images_total: int
    window: WindowFill = Field(description="The stream's open window after this batch.")
    job_url: str | None = Field(
        default=None, description="The estimate job of the last window this batch closed."
    )
    jobs: list[JobLink] = Field(default_factory=list, description="One per window closed.")
    notices: list[str] = Field(
        default_factory=list, description="E.g. why a closed window got no estimate."
    )
