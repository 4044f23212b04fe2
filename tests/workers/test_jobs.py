"""workers/jobs/ against the real Postgres: claim, lifecycle, progress, heartbeat, retries,
failure messages, one estimate per window, and the stale-job reaper. Jobs run through
`jobs.run_job` directly, with the tiny model on CPU (style rule 14).
"""

from __future__ import annotations

import io
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image as PILImage
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from flipwatch.demos.data import write_image_folder
from flipwatch.service.core import storage
from flipwatch.service.core.settings import Settings
from flipwatch.service.core.storage import ObjectStore
from flipwatch.service.core.tables import (
    AlertEvent,
    Batch,
    Calibration,
    Estimate,
    Image,
    Job,
    JobCount,
    LatestEstimate,
    Model,
    Stream,
    utcnow,
)
from flipwatch.service.estimate.latest import latest_series
from flipwatch.service.job.service import create_calibration_job
from flipwatch.workers import jobs
from flipwatch.workers.model_cache import ModelCache
from tests.factories import (
    make_alert_rule,
    make_api_key,
    make_calibration,
    make_job,
    make_model,
    make_stream,
)
from tests.tiny_models import blob_images as window_images

WORKER = "test-host:1"


# --- helpers -------------------------------------------------------------------------------------


def png(image: torch.Tensor) -> bytes:
    out = io.BytesIO()
    PILImage.fromarray(image.permute(1, 2, 0).numpy()).save(out, format="PNG")
    return out.getvalue()


def add_window(
    session: Session, stream: Stream, window_index: int, images: torch.Tensor, store: ObjectStore
) -> list[str]:
    """Store the images as a stream window, as ingest would: objects, a batch and image rows."""
    key, _ = make_api_key(session, role="ingest")
    batch = Batch(
        stream_id=stream.id,
        api_key_id=key.id,
        request_sha256=uuid.uuid4().hex * 2,
        image_count=len(images),
        response={},
    )
    session.add(batch)
    session.flush()
    paths = []
    start = window_index * stream.window_size
    for i, image in enumerate(images):
        data = png(image)
        digest = storage.sha256_hex(data)
        path = storage.image_key(digest, "PNG")
        storage.put_content(store, path, data)
        session.add(
            Image(
                sha256=digest,
                stream_id=stream.id,
                batch_id=batch.id,
                window_index=window_index,
                position=start + i,
                path=path,
                filename=f"img-{i}.png",
                width=32,
                height=32,
                format="PNG",
                size_bytes=len(data),
            )
        )
        paths.append(path)
    session.flush()
    return paths


def tiny_model(
    session: Session,
    weights: Path,
    calibration: dict[str, Any] | None = None,
    *,
    store: ObjectStore,
) -> Model:
    """The tiny CNN, its weights in the store as registration leaves them; with `calibration`, a
    succeeded calibration row holding it."""
    digest = storage.sha256_file(weights)
    key = storage.weights_key(digest)
    store.put_file(key, weights)
    model = make_model(session, calibrated=False, spec={"weights": key}, weights_sha256=digest)
    if calibration is not None:
        make_calibration(session, model=model, state="succeeded", result=calibration)
    return model


def setup_estimate(
    session_factory: sessionmaker[Session],
    settings: Settings,
    weights: Path,
    calibration: dict[str, Any] | None,
    *,
    images: int = 96,
    steps: int = 10,
    jobs_per_window: int = 1,
) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """A stream with one filled window and queued estimate job(s); returns (stream id, job ids)."""
    with session_factory() as session:
        store = storage.open_store(settings)
        model = tiny_model(session, weights, calibration, store=store)
        stream = make_stream(session, model=model, window_size=images, steps=steps)
        add_window(session, stream, 0, window_images(images), store)
        job_ids = [make_job(session, stream=stream).id for _ in range(jobs_per_window)]
        session.commit()
        return stream.id, job_ids


