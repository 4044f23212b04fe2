"""A job dispatcher for tests: remembers what the API sent, where, and in which order."""

from __future__ import annotations

import uuid


class RecordingDispatcher:
    """Implements `flipwatch.service.core.dispatch.JobDispatcher` by recording the sent ids and
    the queue each one was sent to."""

    def __init__(self) -> None:
        self.sent: list[uuid.UUID] = []
        self.queues: dict[uuid.UUID, str] = {}

    def send(self, job_id: uuid.UUID, queue: str) -> None:
        self.sent.append(job_id)
        self.queues[job_id] = queue
