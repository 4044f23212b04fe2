"""Streams: named data sources bound to a model, with a window policy; admin creates them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from flipwatch.service.api.deps import AdminKey, ReadKey, SessionDep, SettingsDep, StreamID
from flipwatch.service.api.problems import problem_responses
from flipwatch.service.core.pagination import Cursor, Page, page_of
from flipwatch.service.stream import service as streams
from flipwatch.service.stream.schemas import StreamCreate, StreamRead

router = APIRouter(prefix="/v1/streams", tags=["streams"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=StreamRead,
    responses=problem_responses(401, 403, 404, 409, 422),
)
def create_stream(
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    _key: AdminKey,
    body: StreamCreate,
) -> StreamRead:
    """Create a stream; window_size and steps default to the server's settings (1000, 250)."""
    stream = streams.create_stream(
        session,
        settings=settings,
        name=body.name,
        model_id=body.model_id,
        window_size=body.window_size,
        steps=body.steps,
        auto_estimate=body.auto_estimate,
        retain_images=body.retain_images,
        retain_days=body.retain_days,
    )
    response.headers["Location"] = f"/v1/streams/{stream.id}"
    return StreamRead.model_validate(stream)


@router.get("", response_model=Page[StreamRead], responses=problem_responses(401, 403, 422))
def list_streams(
    session: SessionDep,
    _key: ReadKey,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> Page[StreamRead]:
    """Streams, newest first."""
    rows, next_cursor = streams.list_streams(
        session, limit=limit, cursor=Cursor.decode(cursor) if cursor else None
    )
    return page_of(StreamRead, rows, next_cursor)


@router.get("/{stream_id}", response_model=StreamRead, responses=problem_responses(401, 403, 404))
def read_stream(session: SessionDep, _key: ReadKey, stream_id: StreamID) -> StreamRead:
    return StreamRead.model_validate(streams.get_stream(session, stream_id))
