"""GET /metrics: Prometheus text format, no API key (like /healthz; restrict it at the network).

Per-stream values are read from the database while the scrape runs (service/metrics/collector.py).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response, include_in_schema=False)
def read_metrics(request: Request) -> Response:
    """Sync on purpose: the collector's queries run in the threadpool, not on the event loop."""
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
