"""The estimate job: one window of a stream through the estimator, stored as one estimate row.

The inputs are read in a short session (nothing is held open while the estimator runs); the result,
the job's `succeeded` and the alert rules' moves are written together at the commit point `finish`
(`finish_estimate`).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from flipwatch.service.alert.evaluation import evaluate_alerts
from flipwatch.service.calibration.service import latest_calibration
from flipwatch.service.core import storage
from flipwatch.service.core.settings import Settings
from flipwatch.service.core.tables import Estimate, Image, Job, Model, Stream, utcnow
from flipwatch.service.estimate.latest import record_latest_estimate
from flipwatch.service.label.service import refresh_realized_accuracy
from flipwatch.workers.jobs.failures import UserError
from flipwatch.workers.jobs.lifecycle import (
    Claim,
    JobMetrics,
    JobOutcome,
    ProgressWriter,
    SessionFactory,
    mark_succeeded,
)
from flipwatch.workers.jobs.model import load_job_model, spec_and_key
from flipwatch.workers.jobs.prefetch import WindowPrefetcher, decode_window, window_key
from flipwatch.workers.jobs.resources import DeviceSlots
from flipwatch.workers.model_cache import ModelCache

if TYPE_CHECKING:
    from torch import Tensor

    from flipwatch.workers.estimation.spec import ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _EstimateInputs:
    model_row_id: uuid.UUID
    model_version: int
    stream_id: uuid.UUID
    window_index: int
    steps: int
    image_paths: list[tuple[str, str | None]]  # (storage key, original filename)
    calibration: dict[str, Any] | None
    image_ids: list[uuid.UUID] = field(default_factory=list)  # same order as image_paths


def run_estimate(
    session_factory: SessionFactory,
    settings: Settings,
    claim: Claim,
    model_cache: ModelCache,
    metrics: JobMetrics | None,
    *,
    prefetcher: WindowPrefetcher | None = None,
    slots: DeviceSlots | None = None,
) -> JobOutcome:
    from flipwatch.workers.estimation import (
        Calibration as EstimatorCalibration,
    )
    from flipwatch.workers.estimation import (
        CalibrationMissing,
        EstimateConfig,
        builtin_calibration,
        estimate,
    )

    with session_factory() as session:
        job = session.get(Job, claim.job_id)
        assert job is not None and job.stream_id is not None and job.window_index is not None
        model_row = session.get(Model, job.model_id)
        stream = session.get(Stream, job.stream_id)
        if model_row is None or stream is None:
            raise UserError(f"job {job.id}: its model or stream no longer exists")
        spec, model_key = spec_and_key(model_row)
        rows = session.execute(
            select(Image.id, Image.path, Image.filename)
            .where(Image.stream_id == job.stream_id, Image.window_index == job.window_index)
            .order_by(Image.position)
        ).all()
        stored = latest_calibration(session, model_row.id)
        inputs = _EstimateInputs(
            model_row_id=model_row.id,
            model_version=model_row.version,
            stream_id=job.stream_id,
            window_index=job.window_index,
            steps=stream.steps,
            image_paths=[(r.path, r.filename) for r in rows],
            image_ids=[r.id for r in rows],
            calibration=stored.result if stored is not None else None,
        )
        model_name = f"{model_row.name!r} v{model_row.version}"

    if inputs.calibration is not None:
        calibration = EstimatorCalibration.from_dict(inputs.calibration)
    else:
        calibration = builtin_calibration(spec)
    if calibration is None:
        raise CalibrationMissing(
            f"model {model_name} has no succeeded calibration and is not an ImageNet classifier "
            f"(spec imagenet: false); upload a labeled reference set with "
            f"POST /v1/models/{inputs.model_row_id}/calibrations, then request the estimate again"
        )
    if not inputs.image_paths:
        raise UserError(f"window {inputs.window_index} of stream {inputs.stream_id} has no images")
    model, device = load_job_model(
        "estimate",
        spec,
        model_key,
        model_cache=model_cache,
        settings=settings,
        metrics=metrics,
    )
    key = window_key(claim.job_id, inputs.image_paths, spec)
    images = prefetcher.take(key) if prefetcher is not None else None
    store = storage.open_store(settings)
    if images is None:
        images = decode_window(
            store, inputs.image_paths, spec, device=str(device), threads=settings.storage_threads
        )
    if prefetcher is not None and settings.prefetch_windows:
        prefetcher.prefetch_next(
            session_factory, claim.job_id, store, threads=settings.storage_threads
        )
    config = EstimateConfig(steps=inputs.steps, fast=settings.fast_path)
    with (slots or DeviceSlots()).job(str(device), model_key) as usage:
        started = time.perf_counter()
        result = estimate(
            model,
            images,
            spec=spec,
            calibration=calibration,
            config=config,
            device=device,
            progress=ProgressWriter(session_factory, claim),
        )
        predictions = source_predictions(model, images, spec, device=device)
        seconds = time.perf_counter() - started
    if metrics is not None:
        metrics.estimate_finished(seconds=seconds, images=len(images), device=str(device))
        metrics.job_finished(
            "estimate",
            seconds=seconds,
            adapted_images=config.steps * config.batch_size,
            peak_memory_bytes=usage.peak_memory_bytes,
            device=str(device),
        )
    log.info(
        "job %s: %d steps in %.1f s (%.0f adapted images/s), peak memory %.0f MB%s",
        claim.job_id,
        config.steps,
        seconds,
        config.steps * config.batch_size / max(seconds, 1e-9),
        usage.peak_memory_bytes / 2**20,
        " (shared device)" if usage.shared else "",
    )
    return finish_estimate(
        session_factory,
        claim,
        inputs,
        result,
        image_count=len(images),
        predictions=predictions,
        min_labels=settings.realized_min_labels,
    )


def source_predictions(model: Any, images: Tensor, spec: ModelSpec, *, device: Any) -> list[int]:
    """The deployed (eval-mode, unadapted) model's class per image, in window order: what labels
    posted later are compared with to give the realized accuracy."""
    from flipwatch.workers.estimation.trajectory import predict

    was_training = model.training
    model.eval()
    try:
        out = predict(model, images, spec, device=device, chunk_size=256)
    finally:
        model.train(was_training)
    return [int(c) for c in out.probs.argmax(1).tolist()]


def finish_estimate(
    session_factory: SessionFactory,
    claim: Claim,
    inputs: _EstimateInputs,
    result: Any,
    *,
    image_count: int,
    predictions: list[int] | None = None,
    min_labels: int = 50,
) -> JobOutcome:
    """Commit point `finish`: the estimate row and `succeeded` in ONE transaction.

    The ownership UPDATE (`mark_succeeded`) comes first: it takes the row lock on Postgres and is
    the first write on SQLite. If another worker already wrote this window's estimate, the UNIQUE
    (stream_id, window_index) constraint refuses a second row; the job still succeeds, pointing at
    none.
    """
    with session_factory() as session:
        if not mark_succeeded(session, claim, now=utcnow()):
            return JobOutcome.LOST
        try:
            with session.begin_nested():
                estimate = Estimate(
                    id=uuid.uuid4(),
                    stream_id=inputs.stream_id,
                    job_id=claim.job_id,
                    window_index=inputs.window_index,
                    model_id=inputs.model_row_id,
                    model_version=inputs.model_version,
                    image_count=image_count,
                    estimated_accuracy=float(result.estimated_accuracy),
                    signal=result.signal,
                    weighted_flips=float(result.weighted_flips),
                    result=result.to_dict(),
                )
                session.add(estimate)
                session.flush()
                # The scrape's per-stream row moves with the estimate (same savepoint).
                record_latest_estimate(session, estimate)
        except IntegrityError:
            log.warning(
                "job %s: window %d of stream %s already has an estimate; no second row written",
                claim.job_id,
                inputs.window_index,
                inputs.stream_id,
            )
        else:
            if predictions is not None and len(predictions) == len(inputs.image_ids):
                session.execute(
                    update(Image),
                    [
                        {"id": image_id, "predicted_label": label}
                        for image_id, label in zip(inputs.image_ids, predictions, strict=True)
                    ],
                )
                # Labels may have arrived before the estimate: realized accuracy now.
                refresh_realized_accuracy(
                    session, inputs.stream_id, inputs.window_index, min_labels=min_labels
                )
            # Same transaction: alert state moves if and only if the estimate row lands.
            for change in evaluate_alerts(session, estimate):
                log.info("stream %s: alert %r %s", change.stream_id, change.rule_name, change.state)
        session.commit()
    log.info(
        "job %s: estimate %.4f for stream %s window %d (%d images)",
        claim.job_id,
        result.estimated_accuracy,
        inputs.stream_id,
        inputs.window_index,
        image_count,
    )
    return JobOutcome.SUCCEEDED
