"""Job bodies: `JobRead` (state, attempts, progress, links) and the link a batch answer carries."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from flipwatch.service.core.tables import Job
from flipwatch.service.job.service import progress_fraction


def job_url(job_id: uuid.UUID) -> str:
    return f"/v1/jobs/{job_id}"


class JobLink(BaseModel):
    id: uuid.UUID
    window_index: int | None
    url: str


class JobProgress(BaseModel):
    """Estimate jobs count adaptation steps; calibrate jobs count trajectories measured (one per
    shifted variant and trajectory setting: one per variant unless the learning-rate grid is on)."""

    steps_done: int
    steps_total: int
    fraction: float
    unit: Literal["step", "variant"] = Field(
        description="What steps count: adaptation steps (estimate) or variant trajectories "
        "(calibrate: one per shifted variant and trajectory setting)."
    )
    eta_seconds: float | None = Field(
        default=None,
        description="Remaining seconds at the rate so far, as of heartbeat_at (running jobs).",
    )


def eta_seconds(job: Job) -> float | None:
    """(heartbeat_at − started_at) · (1 − f) / f for a running job with progress f > 0."""
    fraction = progress_fraction(job)
    if job.state != "running" or fraction <= 0 or job.started_at is None:
        return None
    if job.heartbeat_at is None:
        return None
    elapsed = (job.heartbeat_at - job.started_at).total_seconds()
    return round(max(0.0, elapsed) * (1 - fraction) / fraction, 1)


class JobRead(BaseModel):
    id: uuid.UUID
    kind: Literal["estimate", "calibrate"]
    state: Literal["queued", "running", "succeeded", "failed"]
    queue: str = Field(
        description="The capability queue it was sent to: estimates.gpu, estimates.cpu or "
        "calibrations (the workers consuming it run it)."
    )
    attempts: int
    max_attempts: int
    progress: JobProgress
    stream_id: uuid.UUID | None
    model_id: uuid.UUID
    window_index: int | None
    calibration_id: uuid.UUID | None
    error: str | None
    worker: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    estimate_id: uuid.UUID | None = None
    request_id: str | None = Field(
        default=None,
        description="X-Request-ID of the API call that created the job; its log lines carry it.",
    )
    links: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def of(cls, job: Job, *, estimate_id: uuid.UUID | None = None) -> JobRead:
        links = {"self": job_url(job.id)}
        if estimate_id is not None:
            links["estimate"] = f"/v1/estimates/{estimate_id}"
        if job.calibration_id is not None:
            links["calibration"] = f"/v1/calibrations/{job.calibration_id}"
        if job.stream_id is not None:
            links["stream"] = f"/v1/streams/{job.stream_id}"
        return cls(
            id=job.id,
            kind=job.kind,  # type: ignore[arg-type]
            state=job.state,  # type: ignore[arg-type]
            queue=job.queue,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            progress=JobProgress(
                steps_done=job.steps_done,
                steps_total=job.steps_total or 0,
                fraction=progress_fraction(job),
                unit="variant" if job.kind == "calibrate" else "step",
                eta_seconds=eta_seconds(job),
            ),
            stream_id=job.stream_id,
            model_id=job.model_id,
            window_index=job.window_index,
            calibration_id=job.calibration_id,
            error=job.error,
            worker=job.worker,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            heartbeat_at=job.heartbeat_at,
            estimate_id=estimate_id,
            request_id=job.request_id,
            links=links,
        )