def run(
    session_factory: sessionmaker[Session],
    settings: Settings,
    job_id: uuid.UUID,
    cache: ModelCache | None = None,
    **kwargs: Any,
) -> jobs.JobOutcome:
    return jobs.run_job(
        session_factory,
        settings,
        job_id,
        model_cache=cache if cache is not None else ModelCache(),
        worker_name=WORKER,
        **kwargs,
    )


def load_job(session_factory: sessionmaker[Session], job_id: uuid.UUID) -> Job:
    with session_factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def estimate_count(session_factory: sessionmaker[Session], stream_id: uuid.UUID) -> int:
    with session_factory() as session:
        return session.scalar(
            select(func.count()).select_from(Estimate).where(Estimate.stream_id == stream_id)
        )


# --- the estimate lifecycle ----------------------------------------------------------------------


class TestEstimateJob:
    def test_claims_runs_and_writes_the_estimate_with_the_job(
        self,
        session_factory: sessionmaker[Session],
        worker_settings: Settings,
        tiny_weights: Path,
        tiny_calibration: dict[str, Any],
    ) -> None:
        stream_id, (job_id,) = setup_estimate(
            session_factory, worker_settings, tiny_weights, tiny_calibration
        )

        outcome = run(session_factory, worker_settings, job_id)

        assert outcome is jobs.JobOutcome.SUCCEEDED
        job = load_job(session_factory, job_id)
        assert job.state == "succeeded"
        assert job.attempts == 1
        assert job.worker == WORKER
        assert job.error is None
        assert job.steps_done == job.steps_total == 10
        assert job.started_at is not None and job.finished_at is not None
        assert job.started_at <= job.heartbeat_at <= job.finished_at
        with session_factory() as session:
            estimate = session.scalars(select(Estimate).where(Estimate.job_id == job_id)).one()
            model = session.get(Model, estimate.model_id)
        assert estimate.stream_id == stream_id and estimate.window_index == 0
        assert estimate.image_count == 96
        assert model is not None and estimate.model_version == model.version
        assert 0.0 <= estimate.estimated_accuracy <= 1.0
        assert estimate.result["estimated_accuracy"] == estimate.estimated_accuracy
        assert estimate.result["num_images"] == 96
        assert estimate.signal == estimate.result["signal"]
        assert estimate.weighted_flips == estimate.result["weighted_flips"]

    def test_finished_estimate_moves_the_streams_metrics_rows(
        self,
        session_factory: sessionmaker[Session],
        worker_settings: Settings,
        tiny_weights: Path,
        tiny_calibration: dict[str, Any],
    ) -> None:
        """latest_estimates and job_counts (what /metrics reads) commit with the estimate."""
        stream_id, (first, second) = setup_estimate(
            session_factory, worker_settings, tiny_weights, tiny_calibration, jobs_per_window=2
        )

        assert run(session_factory, worker_settings, first) is jobs.JobOutcome.SUCCEEDED
        assert run(session_factory, worker_settings, second) is jobs.JobOutcome.SUCCEEDED

        with session_factory() as session:
            estimate = session.scalars(
                select(Estimate).where(Estimate.stream_id == stream_id)
            ).one()
            latest = session.get(LatestEstimate, stream_id)
            counts = {
                c.state: c.jobs
                for c in session.scalars(select(JobCount).where(JobCount.stream_key == stream_id))
            }
        assert latest is not None
        assert (latest.estimate_id, latest.window_index) == (estimate.id, 0)
        assert latest.estimated_accuracy == estimate.estimated_accuracy
        assert latest.weighted_flips == estimate.weighted_flips
        assert latest.series == latest_series(estimate.result)
        assert latest.series is not None and latest.series["signal"] == estimate.signal
        assert latest.last_estimate_at == estimate.created_at
        assert counts == {"queued": 0, "running": 0, "succeeded": 2}

    def test_finished_estimate_moves_alert_rules_in_the_same_transaction(
        self,
        session_factory: sessionmaker[Session],
        worker_settings: Settings,
        tiny_weights: Path,
        tiny_calibration: dict[str, Any],
    ) -> None:
        stream_id, (job_id,) = setup_estimate(
            session_factory, worker_settings, tiny_weights, tiny_calibration
        )
        with session_factory() as session:
            stream = session.get(Stream, stream_id)
            assert stream is not None
            rule = make_alert_rule(session, stream=stream, threshold=1.01, windows=1)
            rule_id = rule.id
            session.commit()

        assert run(session_factory, worker_settings, job_id) is jobs.JobOutcome.SUCCEEDED

        with session_factory() as session:
            estimate = session.scalars(select(Estimate).where(Estimate.job_id == job_id)).one()
            event = session.scalars(select(AlertEvent).where(AlertEvent.rule_id == rule_id)).one()
        assert (event.state, event.estimate_id) == ("firing", estimate.id)

    def test_stream_steps_past_the_calibrations_use_its_selected_checkpoint(
        self,
        session_factory: sessionmaker[Session],
        worker_settings: Settings,
        tiny_weights: Path,
        tiny_calibration: dict[str, Any],
    ) -> None:
        # Calibrated over 10 steps (checkpoints 0 and 10) with the fit wf@10 as its estimator (a
        # calibration stored before estimators were kept); a 60-step stream records only 0/50/60
        # by default, so the selected checkpoint must be recorded on purpose.
        calibration = {**tiny_calibration, "selected": "wf@10", "estimator": None}
        stream_id, (job_id,) = setup_estimate(
            session_factory, worker_settings, tiny_weights, calibration, steps=60
        )

        outcome = run(session_factory, worker_settings, job_id)

        job = load_job(session_factory, job_id)
        assert outcome is jobs.JobOutcome.SUCCEEDED, job.error
        assert (job.state, job.attempts) == ("succeeded", 1)
        with session_factory() as session:
            estimate = session.scalars(select(Estimate).where(Estimate.job_id == job_id)).one()
        assert estimate.signal == "wf@10"
        assert estimate.result["steps"] == 60

    def test_redelivered_finished_job_is_a_noop(
        self,
        session_factory: sessionmaker[Session],
        worker_settings: Settings,
        tiny_weights: Path,
        tiny_calibration: dict[str, Any],
    ) -> None:
        stream_id, (job_id,) = setup_estimate(
            session_factory, worker_settings, tiny_weights, tiny_calibration
        )
        run(session_factory, worker_settings, job_id)

        assert run(session_factory, worker_settings, job_id) is jobs.JobOutcome.SKIPPED

        assert load_job(session_factory, job_id).attempts == 1
        assert estimate_count(session_factory, stream_id) == 1

    def test_missing_job_is_a_noop(
        self, session_factory: sessionmaker[Session], worker_settings: Settings
    ) -> None:
        assert run(session_factory, worker_settings, uuid.uuid4()) is jobs.JobOutcome.SKIPPED

    def test_second_job_for_a_window_writes_no_second_row(
        self,
        session_factory: sessionmaker[Session],
        worker_settings: Settings,
        tiny_weights: Path,
        tiny_calibration: dict[str, Any],
    ) -> None:
        stream_id, (first, second) = setup_estimate(
            session_factory, worker_settings, tiny_weights, tiny_calibration, jobs_per_window=2
        )

        assert run(session_factory, worker_settings, first) is jobs.JobOutcome.SUCCEEDED
        assert run(session_factory, worker_settings, second) is jobs.JobOutcome.SUCCEEDED

        assert load_job(session_factory, second).state == "succeeded"
        assert estimate_count(session_factory, stream_id) == 1
        with session_factory() as session:
            owner = session.scalar(select(Estimate.job_id).where(Estimate.stream_id == stream_id))
        assert owner == first

    def test_unique_window_is_enforced_by_the_database(
        self, session_factory: sessionmaker[Session]
    ) -> None:
        with session_factory() as session:
            stream = make_stream(session)
            row = {
                "stream_id": stream.id,
                "window_index": 3,
                "model_id": stream.model_id,
                "model_version": 1,
                "estimated_accuracy": 0.5,
                "signal": "wf@10",
                "result": {},
            }
            session.add(Estimate(**row))
            session.flush()
            session.add(Estimate(**row))
            with pytest.raises(IntegrityError, match="uq_estimates_stream_id"):
                session.flush()

    def test_model_is_loaded_once_per_version(
        self,
        session_factory: sessionmaker[Session],
        worker_settings: Settings,
        tiny_weights: Path,
        tiny_calibration: dict[str, Any],
    ) -> None:
        cache = ModelCache()
        with session_factory() as session:
            store = storage.open_store(worker_settings)
            model = tiny_model(session, tiny_weights, tiny_calibration, store=store)
            stream = make_stream(session, model=model, window_size=80, steps=10)
            for window in (0, 1):
                add_window(session, stream, window, window_images(80, seed=window), store)
            job_ids = [make_job(session, stream=stream, window_index=w).id for w in (0, 1)]
            session.commit()

        for job_id in job_ids:
            assert run(session_factory, worker_settings, job_id, cache) is jobs.JobOutcome.SUCCEEDED

        assert (cache.misses, cache.hits, len(cache)) == (1, 1, 1)


