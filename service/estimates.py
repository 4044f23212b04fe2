"""Estimate reads: per stream, newest window first, keyset-paginated by window index."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from flipwatch.service.errors import EstimateNotFound, Invalid
from flipwatch.service.models import Estimate
from flipwatch.service.pagination import Cursor
from flipwatch.service.streams import get_stream


def list_estimates(
    session: Session, *, stream_id: uuid.UUID, limit: int, cursor: Cursor | None
) -> tuple[list[Estimate], Cursor | None]:
    """Windows are unique per stream and grow over time, so `window_index` is the keyset."""
    get_stream(session, stream_id)
    stmt = select(Estimate).where(Estimate.stream_id == stream_id)
    if cursor is not None:
        try:
            before = int(cursor.values[0])
        except (ValueError, TypeError) as exc:
            raise Invalid(
                "cursor does not belong to this list; pass the next_cursor of a page"
            ) from exc
        stmt = stmt.where(Estimate.window_index < before)
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
