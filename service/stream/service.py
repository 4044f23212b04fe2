"""Streams and their windows.

Images fill the stream's open window (`current_window_index`, `window_fill`). A window closes when
it reaches `window_size` (then, with `auto_estimate`, an estimate job is queued for it), or early
when an on-demand estimate takes it (`estimate.service.request_estimate`). Every change happens
under the stream's row lock, so positions and window indexes are assigned once.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass

from sqlalchemy import event, select
from sqlalchemy.orm import Session, SessionTransaction

from flipwatch.service.calibration.service import estimation_blocker
from flipwatch.service.core.errors import ServiceUnavailable, StreamExists, StreamNotFound
from flipwatch.service.core.pagination import Cursor, keyset_page
from flipwatch.service.core.settings import Settings
from flipwatch.service.core.tables import Job, Stream
from flipwatch.service.job.service import create_estimate_job
from flipwatch.service.model.service import get_model


@dataclass(frozen=True)
class ClosedWindow:
    index: int
    job: Job | None
    notice: str | None = None


def get_stream(session: Session, stream_id: uuid.UUID) -> Stream:
    return _found(session.get(Stream, stream_id), stream_id)


def lock_stream(session: Session, stream_id: uuid.UUID) -> Stream:
    """The stream row, locked until this transaction ends.

    Postgres: SELECT ... FOR UPDATE. SQLite has no row locks and reads outside the write lock,
    so two requests would read the same window counters; there (one process: embedded mode) a
    per-stream lock of this process is held from here until the commit or rollback instead.
    """
    if session.get_bind().dialect.name == "sqlite":
        _hold_process_lock(session, stream_id)
    stream = session.scalar(
        select(Stream)
        .where(Stream.id == stream_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return _found(stream, stream_id)


_process_locks: dict[uuid.UUID, threading.Lock] = {}
_process_locks_guard = threading.Lock()
_HELD = "flipwatch_stream_locks"
PROCESS_LOCK_TIMEOUT_S = 60.0


def _hold_process_lock(session: Session, stream_id: uuid.UUID) -> None:
    held: set[uuid.UUID] | None = session.info.get(_HELD)
    if held is None:
        held = session.info[_HELD] = set()
        event.listen(session, "after_transaction_end", _release_process_locks)
    if stream_id in held:
        return
    with _process_locks_guard:
        lock = _process_locks.setdefault(stream_id, threading.Lock())
    if not lock.acquire(timeout=PROCESS_LOCK_TIMEOUT_S):
        raise ServiceUnavailable(
            f"stream {stream_id} is busy with other requests; retry shortly", retry_after=1
        )
    held.add(stream_id)


def _release_process_locks(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is not None:
        return  # a savepoint ended; the lock lasts until the outer transaction does
    held: set[uuid.UUID] = session.info.get(_HELD) or set()
    for stream_id in held:
        _process_locks[stream_id].release()
    held.clear()


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
    retain_images: int | None = None,
    retain_days: float | None = None,
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
        retain_images=retain_images,
        retain_days=retain_days,
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


def close_window(
    session: Session, stream: Stream, *, auto: bool, settings: Settings
) -> ClosedWindow:
    """Close the open window; queue its estimate when the stream estimates automatically.

    A model that may not be estimated yet (no calibration) closes the window without a job and
    returns the reason as a notice, so ingest never loses images over it.
    """
    index = stream.current_window_index
    stream.current_window_index += 1
    stream.window_fill = 0
    if auto and not stream.auto_estimate:
        return ClosedWindow(index=index, job=None)
    model = get_model(session, stream.model_id)
    blocker = estimation_blocker(session, model)
    if blocker is not None:
        return ClosedWindow(
            index=index, job=None, notice=f"window {index} not estimated: {blocker}"
        )
    job = create_estimate_job(
        session, stream=stream, model=model, window_index=index, settings=settings
    )
    return ClosedWindow(index=index, job=job)
