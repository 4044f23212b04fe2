"""The job row's lifecycle: claim, ownership, heartbeat, progress, and its state changes.

Every write after the claim is conditional on ownership (`owned_by`: still running, under the same
worker and attempt), so a worker whose job was reaped, and perhaps claimed again elsewhere, can no
longer touch it. The commit points made here (the full list is in workers/jobs/__init__.py):

- claim:     `claim_job`
- heartbeat: `touch_heartbeat`, from the `heartbeat` side thread
- progress:  `write_progress`, through the throttled `ProgressWriter`

The state changes of a job row (`mark_succeeded`, `mark_queued`, `mark_failed`) serve every finish
(workers/jobs/estimate.py, calibrate.py, failures.py) and the reaper; they never commit.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from flipwatch.service.core.tables import Calibration, Job, utcnow

log = logging.getLogger(__name__)

SessionFactory = sessionmaker[Session]

HEARTBEAT_INTERVAL_S = 5.0  # default of job_heartbeat_seconds: how often a job proves it lives
PROGRESS_INTERVAL_S = 1.0  # progress writes at most this often
MAX_ERROR_CHARS = 4000


class JobOutcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # missing, not queued, or locked by another worker: a redelivery
    LOST = "lost"  # the job was taken from this worker (reaped) while it ran


class JobMetrics(Protocol):
    """What the worker process records about finished work (Prometheus in workers/main.py)."""

    def job_started(self, kind: str, device: str) -> None: ...

    def estimate_finished(self, *, seconds: float, images: int, device: str) -> None: ...

    def job_finished(
        self,
        kind: str,
        *,
        seconds: float,
        adapted_images: int,
        peak_memory_bytes: int,
        device: str,
    ) -> None:
        """Per job: adaptation images per second and peak memory (resources.JobUsage)."""
        ...


@dataclass(frozen=True)
class Claim:
    """What this worker holds after a claim: the ownership token for every later write."""

    job_id: uuid.UUID
    kind: str
    attempt: int
    worker: str


# --- claim ----------------------------------------------------------------------------------------


def claim_job(session_factory: SessionFactory, job_id: uuid.UUID, *, worker: str) -> Claim | None:
    """Commit point `claim`: queued -> running, or None when the job is not ours to run.

    Postgres: the row is read FOR UPDATE SKIP LOCKED, so a second worker holding the same id
    (a redelivered message) skips instead of waiting. SQLite: the UPDATE's WHERE state='queued' is
    the lock (writers are serialised). A calibrate job's calibration goes to running with it.
    """
    now = utcnow()
    with session_factory() as session:
        if session.get_bind().dialect.name == "postgresql":
            job = session.scalar(
                select(Job)
                .where(Job.id == job_id)
                .with_for_update(skip_locked=True)
                .execution_options(populate_existing=True)
            )
            if job is None or job.state != "queued":
                _log_skip(session, job_id, job)
                return None
            job.state = "running"
            job.attempts += 1
            job.started_at = now
            job.heartbeat_at = now
            job.worker = worker
            job.steps_done = 0
            attempt, kind, calibration_id = job.attempts, job.kind, job.calibration_id
        else:
            claimed = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == "queued")
                .values(
                    state="running",
                    attempts=Job.attempts + 1,
                    started_at=now,
                    heartbeat_at=now,
                    worker=worker,
                    steps_done=0,
                )
                .returning(Job.attempts, Job.kind, Job.calibration_id)
            ).one_or_none()
            if claimed is None:
                _log_skip(session, job_id, session.get(Job, job_id))
                return None
            attempt, kind, calibration_id = claimed
        if calibration_id is not None:
            session.execute(
                update(Calibration).where(Calibration.id == calibration_id).values(state="running")
            )
        session.commit()
    log.info("job %s (%s): claimed by %s, attempt %d", job_id, kind, worker, attempt)
    return Claim(job_id=job_id, kind=kind, attempt=attempt, worker=worker)


def _log_skip(session: Session, job_id: uuid.UUID, job: Job | None) -> None:
    if job is None:
        exists = session.scalar(select(func.count()).select_from(Job).where(Job.id == job_id))
        if exists:
            log.info("job %s: locked by another worker; skipping this delivery", job_id)
        else:
            log.warning("job %s: no such job; skipping this delivery", job_id)
    else:
        log.info("job %s: already %s; skipping this delivery", job_id, job.state)


def owned_by(claim: Claim) -> Any:
    """WHERE clause: the job is still running under this claim (not reaped and re-claimed)."""
    return (
        (Job.id == claim.job_id)
        & (Job.state == "running")
        & (Job.worker == claim.worker)
        & (Job.attempts == claim.attempt)
    )


# --- heartbeat and progress -----------------------------------------------------------------------


def touch_heartbeat(session_factory: SessionFactory, claim: Claim) -> bool:
    """Commit point `heartbeat`: heartbeat_at = now while the claim holds; False if lost."""
    with session_factory() as session:
        done = session.execute(
            update(Job).where(owned_by(claim)).values(heartbeat_at=utcnow())
        ).rowcount
        session.commit()
    return bool(done)


def write_progress(session_factory: SessionFactory, claim: Claim, *, done: int, total: int) -> bool:
    """Commit point `progress`: steps_done / steps_total and heartbeat_at in one short UPDATE."""
    with session_factory() as session:
        updated = session.execute(
            update(Job)
            .where(owned_by(claim))
            .values(steps_done=done, steps_total=total, heartbeat_at=utcnow())
        ).rowcount
        session.commit()
    return bool(updated)


class ProgressWriter:
    """The estimator's `progress(done, total)` callback, throttled to about one write a second.

    The first and last calls always write, so a finished run shows total/total.
    """

    def __init__(
        self,
        session_factory: SessionFactory,
        claim: Claim,
        *,
        interval: float = PROGRESS_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session_factory = session_factory
        self._claim = claim
        self._interval = interval
        self._clock = clock
        self._last: float | None = None
        self.writes = 0

    def __call__(self, done: int, total: int) -> None:
        now = self._clock()
        if self._last is not None and done < total and now - self._last < self._interval:
            return
        self._last = now
        try:
            write_progress(self._session_factory, self._claim, done=done, total=total)
            self.writes += 1
        except Exception:  # noqa: BLE001 - progress is advisory; the run goes on
            log.warning("job %s: could not write progress", self._claim.job_id, exc_info=True)


@contextmanager
def heartbeat(
    session_factory: SessionFactory, claim: Claim, *, interval: float = HEARTBEAT_INTERVAL_S
) -> Iterator[threading.Event]:
    """Touch heartbeat_at every `interval` seconds from a side thread while the block runs.

    Progress alone is not enough: a calibration variant or model load may run for minutes
    between progress calls, and the reaper must not take a job that is merely busy. The yielded
    event is set when the claim was lost (the job was reaped), so the caller can stop early.
    """
    stop = threading.Event()
    lost = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                if not touch_heartbeat(session_factory, claim):
                    lost.set()
                    return
            except Exception:  # noqa: BLE001 - keep beating; the DB may come back
                log.warning("job %s: heartbeat failed", claim.job_id, exc_info=True)

    thread = threading.Thread(target=beat, name=f"heartbeat-{claim.job_id}", daemon=True)
    thread.start()
    try:
        yield lost
    finally:
        stop.set()
        thread.join(timeout=5)


# --- state changes of a job row ------------------------------------------------------------------


def mark_succeeded(session: Session, claim: Claim, *, now: datetime) -> bool:
    """The claimed job to `succeeded` (steps_done = steps_total) if the claim still holds.

    This ownership UPDATE takes the row lock on Postgres and is the first write on SQLite, so a
    finish calls it first. When the claim was lost (the job was reaped), the session is rolled
    back and False returned: the caller discards its result.
    """
    owned = session.execute(
        update(Job)
        .where(owned_by(claim))
        .values(
            state="succeeded",
            finished_at=now,
            heartbeat_at=now,
            error=None,
            steps_done=Job.steps_total,
        )
    ).rowcount
    if not owned:
        session.rollback()
        log.warning("job %s: finished after its claim was lost; result discarded", claim.job_id)
    return bool(owned)


def mark_queued(session: Session, job: Job, error: str | None = None) -> None:
    """The job and its calibration back to `queued`, off its worker, for another attempt.

    heartbeat_at restarts the clock: the reconciler waits LOST_AFTER_S from here before it takes
    the job's message for lost. `error` says why (None keeps the last one).
    """
    job.state = "queued"
    job.worker = None
    job.heartbeat_at = utcnow()
    if error is not None:
        job.error = clip(error)
    set_calibration_state(session, job, "queued")


def mark_failed(session: Session, job: Job, error: str) -> None:
    """The job and its calibration to `failed`, finished now, with `error` for the user."""
    job.state = "failed"
    job.finished_at = utcnow()
    job.error = clip(error)
    set_calibration_state(session, job, "failed", finished=True)


def set_calibration_state(
    session: Session, job: Job, state: str, *, finished: bool = False
) -> None:
    if job.calibration_id is None:
        return
    values: dict[str, Any] = {"state": state}
    if finished:
        values["finished_at"] = utcnow()
    session.execute(update(Calibration).where(Calibration.id == job.calibration_id).values(values))


def clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"
