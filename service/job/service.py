"""Job rows as the API sees them: creation (in the caller's transaction) and reads.

This is the service side of a job (the row); running it (claim, heartbeat, progress, finish) is
the worker side, `flipwatch.workers.jobs`.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from flipwatch.service.core.dispatch import CALIBRATIONS
from flipwatch.service.core.errors import JobNotFound
from flipwatch.service.core.logging import current_request_id
from flipwatch.service.core.settings import Settings
from flipwatch.service.core.tables import Calibration, Estimate, Job, Model, Stream

DEFAULT_MAX_ATTEMPTS = 3


def estimate_queue(settings: Settings, model: Model) -> str:
    """The queue of `model`'s estimate jobs: estimates.<device>, the device from
    FLIPWATCH_MODEL_DEVICES by model name, else FLIPWATCH_ESTIMATE_DEVICE."""
    return f"estimates.{settings.model_devices.get(model.name, settings.estimate_device)}"


def create_estimate_job(
    session: Session, *, stream: Stream, model: Model, window_index: int, settings: Settings
) -> Job:
    """Queue an estimate of one stream window on its model's queue; dispatch happens after the
    caller commits."""
    return _add_queued_job(
        session,
        kind="estimate",
        queue=estimate_queue(settings, model),
        model_id=stream.model_id,
        steps_total=stream.steps,
        stream_id=stream.id,
        window_index=window_index,
    )


def create_calibration_job(
    session: Session, *, model: Model, calibration: Calibration, variants: int
) -> Job:
    """Queue a calibration run. Its progress counts shifted variants measured, from creation to
    the end (one unit: the worker reports variants done of the suite's total)."""
    return _add_queued_job(
        session,
        kind="calibrate",
        queue=CALIBRATIONS,
        model_id=model.id,
        steps_total=variants,
        calibration_id=calibration.id,
    )


def variant_count(families: int, severities: int) -> int:
    """Variants of a calibration suite: the clean set, each family at each severity, and a mix
    per family (workers/estimation/variants.py `calibration_variants`)."""
    return 1 + families * (severities + 1)


def _add_queued_job(
    session: Session,
    *,
    kind: str,
    queue: str,
    model_id: uuid.UUID,
    steps_total: int,
    **target: Any,
) -> Job:
    """A new job row, queued with no attempt made; `target` is its window or its calibration."""
    job = Job(
        id=uuid.uuid4(),
        kind=kind,
        queue=queue,
        state="queued",
        model_id=model_id,
        attempts=0,
        max_attempts=DEFAULT_MAX_ATTEMPTS,
        steps_done=0,
        steps_total=steps_total,
        request_id=current_request_id(),  # the API call that caused it (X-Request-ID)
        **target,
    )
    session.add(job)
    return job


def active_estimate_job(session: Session, *, stream_id: uuid.UUID, window_index: int) -> Job | None:
    """A queued, running or succeeded estimate job for the window (a failed one may be redone)."""
    return session.scalar(
        select(Job)
        .where(
            Job.kind == "estimate",
            Job.stream_id == stream_id,
            Job.window_index == window_index,
            Job.state != "failed",
        )
        .limit(1)
    )


def get_job(session: Session, job_id: uuid.UUID) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(f"job {job_id} does not exist")
    return job


def progress_fraction(job: Job) -> float:
    """Steps done over steps planned, in [0, 1] (0 while the total is unknown)."""
    total = job.steps_total or 0
    return round(min(job.steps_done / total, 1.0), 4) if total else 0.0


def estimate_id_for_job(session: Session, job_id: uuid.UUID) -> uuid.UUID | None:
    return session.scalar(select(Estimate.id).where(Estimate.job_id == job_id))
