"""Request dependencies as Annotated aliases: SessionDep, SettingsDep, OutboxDep, API-key roles.

The session commits when the handler returns and rolls back on any exception (commit at the edge);
job ids collected in the request's outbox are sent to the dispatcher only after that commit.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from flipwatch.service.core.auth import (
    ADMIN_ROLES,
    INGEST_ROLES,
    READ_ROLES,
    authenticate,
    check_role,
)
from flipwatch.service.core.dispatch import JobDispatcher
from flipwatch.service.core.settings import Settings
from flipwatch.service.core.tables import ApiKey, Job

log = logging.getLogger(__name__)


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


class JobOutbox:
    """Jobs created in this request (id and queue), sent once the transaction has committed."""

    def __init__(self) -> None:
        self.jobs: list[tuple[uuid.UUID, str]] = []

    def add(self, *jobs: Job) -> None:
        self.jobs.extend((job.id, job.queue) for job in jobs)

    def flush(self, dispatcher: JobDispatcher) -> None:
        """Send every job to its queue; a failed send leaves it queued for the reconciler."""
        for job_id, queue in self.jobs:
            try:
                dispatcher.send(job_id, queue)
            except Exception:  # noqa: BLE001 - the row is committed; the reconciler re-sends
                log.exception("could not dispatch job %s to %s; it stays queued", job_id, queue)
        self.jobs.clear()


def get_outbox() -> JobOutbox:
    return JobOutbox()


OutboxDep = Annotated[JobOutbox, Depends(get_outbox)]


def commit_or_rollback(session: Session) -> Iterator[Session]:
    """Yield `session` to one request's handler: commit when it returns, roll back on any exception.

    The body of `get_session`; the API tests' override runs it on their own session.
    """
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise


def get_session(request: Request, outbox: OutboxDep) -> Iterator[Session]:
    """One transaction per request: commit on success, roll back on error, then dispatch."""
    with request.app.state.sessionmaker() as session:
        yield from commit_or_rollback(session)
    outbox.flush(request.app.state.dispatcher)


# scope="function": commit before the response is sent, so a 2xx always means committed.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]

bearer = HTTPBearer(
    auto_error=False,
    description="An API key from `flipwatch api-key create --role admin|ingest|read`.",
)


def get_api_key(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> ApiKey:
    header = f"{credentials.scheme} {credentials.credentials}" if credentials else None
    return authenticate(session, header)


def require_role(allowed: frozenset[str], action: str):  # noqa: ANN201 - a FastAPI dependency
    def dependency(key: Annotated[ApiKey, Depends(get_api_key)]) -> ApiKey:
        check_role(key, allowed, action)
        return key

    dependency.__name__ = f"require_{'_'.join(sorted(allowed))}"
    return dependency


AdminKey = Annotated[ApiKey, Depends(require_role(ADMIN_ROLES, "managing models and streams"))]
IngestKey = Annotated[ApiKey, Depends(require_role(INGEST_ROLES, "sending batches and estimates"))]
ReadKey = Annotated[ApiKey, Depends(require_role(READ_ROLES, "reading"))]

ModelID = Annotated[uuid.UUID, Path(description="A model id (GET /v1/models).")]
StreamID = Annotated[uuid.UUID, Path(description="A stream id (GET /v1/streams).")]
JobID = Annotated[uuid.UUID, Path(description="A job id (from a batch or estimate answer).")]
CalibrationID = Annotated[uuid.UUID, Path(description="A calibration id.")]
EstimateID = Annotated[uuid.UUID, Path(description="An estimate id.")]


def single_form_fields(*names: str) -> Any:
    """A route dependency: each of these multipart fields at most once (422 naming a repeat).

    FastAPI keeps the last of repeated values, so `steps=10&steps=2000` or two `archive` files
    would silently run on one of them; a repeat is an ambiguous request, refused like any invalid
    field (the same 422 `invalid-request` body).
    """

    async def check(request: Request) -> None:
        form = await request.form()  # already parsed for the route's Form()/File() parameters
        repeated = [name for name in names if len(form.getlist(name)) > 1]
        if repeated:
            raise RequestValidationError(
                [
                    {
                        "loc": ("body", name),
                        "msg": f"sent {len(form.getlist(name))} times; send this field once",
                        "type": "value_error",
                    }
                    for name in repeated
                ]
            )

    return Depends(check)
