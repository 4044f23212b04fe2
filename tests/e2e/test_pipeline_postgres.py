"""The production shape end to end: API on Postgres sending job ids to a real Redis, a Dramatiq
worker (the `flipwatch worker` process, here on threads of the test process) running them.

register -> calibrate -> stream -> batches -> automatic estimate -> the estimate row in Postgres
-> /metrics; a shifted stream's estimate is lower than the clean one's. The pipeline runs on both
storage backends: a data dir shared by API and worker (local), and a real S3 server (`rclone
serve s3`) where API and worker have separate data dirs, as on separate hosts.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from flipwatch.cli.startup import ServerStack, build_server, free_port
from flipwatch.client import FlipwatchClient
from flipwatch.service.core import storage
from flipwatch.service.core.tables import Calibration, Estimate, Image, Job
from flipwatch.workers.estimation.spec import ModelSpec
from flipwatch.workers.main import WorkerProcess
from tests.conftest import s3_storage, truncate_all
from tests.e2e.conftest import (
    E2E_STEPS,
    E2E_SUITE,
    E2E_WINDOW,
    REDIS_URL,
    Pipeline,
    e2e_settings,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(params=["local", "s3"])
def stack(
    request: pytest.FixtureRequest,
    database_url: str,
    engine: Engine,
    redis_namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerStack, WorkerProcess]]:
    """API (Redis dispatcher) and a worker process sharing Postgres, the Redis namespace and the
    storage: one data dir (local), or one bucket with a data dir each (s3)."""
    settings = e2e_settings(
        tmp_path_factory.mktemp("data"), database_url=database_url, redis_url=REDIS_URL
    )
    worker_settings = settings
    if request.param == "s3":
        settings = settings.model_copy(update=s3_storage(request.getfixturevalue("s3_server")))
        worker_settings = settings.model_copy(update={"data_dir": tmp_path_factory.mktemp("w")})
    worker = WorkerProcess(
        worker_settings,
        metrics_port=free_port(),
        namespace=redis_namespace,
        calibration_suite=E2E_SUITE,
        reconcile_interval=5.0,
    )
    worker.start()
    server = build_server(settings, namespace=redis_namespace)
    try:
        yield server, worker
    finally:
        server.close()
        worker.stop()
        truncate_all(engine)


def admin_client(http: httpx.Client, server: ServerStack) -> FlipwatchClient:
    from flipwatch.service.core.auth import create_api_key

    with server.session_factory() as session:
        _, token = create_api_key(session, role="admin", name="e2e")
        session.commit()
    return FlipwatchClient(token=token, http=http)


def test_pipeline_estimates_windows_through_redis_into_postgres(
    stack: tuple[ServerStack, WorkerProcess], pipeline: Pipeline
) -> None:
    server, worker = stack
    with TestClient(server.app) as http:
        run = pipeline(admin_client(http, server))
        scrape = http.get("/metrics").text

    with server.session_factory() as session:
        assert session.get(Calibration, uuid.UUID(run.calibration.id)).state == "succeeded"  # type: ignore[union-attr]
        estimates = {
            name: _estimates(session, stream.id)
            for name, stream in (("clean", run.clean_stream), ("shifted", run.shifted_stream))
        }
        jobs = {
            name: session.get(Job, uuid.UUID(job.id))
            for name, job in (("clean", run.clean_job), ("shifted", run.shifted_job))
        }

    for name in ("clean", "shifted"):
        (estimate,) = estimates[name]  # exactly one row per window
        job = jobs[name]
        assert job is not None and job.state == "succeeded" and job.attempts == 1
        assert job.worker is not None and job.steps_done == job.steps_total == E2E_STEPS
        assert estimate.job_id == job.id
        assert estimate.window_index == 0
        assert estimate.image_count == E2E_WINDOW
        assert estimate.model_version == 1
        assert (
            str(estimate.id) == (run.clean_job if name == "clean" else run.shifted_job).estimate_id
        )
    clean, shifted = estimates["clean"][0], estimates["shifted"][0]
    assert 0.0 <= shifted.estimated_accuracy < clean.estimated_accuracy <= 1.0
    print(f"clean {clean.estimated_accuracy:.3f}, shifted {shifted.estimated_accuracy:.3f}")

    # The API's /metrics reports exactly what the real estimates stored.
    samples = {
        (s.name, s.labels.get("stream"), s.labels.get("method")): s.value
        for family in text_string_to_metric_families(scrape)
        for s in family.samples
    }
    for name, stream in (("clean", run.clean_stream), ("shifted", run.shifted_stream)):
        row = estimates[name][0]
        key = ("flipwatch_estimated_accuracy_ratio", stream.name, None)
        assert samples[key] == row.estimated_accuracy
        ac = ("flipwatch_baseline_accuracy_ratio", stream.name, "ac")
        assert samples[ac] == row.result["baselines"]["ac"]

    metrics = httpx.get(f"http://127.0.0.1:{worker.metrics_port}/metrics").text
    assert "flipwatch_worker_up 1.0" in metrics
    assert "flipwatch_estimate_duration_seconds_count 2.0" in metrics
    assert "flipwatch_estimate_images_per_second" in metrics

    # Every image row's object is in the configured store, and nothing is left staged.
    store = storage.open_store(server.settings)
    with server.session_factory() as session:
        keys = set(session.scalars(select(Image.path)))
    assert len(keys) > 0 and keys <= {info.key for info in store.list("images/")}
    assert list(store.list("incoming/")) == []
    if server.settings.storage_backend == "s3":  # nothing went through a local folder
        local = [Path(server.settings.data_dir) / d for d in ("images", "models", "calibrations")]
        local += [Path(worker.settings.data_dir) / d for d in ("images", "calibrations")]
        assert [p for p in local if p.exists()] == []


def _estimates(session: Session, stream_id: str) -> list[Estimate]:
    return list(session.scalars(select(Estimate).where(Estimate.stream_id == uuid.UUID(stream_id))))


def test_stopping_the_worker_requeues_its_running_job(
    database_url: str,
    engine: Engine,
    redis_namespace: str,
    tmp_path: Path,
    demo_model: tuple[ModelSpec, Path],
    reference_archive: Path,
) -> None:
    """SIGTERM mid-job (here WorkerProcess.stop): the job is queued again, attempt uncounted, and
    another worker (another host) consuming only its queue takes it; that worker's reconciler
    re-sends it to the queue stored on the row (`calibrations`) if its message went with the
    stopped worker."""
    settings = e2e_settings(tmp_path / "data", database_url=database_url, redis_url=REDIS_URL)
    worker = WorkerProcess(settings, metrics_port=None, namespace=redis_namespace)  # full suite
    server = build_server(settings, namespace=redis_namespace)
    worker.start()
    try:
        with TestClient(server.app) as http:
            client = admin_client(http, server)
            spec, _ = demo_model
            model = client.register_model(spec, Path(spec.weights or ""))
            job_id = str(client.start_calibration(model.id, reference_archive).job_id)
            deadline = time.monotonic() + 60
            while client.get_job(job_id).state != "running":
                assert time.monotonic() < deadline, "the worker never claimed the job"
                time.sleep(0.1)

            started = time.monotonic()
            worker.stop()
            stopped_in = time.monotonic() - started

            job = client.get_job(job_id)
        assert job.state == "queued"
        assert job.attempts == 0
        assert job.worker is None
        assert job.queue == "calibrations"
        assert stopped_in < 35

        other = WorkerProcess(
            settings,
            metrics_port=None,
            namespace=redis_namespace,
            queues=("calibrations",),
            reconcile_interval=1.0,
            lost_after=2.0,
        )
        other.start()
        try:
            with TestClient(server.app) as http:
                client = admin_client(http, server)
                deadline = time.monotonic() + 60
                while (taken := client.get_job(job_id)).attempts == 0:
                    assert time.monotonic() < deadline, "no other worker took the released job"
                    time.sleep(0.2)
        finally:
            other.stop()
        assert taken.attempts == 1 and taken.state in ("running", "queued", "succeeded")
    finally:
        server.close()
        truncate_all(engine)
