"""Estimates: asking for one over a stream's window, reading them, and reading their result.

A stored `Estimate.result` is `EstimateResult.to_dict()` as the worker wrote it; readers go through
`stored_result` to get the typed `EstimateResult` back.
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from flipwatch.service.calibration.service import estimation_blocker
from flipwatch.service.core.errors import (
    CalibrationRequired,
    EstimateAlreadyQueued,
    EstimateNotFound,
    WindowTooSmall,
)
from flipwatch.service.core.pagination import Cursor
from flipwatch.service.core.settings import Settings
from flipwatch.service.core.tables import Estimate, Job, Model, Stream
from flipwatch.service.job.service import active_estimate_job, create_estimate_job
from flipwatch.service.model.service import get_model
from flipwatch.service.stream.service import close_window, get_stream, lock_stream
from flipwatch.workers.estimation.result import EstimateResult

log = logging.getLogger(__name__)

# One adaptation batch: the estimator refuses fewer images (EstimateConfig.min_images). It is also
# where the measured error stays within the 4-point goal: windows of 64 held-out images were off
# by 3.95 (demo CNN) and 2.73 points (small ResNet) on average, 1,000 by 2.11 and 1.67
# (benchmarks/window_size.py, README "Choosing a window").
MIN_WINDOW_IMAGES = 64


def list_estimates(
    session: Session, *, stream_id: uuid.UUID, limit: int, cursor: Cursor | None
) -> tuple[list[Estimate], Cursor | None]:
    """Windows are unique per stream and grow over time, so `window_index` is the keyset."""
    get_stream(session, stream_id)
    stmt = select(Estimate).where(Estimate.stream_id == stream_id)
    if cursor is not None:
        stmt = stmt.where(Estimate.window_index < cursor.window_index())
    rows = list(session.scalars(stmt.order_by(Estimate.window_index.desc()).limit(limit + 1)))
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, Cursor((rows[-1].window_index,))


def get_estimate(session: Session, estimate_id: uuid.UUID) -> Estimate:
    estimate = session.get(Estimate, estimate_id)
    if estimate is None:
        raise EstimateNotFound(f"estimate {estimate_id} does not exist")
    return estimate


def stored_result(estimate: Estimate) -> EstimateResult | None:
    """The estimate's typed result, or None (logged) when the stored document does not parse,
    e.g. a row written by an older estimator: readers then show what the row's columns hold."""
    try:
        return EstimateResult.from_dict(estimate.result or {})
    except (TypeError, ValueError, AttributeError) as exc:
        log.warning("estimate %s: stored result does not parse: %s", estimate.id, exc)
        return None


def request_estimate(
    session: Session, stream_id: uuid.UUID, *, settings: Settings
) -> tuple[Job, Stream]:
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
        closed = close_window(session, stream, auto=False, settings=settings)
        assert closed.job is not None
        session.flush()
        return closed.job, stream
    previous = stream.current_window_index - 1
    if previous >= 0:
        existing = active_estimate_job(session, stream_id=stream.id, window_index=previous)
        if existing is None:
            job = create_estimate_job(
                session, stream=stream, model=model, window_index=previous, settings=settings
            )
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
        f"{stream.window_fill} images; an estimate needs at least {MIN_WINDOW_IMAGES} (one "
        "adaptation batch; measured error about 3-4 points at 64 images, 2-3 at 256). "
        "Send more images first.",
        window_index=stream.current_window_index,
        window_fill=stream.window_fill,
        min_images=MIN_WINDOW_IMAGES,
    )
