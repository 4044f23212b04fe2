"""Estimates: on-demand requests over the current window, and newest-first keyset reads."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy.exc import IntegrityError

from flipwatch.service.core.tables import Job
from tests.conftest import bearer
from tests.factories import files, image_bytes, make_estimate, make_job, make_model, make_stream


def fill(client, token, stream, count: int, start: int = 0) -> dict:
    payload = files(*[(f"{i}.png", image_bytes(i)) for i in range(start, start + count)])
    response = client.post(f"/v1/streams/{stream.id}/batches", files=payload, headers=bearer(token))
    assert response.status_code == 202, response.text
    return response.json()


class TestCreateEstimate:
    def test_queues_the_open_window_and_closes_it(self, client, session, ingest_token, dispatcher):
        stream = make_stream(session, window_size=1000, steps=20)
        fill(client, ingest_token, stream, 64)
        response = client.post(f"/v1/streams/{stream.id}/estimates", headers=bearer(ingest_token))

        assert response.status_code == 202, response.text
        body = response.json()
        assert response.headers["location"] == f"/v1/jobs/{body['id']}"
        assert (body["kind"], body["state"], body["window_index"]) == ("estimate", "queued", 0)
        assert body["progress"] == {
            "steps_done": 0,
            "steps_total": 20,
            "fraction": 0.0,
            "unit": "step",
            "eta_seconds": None,
        }
        assert dispatcher.sent == [uuid.UUID(body["id"])]
        session.refresh(stream)
        assert (stream.current_window_index, stream.window_fill) == (1, 0)
        # The next images go to window 1.
        assert fill(client, ingest_token, stream, 1, start=100)["window"]["index"] == 1

    def test_refuses_a_window_under_64_images(self, client, session, ingest_token):
        stream = make_stream(session)
        fill(client, ingest_token, stream, 10)
        response = client.post(f"/v1/streams/{stream.id}/estimates", headers=bearer(ingest_token))
        assert response.status_code == 409
        body = response.json()
        assert body["code"] == "window-too-small"
        assert "10 images" in body["detail"] and "64" in body["detail"]
        assert (body["window_fill"], body["min_images"]) == (10, 64)

    def test_takes_the_last_closed_window_when_it_has_no_estimate(
        self, client, session, ingest_token
    ):
        stream = make_stream(session, window_size=64, auto_estimate=False)
        fill(client, ingest_token, stream, 64)
        response = client.post(f"/v1/streams/{stream.id}/estimates", headers=bearer(ingest_token))
        assert response.status_code == 202
        assert response.json()["window_index"] == 0
        again = client.post(f"/v1/streams/{stream.id}/estimates", headers=bearer(ingest_token))
        assert again.status_code == 409
        assert again.json()["code"] == "estimate-already-queued"

    def test_refuses_uncalibrated_non_imagenet_model(self, client, session, ingest_token):
        model = make_model(session, calibrated=False)
        stream = make_stream(session, model=model, window_size=1000)
        fill(client, ingest_token, stream, 64)
        response = client.post(f"/v1/streams/{stream.id}/estimates", headers=bearer(ingest_token))
        assert response.status_code == 409
        body = response.json()
        assert body["code"] == "calibration-required"
        assert f"/v1/models/{model.id}/calibrations" in body["detail"]
        assert session.get(type(stream), stream.id).window_fill == 64

    def test_imagenet_model_needs_no_calibration(self, client, session, ingest_token):
        model = make_model(session, calibrated=False, spec={"imagenet": True, "num_classes": 1000})
        stream = make_stream(session, model=model, window_size=1000)
        fill(client, ingest_token, stream, 64)
        response = client.post(f"/v1/streams/{stream.id}/estimates", headers=bearer(ingest_token))
        assert response.status_code == 202

    def test_unknown_stream_is_404(self, client, ingest_token):
        response = client.post(
            f"/v1/streams/{uuid.uuid4()}/estimates", headers=bearer(ingest_token)
        )
        assert response.status_code == 404


class TestListEstimates:
    def test_each_estimate_carries_its_interval_and_class_mix_distance(
        self, client, session, read_token
    ):
        stream = make_stream(session)
        estimate = make_estimate(session, stream=stream, window_index=0, estimated_accuracy=0.8)
        body = client.get(f"/v1/estimates/{estimate.id}", headers=bearer(read_token)).json()
        assert (body["lower"], body["upper"], body["interval_level"]) == (0.75, 0.85, 0.9)
        assert (body["label_shift"], body["estimator"]) == (0.12, "fit:wf@250")

    def test_newest_window_first_with_keyset_pages(self, client, session, read_token):
        stream = make_stream(session)
        other = make_stream(session)
        for window in (0, 2, 1, 4, 3):
            make_estimate(session, stream=stream, window_index=window)
        make_estimate(session, stream=other, window_index=9)
        seen, cursor = [], None
        while True:
            query = f"?limit=2&cursor={cursor}" if cursor else "?limit=2"
            page = client.get(
                f"/v1/streams/{stream.id}/estimates{query}", headers=bearer(read_token)
            ).json()
            seen.append([e["window_index"] for e in page["items"]])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == [[4, 3], [2, 1], [0]]

    def test_holds_the_full_estimator_output(self, client, session, read_token):
        stream = make_stream(session)
        job = make_job(session, stream=stream, window_index=0, state="succeeded")
        result = {
            "estimated_accuracy": 0.81,
            "signal": "wf",
            "signals": {"wf": 0.12},
            "checkpoints": {"0": 0.0, "10": 0.12},
            "baselines": {"ac": 0.9, "doc": 0.85},
            "embedding": {"frechet": 1.5},
            "steps": 10,
            "probe_size": 64,
            "seconds": 0.5,
            "device": "cpu",
            "model_version": 1,
        }
        estimate = make_estimate(
            session,
            stream=stream,
            window_index=0,
            job_id=job.id,
            result=result,
            estimated_accuracy=0.81,
            weighted_flips=0.12,
        )
        [item] = client.get(
            f"/v1/streams/{stream.id}/estimates", headers=bearer(read_token)
        ).json()["items"]
        assert item["result"] == result
        assert (item["estimated_accuracy"], item["weighted_flips"]) == (0.81, 0.12)
        # A result stored before intervals existed: the fields are there, null.
        assert (item["lower"], item["upper"], item["label_shift"]) == (None, None, None)
        one = client.get(f"/v1/estimates/{estimate.id}", headers=bearer(read_token)).json()
        assert one == item
        job_body = client.get(f"/v1/jobs/{job.id}", headers=bearer(read_token)).json()
        assert job_body["estimate_id"] == str(estimate.id)
        assert job_body["links"]["estimate"] == f"/v1/estimates/{estimate.id}"

    def test_unknown_stream_is_404(self, client, read_token):
        response = client.get(f"/v1/streams/{uuid.uuid4()}/estimates", headers=bearer(read_token))
        assert response.status_code == 404


def test_database_refuses_two_estimates_for_one_window(session):
    stream = make_stream(session)
    make_estimate(session, stream=stream, window_index=0)
    with pytest.raises(IntegrityError):
        make_estimate(session, stream=stream, window_index=0)
    session.rollback()


def test_job_row_defaults(session):
    stream = make_stream(session)
    job = make_job(session, stream=stream)
    session.refresh(job)
    assert isinstance(job, Job)
    assert (job.attempts, job.max_attempts, job.steps_done) == (0, 3, 0)
    assert job.created_at.tzinfo is not None
