"""The reaper and reconciler: jobs whose worker died go back to queued; lost messages are re-sent.

A queue message only carries a job id and Postgres is the truth, so recovery is a query: a running
job whose heartbeat went stale lost its worker, and a queued job untouched for long has probably
lost its message. Commit point `reconcile`: `reconcile_jobs` (a worker's reconciler thread) and
`requeue_interrupted_jobs` (embedded start-up); `requeue_stale_jobs` only flushes.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection
from datetime import timedelta
from typing import NamedTuple

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from flipwatch.service.core.tables import Job, utcnow
from flipwatch.workers.jobs.lifecycle import (
    SessionFactory,
    mark_failed,
    mark_queued,
    set_calibration_state,
)

log = logging.getLogger(__name__)

# Defaults of the settings job_stale_seconds and job_lost_seconds (service/core/settings.py).
STALE_AFTER_S = 30.0  # a running job silent this long is presumed dead (worker killed)
LOST_AFTER_S = 30.0  # a queued job untouched this long, with no message in Redis, is re-sent


def requeue_stale_jobs(session: Session, *, older_than: float = STALE_AFTER_S) -> list[uuid.UUID]:
    """Running jobs whose heartbeat is older than `older_than` s: back to queued (flush only).

    Their worker died (killed, OOM-killed, machine lost). Jobs out of attempts fail instead.
    Returns the requeued ids, which the caller re-sends after committing.
    """
    cutoff = utcnow() - timedelta(seconds=older_than)
    stale = session.scalars(
        select(Job)
        .where(Job.state == "running", func.coalesce(Job.heartbeat_at, Job.started_at) < cutoff)
        .with_for_update(skip_locked=True)
    ).all()
    requeued: list[uuid.UUID] = []
    for job in stale:
        silent = f"worker {job.worker or '?'} stopped sending heartbeats (over {older_than:.0f} s)"
        if job.attempts >= job.max_attempts:
            mark_failed(session, job, f"failed after {job.attempts} attempts: {silent}")
            log.error("job %s: %s; out of attempts, failed", job.id, silent)
        else:
            mark_queued(session, job, f"attempt {job.attempts} interrupted: {silent}; requeued")
            requeued.append(job.id)
            log.warning("job %s: %s; requeued", job.id, silent)
    session.flush()
    return requeued


class QueuedJob(NamedTuple):
    """A job to (re-)send, and the queue stored on its row."""

    id: uuid.UUID
    queue: str


def queued_job_ids(session: Session, *, older_than: float = 0.0) -> list[uuid.UUID]:
    """Queued jobs untouched for `older_than` s (oldest first): their message may be lost."""
    return [job.id for job in queued_jobs(session, older_than=older_than)]


def queued_jobs(session: Session, *, older_than: float = 0.0) -> list[QueuedJob]:
    """`queued_job_ids` with each job's queue."""
    cutoff = utcnow() - timedelta(seconds=older_than)
    rows = session.execute(
        select(Job.id, Job.queue)
        .where(Job.state == "queued", func.coalesce(Job.heartbeat_at, Job.created_at) <= cutoff)
        .order_by(Job.created_at)
    )
    return [QueuedJob(row.id, row.queue) for row in rows]


def reconcile_jobs(
    session_factory: SessionFactory,
    *,
    stale_after: float = STALE_AFTER_S,
    lost_after: float = LOST_AFTER_S,
    pending: Collection[uuid.UUID] = frozenset(),
) -> list[QueuedJob]:
    """Commit point `reconcile`: requeue stale jobs; mark lost queued ones; return what to send,
    each job with the queue stored on its row (a GPU job found by a CPU worker goes back to
    estimates.gpu).

    A queued job whose message still sits in a long queue looks lost too; re-sending it only adds
    a duplicate (a no-op when delivered). Marking heartbeat_at on the re-sent jobs limits that to
    one extra message per job every `lost_after` seconds; `pending` (ids whose message Redis still
    holds) removes even that. Send the ids after this returns.
    """
    with session_factory() as session:
        ids = requeue_stale_jobs(session, older_than=stale_after)
        stale = [
            QueuedJob(row.id, row.queue)
            for row in session.execute(select(Job.id, Job.queue).where(Job.id.in_(ids)))
        ]
        lost = [
            job
            for job in queued_jobs(session, older_than=lost_after)
            if job.id not in ids and job.id not in pending
        ]
        if lost:
            session.execute(
                update(Job).where(Job.id.in_([j.id for j in lost])).values(heartbeat_at=utcnow())
            )
        session.commit()
    return sorted(stale, key=lambda job: ids.index(job.id)) + lost


def requeue_interrupted_jobs(session_factory: SessionFactory) -> list[QueuedJob]:
    """Commit point `reconcile` (embedded start-up): running jobs back to queued; queued jobs.

    Only for a single-process deployment: there, a job still `running` at start-up was owned by
    this process before it stopped, so there is no one else to wait for.
    """
    with session_factory() as session:
        running = session.scalars(select(Job).where(Job.state == "running")).all()
        for job in running:
            job.state = "queued"
            job.worker = None
            job.error = f"attempt {job.attempts} interrupted by a restart; requeued"
            set_calibration_state(session, job, "queued")
        session.flush()
        ids = queued_jobs(session)
        session.commit()
    if running:
        log.warning("requeued %d job(s) left running by the previous run", len(running))
    return ids
