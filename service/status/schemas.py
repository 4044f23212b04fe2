"""What GET /v1/status returns (and the status page draws)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from flipwatch.service.alert.schemas import AlertRuleKind
from flipwatch.service.stream.schemas import WindowFill


class StatusPoint(BaseModel):
    window_index: int
    estimated_accuracy: float
    weighted_flips: float | None
    signal: str
    baselines: dict[str, float | None]
    created_at: datetime


class StatusAlertMarker(BaseModel):
    window_index: int
    state: Literal["firing", "resolved"]
    rule_name: str
    created_at: datetime


class StatusRule(BaseModel):
    name: str
    kind: AlertRuleKind
    threshold: float
    state: Literal["ok", "firing"]


class StatusStream(BaseModel):
    id: uuid.UUID
    name: str
    model: str
    model_version: int
    images_total: int
    window: WindowFill
    latest: StatusPoint | None
    rules: list[StatusRule]
    series: list[StatusPoint] = Field(description="The latest estimates, oldest window first.")
    alerts: list[StatusAlertMarker] = Field(description="State changes within the series.")


class StatusJob(BaseModel):
    id: uuid.UUID
    kind: Literal["estimate", "calibrate"]
    state: Literal["queued", "running", "succeeded", "failed"]
    stream: str | None
    model: str
    window_index: int | None
    progress: float
    created_at: datetime
    started_at: datetime | None


class StatusRead(BaseModel):
    """What the status page shows: every stream with its recent estimates, and the job queue."""

    generated_at: datetime
    jobs: dict[str, int] = Field(description="Job count per state.")
    queue: list[StatusJob] = Field(description="Queued and running jobs, oldest first.")
    streams: list[StatusStream]
