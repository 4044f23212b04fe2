"""What happens when a job raises: user errors and bugs fail it at once, the rest is retried.

A user error (`UserError`, the estimator's ValueError, a missing calibration) cannot pass on a
retry, so the job fails with the message the user must act on. A programming error (KeyError,
TypeError, AttributeError, ...) is just as deterministic: retrying it only burns worker time, so
it fails at once too, saying it is a bug. Anything else may pass (DB, CUDA OOM, I/O): the job goes
back to queued while attempts remain and `run_job` raises `TransientJobError` for the queue to
retry. Commit point `finish` after an error: `release_after_error` (transient) or `finish_failed`
(user error or bug).
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import select

from flipwatch.service.core.tables import Job
from flipwatch.workers.jobs.lifecycle import (
    Claim,
    SessionFactory,
    mark_failed,
    mark_queued,
    owned_by,
)

log = logging.getLogger(__name__)


class TransientJobError(RuntimeError):
    """A job failed for a reason that may pass (DB, CUDA OOM, I/O); it is queued again.

    Raised out of `run_job` so the queue (Dramatiq's Retries, or the in-process worker) retries
    the message with backoff. The job row is already back in `queued` when this is raised.
    """

    def __init__(self, job_id: uuid.UUID, attempts: int, message: str) -> None:
        super().__init__(f"job {job_id} attempt {attempts}: {message}")
        self.job_id = job_id
        self.attempts = attempts


class UserError(Exception):
    """A failure the user must fix (message shown as is); retrying cannot help."""


def is_user_error(exc: BaseException) -> bool:
    if isinstance(exc, (UserError, ValueError)):
        return True
    try:
        from flipwatch.workers.estimation.calibration_result import CalibrationMissing
    except ImportError:  # pragma: no cover - estimator incomplete
        return False
    return isinstance(exc, CalibrationMissing)


# Deterministic failures of the code itself: the same inputs raise them again on every attempt.
PROGRAMMING_ERRORS: tuple[type[BaseException], ...] = (
    LookupError,
    TypeError,
    AttributeError,
    AssertionError,
    NameError,
    ArithmeticError,
    NotImplementedError,
)


def is_programming_error(exc: BaseException) -> bool:
    """A bug (checked after `is_user_error`, which claims CalibrationMissing, a LookupError)."""
    return isinstance(exc, PROGRAMMING_ERRORS)


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def release_after_error(session_factory: SessionFactory, claim: Claim, exc: BaseException) -> bool:
    """Commit point `finish` (transient): back to queued while attempts remain, else failed.

    Returns True when the job is queued again (or its state is unknown) so the caller retries.
    If even this write fails (the DB is down), the job stays running and the reaper requeues it
    once its heartbeat is stale.
    """
    _free_cuda_memory(exc)
    description = describe(exc)
    try:
        with session_factory() as session:
            job = session.scalar(select(Job).where(owned_by(claim)).with_for_update())
            if job is None:
                log.warning("job %s: error after the claim was lost: %s", claim.job_id, description)
                return False
            requeued = True
            if job.attempts < job.max_attempts and not _is_shutdown(exc):
                mark_queued(
                    session,
                    job,
                    f"attempt {job.attempts} of {job.max_attempts} failed, retrying: {description}",
                )
                log.warning(
                    "job %s: attempt %d failed, requeued: %s",
                    job.id,
                    job.attempts,
                    description,
                    exc_info=exc,
                )
            elif _is_shutdown(exc):
                # A stop, not a failure: the attempt does not count against the job.
                job.attempts = max(0, job.attempts - 1)
                mark_queued(session, job)
                log.info("job %s: interrupted by shutdown, requeued", job.id)
            else:
                requeued = False
                mark_failed(session, job, f"failed after {job.attempts} attempts: {description}")
                log.error(
                    "job %s failed after %d attempts: %s",
                    job.id,
                    job.attempts,
                    description,
                    exc_info=exc,
                )
            session.commit()
            return requeued
    except Exception:  # noqa: BLE001 - the reaper is the fallback
        log.exception(
            "job %s: could not record the error; the reaper will requeue it", claim.job_id
        )
        return True


def _is_shutdown(exc: BaseException) -> bool:
    if isinstance(exc, KeyboardInterrupt):
        return True
    try:
        from dramatiq.middleware import Shutdown
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, Shutdown)


def _free_cuda_memory(exc: BaseException) -> None:
    if "OutOfMemoryError" not in type(exc).__name__:
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def finish_failed(session_factory: SessionFactory, claim: Claim, message: str) -> None:
    """Commit point `finish` (user error): failed, with the message the user must act on."""
    with session_factory() as session:
        job = session.scalar(select(Job).where(owned_by(claim)).with_for_update())
        if job is None:
            log.warning("job %s: failed after the claim was lost: %s", claim.job_id, message)
            return
        mark_failed(session, job, message)
        job.heartbeat_at = job.finished_at
        session.commit()
