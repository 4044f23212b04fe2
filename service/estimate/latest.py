"""The per-stream `latest_estimates` row that /metrics reads instead of the estimates table.

`record_latest_estimate` runs in the transaction that inserts an estimate (the worker's
`finish_estimate`), so the row commits or rolls back with it. It is an upsert whose update keeps
the larger `window_index` (an older window estimated late does not replace a newer one) and the
newest `created_at`, so concurrent workers finishing windows of one stream cannot leave it stale.
Estimates are never deleted (retention deletes images and batches only); `rebuild_latest_estimates`
recomputes rows from the estimates table for a repair or a backfill.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from sqlalchemy import and_, case, delete, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from flipwatch.service.core.tables import Estimate, LatestEstimate
from flipwatch.workers.estimation.result import EstimateResult

SeriesValues = dict[str, Any]


def latest_series(result: Mapping[str, Any] | None) -> SeriesValues | None:
    """The finite values /metrics exports from a stored result document, or None when the
    document does not parse as an `EstimateResult` (then only the row's columns are exported).

    Keys: `lower`, `upper`, `label_shift` (each only when finite), `baselines` and `embedding`
    ({name: value}, sorted, finite only), `signal` with `signal_value` and `calibration_mae`
    (each only when finite), `used_fraction` (only when finite).
    """
    try:
        parsed = EstimateResult.from_dict(dict(result or {}))
    except (TypeError, ValueError, AttributeError):
        return None
    out: SeriesValues = {}
    for key, value in (
        ("lower", parsed.lower),
        ("upper", parsed.upper),
        ("label_shift", parsed.label_shift),
    ):
        if _finite(value):
            out[key] = float(value)
    out["baselines"] = dict(_numbers(parsed.baselines))
    out["embedding"] = dict(_numbers(parsed.embedding))
    out["signal"] = str(parsed.signal)
    for key, value in (
        ("signal_value", parsed.signal_value),
        ("calibration_mae", parsed.calibration_mae),
        ("used_fraction", parsed.used_fraction),
    ):
        if _finite(value):
            out[key] = float(value)
    return out


def record_latest_estimate(session: Session, estimate: Estimate) -> None:
    """Upsert the stream's row from a just-flushed estimate (same transaction).

    The newer window wins (>=, so re-recording the same estimate is a no-op); `last_estimate_at`
    only moves forward. One statement, so two workers racing on one stream serialise on the row.
    """
    values = {
        "stream_id": estimate.stream_id,
        "estimate_id": estimate.id,
        "window_index": estimate.window_index,
        "estimated_accuracy": float(estimate.estimated_accuracy),
        "weighted_flips": (
            float(estimate.weighted_flips) if estimate.weighted_flips is not None else None
        ),
        "series": latest_series(estimate.result),
        "last_estimate_at": estimate.created_at,
    }
    table = LatestEstimate.__table__
    dialect = session.get_bind().dialect.name
    upsert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table).values(values)
    newer = upsert.excluded.window_index >= table.c.window_index
    replaced = ("estimate_id", "window_index", "estimated_accuracy", "weighted_flips", "series")
    session.execute(
        upsert.on_conflict_do_update(
            index_elements=[table.c.stream_id],
            set_={
                **{c: case((newer, upsert.excluded[c]), else_=table.c[c]) for c in replaced},
                "last_estimate_at": case(
                    (
                        upsert.excluded.last_estimate_at > table.c.last_estimate_at,
                        upsert.excluded.last_estimate_at,
                    ),
                    else_=table.c.last_estimate_at,
                ),
            },
        )
    )


def rebuild_latest_estimates(
    session: Session, stream_ids: Iterable[uuid.UUID] | None = None
) -> int:
    """Recompute the rows of `stream_ids` (default: every stream) from the estimates table;
    returns how many rows now exist for them. For repairs and tests; the hot path is the upsert."""
    ids = list(stream_ids) if stream_ids is not None else None
    newest = select(
        Estimate.stream_id.label("stream_id"),
        func.max(Estimate.window_index).label("window_index"),
        func.max(Estimate.created_at).label("last_at"),
    ).group_by(Estimate.stream_id)
    clear = delete(LatestEstimate)
    if ids is not None:
        newest = newest.where(Estimate.stream_id.in_(ids))
        clear = clear.where(LatestEstimate.stream_id.in_(ids))
    latest = newest.subquery()
    session.execute(clear)
    rows = [
        {
            "stream_id": estimate.stream_id,
            "estimate_id": estimate.id,
            "window_index": estimate.window_index,
            "estimated_accuracy": float(estimate.estimated_accuracy),
            "weighted_flips": (
                float(estimate.weighted_flips) if estimate.weighted_flips is not None else None
            ),
            "series": latest_series(estimate.result),
            "last_estimate_at": last_at,
        }
        for estimate, last_at in session.execute(
            select(Estimate, latest.c.last_at).join(
                latest,
                and_(
                    Estimate.stream_id == latest.c.stream_id,
                    Estimate.window_index == latest.c.window_index,
                ),
            )
        )
    ]
    if rows:
        session.execute(insert(LatestEstimate), rows)
    session.flush()
    return len(rows)


def _numbers(values: Mapping[str, Any] | None) -> Iterator[tuple[str, float]]:
    """(name, value) for each finite number, sorted by name; nulls, bools and NaN skipped."""
    values = values or {}
    for name in sorted(values):
        if _finite(values[name]):
            yield str(name), float(values[name])


def _finite(value: Any) -> bool:
    """A real number that is not NaN (infinities pass, as the exposition writes +Inf/-Inf)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value
