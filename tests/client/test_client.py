"""flipwatch.client against the real app on a fresh Postgres database (tests/conftest.py `client`).

Failures of the network are simulated by `Network`, an httpx transport in front of the app's
own: it can lose an answer after the app has handled the request, refuse a connection, or answer
in place of the app as a proxy would (503 with Retry-After). Everything behind it is real.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session

from flipwatch.client import (
    FlipwatchClient,
    FlipwatchError,
    IdempotencyConflict,
    JobFailed,
    JobTimeout,
    RetryPolicy,
    TransportFailed,
    retry_after_seconds,
)
from flipwatch.workers.estimation.spec import ModelSpec
from flipwatch.workers.estimation.zoo import tiny
from tests.factories import image_bytes, make_estimate, make_job, make_model, make_stream

TINY_SPEC: dict[str, Any] = {
    "name": "shelf-tiny",
    "format": "entrypoint",
    "entrypoint": "tiny",
    "num_classes": 10,
    "input": {"color": "RGB", "size": [32, 32], "mean": [0.5], "std": [0.25]},
}
NO_RETRY_JITTER = RetryPolicy(attempts=4, backoff=0.5, backoff_max=30.0, jitter=0.0)


@pytest.fixture(scope="module")
def tiny_weights() -> bytes:
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(tiny(num_classes=10).state_dict(), buffer)
    return buffer.getvalue()


Fault = Callable[[httpx.Request, Callable[[], httpx.Response]], httpx.Response]


class Network(httpx.BaseTransport):
    """The path between client and app. `faults` are used up one per request (then requests
    pass): each gets the request and a function that lets the app handle it."""

    def __init__(self, app: httpx.BaseTransport) -> None:
        self.app = app
        self.faults: list[Fault] = []
        self.seen: list[httpx.Request] = []  # every request the client sent
        self.reached_app: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)

        def forward() -> httpx.Response:
            self.reached_app.append(request)
            response = self.app.handle_request(request)
            response.read()
            return response

        if self.faults:
            return self.faults.pop(0)(request, forward)
        return forward()


def lose_the_answer(
    request: httpx.Request, forward: Callable[[], httpx.Response]
) -> httpx.Response:
    """The app stores the request, then the connection drops before the answer arrives."""
    forward()
    raise httpx.ReadError("connection reset by peer", request=request)


def refuse_connection(
    request: httpx.Request, _forward: Callable[[], httpx.Response]
) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def proxy_answer(status: int, retry_after: str | None = None, body: str | None = None) -> Fault:
    """A load balancer answering for the app (the app never sees the request)."""

    def fault(request: httpx.Request, _forward: Callable[[], httpx.Response]) -> httpx.Response:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        if body is None:
            problem = {"type": "about:blank", "title": "Unavailable", "status": status}
            return httpx.Response(
                status,
                json=problem | {"code": "upstream-down", "detail": "try later"},
                headers=headers,
                request=request,
            )
        return httpx.Response(status, text=body, headers=headers, request=request)

    return fault


@pytest.fixture
def network(client: TestClient) -> Network:
    # The TestClient's own transport runs the app in-process (with its lifespan state).
    return Network(client._transport)


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def api(client: TestClient, network: Network, admin_token: str, sleeps: list[float]):
    """A FlipwatchClient with the admin key, over `network`; retry delays are recorded."""
    http = httpx.Client(transport=network, base_url=str(client.base_url))
    with (
        http,
        FlipwatchClient(
            token=admin_token, http=http, retry=NO_RETRY_JITTER, sleep=sleeps.append
        ) as api,
    ):
        yield api


def stored_images(session: Session, stream_id: str) -> list[tuple[str, int]]:
    rows = session.execute(
        text("SELECT filename, position FROM images WHERE stream_id = :id ORDER BY position"),
        {"id": uuid.UUID(stream_id)},
    )
    return [(name, position) for name, position in rows]


def batch_count(session: Session, stream_id: str) -> int:
    return session.scalar(
        text("SELECT count(*) FROM batches WHERE stream_id = :id"), {"id": uuid.UUID(stream_id)}
    )


def reference_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for cls in [f"class{c}" for c in range(10)]:  # one folder per class of the 10-class model
            for i in range(2):
                archive.writestr(f"{cls}/{i}.png", image_bytes(i))
    return path


def test_imports_without_torch() -> None:
    heavy = ("torch", "numpy", "flipwatch.service", "flipwatch.workers")
    code = f"import sys, flipwatch.client; print(sorted(set({heavy!r}) & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


class TestConstruction:
    def test_needs_a_base_url_or_an_http_client(self) -> None:
        with pytest.raises(ValueError, match="give base_url"):
            FlipwatchClient(token="t")

    def test_closes_only_the_http_client_it_opened(self, client: TestClient) -> None:
        with FlipwatchClient("http://flipwatch.invalid:8000/", token="t") as own:
            pass
        assert own._http.is_closed
        with FlipwatchClient(token="t", http=client):
            pass
        assert not client.is_closed

    def test_sends_the_token_and_prefixes_the_base_url(self) -> None:
        seen: list[httpx.Request] = []

        def answer(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return httpx.Response(200, json={"items": [], "next_cursor": None})

        http = httpx.Client(transport=httpx.MockTransport(answer))
        with FlipwatchClient("http://flipwatch:8000/", token="s3cret", http=http) as api:
            assert api.list_streams(limit=5).items == []
        (request,) = seen
        assert str(request.url) == "http://flipwatch:8000/v1/streams?limit=5"
        assert request.headers["authorization"] == "Bearer s3cret"
        assert request.headers["user-agent"].startswith("flipwatch-client/")


class TestModels:
    def test_registers_spec_and_weights_then_reads_versions_back(
        self, api: FlipwatchClient, tiny_weights: bytes, tmp_path: Path, data_dir: Path
    ) -> None:
        weights = tmp_path / "shelf.pt"
        weights.write_bytes(tiny_weights)
        first = api.register_model(TINY_SPEC, weights)
        second = api.register_model(TINY_SPEC, tiny_weights)  # bytes work too

        digest = hashlib.sha256(tiny_weights).hexdigest()
        assert (first.name, first.version, first.weights_sha256) == ("shelf-tiny", 1, digest)
        assert second.version == 2
        assert first.spec["weights"] == f"models/{digest}.pt"  # the storage key
        assert (data_dir / first.spec["weights"]).is_file()
        assert first.created_at.tzinfo is not None
        assert api.get_model(first.id) == first
        assert [m.version for m in api.list_models(name="shelf-tiny").items] == [2, 1]
        page = api.list_models(name="shelf-tiny", limit=1)
        assert [m.version for m in page.items] == [2] and page.next_cursor is not None
        assert [m.version for m in api.iter_models(name="shelf-tiny", page_size=1)] == [2, 1]

    def test_a_model_spec_object_is_sent_without_its_local_weights_path(
        self, api: FlipwatchClient, tiny_weights: bytes
    ) -> None:
        spec = ModelSpec.model_validate(TINY_SPEC | {"weights": "/home/me/shelf.pt"})
        model = api.register_model(spec, tiny_weights, filename="shelf.pt")
        assert model.spec["weights"] == f"models/{hashlib.sha256(tiny_weights).hexdigest()}.pt"
        assert model.spec["entrypoint"] == "tiny"

    def test_a_rejected_model_raises_the_problem(
        self, api: FlipwatchClient, tiny_weights: bytes
    ) -> None:
        with pytest.raises(FlipwatchError) as caught:
            api.register_model(TINY_SPEC | {"num_classes": 0}, tiny_weights)
        error = caught.value
        assert (error.status, error.code) == (422, "invalid-model-spec")
        assert "num_classes" in error.detail
        assert error.request == "POST /v1/models"
        assert str(error).startswith("POST /v1/models: 422 invalid-model-spec: ")


class TestCalibrations:
    def test_uploads_a_reference_archive_with_its_options(
        self, api: FlipwatchClient, session: Session, tmp_path: Path, dispatcher
    ) -> None:
        model = make_model(session, calibrated=False)
        calibration = api.start_calibration(
            model.id,
            reference_zip(tmp_path / "reference.zip"),
            steps=50,
            families=["contrast", "fog"],
            severities=[2, 4],
        )
        assert calibration.state == "queued"
        assert (calibration.reference_images, calibration.reference_classes) == (
            20,
            [f"class{c}" for c in range(10)],
        )
        assert calibration.options == {
            "steps": 50,
            "families": ["contrast", "fog"],
            "severities": [2, 4],
        }
        assert dispatcher.sent == [uuid.UUID(calibration.job_id)]
        assert api.get_calibration(calibration.id).job_id == calibration.job_id

    def test_unknown_families_are_a_422_naming_them(
        self, api: FlipwatchClient, session: Session, tmp_path: Path
    ) -> None:
        model = make_model(session, calibrated=False)
        with pytest.raises(FlipwatchError) as caught:
            api.start_calibration(model.id, reference_zip(tmp_path / "r.zip"), families="haze")
        assert caught.value.code == "invalid-calibration-options"
        assert "['haze']" in caught.value.detail

    def test_wait_returns_the_calibration_once_its_job_succeeded(
        self, api: FlipwatchClient, session: Session, tmp_path: Path
    ) -> None:
        model = make_model(session, calibrated=False)
        started = api.start_calibration(model.id, reference_zip(tmp_path / "reference.zip"))
        polls: list[str] = []

        def worker_finishes(job) -> None:  # what the worker would commit
            polls.append(job.state)
            session.execute(
                text("UPDATE jobs SET state = 'succeeded' WHERE id = :id"),
                {"id": uuid.UUID(job.id)},
            )
            session.execute(
                text(
                    "UPDATE calibrations SET state = 'succeeded', reference_accuracy = 0.93 "
                    "WHERE id = :id"
                ),
                {"id": uuid.UUID(started.id)},
            )
            session.expire_all()  # the app reads through this session's identity map

        done = api.wait_calibration(started.id, timeout=10, poll=0.01, on_progress=worker_finishes)
        assert polls == ["queued"]
        assert (done.id, done.state, done.reference_accuracy) == (started.id, "succeeded", 0.93)


class TestStreams:
    def test_creates_reads_and_lists_streams_newest_first(
        self, api: FlipwatchClient, session: Session
    ) -> None:
        model = make_model(session)
        first = api.create_stream("camera-1", model.id, window_size=64, steps=10)
        second = api.create_stream("camera-2", model.id, auto_estimate=False)
        assert (first.name, first.window_size, first.steps, first.auto_estimate) == (
            "camera-1",
            64,
            10,
            True,
        )
        assert (second.window_size, second.steps, second.auto_estimate) == (1000, 250, False)
        assert (first.images_total, first.current_window_index, first.window_fill) == (0, 0, 0)
        assert api.get_stream(first.id) == first
        assert [s.name for s in api.iter_streams(page_size=1)] == ["camera-2", "camera-1"]

    def test_a_taken_name_is_a_409(self, api: FlipwatchClient, session: Session) -> None:
        model = make_model(session)
        api.create_stream("camera-1", model.id)
        with pytest.raises(FlipwatchError) as caught:
            api.create_stream("camera-1", model.id)
        assert (caught.value.status, caught.value.code) == (409, "stream-exists")


class TestBatches:
    def test_posts_bytes_paths_and_named_images(
        self, api: FlipwatchClient, session: Session, tmp_path: Path
    ) -> None:
        stream = api.create_stream("cam", make_model(session).id, window_size=64)
        path = tmp_path / "frame.jpg"
        path.write_bytes(image_bytes(2, fmt="JPEG"))
        answer = api.post_batch(
            stream.id, [image_bytes(1), path, ("c.webp", image_bytes(3, fmt="WEBP"))]
        )

        assert (answer.stream_id, answer.image_count, answer.images_total) == (stream.id, 3, 3)
        assert (answer.window.index, answer.window.fill, answer.window.size) == (0, 3, 64)
        assert (answer.jobs, answer.job_url, answer.replayed) == ([], None, False)
        assert len(answer.idempotency_key) == 32
        assert stored_images(session, stream.id) == [
            ("image-00000.png", 0),
            ("frame.jpg", 1),
            ("c.webp", 2),
        ]

    def test_post_images_splits_batches_and_returns_the_window_jobs(
        self, api: FlipwatchClient, session: Session, dispatcher
    ) -> None:
        stream = api.create_stream("cam", make_model(session).id, window_size=64)
        answers = api.post_images(stream.id, [image_bytes(i) for i in range(70)], batch_size=30)

        assert [a.image_count for a in answers] == [30, 30, 10]
        assert len({a.idempotency_key for a in answers}) == 3
        assert [len(a.jobs) for a in answers] == [0, 0, 1]
        (job,) = answers[2].jobs
        assert job.window_index == 0
        assert answers[2].window.index == 1 and answers[2].window.fill == 6
        assert dispatcher.sent == [uuid.UUID(job.id)]

    def test_a_rejected_batch_names_each_bad_file_and_stores_nothing(
        self, api: FlipwatchClient, session: Session
    ) -> None:
        stream = api.create_stream("cam", make_model(session).id, window_size=64)
        with pytest.raises(FlipwatchError) as caught:
            api.post_batch(stream.id, [image_bytes(1), ("notes.txt", b"not an image")])
        error = caught.value
        assert (error.status, error.code) == (422, "batch-rejected")
        assert [(e["file"], e["index"]) for e in error.errors] == [("notes.txt", 1)]
        assert "notes.txt: not a supported image" in str(error)
        assert stored_images(session, stream.id) == []

    def test_a_key_reused_for_other_images_raises_idempotency_conflict(
        self, api: FlipwatchClient, session: Session
    ) -> None:
        stream = api.create_stream("cam", make_model(session).id, window_size=64)
        api.post_batch(stream.id, [image_bytes(1)], idempotency_key="batch-0001")
        with pytest.raises(IdempotencyConflict) as caught:
            api.post_batch(stream.id, [image_bytes(2)], idempotency_key="batch-0001")
        assert (caught.value.status, caught.value.code) == (409, "idempotency-conflict")
        assert "batch-0001" in caught.value.detail
        assert stored_images(session, stream.id) == [("image-00000.png", 0)]


class TestRetries:
    def test_a_batch_whose_answer_was_lost_is_retried_and_stored_once(
        self,
        api: FlipwatchClient,
        network: Network,
        session: Session,
        sleeps: list[float],
        data_dir: Path,
    ) -> None:
        stream = api.create_stream("cam", make_model(session).id, window_size=64)
        network.faults = [lose_the_answer]
        images = [image_bytes(i) for i in range(3)]

        answer = api.post_batch(stream.id, images)

        posts = [r for r in network.reached_app if r.url.path.endswith("/batches")]
        assert len(posts) == 2  # the app handled the batch twice...
        keys = {r.headers["Idempotency-Key"] for r in posts}
        assert keys == {answer.idempotency_key}  # ...under one key
        assert answer.replayed and answer.image_count == 3
        assert sleeps == [0.5]
        assert batch_count(session, stream.id) == 1  # ...and stored it once
        assert [p for _, p in stored_images(session, stream.id)] == [0, 1, 2]
        assert api.get_stream(stream.id).images_total == 3
        assert len([p for p in (data_dir / "images").rglob("*") if p.is_file()]) == 3

    def test_each_logical_batch_has_its_own_key(
        self, api: FlipwatchClient, session: Session
    ) -> None:
        """The control for the test above: the same images posted as a new batch are new."""
        stream = api.create_stream("cam", make_model(session).id, window_size=64)
        first = api.post_batch(stream.id, [image_bytes(1)])
        second = api.post_batch(stream.id, [image_bytes(1)])
        assert first.idempotency_key != second.idempotency_key
        assert not second.replayed
        assert batch_count(session, stream.id) == 2

    @pytest.mark.parametrize("status", [429, 502, 503, 504])
    def test_reads_are_retried_on_busy_statuses_honouring_retry_after(
        self,
        api: FlipwatchClient,
        network: Network,
        session: Session,
        sleeps: list[float],
        status: int,
    ) -> None:
        stream = make_stream(session)
        network.faults = [proxy_answer(status, "3"), proxy_answer(status)]
        assert api.get_stream(stream.id).name == stream.name
        assert sleeps == [3.0, 1.0]  # Retry-After, then the second backoff step
        assert len(network.seen) == 3 and len(network.reached_app) == 1

    def test_retry_after_may_be_an_http_date(
        self, api: FlipwatchClient, network: Network, session: Session, sleeps: list[float]
    ) -> None:
        stream = make_stream(session)
        later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
        network.faults = [proxy_answer(503, later)]
        api.get_stream(stream.id)
        (slept,) = sleeps
        assert 28.0 <= slept <= 30.0

    def test_gives_up_after_the_attempts_with_the_last_answer(
        self, api: FlipwatchClient, network: Network, session: Session, sleeps: list[float]
    ) -> None:
        stream = make_stream(session)
        network.faults = [proxy_answer(502, body="<html>Bad Gateway</html>")] * 4
        with pytest.raises(FlipwatchError) as caught:
            api.get_stream(stream.id)
        assert (caught.value.status, caught.value.code) == (502, "http-502")
        assert caught.value.detail == "<html>Bad Gateway</html>"
        assert sleeps == [0.5, 1.0, 2.0]
        assert len(network.seen) == 4

    def test_a_retry_after_past_the_policy_is_not_waited_for(
        self, api: FlipwatchClient, network: Network, session: Session, sleeps: list[float]
    ) -> None:
        network.faults = [proxy_answer(503, "3600")]
        with pytest.raises(FlipwatchError) as caught:
            api.get_stream(make_stream(session).id)
        assert (caught.value.status, caught.value.code) == (503, "upstream-down")
        assert sleeps == []

    def test_transport_errors_on_reads_are_retried_then_reported(
        self, api: FlipwatchClient, network: Network, session: Session, sleeps: list[float]
    ) -> None:
        stream = make_stream(session)
        network.faults = [lose_the_answer, refuse_connection]
        assert api.get_stream(stream.id).id == str(stream.id)
        network.faults = [refuse_connection] * 4
        with pytest.raises(TransportFailed) as caught:
            api.get_stream(stream.id)
        assert caught.value.status is None and caught.value.code == "transport-error"
        assert "after 4 attempt(s): ConnectError" in caught.value.detail
        assert sleeps == [0.5, 1.0, 0.5, 1.0, 2.0]

    def test_a_create_whose_answer_was_lost_is_not_sent_again(
        self, api: FlipwatchClient, network: Network, session: Session
    ) -> None:
        """A stream (or model, or calibration) created twice is not what the caller wanted."""
        model = make_model(session)
        network.faults = [lose_the_answer]
        with pytest.raises(TransportFailed, match="not resent: the server may have processed it"):
            api.create_stream("cam", model.id)
        assert len(network.seen) == 1
        assert [s.name for s in api.iter_streams()] == ["cam"]

    def test_a_create_is_resent_when_it_never_reached_the_server(
        self, api: FlipwatchClient, network: Network, session: Session, sleeps: list[float]
    ) -> None:
        model = make_model(session)
        network.faults = [refuse_connection, proxy_answer(503, "2"), proxy_answer(502)]
        with pytest.raises(FlipwatchError) as caught:  # a 502 may hide a processed request
            api.create_stream("cam", model.id)
        assert caught.value.status == 502
        assert sleeps == [0.5, 2.0]
        assert len(network.reached_app) == 0
        assert api.create_stream("cam", model.id).name == "cam"


class TestEstimates:
    def test_lists_pages_and_iterates_newest_window_first(
        self, api: FlipwatchClient, session: Session
    ) -> None:
        stream = make_stream(session)
        for index in range(5):
            make_estimate(
                session,
                stream=stream,
                window_index=index,
                result={"estimated_accuracy": 0.9, "baselines": {"ac": 0.95, "atc": None}},
            )
        page = api.list_estimates(stream.id, limit=2)
        assert [e.window_index for e in page.items] == [4, 3]
        assert page.next_cursor is not None
        rest = api.list_estimates(stream.id, limit=2, cursor=page.next_cursor)
        assert [e.window_index for e in rest.items] == [2, 1]
        assert [e.window_index for e in api.iter_estimates(stream.id, page_size=2)] == [
            4,
            3,
            2,
            1,
            0,
        ]
        latest = api.get_estimate(page.items[0].id)
        assert (latest.estimated_accuracy, latest.signal, latest.weighted_flips) == (
            0.86,
            "wf",
            0.1,
        )
        assert latest.baselines == {"ac": 0.95, "atc": None}

    def test_requesting_an_estimate_on_a_small_window_is_a_409(
        self, api: FlipwatchClient, session: Session
    ) -> None:
        stream = api.create_stream("cam", make_model(session).id, window_size=64)
        api.post_batch(stream.id, [image_bytes(1)])
        with pytest.raises(FlipwatchError) as caught:
            api.request_estimate(stream.id)
        assert (caught.value.status, caught.value.code) == (409, "window-too-small")

    def test_requests_an_estimate_over_the_open_window(
        self, api: FlipwatchClient, session: Session, dispatcher
    ) -> None:
        stream = api.create_stream("cam", make_model(session).id, window_size=128)
        api.post_images(stream.id, [image_bytes(i) for i in range(64)])
        job = api.request_estimate(stream.id)
        assert (job.kind, job.state, job.window_index, job.stream_id) == (
            "estimate",
            "queued",
            0,
            stream.id,
        )
        assert dispatcher.sent == [uuid.UUID(job.id)]


class TestJobs:
    def test_wait_returns_a_succeeded_job_with_its_estimate(
        self, api: FlipwatchClient, session: Session
    ) -> None:
        stream = make_stream(session)
        job = make_job(session, stream=stream, state="succeeded", steps_done=10)
        estimate = make_estimate(session, stream=stream, window_index=0, job_id=job.id)
        done = api.wait_job(job.id)
        assert (done.state, done.estimate_id) == ("succeeded", str(estimate.id))
        assert (done.progress.steps_done, done.progress.steps_total) == (10, 10)
        assert done.links["estimate"] == f"/v1/estimates/{estimate.id}"

    def test_wait_raises_job_failed_with_the_jobs_error(
        self, api: FlipwatchClient, session: Session
    ) -> None:
        job = make_job(
            session,
            stream=make_stream(session),
            state="failed",
            attempts=3,
            error="RuntimeError: CUDA out of memory",
        )
        with pytest.raises(JobFailed) as caught:
            api.wait_job(job.id)
        assert caught.value.job.id == str(job.id)
        assert caught.value.detail == (
            f"estimate job {job.id} failed after 3 attempt(s): RuntimeError: CUDA out of memory"
        )

    def test_wait_polls_until_the_job_finishes(
        self, api: FlipwatchClient, session: Session, sleeps: list[float]
    ) -> None:
        job = make_job(session, stream=make_stream(session))
        seen: list[str] = []

        def progress(polled) -> None:
            seen.append(polled.state)
            next_state = "running" if polled.state == "queued" else "succeeded"
            session.execute(
                text("UPDATE jobs SET state = :s WHERE id = :id"), {"s": next_state, "id": job.id}
            )
            session.expire_all()  # the app reads through this session's identity map

        assert (
            api.wait_job(job.id, timeout=10, poll=0.25, on_progress=progress).state == "succeeded"
        )
        assert seen == ["queued", "running"]
        assert sleeps == [0.25, 0.25]

    def test_wait_times_out_with_the_job_still_queued(
        self, client: TestClient, admin_token: str, session: Session
    ) -> None:
        job = make_job(session, stream=make_stream(session))
        api = FlipwatchClient(token=admin_token, http=client)
        with pytest.raises(JobTimeout) as caught:
            api.wait_job(job.id, timeout=0.2, poll=0.05)
        assert isinstance(caught.value, TimeoutError)
        assert caught.value.job.state == "queued"
        assert "still queued after 0.2 s (0/10 steps)" in caught.value.detail

    def test_an_unknown_job_is_a_404(self, api: FlipwatchClient) -> None:
        missing = uuid.uuid4()
        with pytest.raises(FlipwatchError) as caught:
            api.get_job(missing)
        assert (caught.value.status, caught.value.code) == (404, "job-not-found")


class TestAlerts:
    def test_creates_and_lists_rules(self, api: FlipwatchClient, session: Session) -> None:
        stream = make_stream(session)
        floor = api.create_alert_rule(
            stream.id, name="floor", kind="accuracy_below", threshold=0.8, windows=3
        )
        drift = api.create_alert_rule(
            stream.id,
            name="drift",
            kind="embedding_above",
            threshold=10.0,
            embedding_kind="frechet",
            webhook_url="https://93.184.215.14/flipwatch",
        )
        assert (floor.state, floor.streak, floor.windows, floor.embedding_kind) == (
            "ok",
            0,
            3,
            None,
        )
        assert drift.webhook_url == "https://93.184.215.14/flipwatch"
        assert [r.name for r in api.list_alert_rules(stream.id)] == ["floor", "drift"]
        assert api.get_alert_rule(stream.id, floor.id) == floor
        api.delete_alert_rule(stream.id, drift.id)
        api.delete_alert_rule(stream.id, drift.id)  # already gone: still a success
        assert [r.name for r in api.list_alert_rules(stream.id)] == ["floor"]

    def test_a_meaningless_threshold_is_a_422(self, api: FlipwatchClient, session: Session):
        with pytest.raises(FlipwatchError) as caught:
            api.create_alert_rule(
                make_stream(session).id, name="floor", kind="accuracy_below", threshold=80
            )
        assert (caught.value.status, caught.value.code) == (422, "invalid-alert-rule")

    def test_lists_events_newest_first_by_rule(self, api: FlipwatchClient, session: Session):
        stream = make_stream(session)
        floor = api.create_alert_rule(stream.id, name="floor", kind="accuracy_below", threshold=0.8)
        other = api.create_alert_rule(stream.id, name="other", kind="accuracy_below", threshold=0.5)
        base = datetime.now(UTC)
        for index, (rule, state) in enumerate(
            [(floor, "firing"), (other, "firing"), (floor, "resolved"), (floor, "firing")]
        ):
            estimate = make_estimate(session, stream=stream, window_index=index)
            session.execute(
                text(
                    "INSERT INTO alert_events (id, stream_id, rule_id, rule_name, kind, state, "
                    "estimate_id, window_index, value, threshold, message, created_at) VALUES "
                    "(:id, :stream, :rule, :name, 'accuracy_below', :state, :estimate, :index, "
                    "0.7, :threshold, 'm', :at)"
                ),
                {
                    "id": uuid.uuid4(),
                    "stream": stream.id,
                    "rule": uuid.UUID(rule.id),
                    "name": rule.name,
                    "state": state,
                    "estimate": estimate.id,
                    "index": index,
                    "threshold": rule.threshold,
                    "at": base + timedelta(seconds=index),
                },
            )
        events = list(api.iter_alert_events(stream.id, page_size=2))
        assert [(e.window_index, e.rule_name, e.state) for e in events] == [
            (3, "floor", "firing"),
            (2, "floor", "resolved"),
            (1, "other", "firing"),
            (0, "floor", "firing"),
        ]
        only = api.list_alert_events(stream.id, rule_id=floor.id)
        assert [e.window_index for e in only.items] == [3, 2, 0]
        assert only.next_cursor is None
        assert {e.rule_id for e in only.items} == {floor.id}


class TestErrors:
    def test_a_wrong_key_is_a_401_problem(self, client: TestClient, session: Session) -> None:
        api = FlipwatchClient(token="fw_wrong", http=client)
        with pytest.raises(FlipwatchError) as caught:
            api.get_stream(make_stream(session).id)
        assert (caught.value.status, caught.value.code) == (401, "not-authenticated")

    def test_an_unknown_stream_is_a_404_naming_it(self, api: FlipwatchClient) -> None:
        missing = uuid.uuid4()
        with pytest.raises(FlipwatchError) as caught:
            api.post_batch(missing, [image_bytes(1)])
        assert (caught.value.status, caught.value.code) == (404, "stream-not-found")
        assert str(missing) in caught.value.detail


class TestRetryAfter:
    NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)

    @pytest.mark.parametrize(
        ("header", "seconds"),
        [
            ("7", 7.0),
            (" 1.5 ", 1.5),
            ("Wed, 01 Jan 2025 12:00:30 GMT", 30.0),
            ("Wed, 01 Jan 2025 11:00:00 GMT", 0.0),  # in the past: now
            ("soon", None),
            ("", None),
            (None, None),
        ],
    )
    def test_reads_seconds_and_http_dates(self, header: str | None, seconds: float | None):
        assert retry_after_seconds(header, now=self.NOW) == seconds
