"""How the API hands job ids to workers, without importing a queue library.

Contract: `send(job_id)` is called only after the transaction that created the job row committed.
It may fail (broker down): the job row stays `queued` and the worker side's reconciler re-sends it.
Implementations (Redis/Dramatiq, in-process) live on the worker side.
"""

from __future__ import annotations

import uuid
from typing import Protocol


class JobDispatcher(Protocol):
    def send(self, job_id: uuid.UUID) -> None:
        """Enqueue the job with this id; called after commit."""
        ...


class NullDispatcher:
    """Sends nothing: jobs stay queued (tests run the job function directly)."""

    def send(self, job_id: uuid.UUID) -> None:
        return None
