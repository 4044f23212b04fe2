"""Labels for images already ingested: realized accuracy beside each window's estimate."""

from __future__ import annotations

from fastapi import APIRouter, Request

from flipwatch.service.api.deps import IngestKey, SessionDep, StreamID
from flipwatch.service.api.problems import problem_responses
from flipwatch.service.label import service as labels
from flipwatch.service.label.schemas import LabelsCreate, LabelsRead
from flipwatch.service.stream.service import lock_stream

router = APIRouter(tags=["labels"])


@router.post(
    "/v1/streams/{stream_id}/labels",
    response_model=LabelsRead,
    responses=problem_responses(401, 403, 404, 422),
)
def create_labels(
    request: Request, session: SessionDep, _key: IngestKey, stream_id: StreamID, body: LabelsCreate
) -> LabelsRead:
    """Set the true class of ingested images (by image id or content hash); each touched window
    gets its realized accuracy once FLIPWATCH_REALIZED_MIN_LABELS of its images are labeled.
    All or nothing: one unknown image or out-of-range label refuses the request (422)."""
    stream = lock_stream(session, stream_id)
    return labels.record_labels(
        session,
        stream,
        items=body.labels,
        min_labels=request.app.state.settings.realized_min_labels,
    )