class TestClaim:
    def test_sets_running_with_attempt_and_worker(
        self, session_factory: sessionmaker[Session]
    ) -> None:
        with session_factory() as session:
            job_id = make_job(session, stream=make_stream(session)).id
            session.commit()
        before = utcnow()

        claim = jobs.claim_job(session_factory, job_id, worker=WORKER)

        assert claim == jobs.Claim(job_id=job_id, kind="estimate", attempt=1, worker=WORKER)
        job = load_job(session_factory, job_id)
        assert (job.state, job.attempts, job.worker) == ("running", 1, WORKER)
        assert job.started_at is not None and job.started_at >= before
        assert job.heartbeat_at == job.started_at
        assert jobs.claim_job(session_factory, job_id, worker="other:2") is None

    def test_skips_a_job_locked_by_another_worker(
        self, session_factory: sessionmaker[Session]
    ) -> None:
        with session_factory() as session:
            job_id = make_job(session, stream=make_stream(session)).id
            session.commit()

        with session_factory() as other:  # another worker, mid-claim, holds the row lock
            other.execute(text("SELECT id FROM jobs WHERE id = :id FOR UPDATE"), {"id": job_id})
            started = time.monotonic()
            assert jobs.claim_job(session_factory, job_id, worker=WORKER) is None
            assert time.monotonic() - started < 2  # skipped, not waited
            other.rollback()

        assert load_job(session_factory, job_id).state == "queued"

    def test_calibrate_claim_marks_the_calibration_running(
        self, session_factory: sessionmaker[Session]
    ) -> None:
        with session_factory() as session:
            model = make_model(session, calibrated=False)
            calibration = make_calibration(session, model=model, state="queued", result=None)
            job = create_calibration_job(session, model=model, calibration=calibration, variants=10)
            session.commit()

        assert jobs.claim_job(session_factory, job.id, worker=WORKER) is not None

        with session_factory() as session:
            assert session.get(Calibration, calibration.id).state == "running"  # type: ignore[union-attr]


