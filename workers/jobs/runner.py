"""Running one job to its end: claim, work (by kind), finish; what a worker sets up once.

The actor (workers/actors.py) and the embedded worker (workers/broker.py) call `run_with`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import structlog
from sqlalchemy import select

from flipwatch.service.core.settings import Settings
from flipwatch.service.core.tables import Job
from flipwatch.service.core.tracing import job_span
from flipwatch.workers.jobs.calibrate import CalibrationSuite, run_calibrate
from flipwatch.workers.jobs.estimate import run_estimate
from flipwatch.workers.jobs.failures import (
    TransientJobError,
    UserError,
    describe,
    finish_failed,
    is_programming_error,
    is_user_error,
    release_after_error,
)
from flipwatch.workers.jobs.lifecycle import (
    HEARTBEAT_INTERVAL_S,
    JobMetrics,
    JobOutcome,
    SessionFactory,
    claim_job,
    heartbeat,
)
from flipwatch.workers.jobs.prefetch import WindowPrefetcher
from flipwatch.workers.jobs.resources import DeviceSlots
from flipwatch.workers.model_cache import ModelCache

log = logging.getLogger(__name__)


def run_job(
    session_factory: SessionFactory,
    settings: Settings,
    job_id: uuid.UUID | str,
    *,
    model_cache: ModelCache,
    worker_name: str,
    metrics: JobMetrics | None = None,
    heartbeat_interval: float = HEARTBEAT_INTERVAL_S,
    calibration_suite: CalibrationSuite | None = None,
    prefetcher: WindowPrefetcher | None = None,
    slots: DeviceSlots | None = None,
) -> JobOutcome:
    """Run one job to its end: claim, work, finish. Safe to call again for the same id.

    Returns the outcome; raises TransientJobError when the job went back to `queued` for a retry.
    User errors (no calibration, bad images, a model that does not load, too few images) fail the
    job at once with the estimator's message; programming errors (KeyError, TypeError, ...) fail
    it at once as internal errors. `calibration_suite` limits the corruption suite of calibrate
    jobs (default: the estimator's default suite). `prefetcher` decodes the next window while
    this one adapts; `slots` admits concurrent jobs on one device by memory.
    """
    job_id = uuid.UUID(str(job_id))
    with job_log_context(session_factory, job_id):
        return _run_job(
            session_factory,
            settings,
            job_id,
            model_cache=model_cache,
            worker_name=worker_name,
            metrics=metrics,
            heartbeat_interval=heartbeat_interval,
            calibration_suite=calibration_suite,
            prefetcher=prefetcher,
            slots=slots,
        )


@contextmanager
def job_log_context(session_factory: SessionFactory, job_id: uuid.UUID) -> Iterator[None]:
    """Bind job_id, and the request id of the API call that created the job, to every log line
    written while the job runs (and to its trace span when tracing is configured)."""
    with session_factory() as session:
        request_id = session.scalar(select(Job.request_id).where(Job.id == job_id))
    with (
        structlog.contextvars.bound_contextvars(job_id=str(job_id), request_id=request_id),
        job_span(job_id, request_id),
    ):
        yield


def _run_job(
    session_factory: SessionFactory,
    settings: Settings,
    job_id: uuid.UUID,
    *,
    model_cache: ModelCache,
    worker_name: str,
    metrics: JobMetrics | None,
    heartbeat_interval: float,
    calibration_suite: CalibrationSuite | None,
    prefetcher: WindowPrefetcher | None,
    slots: DeviceSlots | None,
) -> JobOutcome:
    claim = claim_job(session_factory, job_id, worker=worker_name)
    if claim is None:
        return JobOutcome.SKIPPED
    try:
        with heartbeat(session_factory, claim, interval=heartbeat_interval):
            if claim.kind == "estimate":
                return run_estimate(
                    session_factory,
                    settings,
                    claim,
                    model_cache,
                    metrics,
                    prefetcher=prefetcher,
                    slots=slots,
                )
            if claim.kind == "calibrate":
                return run_calibrate(
                    session_factory,
                    settings,
                    claim,
                    model_cache,
                    metrics,
                    calibration_suite,
                    slots=slots,
                )
            # The CHECK constraint makes this unreachable; fail loudly rather than retry.
            raise UserError(f"unknown job kind {claim.kind!r}")
    except BaseException as exc:
        if is_user_error(exc):
            message = str(exc) or type(exc).__name__
            log.warning("job %s failed: %s", job_id, message)
            finish_failed(session_factory, claim, message)
            return JobOutcome.FAILED
        if is_programming_error(exc):
            # Deterministic: a retry would fail the same way (and cost the same worker time).
            log.error("job %s: internal error, not retried", job_id, exc_info=exc)
            finish_failed(
                session_factory,
                claim,
                f"internal error, not retried (a bug; the worker log has the traceback): "
                f"{describe(exc)}",
            )
            return JobOutcome.FAILED
        requeued = release_after_error(session_factory, claim, exc)
        if not isinstance(exc, Exception):
            raise  # KeyboardInterrupt, Dramatiq's shutdown or time-limit interrupt
        if requeued:
            raise TransientJobError(job_id, claim.attempt, describe(exc)) from exc
        return JobOutcome.FAILED


@dataclass(frozen=True)
class JobRuntime:
    """What a job needs besides its id, built once per worker process (or embedded thread)."""

    session_factory: SessionFactory
    settings: Settings
    model_cache: ModelCache
    worker_name: str
    metrics: JobMetrics | None = None
    heartbeat_interval: float = HEARTBEAT_INTERVAL_S
    calibration_suite: CalibrationSuite | None = None
    prefetcher: WindowPrefetcher | None = None
    slots: DeviceSlots = field(default_factory=DeviceSlots)


def run_with(runtime: JobRuntime, job_id: uuid.UUID | str) -> JobOutcome:
    """`run_job` with what a worker set up once; the actor and the embedded worker call this."""
    return run_job(
        runtime.session_factory,
        runtime.settings,
        job_id,
        model_cache=runtime.model_cache,
        worker_name=runtime.worker_name,
        metrics=runtime.metrics,
        heartbeat_interval=runtime.heartbeat_interval,
        calibration_suite=runtime.calibration_suite,
        prefetcher=runtime.prefetcher,
        slots=runtime.slots,
    )
