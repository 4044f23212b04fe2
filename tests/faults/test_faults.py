"""The fault suite: real processes on loopback, killed, cut off and flooded, then reconciled.

Each test ends by reconciling rows against files: every accepted image stored exactly once, every
closed window estimated exactly once, no file without a row and nothing left in temporary places
(`Deployment.assert_consistent`). Recovery timers are set to seconds (FAST_RECOVERY); the measured
recovery times are printed (`pytest -s`) and quoted in docs/reliability.md.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.faults.deployment import Deployment, multipart, png_batch
from tests.faults.harness import PostgresCluster, wait_until

pytestmark = pytest.mark.faults

JOB_TIMEOUT = 90.0


def figure(name: str, value: float) -> None:
    """A measured figure, printed for docs/reliability.md (`pytest -s tests/faults`)."""
    print(f"\nFIGURE {name} = {value:.2f}")


def setup_stream(
    deployment: Deployment,
    http: httpx.Client,
    weights: Path,
    *,
    window: int = 64,
    steps: int = 50,
    auto_estimate: bool = True,
) -> str:
    model_id = deployment.register_model(http, weights)
    return deployment.create_stream(
        http, model_id, window_size=window, steps=steps, auto_estimate=auto_estimate
    )


def post(
    http: httpx.Client, stream_id: str, files: list[tuple[str, bytes]], key: str | None = None
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return http.post(f"/v1/streams/{stream_id}/batches", files=multipart(files), headers=headers)


def job_ids(answer: httpx.Response) -> list[str]:
    assert answer.status_code == 202, answer.text
    return [job["id"] for job in answer.json()["jobs"]]


def test_a_killed_workers_job_is_rerun_elsewhere_with_exactly_one_estimate(
    deployment: Deployment, tiny_imagenet_weights: Path
) -> None:
    deployment.start_api()
    first = deployment.start_worker()
    with deployment.client() as http:
        stream = setup_stream(deployment, http, tiny_imagenet_weights, steps=100)
        (job,) = job_ids(post(http, stream, png_batch(64, seed=1)))
        wait_until(
            lambda: http.get(f"/v1/jobs/{job}").json()["progress"]["steps_done"] > 0,
            timeout=JOB_TIMEOUT,
            what="the first worker to make progress",
        )

        first.kill()
        killed = time.monotonic()
        deployment.start_worker()
        wait_until(
            lambda: http.get(f"/v1/jobs/{job}").json()["attempts"] == 2,
            timeout=JOB_TIMEOUT,
            what="the job to be claimed again",
        )
        figure("worker_sigkill_job_reclaimed_s", time.monotonic() - killed)
        deployment.wait_jobs_done(http, [job], timeout=JOB_TIMEOUT)
        assert http.get(f"/v1/jobs/{job}").json()["attempts"] == 2

    deployment.assert_consistent(accepted_images=64)


@pytest.mark.parametrize("fault", ["restart", "flushall"])
def test_jobs_whose_messages_redis_lost_are_sent_again_and_run_once(
    deployment: Deployment, tiny_imagenet_weights: Path, fault: str
) -> None:
    assert deployment.redis is not None
    deployment.start_api()
    with deployment.client() as http:
        stream = setup_stream(deployment, http, tiny_imagenet_weights)
        jobs = job_ids(post(http, stream, png_batch(128, seed=2)))  # two windows, queued
        assert len(jobs) == 2

        if fault == "restart":
            deployment.redis.stop()
            # Redis down: the batch is still accepted, its job stays queued in Postgres.
            jobs += job_ids(post(http, stream, png_batch(64, seed=3)))
            deployment.redis.start()
        else:
            deployment.redis.flushall()
        lost = time.monotonic()
        jobs += job_ids(post(http, stream, png_batch(64, seed=4)))  # the API reconnects

        deployment.start_worker()
        deployment.wait_jobs_done(http, jobs, timeout=JOB_TIMEOUT)
        figure(f"redis_{fault}_all_jobs_done_s", time.monotonic() - lost)

    accepted = 128 + 64 * (len(jobs) - 2)
    state = deployment.assert_consistent(accepted_images=accepted)
    assert state.job_states == {"succeeded": len(jobs)}


def test_a_postgres_outage_answers_503_with_retry_after_and_recovers_without_restarts(
    tmp_path: Path,
    redis_server,  # noqa: ANN001 - a fixture
    pg_cluster: PostgresCluster,
    private_database: str,
    tiny_imagenet_weights: Path,
) -> None:
    deployment = Deployment(tmp_path, private_database, redis_server)
    try:
        deployment.start_api()
        deployment.start_worker()
        with deployment.client(timeout=20) as http:
            stream = setup_stream(deployment, http, tiny_imagenet_weights, steps=100)
            (job,) = job_ids(post(http, stream, png_batch(64, seed=5)))
            wait_until(
                lambda: http.get(f"/v1/jobs/{job}").json()["state"] == "running",
                timeout=JOB_TIMEOUT,
                what="the estimate to run",
            )

            pg_cluster.stop("immediate")  # mid-estimate: its heartbeat and finish fail
            try:
                answers = {
                    "readyz": http.get("/readyz"),
                    "estimates": http.get(f"/v1/streams/{stream}/estimates"),
                    "batch": post(http, stream, png_batch(64, seed=6), key="during-outage"),
                    "stream": http.get(f"/v1/streams/{stream}"),
                }
                assert http.get("/healthz").status_code == 200
            finally:
                time.sleep(1.0)
                pg_cluster.start()
            back = time.monotonic()
            for name, answer in answers.items():
                assert answer.status_code == 503, (name, answer.status_code, answer.text)
                assert answer.headers["content-type"] == "application/problem+json", name
                assert int(answer.headers["Retry-After"]) >= 1, name
                assert answer.json()["code"] == "database-unavailable", (name, answer.text)

            wait_until(lambda: http.get("/readyz").status_code == 200, timeout=30, what="readiness")
            figure("postgres_back_to_ready_s", time.monotonic() - back)
            more = job_ids(post(http, stream, png_batch(64, seed=6), key="during-outage"))
            deployment.wait_jobs_done(http, [job, *more], timeout=JOB_TIMEOUT)
            figure("postgres_outage_all_jobs_done_s", time.monotonic() - back)

        deployment.assert_consistent(accepted_images=128)
    finally:
        deployment.stop_all()


def test_an_api_killed_mid_upload_leaves_no_files_and_the_retry_stores_the_batch_once(
    deployment: Deployment, tiny_imagenet_weights: Path
) -> None:
    # No estimates here (auto_estimate off, no worker): the upload and its files are the point.
    api = deployment.start_api(orphan_grace_seconds=0)
    files = png_batch(256, seed=7)
    key = f"upload-{uuid.uuid4().hex}"
    with deployment.client() as http:
        stream = setup_stream(deployment, http, tiny_imagenet_weights, auto_estimate=False)
        before = {p for p in deployment.data_dir.rglob("*") if p.is_file()}
        outcome: dict[str, object] = {}

        def upload() -> None:
            try:
                outcome["answer"] = post(http, stream, files, key=key)
            except httpx.HTTPError as exc:
                outcome["error"] = exc

        def first_new_file() -> bool:
            return any(p.is_file() and p not in before for p in deployment.data_dir.rglob("*"))

        sender = threading.Thread(target=upload)
        sender.start()
        wait_until(first_new_file, timeout=60, interval=0.002, what="the upload to store a file")
        api.kill()
        sender.join(30)
        assert "error" in outcome, f"the upload finished before the kill: {outcome}"

        deployment.start_api(orphan_grace_seconds=0)
        # The start-up sweep runs beside the serving app (never before it): it has deleted the
        # killed upload's staged files moments after the restart.
        wait_until(
            lambda: not deployment.reconcile().stray_files,
            timeout=10,
            what="the start-up sweep to delete what the killed upload staged",
        )
        answer = post(http, stream, files, key=key)
        assert answer.status_code == 202, answer.text
        assert answer.headers.get("Idempotent-Replayed") is None  # the first never committed
        replay = post(http, stream, files, key=key)
        assert replay.headers.get("Idempotent-Replayed") == "true"
        assert replay.json()["batch_id"] == answer.json()["batch_id"]

    state = deployment.assert_consistent(accepted_images=256, estimated=False)
    assert state.batches == 1


def _concurrent_uploads(deployment: Deployment, weights: Path) -> None:
    """20 clients x 5 batches of 4 images on one stream, then 8 concurrent retries of one key."""
    with deployment.client(timeout=120) as http:
        stream = setup_stream(deployment, http, weights, window=200)

    def client_run(client: int) -> list[httpx.Response]:
        with deployment.client(timeout=120) as own:
            return [post(own, stream, png_batch(4, seed=1000 + client * 10 + n)) for n in range(5)]

    with ThreadPoolExecutor(20) as pool:
        answers = [a for batch in pool.map(client_run, range(20)) for a in batch]
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [202] * 100, [a.text for a in answers if a.status_code != 202][:3]

    retry_files = png_batch(4, seed=99)
    key = f"retry-{uuid.uuid4().hex}"

    def retry(_: int) -> httpx.Response:
        with deployment.client(timeout=120) as own:
            return post(own, stream, retry_files, key=key)

    with ThreadPoolExecutor(8) as pool:
        retries = list(pool.map(retry, range(8)))
    assert [r.status_code for r in retries] == [202] * 8, [r.text for r in retries]
    assert len({r.json()["batch_id"] for r in retries}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in retries) == 7

    jobs = [j["id"] for a in [*answers, *retries] for j in a.json()["jobs"]]
    assert len(jobs) == 2  # 404 images, windows of 200
    with deployment.client() as http:
        deployment.wait_jobs_done(http, jobs, timeout=JOB_TIMEOUT)
    deployment.assert_consistent(accepted_images=404)


def test_concurrent_uploads_on_one_stream_all_succeed_in_production_mode(
    deployment: Deployment, tiny_imagenet_weights: Path
) -> None:
    deployment.start_api()
    deployment.start_worker()
    _concurrent_uploads(deployment, tiny_imagenet_weights)


def test_concurrent_uploads_on_one_stream_all_succeed_in_embedded_mode(
    embedded: Deployment, tiny_imagenet_weights: Path
) -> None:
    embedded.start_api()
    _concurrent_uploads(embedded, tiny_imagenet_weights)


def test_the_reconciler_sees_queued_and_delayed_messages_as_pending(redis_server) -> None:  # noqa: ANN001
    from flipwatch.service.core.settings import Settings
    from flipwatch.workers.actors import run_job_message
    from flipwatch.workers.broker import configure_broker
    from flipwatch.workers.main import pending_job_ids

    broker = configure_broker(Settings(redis_url=redis_server.url), namespace="pending-test")
    try:
        queued, delayed = uuid.uuid4(), uuid.uuid4()
        broker.enqueue(run_job_message(queued, "estimates.cpu"))
        broker.enqueue(run_job_message(delayed, "calibrations"), delay=60_000)
        assert pending_job_ids(broker) == {queued, delayed}
        redis_server.flushall()
        assert pending_job_ids(broker) == set()
    finally:
        broker.close()