class TestProgressAndHeartbeat:
    def test_progress_is_throttled_but_the_last_step_is_written(
        self, session_factory: sessionmaker[Session]
    ) -> None:
        with session_factory() as session:
            job_id = make_job(session, stream=make_stream(session), steps_total=10).id
            session.commit()
        claim = jobs.claim_job(session_factory, job_id, worker=WORKER)
        assert claim is not None
        now = [0.0]
        writer = jobs.ProgressWriter(session_factory, claim, interval=1.0, clock=lambda: now[0])

        seen = []
        for done, at in [(1, 0.0), (2, 0.5), (3, 0.9), (4, 1.2), (5, 1.3), (10, 1.4)]:
            now[0] = at
            writer(done, 10)
            seen.append(load_job(session_factory, job_id).steps_done)

        assert seen == [1, 1, 1, 4, 4, 10]
        assert writer.writes == 3

    def test_heartbeat_thread_touches_the_job_while_it_runs(
        self, session_factory: sessionmaker[Session]
    ) -> None:
        with session_factory() as session:
            job_id = make_job(session, stream=make_stream(session)).id
            session.commit()
        claim = jobs.claim_job(session_factory, job_id, worker=WORKER)
        assert claim is not None
        first = load_job(session_factory, job_id).heartbeat_at
        assert first is not None

        with jobs.heartbeat(session_factory, claim, interval=0.05) as lost:
            time.sleep(0.4)

        assert not lost.is_set()
        last = load_job(session_factory, job_id).heartbeat_at
        assert last is not None and last > first

    def test_heartbeat_reports_a_lost_claim(self, session_factory: sessionmaker[Session]) -> None:
        with session_factory() as session:
            job_id = make_job(session, stream=make_stream(session)).id
            session.commit()
        claim = jobs.claim_job(session_factory, job_id, worker=WORKER)
        assert claim is not None
        with session_factory() as session:  # the reaper took it back
            assert jobs.requeue_stale_jobs(session, older_than=-1) == [job_id]
            session.commit()

        assert jobs.touch_heartbeat(session_factory, claim) is False
        assert jobs.write_progress(session_factory, claim, done=1, total=2) is False


