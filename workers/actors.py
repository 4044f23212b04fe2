"""Dramatiq actors. Each body is one call into workers/jobs/; messages carry one job id.

Nothing is declared at import: `declare_actors(broker, runtime, queues)` binds the actor to a broker
the entry point configured (workers/broker.py), so importing this module never touches a global
broker.

One actor, `estimation.run_job`, serves every capability queue (service/core/dispatch.py
JOB_QUEUES): a message names its queue (the one stored on the job row), Dramatiq's worker consumes
only the queues declared here and looks the actor up by name, and a retry goes back to the
message's own queue (its `.DQ` delay queue), so a job never changes queue.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import dramatiq
from dramatiq import Actor, Broker, Message

from flipwatch.service.core.dispatch import JOB_QUEUES
from flipwatch.workers import jobs

RUN_JOB = "estimation.run_job"

MAX_RETRIES = 5
MIN_BACKOFF_MS = 5_000  # 5 s, doubling per retry
MAX_BACKOFF_MS = 5 * 60_000  # capped at 5 min
TIME_LIMIT_MS = 2 * 60 * 60_000  # a calibration of a large model on CPU can take an hour


def declare_actors(
    broker: Broker, runtime: jobs.JobRuntime, queues: Sequence[str] = JOB_QUEUES
) -> Actor:
    """Declare `estimation.run_job` on `broker` and every queue in `queues` (a worker consumes
    those); returns the actor."""
    unknown = [queue for queue in queues if queue not in JOB_QUEUES]
    if unknown or not queues:
        raise ValueError(f"unknown queue(s) {unknown or queues}; choose from {JOB_QUEUES}")

    @dramatiq.actor(
        broker=broker,
        actor_name=RUN_JOB,
        queue_name=queues[0],
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

    for queue in queues[1:]:
        broker.declare_queue(queue)
    return run_job


def run_job_message(job_id: uuid.UUID | str, queue: str) -> Message:
    """The message `estimation.run_job(job_id)` on `queue`, built without declaring the actor.

    The API process sends it (workers/broker.py RedisDispatcher) but never runs jobs, so it has
    no JobRuntime to declare the actor with.
    """
    if queue not in JOB_QUEUES:
        raise ValueError(f"unknown queue {queue!r}; choose from {JOB_QUEUES}")
    return Message(
        queue_name=queue,
        actor_name=RUN_JOB,
        args=(str(job_id),),
        kwargs={},
        options={},
    )
