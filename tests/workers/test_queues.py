"""Queues by capability, against the real Redis and Postgres: each job lands on the queue its
capability names (estimates.gpu, estimates.cpu, calibrations), the reconciler re-sends a lost job
to that queue, and a worker consumes only the queues it was given.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from flipwatch.cli.startup import estimator_model_check
from flipwatch.service.core.dispatch import CALIBRATIONS, ESTIMATES_CPU, ESTIMATES_GPU, JOB_QUEUES
from flipwatch.service.core.settings import Settings
from flipwatch.service.core.tables import Job, utcnow
from flipwatch.service.job.service import create_calibration_job
from flipwatch.service.main import create_app
from flipwatch.workers.broker import RedisDispatcher, configure_broker
from flipwatch.workers.main import Reconciler, WorkerProcess, pending_job_ids
from tests.factories import (
    files,
    image_bytes,
    make_api_key,
    make_calibration,
    make_job,
    make_model,
    make_stream,
)

REDIS_URL = os.environ.get("FLIPWATCH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def namespace() -> Iterator[str]:
    """A Dramatiq namespace of this test's own; only its keys are deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    name = f"flipwatch-test-{secrets.token_hex(4)}"
    try:
        yield name
    finally:
        for key in client.scan_iter(match=f"{name}*"):
            client.delete(key)
        client.close()


@pytest.fixture
def queue_settings(settings: Settings) -> Settings:
    """Redis on; the model named `small` runs its estimates on CPU hosts, the rest on GPU hosts."""
    return settings.model_copy(update={"redis_url": REDIS_URL, "model_devices": {"small": "cpu"}})


def messages_on(broker: object, queue: str) -> set[uuid.UUID]:
    """Job ids of the messages waiting on `queue` (not its delay queue) in this namespace."""
    client = broker.client  # type: ignore[attr-defined]
    raw = client.hvals(f"{broker.namespace}:{queue}.msgs")  # type: ignore[attr-defined]
    return {uuid.UUID(json.loads(body)["args"][0]) for body in raw}