# --- failures ------------------------------------------------------------------------------------


class TestFailures:
    def test_missing_calibration_fails_at_once_with_what_to_do(
        self,
        session_factory: sessionmaker[Session],
        worker_settings: Settings,
        tiny_weights: Path,
        tiny_calibration: dict[str, Any],
    ) -> None:
        stream_id, (job_id,) = setup_estimate(session_factory, worker_settings, tiny_weights, None)

        assert run(session_factory, worker_settings, job_id) is jobs.JobOutcome.FAILED

        job = load_job(session_factory, job_id)
        assert (job.state, job.attempts) == ("failed", 1)
        assert job.finished_at is not None
        assert "no succeeded calibration" in (job.error or "")
        assert "/calibrations" in (job.error or "")
        assert estimate_count(session_factory, stream_id) == 0

    def test_too_few_images_fail_with_the_estimators_message(
        self,
        session_factory: sessionmaker[Session],
        worker_settings: Settings,
        tiny_weights: Path,
        tiny_calibration: dict[str, Any],
    ) -> None:
        _, (job_id,) = setup_estimate(
            session_factory, worker_settings, tiny_weights, tiny_calibration, images=20
        )

        assert run(session_factory, worker_settings, job_id) is jobs.JobOutcome.FAILED

        assert "20 images are too few" in (load_job(session_factory, job_id).error or "")

    def test_undecodable_stored_image_fails_naming_the_file(
        self,
        session_factory: sessionmaker[Session],
        worker_settings: Settings,
        tiny_weights: Path,
        tiny_calibration: dict[str, Any],
    ) -> None:
        _, (job_id,) = setup_estimate(
            session_factory, worker_settings, tiny_weights, tiny_calibration
        )
        with session_factory() as session:
            path = session.scalars(select(Image.path).order_by(Image.position)).first()
        storage.open_store(worker_settings).put(path, b"not an image")  # type: ignore[arg-type]

        assert run(session_factory, worker_settings, job_id) is jobs.JobOutcome.FAILED

        assert "img-0.png" in (load_job(session_factory, job_id).error or "")

    def test_programming_error_fails_at_once_without_a_retry(
        self,
        session_factory: sessionmaker[Session],
        worker_settings: Settings,
        tiny_weights: Path,
        tiny_calibration: dict[str, Any],
    ) -> None:
        # A stored calibration missing its fits: a KeyError that every retry would hit again.
        broken = {k: v for k, v in tiny_calibration.items() if k != "fits"}
        stream_id, (job_id,) = setup_estimate(
            session_factory, worker_settings, tiny_weights, broken
        )

        assert run(session_factory, worker_settings, job_id) is jobs.JobOutcome.FAILED

        job = load_job(session_factory, job_id)
        assert (job.state, job.attempts) == ("failed", 1)
        assert (job.error or "").startswith("internal error, not retried")
        assert "KeyError: 'fits'" in (job.error or "")
        assert estimate_count(session_factory, stream_id) == 0

    def test_transient_error_requeues_until_attempts_run_out(
        self,
        session_factory: sessionmaker[Session],
        worker_settings: Settings,
        tiny_weights: Path,
        tiny_calibration: dict[str, Any],
    ) -> None:
        _, (job_id,) = setup_estimate(
            session_factory, worker_settings, tiny_weights, tiny_calibration
        )
        with session_factory() as session:
            path = session.scalars(select(Image.path).order_by(Image.position)).first()
        # A missing object (an I/O error): may pass on a retry.
        storage.open_store(worker_settings).delete(path)  # type: ignore[arg-type]

        for attempt in (1, 2):
            with pytest.raises(jobs.TransientJobError) as raised:
                run(session_factory, worker_settings, job_id)
            assert raised.value.attempts == attempt
            job = load_job(session_factory, job_id)
            assert (job.state, job.attempts, job.worker) == ("queued", attempt, None)
            assert f"attempt {attempt} of 3 failed, retrying: FileNotFoundError" in (
                job.error or ""
            )

        assert run(session_factory, worker_settings, job_id) is jobs.JobOutcome.FAILED
        job = load_job(session_factory, job_id)
        assert (job.state, job.attempts) == ("failed", 3)
        assert (job.error or "").startswith("failed after 3 attempts: FileNotFoundError")

    def test_result_of_a_reaped_job_is_discarded(
        self,
        session_factory: sessionmaker[Session],
        worker_settings: Settings,
        tiny_weights: Path,
        tiny_calibration: dict[str, Any],
    ) -> None:
        stream_id, (job_id,) = setup_estimate(
            session_factory, worker_settings, tiny_weights, tiny_calibration
        )
        cache = ModelCache()

        class ReapMidRun:
            """Metrics hook that plays the reaper while the estimate runs."""

            def job_started(self, kind: str, device: str) -> None:
                with session_factory() as session:
                    jobs.requeue_stale_jobs(session, older_than=-1)
                    session.commit()

            def estimate_finished(self, **_: Any) -> None:
                pass

            def job_finished(self, kind: str, **_: Any) -> None:
                pass

        outcome = run(session_factory, worker_settings, job_id, cache, metrics=ReapMidRun())

        assert outcome is jobs.JobOutcome.LOST
        assert load_job(session_factory, job_id).state == "queued"
        assert estimate_count(session_factory, stream_id) == 0


