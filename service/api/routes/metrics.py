"""GET /metrics: Prometheus text format, no API key (like /healthz; restrict it at the network).

Per-stream values are read from the database while the scrape runs (service/metrics/collector.py).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response, include_in_schema=False)
def read_metrics(request: Request) -> Response:
    """Sync on purpose: the collector's queries run in the threadpool, not on the event loop.
    Gzipped when the scraper accepts it."""
    body, headers = request.app.state.metrics.response(request.headers.get("accept-encoding"))
    return Response(body, headers=headers)
