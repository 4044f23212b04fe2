"""GET /v1/jobs/{id}: state, attempts, progress, timestamps, error."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from tests.conftest import bearer
from tests.factories import make_job, make_stream


def test_reports_progress_and_timestamps(client, session, read_token):
    stream = make_stream(session, steps=40)
    started = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    job = make_job(
        session,
        stream=stream,
        window_index=3,
        state="running",
        attempts=1,
        steps_done=10,
        started_at=started,
        heartbeat_at=started + timedelta(seconds=30),
        worker="gpu-1",
    )
    body = client.get(f"/v1/jobs/{job.id}", headers=bearer(read_token)).json()
    assert body["state"] == "running"
    assert body["attempts"] == 1 and body["max_attempts"] == 3
    assert body["progress"] == {
        "steps_done": 10,
        "steps_total": 40,
        "fraction": 0.25,
        "unit": "step",
        "eta_seconds": 90.0,  # 30 s for a quarter: 90 s to go
    }
    assert body["window_index"] == 3 and body["stream_id"] == str(stream.id)
    assert body["started_at"] == "2025-01-02T03:04:05Z"
    assert body["finished_at"] is None and body["error"] is None
    assert body["worker"] == "gpu-1"
    assert body["links"] == {"self": f"/v1/jobs/{job.id}", "stream": f"/v1/streams/{stream.id}"}


def test_reports_failure(client, session, read_token):
    stream = make_stream(session)
    job = make_job(session, stream=stream, state="failed", attempts=3, error="CUDA out of memory")
    body = client.get(f"/v1/jobs/{job.id}", headers=bearer(read_token)).json()
    assert (body["state"], body["attempts"], body["error"]) == ("failed", 3, "CUDA out of memory")


def test_unknown_job_is_404_problem(client, read_token):
    response = client.get(f"/v1/jobs/{uuid.uuid4()}", headers=bearer(read_token))
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "job-not-found"


def test_malformed_id_is_422_problem(client, read_token):
    response = client.get("/v1/jobs/not-a-uuid", headers=bearer(read_token))
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "job_id"


def test_calibration_progress_counts_variants_and_queued_jobs_have_no_eta(
    client, session, read_token
):
    stream = make_stream(session)
    started = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    calibrating = make_job(
        session,
        stream=stream,
        kind="calibrate",
        window_index=None,
        state="running",
        steps_done=7,
        steps_total=35,
        started_at=started,
        heartbeat_at=started + timedelta(seconds=14),
    )
    queued = make_job(session, stream=stream, window_index=1)
    body = client.get(f"/v1/jobs/{calibrating.id}", headers=bearer(read_token)).json()
    assert body["progress"]["unit"] == "variant"
    assert body["progress"]["eta_seconds"] == 56.0  # 7 of 35 in 14 s: 28 more at 2 s each
    body = client.get(f"/v1/jobs/{queued.id}", headers=bearer(read_token)).json()
    assert body["progress"]["eta_seconds"] is None
