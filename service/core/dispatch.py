"""How the API hands job ids to workers, without importing a queue library.

Contract: `send(job_id, queue)` is called only after the transaction that created the job row
committed. It may fail (broker down): the job row stays `queued` and the worker side's reconciler
re-sends it to the queue stored on the row. Implementations (Redis/Dramatiq, in-process) live on
the worker side.

Queues name a capability, so a worker host consumes only what it can run: estimates that need a
GPU, estimates a CPU runs well, and calibrations (long, and best kept off the estimate path). The
queue of a job is decided once, when its row is created (`service/job/service.py`), and stored on
the row, so a re-send after a lost message or a dead worker goes to the same queue.
"""

from __future__ import annotations

import uuid
from typing import Protocol

ESTIMATES_GPU = "estimates.gpu"
ESTIMATES_CPU = "estimates.cpu"
CALIBRATIONS = "calibrations"
JOB_QUEUES: tuple[str, ...] = (ESTIMATES_GPU, ESTIMATES_CPU, CALIBRATIONS)


class JobDispatcher(Protocol):
    def send(self, job_id: uuid.UUID, queue: str) -> None:
        """Enqueue the job with this id on `queue` (one of JOB_QUEUES); called after commit."""
        ...


class NullDispatcher:
    """Sends nothing: jobs stay queued (tests run the job function directly)."""

    def send(self, job_id: uuid.UUID, queue: str) -> None:
        return None