# --- calibrate -----------------------------------------------------------------------------------


def setup_calibration(
    session_factory: sessionmaker[Session],
    settings: Settings,
    weights: Path,
    reference: Path,
    options: dict[str, Any] | None = None,
) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """The tiny model with a queued calibration of the folder `reference` (uploaded to the store
    as the API does) and its job: (model, calibration, job) ids. `options` are the request's own
    suite and steps."""
    options = options or {}
    store = storage.open_store(settings)
    with session_factory() as session:
        model = tiny_model(session, weights, store=store)
        calibration_id = uuid.uuid4()
        prefix = storage.reference_prefix(calibration_id)
        storage.put_tree(store, reference, prefix)
        calibration = make_calibration(
            session,
            model=model,
            id=calibration_id,
            state="queued",
            result=None,
            reference_accuracy=None,
            reference_path=prefix.rstrip("/"),
            options=options,
        )
        steps = options.get("steps", 10)
        job = create_calibration_job(session, model=model, calibration=calibration, variants=steps)
        calibration.job_id = job.id
        session.commit()
        return model.id, calibration.id, job.id


def test_calibrate_job_stores_a_calibration_that_estimates_use(
    session_factory: sessionmaker[Session],
    worker_settings: Settings,
    tiny_weights: Path,
    tmp_path: Path,
) -> None:
    images = window_images(100, seed=1)
    labels = torch.arange(100) % 10
    write_image_folder(images, tmp_path / "reference", labels)
    model_id, calibration_id, job_id = setup_calibration(
        session_factory, worker_settings, tiny_weights, tmp_path / "reference"
    )

    outcome = run(
        session_factory,
        worker_settings,
        job_id,
        calibration_suite=jobs.CalibrationSuite(
            families=("gaussian_noise",), severities=(2, 4), mixes=True
        ),
    )

    assert outcome is jobs.JobOutcome.SUCCEEDED
    finished = load_job(session_factory, job_id)
    assert finished.state == "succeeded"
    # 10 trajectories (the default setting only): clean, noise 2 and 4, a half-corrupted mix;
    # clean in 3 skewed class mixes and noise in one; 2 subsampled spread variants (clean, noise)
    assert finished.steps_done == finished.steps_total == 4 + 4 + 2
    with session_factory() as session:
        stored = session.get(Calibration, calibration_id)
        assert stored is not None
        assert stored.state == "succeeded" and stored.finished_at is not None
        assert stored.result is not None and stored.result["source"] == "fitted"
        assert stored.reference_accuracy == stored.result["reference_accuracy"]
        # An estimate for this (non-ImageNet) model now uses the stored calibration.
        stream = make_stream(session, model=session.get(Model, model_id), window_size=96, steps=10)
        add_window(session, stream, 0, window_images(96), storage.open_store(worker_settings))
        estimate_job = make_job(session, stream=stream).id
        session.commit()

    assert run(session_factory, worker_settings, estimate_job) is jobs.JobOutcome.SUCCEEDED
    with session_factory() as session:
        estimate = session.scalars(select(Estimate).where(Estimate.job_id == estimate_job)).one()
    assert estimate.result["calibration"] == "fitted"


