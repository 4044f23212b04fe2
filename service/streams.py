"""Streams and their windows.

Images fill the stream's open window (`current_window_index`, `window_fill`). A window closes when
it reaches `window_size` (then, with `auto_estimate`, an estimate job is queued for it), or early
when an on-demand estimate takes it. Every change happens under the stream's row lock, so positions
and window indexes are assigned once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from flipwatch.service.calibrations import estimation_blocker
from flipwatch.service.errors import (
    CalibrationRequired,
    EstimateAlreadyQueued,
    StreamExists,
    StreamNotFound,
    WindowTooSmall,
)
from flipwatch.service.jobs import active_estimate_job, create_estimate_job
from flipwatch.service.models import Job, Model, Stream
from flipwatch.service.models_registry import get_model
from flipwatch.service.pagination import Cursor, keyset_page
from flipwatch.service.settings import Settings

# The estimator refuses fewer images (EstimateConfig.min_images); refuse early with a clear 409.
MIN_WINDOW_IMAGES = 64


@dataclass(frozen=True)
class ClosedWindow:
    index: int
    job: Job | None
    notice: str | None = None


def get_stream(session: Session, stream_id: uuid.UUID) -> Stream:
    return _found(session.get(Stream, stream_id), stream_id)


def lock_stream(session: Session, stream_id: uuid.UUID) -> Stream:
    """The stream row, locked for this transaction (SELECT ... FOR UPDATE; a no-op on SQLite)."""
    stream = session.scalar(
        select(Stream)
        .where(Stream.id == stream_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return _found(stream, stream_id)


def _found(stream: Stream | None, stream_id: uuid.UUID) -> Stream:
    if stream is None:
        raise StreamNotFound(
            f"stream {stream_id} does not exist; list streams with GET /v1/streams"
        )
    return stream


def create_stream(
    session: Session,
    *,
    settings: Settings,
    name: str,
    model_id: uuid.UUID,
    window_size: int | None,
    steps: int | None,
    auto_estimate: bool,
) -> Stream:
    get_model(session, model_id)
    if session.scalar(select(Stream.id).where(Stream.name == name)) is not None:
        raise StreamExists(f"a stream named {name!r} exists; pick another name")
    stream = Stream(
        id=uuid.uuid4(),
        name=name,
        model_id=model_id,
        window_size=window_size or settings.default_window_size,
        steps=steps or settings.default_steps,
        auto_estimate=auto_estimate,
        images_total=0,
        current_window_index=0,
        window_fill=0,
    )
    session.add(stream)
    session.flush()
    return stream


def list_streams(
    session: Session, *, limit: int, cursor: Cursor | None
) -> tuple[list[Stream], Cursor | None]:
    return keyset_page(session, select(Stream), Stream, limit=limit, cursor=cursor)


def close_window(session: Session, stream: Stream, *, auto: bool) -> ClosedWindow:
    """Close the open window; queue its estimate when the stream estimates automatically.

    A model that may not be estimated yet (no calibration) closes the window without a job and
    returns the reason as a notice, so ingest never loses images over it.
    """
    index = stream.current_window_index
    stream.current_window_index += 1
    stream.window_fill = 0
    if auto and not stream.auto_estimate:
        return ClosedWindow(index=index, job=None)
    blocker = estimation_blocker(session, get_model(session, stream.model_id))
    if blocker is not None:
        return ClosedWindow(
            index=index, job=None, notice=f"window {index} not estimated: {blocker}"
        )
    return ClosedWindow(
        index=index, job=create_estimate_job(session, stream=stream, window_index=index)
    )


def request_estimate(session: Session, stream_id: uuid.UUID) -> tuple[Job, Stream]:
    """Queue an estimate over the stream's current window (on demand).

    The open window is taken (and closed early) when it holds at least MIN_WINDOW_IMAGES; otherwise
    the last closed window is taken if it never got an estimate (auto_estimate off); otherwise 409.
    """
    stream = lock_stream(session, stream_id)
    model: Model = get_model(session, stream.model_id)
    blocker = estimation_blocker(session, model)
    if blocker is not None:
        raise CalibrationRequired(blocker, model_id=str(model.id))
    if stream.window_fill >= MIN_WINDOW_IMAGES:
        closed = close_window(session, stream, auto=False)
        assert closed.job is not None
        session.flush()
        return closed.job, stream
    previous = stream.current_window_index - 1
    if previous >= 0:
        existing = active_estimate_job(session, stream_id=stream.id, window_index=previous)
        if existing is None:
            job = create_estimate_job(session, stream=stream, window_index=previous)
            session.flush()
            return job, stream
        if stream.window_fill == 0:
            raise EstimateAlreadyQueued(
                f"window {previous} of stream {stream.name!r} already has estimate job "
                f"{existing.id} ({existing.state}); the open window "
                f"{stream.current_window_index} has no images yet",
                job_id=str(existing.id),
            )
    raise WindowTooSmall(
        f"stream {stream.name!r}: open window {stream.current_window_index} holds "
        f"{stream.window_fill} images; an estimate needs at least {MIN_WINDOW_IMAGES}. "
        "Send more images first.",
        window_index=stream.current_window_index,
        window_fill=stream.window_fill,
        min_images=MIN_WINDOW_IMAGES,
    )
