"""Estimates: request one over a stream's current window; read them newest first."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from flipwatch.service.api.deps import (
    EstimateID,
    IngestKey,
    OutboxDep,
    ReadKey,
    SessionDep,
    SettingsDep,
    StreamID,
)
from flipwatch.service.api.problems import problem_responses
from flipwatch.service.core.pagination import Cursor, Page, page_of
from flipwatch.service.estimate import service as estimates
from flipwatch.service.estimate.schemas import EstimateRead
from flipwatch.service.job.schemas import JobRead, job_url

router = APIRouter(tags=["estimates"])


@router.post(
    "/v1/streams/{stream_id}/estimates",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRead,
    responses=problem_responses(401, 403, 404, 409),
)
def create_estimate(
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    outbox: OutboxDep,
    _key: IngestKey,
    stream_id: StreamID,
) -> JobRead:
    """Queue an estimate over the current window (closing it early); 409 under 64 images."""
    job, _stream = estimates.request_estimate(session, stream_id, settings=settings)
    outbox.add(job)
    response.headers["Location"] = job_url(job.id)
    return JobRead.of(job)


@router.get(
    "/v1/streams/{stream_id}/estimates",
    response_model=Page[EstimateRead],
    responses=problem_responses(401, 403, 404, 422),
)
def list_estimates(
    session: SessionDep,
    _key: ReadKey,
    stream_id: StreamID,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> Page[EstimateRead]:
    """A stream's estimates, newest window first (keyset pagination)."""
    rows, next_cursor = estimates.list_estimates(
        session, stream_id=stream_id, limit=limit, cursor=Cursor.decode(cursor) if cursor else None
    )
    return page_of(EstimateRead, rows, next_cursor)


@router.get(
    "/v1/estimates/{estimate_id}",
    response_model=EstimateRead,
    responses=problem_responses(401, 403, 404),
)
def read_estimate(session: SessionDep, _key: ReadKey, estimate_id: EstimateID) -> EstimateRead:
    return EstimateRead.model_validate(estimates.get_estimate(session, estimate_id))