def test_calibrate_job_follows_the_requests_own_suite_and_steps(
    session_factory: sessionmaker[Session],
    worker_settings: Settings,
    tiny_weights: Path,
    tmp_path: Path,
) -> None:
    write_image_folder(window_images(100, seed=1), tmp_path / "ref", torch.arange(100) % 10)
    _, calibration_id, job_id = setup_calibration(
        session_factory,
        worker_settings,
        tiny_weights,
        tmp_path / "ref",
        {"steps": 6, "families": ["contrast"], "severities": [3, 5]},
    )

    assert run(session_factory, worker_settings, job_id) is jobs.JobOutcome.SUCCEEDED

    with session_factory() as session:
        result = session.get(Calibration, calibration_id).result  # type: ignore[union-attr]
    assert result["steps"] == 6
    variants = [(p["family"], p["severity"], p["mixed"]) for p in result["points"]]
    assert [v for v, p in zip(variants, result["points"], strict=True) if p["subset"] is None] == [
        ("clean", 0, False),
        ("contrast", 3, False),
        ("contrast", 5, False),
    ]


def test_calibrate_job_with_a_bad_reference_folder_fails_both_rows(
    session_factory: sessionmaker[Session],
    worker_settings: Settings,
    tiny_weights: Path,
    tmp_path: Path,
) -> None:
    (tmp_path / "reference" / "only-class").mkdir(parents=True)
    (tmp_path / "reference" / "only-class" / "0.png").write_bytes(png(window_images(1)[0]))
    _, calibration_id, job_id = setup_calibration(
        session_factory, worker_settings, tiny_weights, tmp_path / "reference"
    )

    assert run(session_factory, worker_settings, job_id) is jobs.JobOutcome.FAILED

    assert "class folders" in (load_job(session_factory, job_id).error or "")
    with session_factory() as session:
        stored = session.get(Calibration, calibration_id)
        assert stored is not None and stored.state == "failed"


# --- reaper and reconciler -----------------------------------------------------------------------


