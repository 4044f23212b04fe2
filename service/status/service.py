"""What the status page shows (GET / and GET /v1/status): each stream with its recent estimates,
its rules and their state changes, and the job queue. Read-only; a handful of queries per page.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from importlib.resources import files

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from flipwatch.service.core.tables import (
    JOB_STATES,
    AlertEvent,
    AlertRule,
    Estimate,
    Job,
    Model,
    Stream,
    utcnow,
)
from flipwatch.service.estimate.service import stored_result
from flipwatch.service.job.service import progress_fraction
from flipwatch.service.status.schemas import (
    StatusAlertMarker,
    StatusJob,
    StatusPoint,
    StatusRead,
    StatusRule,
    StatusStream,
)
from flipwatch.service.stream.schemas import WindowFill

# The page's templates/ and static/ folders, inside the installed package.
STATUS_FILES = files("flipwatch.service.status")
SERIES_WINDOWS = 100  # points per chart: the latest windows of each stream
QUEUE_LIMIT = 50
MAX_STREAMS = 200


def read_status(
    session: Session, *, windows: int = SERIES_WINDOWS, max_streams: int = MAX_STREAMS
) -> StatusRead:
    models = {m.id: m for m in session.scalars(select(Model))}
    streams = list(session.scalars(select(Stream).order_by(Stream.name).limit(max_streams)))
    stream_names = {s.id: s.name for s in streams}
    return StatusRead(
        generated_at=utcnow(),
        jobs=_job_counts(session),
        queue=_queue(session, models, stream_names),
        streams=[_stream_status(session, stream, models, windows) for stream in streams],
    )


def _stream_status(
    session: Session, stream: Stream, models: dict[uuid.UUID, Model], windows: int
) -> StatusStream:
    estimates = list(
        session.scalars(
            select(Estimate)
            .where(Estimate.stream_id == stream.id)
            .order_by(Estimate.window_index.desc())
            .limit(windows)
        )
    )[::-1]
    series = [
        StatusPoint(
            window_index=e.window_index,
            estimated_accuracy=e.estimated_accuracy,
            weighted_flips=e.weighted_flips,
            signal=e.signal,
            baselines=_baselines(e),
            created_at=e.created_at,
        )
        for e in estimates
    ]
    first_window = series[0].window_index if series else 0
    events = session.scalars(
        select(AlertEvent)
        .where(AlertEvent.stream_id == stream.id, AlertEvent.window_index >= first_window)
        .order_by(AlertEvent.created_at, AlertEvent.id)
    )
    rules = session.scalars(
        select(AlertRule).where(AlertRule.stream_id == stream.id).order_by(AlertRule.name)
    )
    model = models.get(stream.model_id)
    return StatusStream(
        id=stream.id,
        name=stream.name,
        model=model.name if model else "",
        model_version=model.version if model else 0,
        images_total=stream.images_total,
        window=WindowFill(
            index=stream.current_window_index, fill=stream.window_fill, size=stream.window_size
        ),
        latest=series[-1] if series else None,
        rules=[
            StatusRule(name=r.name, kind=r.kind, threshold=r.threshold, state=r.state)  # type: ignore[arg-type]
            for r in rules
        ],
        series=series,
        alerts=[
            StatusAlertMarker(
                window_index=e.window_index,
                state=e.state,  # type: ignore[arg-type]
                rule_name=e.rule_name,
                created_at=e.created_at,
            )
            for e in events
        ]
        if series
        else [],
    )


def _baselines(estimate: Estimate) -> dict[str, float | None]:
    result = stored_result(estimate)
    return dict(result.baselines) if result is not None else {}


def _job_counts(session: Session) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int, {state: 0 for state in JOB_STATES})
    for state, count in session.execute(select(Job.state, func.count()).group_by(Job.state)):
        counts[state] += count
    return dict(counts)


def _queue(
    session: Session, models: dict[uuid.UUID, Model], stream_names: dict[uuid.UUID, str]
) -> list[StatusJob]:
    jobs = session.scalars(
        select(Job)
        .where(Job.state.in_(("queued", "running")))
        .order_by(Job.created_at, Job.id)
        .limit(QUEUE_LIMIT)
    )
    out = []
    for job in jobs:
        model = models.get(job.model_id)
        out.append(
            StatusJob(
                id=job.id,
                kind=job.kind,  # type: ignore[arg-type]
                state=job.state,  # type: ignore[arg-type]
                stream=stream_names.get(job.stream_id) if job.stream_id else None,
                model=f"{model.name} v{model.version}" if model else "",
                window_index=job.window_index,
                progress=progress_fraction(job),
                created_at=job.created_at,
                started_at=job.started_at,
            )
        )
    return out