def wait_for(predicate, timeout: float = 60.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def load_job(session_factory: sessionmaker[Session], job_id: uuid.UUID) -> Job:
    with session_factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


class TestSettings:
    def test_a_worker_consumes_every_queue_unless_told_otherwise(self) -> None:
        assert (
            Settings().consumed_queues == JOB_QUEUES == (ESTIMATES_GPU, ESTIMATES_CPU, CALIBRATIONS)
        )

    def test_worker_queues_are_read_comma_separated(self) -> None:
        settings = Settings(worker_queues="calibrations, estimates.cpu")
        assert settings.consumed_queues == (CALIBRATIONS, ESTIMATES_CPU)

    def test_worker_queues_may_be_a_json_list(self) -> None:
        assert Settings(worker_queues='["estimates.gpu"]').consumed_queues == (ESTIMATES_GPU,)

    def test_an_unknown_queue_is_refused_naming_the_known_ones(self) -> None:
        with pytest.raises(ValueError, match="choose from estimates.gpu, estimates.cpu"):
            Settings(worker_queues="estimates.tpu")


def test_api_sends_each_estimate_to_the_queue_of_its_models_device(
    queue_settings: Settings,
    engine: Engine,
    session_factory: sessionmaker[Session],
    namespace: str,
) -> None:
    broker = configure_broker(queue_settings, namespace=namespace)
    with session_factory() as session:
        big = make_stream(session, model=make_model(session, name="big"), window_size=64)
        small = make_stream(session, model=make_model(session, name="small"), window_size=64)
        _, token = make_api_key(session, role="ingest")
        session.commit()
    app = create_app(
        queue_settings,
        dispatcher=RedisDispatcher(broker),
        session_factory=session_factory,
        model_check=estimator_model_check(queue_settings),
    )
    job_ids = {}
    try:
        with TestClient(app) as client:
            for stream in (big, small):
                response = client.post(
                    f"/v1/streams/{stream.id}/batches",
                    headers={"Authorization": f"Bearer {token}"},
                    files=files(*[(f"{i}.png", image_bytes(i)) for i in range(64)]),
                )
                assert response.status_code == 202, response.text
                (job,) = response.json()["jobs"]
                job_ids[stream.name] = uuid.UUID(job["id"])

        assert messages_on(broker, ESTIMATES_GPU) == {job_ids[big.name]}
        assert messages_on(broker, ESTIMATES_CPU) == {job_ids[small.name]}
        assert messages_on(broker, CALIBRATIONS) == set()
        assert load_job(session_factory, job_ids[big.name]).queue == ESTIMATES_GPU
        assert load_job(session_factory, job_ids[small.name]).queue == ESTIMATES_CPU
    finally:
        broker.close()


def test_reconciler_resends_lost_jobs_to_the_queue_stored_on_each(
    queue_settings: Settings, session_factory: sessionmaker[Session], namespace: str
) -> None:
    broker = configure_broker(queue_settings, namespace=namespace)
    old = utcnow().replace(year=2020)
    with session_factory() as session:
        stream = make_stream(session)
        on_cpu = make_job(session, stream=stream, queue=ESTIMATES_CPU, created_at=old)
        model = make_model(session, calibrated=False)
        calibration = make_calibration(session, model=model, state="queued", result=None)
        calibrate = create_calibration_job(
            session, model=model, calibration=calibration, variants=3
        )
        calibrate.created_at = old
        session.commit()
    reconciler = Reconciler(
        session_factory,
        RedisDispatcher(broker),
        stale_after=60,
        lost_after=60,
        pending=lambda: pending_job_ids(broker),
    )
    try:
        sent = reconciler.run_once()
        again = reconciler.run_once()  # the messages now wait in Redis: nothing is re-sent

        assert sorted(sent) == sorted([(on_cpu.id, ESTIMATES_CPU), (calibrate.id, CALIBRATIONS)])
        assert again == []
        assert messages_on(broker, ESTIMATES_CPU) == {on_cpu.id}
        assert messages_on(broker, CALIBRATIONS) == {calibrate.id}
        assert messages_on(broker, ESTIMATES_GPU) == set()
    finally:
        broker.close()


def test_a_worker_consuming_only_calibrations_never_takes_an_estimate_job(
    queue_settings: Settings,
    session_factory: sessionmaker[Session],
    namespace: str,
    tmp_path: Path,
) -> None:
    with session_factory() as session:
        estimate = make_job(session, stream=make_stream(session), queue=ESTIMATES_GPU)
        model = make_model(session, calibrated=False)
        calibration = make_calibration(
            session,
            model=model,
            state="queued",
            result=None,
            reference_path=str(tmp_path / "missing-reference"),
        )
        calibrate = create_calibration_job(
            session, model=model, calibration=calibration, variants=3
        )
        session.commit()
    broker = configure_broker(queue_settings, namespace=namespace)
    dispatcher = RedisDispatcher(broker)
    timers = {"reconcile_interval": 3600.0, "lost_after": 3600.0}
    calibrations_only = WorkerProcess(
        queue_settings, metrics_port=None, namespace=namespace, queues=(CALIBRATIONS,), **timers
    )
    calibrations_only.start()
    try:
        dispatcher.send(estimate.id, ESTIMATES_GPU)  # first in line, on a queue it does not read
        dispatcher.send(calibrate.id, CALIBRATIONS)
        # The calibration runs (and fails at once: its reference folder does not exist).
        wait_for(lambda: load_job(session_factory, calibrate.id).state == "failed")
    finally:
        calibrations_only.stop()
        broker.close()

    untouched = load_job(session_factory, estimate.id)
    assert (untouched.state, untouched.attempts, untouched.worker) == ("queued", 0, None)
    assert "reference" in (load_job(session_factory, calibrate.id).error or "")

    # A worker on estimates.gpu takes the waiting message (a window without images fails at once).
    estimates_only = WorkerProcess(
        queue_settings, metrics_port=None, namespace=namespace, queues=(ESTIMATES_GPU,), **timers
    )
    estimates_only.start()
    try:
        wait_for(lambda: load_job(session_factory, estimate.id).state == "failed")
    finally:
        estimates_only.stop()
    assert load_job(session_factory, estimate.id).attempts == 1