class TestReaper:
    def test_requeues_running_jobs_with_a_stale_heartbeat(
        self, session_factory: sessionmaker[Session]
    ) -> None:
        old = utcnow() - timedelta(minutes=10)
        with session_factory() as session:
            stream = make_stream(session)
            stale = make_job(
                session, stream=stream, state="running", attempts=1, heartbeat_at=old, worker="w"
            )
            fresh = make_job(
                session,
                stream=stream,
                window_index=1,
                state="running",
                attempts=1,
                heartbeat_at=utcnow(),
                worker="w",
            )
            spent = make_job(
                session,
                stream=stream,
                window_index=2,
                state="running",
                attempts=3,
                heartbeat_at=old,
                worker="w",
            )
            session.commit()

            assert jobs.requeue_stale_jobs(session, older_than=120) == [stale.id]
            session.commit()

        states = {j: load_job(session_factory, j).state for j in (stale.id, fresh.id, spent.id)}
        assert states == {stale.id: "queued", fresh.id: "running", spent.id: "failed"}
        assert "stopped sending heartbeats" in (load_job(session_factory, stale.id).error or "")
        assert load_job(session_factory, stale.id).worker is None

    def test_requeued_job_runs_again(
        self,
        session_factory: sessionmaker[Session],
        worker_settings: Settings,
        tiny_weights: Path,
        tiny_calibration: dict[str, Any],
    ) -> None:
        _, (job_id,) = setup_estimate(
            session_factory, worker_settings, tiny_weights, tiny_calibration
        )
        assert jobs.claim_job(session_factory, job_id, worker="dead:1") is not None
        with session_factory() as session:  # the worker died right after its claim
            assert jobs.requeue_stale_jobs(session, older_than=-1) == [job_id]
            session.commit()

        assert run(session_factory, worker_settings, job_id) is jobs.JobOutcome.SUCCEEDED
        assert load_job(session_factory, job_id).attempts == 2

    def test_reconcile_resends_lost_queued_jobs_once_per_period(
        self, session_factory: sessionmaker[Session]
    ) -> None:
        old = utcnow() - timedelta(minutes=30)
        with session_factory() as session:
            stream = make_stream(session)
            lost = make_job(session, stream=stream, created_at=old)
            recent = make_job(session, stream=stream, window_index=1)
            stale = make_job(
                session,
                stream=stream,
                window_index=2,
                state="running",
                attempts=1,
                heartbeat_at=old,
                worker="w",
            )
            session.commit()
            assert jobs.queued_job_ids(session) == [lost.id, recent.id]

        first = jobs.reconcile_jobs(session_factory, stale_after=120, lost_after=600)
        second = jobs.reconcile_jobs(session_factory, stale_after=120, lost_after=600)

        assert sorted(first) == sorted([(stale.id, "estimates.gpu"), (lost.id, "estimates.gpu")])
        assert second == []

    def test_reconcile_does_not_resend_jobs_whose_message_redis_still_holds(
        self, session_factory: sessionmaker[Session]
    ) -> None:
        old = utcnow() - timedelta(seconds=100)
        with session_factory() as session:
            stream = make_stream(session)
            waiting = make_job(session, stream=stream, created_at=old)
            lost = make_job(session, stream=stream, window_index=1, created_at=old)
            session.commit()

        sent = jobs.reconcile_jobs(
            session_factory, stale_after=30, lost_after=30, pending={waiting.id}
        )

        assert sent == [(lost.id, "estimates.gpu")]

    def test_default_timers_bring_a_lost_job_back_within_a_minute(self) -> None:
        defaults = Settings()
        worst_dead_worker = defaults.job_stale_seconds + defaults.reconcile_interval_seconds
        worst_lost_message = defaults.job_lost_seconds + defaults.reconcile_interval_seconds
        assert max(worst_dead_worker, worst_lost_message) <= 60
        assert defaults.job_stale_seconds >= 3 * defaults.job_heartbeat_seconds

    def test_stale_timeout_shorter_than_three_heartbeats_is_refused(self) -> None:
        with pytest.raises(ValueError, match="at least three heartbeats"):
            Settings(job_heartbeat_seconds=10, job_stale_seconds=20)

    def test_embedded_start_requeues_everything_left_running(
        self, session_factory: sessionmaker[Session]
    ) -> None:
        with session_factory() as session:
            stream = make_stream(session)
            running = make_job(session, stream=stream, state="running", attempts=1, worker="w")
            queued = make_job(session, stream=stream, window_index=1)
            make_job(session, stream=stream, window_index=2, state="succeeded")
            session.commit()

        ids = [job.id for job in jobs.requeue_interrupted_jobs(session_factory)]

        assert sorted(ids) == sorted([running.id, queued.id])
        assert load_job(session_factory, running.id).state == "queued"
