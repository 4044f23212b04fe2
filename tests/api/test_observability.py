"""Request ids and structured logs: X-Request-ID accepted and returned, stored on the job the
request creates, on every log line of the request and of the job; JSON lines with a timestamp;
optional tracing of requests and jobs (off unless configured)."""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from collections.abc import Iterator

import pytest
import structlog
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from flipwatch.service.core.logging import configure_logging
from flipwatch.service.core.tables import Job
from flipwatch.service.core.tracing import configure_tracing, job_span, reset_tracing
from tests.conftest import bearer
from tests.factories import make_stream


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """The JSON handler, writing into a buffer; the previous root handlers come back after."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    buffer = io.StringIO()
    configure_logging("info", "json")
    root.handlers[0].setStream(buffer)  # type: ignore[attr-defined]
    try:
        yield buffer
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        structlog.reset_defaults()


def records(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def test_a_callers_request_id_is_returned(client: TestClient):
    response = client.get("/healthz", headers={"X-Request-ID": "pipeline-42.a"})
    assert response.headers["X-Request-ID"] == "pipeline-42.a"


def test_a_missing_or_unsafe_request_id_is_replaced_by_a_new_one(client: TestClient):
    generated = client.get("/healthz").headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    unsafe = client.get("/healthz", headers={"X-Request-ID": "a b\tc"}).headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", unsafe)
    too_long = client.get("/healthz", headers={"X-Request-ID": "x" * 129})
    assert too_long.headers["X-Request-ID"] != "x" * 129


def test_the_job_a_request_creates_carries_its_request_id(
    client: TestClient, session: Session, ingest_token: str
):
    stream = make_stream(session, window_fill=100, images_total=100)
    response = client.post(
        f"/v1/streams/{stream.id}/estimates",
        headers=bearer(ingest_token) | {"X-Request-ID": "req-estimate-7"},
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["request_id"] == "req-estimate-7"
    assert session.get(Job, uuid.UUID(job["id"])).request_id == "req-estimate-7"  # type: ignore[union-attr]
    again = client.get(f"/v1/jobs/{job['id']}", headers=bearer(ingest_token)).json()
    assert again["request_id"] == "req-estimate-7"


def test_access_lines_are_json_with_timestamp_and_request_id(client: TestClient, log_lines):
    client.get("/healthz", headers={"X-Request-ID": "rid-1"})

    (access,) = [r for r in records(log_lines) if r.get("logger") == "flipwatch.access"]
    assert access["event"] == "request"
    assert access["request_id"] == "rid-1"
    assert access["method"] == "GET" and access["path"] == "/healthz" and access["status"] == 200
    assert access["level"] == "info"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", access["timestamp"])
    assert isinstance(access["duration_ms"], float)


def test_stdlib_log_lines_in_a_request_or_job_carry_the_ids(log_lines):
    with structlog.contextvars.bound_contextvars(request_id="rid-2", job_id="j-1"):
        logging.getLogger("flipwatch.workers.jobs").warning("job %s failed: %s", "j-1", "boom")
    (line,) = records(log_lines)
    assert line["event"] == "job j-1 failed: boom"
    assert line["request_id"] == "rid-2" and line["job_id"] == "j-1"
    assert line["level"] == "warning" and line["logger"] == "flipwatch.workers.jobs"


def test_tracing_is_off_unless_configured(settings):
    assert configure_tracing(settings) is False  # no FLIPWATCH_OTEL_ENDPOINT


def test_configured_tracing_records_requests_sql_and_jobs(settings, engine):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from flipwatch.service.core.db import make_sessionmaker
    from flipwatch.service.main import create_app

    exporter = InMemorySpanExporter()
    assert configure_tracing(settings, exporter=exporter) is True
    try:
        app = create_app(
            settings.model_copy(update={"webhook_poll_seconds": 0}),
            session_factory=make_sessionmaker(engine),
        )
        with TestClient(app) as client:
            assert client.get("/healthz").status_code == 200
        with job_span(uuid.UUID(int=7), "rid-3"):
            pass
    finally:
        reset_tracing()
    spans = exporter.get_finished_spans()
    assert any(s.name.startswith("GET /healthz") for s in spans), [s.name for s in spans]
    (job,) = [s for s in spans if s.name == "estimation.run_job"]
    assert job.attributes["flipwatch.request_id"] == "rid-3"
    assert job.attributes["flipwatch.job_id"] == str(uuid.UUID(int=7))
