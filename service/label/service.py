"""Record labels for ingested images and compute each window's realized accuracy.

Realized accuracy needs the model's own prediction per image: the estimate job stores it
(`images.predicted_label`), so labels may arrive before or after the estimate; whichever comes
last computes it (`refresh_realized_accuracy`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from flipwatch.service.core.errors import Invalid
from flipwatch.service.core.tables import Estimate, Image, Model, Stream, utcnow
from flipwatch.service.label.schemas import LabelItem, LabelsRead, WindowRealized


class LabelsRejected(Invalid):
    """No label written; `errors` holds one {index, reason} per refused item."""

    code = "labels-rejected"
    title = "Labels rejected"


def record_labels(
    session: Session, stream: Stream, *, items: Sequence[LabelItem], min_labels: int
) -> LabelsRead:
    """Set the labels (all or none), then refresh the realized accuracy of touched windows."""
    num_classes = _num_classes(session, stream)
    by_id: dict[uuid.UUID, int] = {}
    by_hash: dict[str, int] = {}
    for item in items:
        if item.image_id is not None:
            by_id[item.image_id] = item.label
        else:
            by_hash[item.sha256 or ""] = item.label
    known_ids = (
        set(
            session.scalars(
                select(Image.id).where(Image.stream_id == stream.id, Image.id.in_(by_id))
            )
        )
        if by_id
        else set()
    )
    known_hashes = (
        set(
            session.scalars(
                select(Image.sha256).where(Image.stream_id == stream.id, Image.sha256.in_(by_hash))
            )
        )
        if by_hash
        else set()
    )
    errors = []
    for index, item in enumerate(items):
        if num_classes is not None and item.label >= num_classes:
            errors.append(
                {"index": index, "reason": f"label {item.label} >= {num_classes} classes"}
            )
        elif item.image_id is not None and item.image_id not in known_ids:
            errors.append({"index": index, "reason": f"no image {item.image_id} in this stream"})
        elif item.sha256 is not None and item.sha256 not in known_hashes:
            errors.append({"index": index, "reason": f"no image with sha256 {item.sha256} here"})
    if errors:
        first = errors[0]
        raise LabelsRejected(
            f"{len(errors)} of {len(items)} labels refused for stream {stream.name!r}; first: "
            f"item {first['index']}: {first['reason']}. Nothing was written: fix and resend.",
            errors=errors,
        )

    now = utcnow()
    labeled = 0
    for image_id, label in by_id.items():
        labeled += session.execute(
            update(Image).where(Image.id == image_id).values(label=label, labeled_at=now)
        ).rowcount
    for sha256, label in by_hash.items():
        labeled += session.execute(
            update(Image)
            .where(Image.stream_id == stream.id, Image.sha256 == sha256)
            .values(label=label, labeled_at=now)
        ).rowcount
    windows = sorted(
        set(
            session.scalars(
                select(Image.window_index).where(
                    Image.stream_id == stream.id,
                    (Image.id.in_(by_id)) | (Image.sha256.in_(by_hash)),
                )
            )
        )
    )
    session.flush()
    return LabelsRead(
        images_labeled=labeled,
        windows=[
            refresh_realized_accuracy(session, stream.id, w, min_labels=min_labels) for w in windows
        ],
    )


def refresh_realized_accuracy(
    session: Session, stream_id: uuid.UUID, window_index: int, *, min_labels: int
) -> WindowRealized:
    """Count the window's labeled, predicted images; store the realized accuracy on its estimate
    once there are `min_labels` of them (the estimate job calls this too)."""
    labeled, correct = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(case((Image.label == Image.predicted_label, 1), else_=0)), 0),
        ).where(
            Image.stream_id == stream_id,
            Image.window_index == window_index,
            Image.label.is_not(None),
            Image.predicted_label.is_not(None),
        )
    ).one()
    estimate = session.scalar(
        select(Estimate).where(
            Estimate.stream_id == stream_id, Estimate.window_index == window_index
        )
    )
    realized = correct / labeled if labeled and labeled >= min_labels else None
    if estimate is not None:
        estimate.labeled_count = int(labeled)
        if realized is not None and estimate.realized_accuracy != realized:
            estimate.realized_accuracy = float(realized)
            estimate.realized_at = utcnow()
        session.flush()
    return WindowRealized(
        window_index=window_index,
        estimate_id=estimate.id if estimate is not None else None,
        labeled_count=int(labeled),
        estimated_accuracy=estimate.estimated_accuracy if estimate is not None else None,
        realized_accuracy=realized if estimate is not None else None,
        estimator_error=(
            estimate.estimated_accuracy - realized
            if estimate is not None and realized is not None
            else None
        ),
    )


def estimator_errors(estimates: Iterable[Estimate]) -> list[float]:
    """|estimated - realized| of each estimate that has a realized accuracy."""
    return [
        abs(e.estimated_accuracy - e.realized_accuracy)
        for e in estimates
        if e.realized_accuracy is not None
    ]


def _num_classes(session: Session, stream: Stream) -> int | None:
    spec = session.scalar(select(Model.spec).where(Model.id == stream.model_id))
    value = spec.get("num_classes") if isinstance(spec, dict) else None
    return int(value) if isinstance(value, int) else None
