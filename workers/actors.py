"""Dramatiq actors. Each body is one call into workers/jobs/; messages carry one job id.

Nothing is declared at import: `declare_actors(broker, runtime)` binds the actors to a broker the
entry point configured (workers/broker.py), so importing this module never touches a global broker.
"""

from __future__ import annotations

import uuid

import dramatiq
from dramatiq import Actor, Broker, Message

from flipwatch.workers import jobs

QUEUE_NAME = "estimation"
RUN_JOB = "estimation.run_job"

MAX_RETRIES = 5
MIN_BACKOFF_MS = 5_000  # 5 s, doubling per retry
MAX_BACKOFF_MS = 5 * 60_000  # capped at 5 min
TIME_LIMIT_MS = 2 * 60 * 60_000  # a calibration of a large model on CPU can take an hour


def declare_actors(broker: Broker, runtime: jobs.JobRuntime) -> Actor:
    """Declare `estimation.run_job` on `broker`; returns the actor (a worker consumes its queue)."""

    @dramatiq.actor(
        broker=broker,
        actor_name=RUN_JOB,
        queue_name=QUEUE_NAME,
        max_retries=MAX_RETRIES,
        min_backoff=MIN_BACKOFF_MS,
        max_backoff=MAX_BACKOFF_MS,
        time_limit=TIME_LIMIT_MS,
        # On SIGTERM the running job is interrupted and goes back to queued (the attempt does
        # not count) instead of holding a deploy for up to an hour of calibration.
        notify_shutdown=True,
    )
    def run_job(job_id: str) -> None:
        jobs.run_with(runtime, job_id)

    return run_job


def run_job_message(job_id: uuid.UUID | str) -> Message:
    """The message `estimation.run_job(job_id)`, built without declaring the actor.

    The API process sends it (workers/broker.py RedisDispatcher) but never runs jobs, so it has
    no JobRuntime to declare the actor with.
    """
    return Message(
        queue_name=QUEUE_NAME,
        actor_name=RUN_JOB,
        args=(str(job_id),),
        kwargs={},
        options={},
    )
