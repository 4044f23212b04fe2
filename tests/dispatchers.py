"""A job dispatcher for tests: remembers what the API sent, and when."""

from __future__ import annotations

import uuid


class RecordingDispatcher:
    """Implements `flipwatch.service.core.dispatch.JobDispatcher` by recording the sent ids."""

    def __init__(self) -> None:
        self.sent: list[uuid.UUID] = []

    def send(self, job_id: uuid.UUID) -> None:
        self.sent.append(job_id)
