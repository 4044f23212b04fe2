"""The calibrate job: fit the estimator's calibration on a labeled reference set.

The fitted calibration and both rows (job and calibration) go to `succeeded` together at the
commit point `finish` (`finish_calibrate`).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import update

from flipwatch.service.core import storage
from flipwatch.service.core.settings import Settings
from flipwatch.service.core.tables import Calibration, Job, Model, utcnow
from flipwatch.workers.estimation.families import (
    DEFAULT_CLASS_MIXES,
    DEFAULT_SEVERITIES,
    ClassMixes,
)
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
from flipwatch.workers.jobs.resources import DeviceSlots
from flipwatch.workers.model_cache import ModelCache
from flipwatch.workers.objects import reference_folder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationSuite:
    """Which shifted variants a calibrate job measures: families x severities (+ a mix each with
    `mixes`), the skewed class mixes, and whether under the learning-rate grid too.

    The default is the estimator's default suite: all 17 families at severities 2, 3 and 4 with
    every class mix, 76 trajectories. Tests and small CPU deployments pass a few families to
    finish in seconds.
    """

    families: tuple[str, ...] | None = None
    severities: tuple[int, ...] = DEFAULT_SEVERITIES
    mixes: bool = False
    class_mixes: ClassMixes = DEFAULT_CLASS_MIXES
    lr_grid: bool = False


def suite_for(
    options: dict[str, Any], settings: Settings, *, default: CalibrationSuite | None
) -> CalibrationSuite:
    """The request's own families/severities first, then the worker's suite, then Settings."""
    families = settings.calibration_families
    base = default or CalibrationSuite(
        families=None if families is None else tuple(families),
        severities=tuple(settings.calibration_severities),
        mixes=settings.calibration_mixes,
        class_mixes=settings.calibration_class_mixes,
        lr_grid=settings.calibration_lr_grid,
    )
    return replace(
        base,
        families=tuple(options["families"]) if options.get("families") else base.families,
        severities=tuple(options["severities"]) if options.get("severities") else base.severities,
    )


def run_calibrate(
    session_factory: SessionFactory,
    settings: Settings,
    claim: Claim,
    model_cache: ModelCache,
    metrics: JobMetrics | None,
    suite: CalibrationSuite | None,
    *,
    slots: DeviceSlots | None = None,
) -> JobOutcome:
    from flipwatch.workers.estimation import EstimateConfig, calibrate, load_labeled_folder
    from flipwatch.workers.estimation.calibration import LR_GRID

    with session_factory() as session:
        job = session.get(Job, claim.job_id)
        assert job is not None
        calibration_row = (
            session.get(Calibration, job.calibration_id) if job.calibration_id else None
        )
        model_row = session.get(Model, job.model_id)
        if calibration_row is None or model_row is None:
            raise UserError(f"job {job.id}: its calibration or model no longer exists")
        spec, model_key = spec_and_key(model_row)
        reference_path = calibration_row.reference_path
        calibration_id = calibration_row.id
        options = dict(calibration_row.options or {})

    with reference_folder(
        storage.open_store(settings), reference_path, settings.effective_cache_dir / "references"
    ) as folder:
        images, labels, _classes = load_labeled_folder(folder, spec)
    suite = suite_for(options, settings, default=suite)
    model, device = load_job_model(
        "calibrate",
        spec,
        model_key,
        model_cache=model_cache,
        settings=settings,
        metrics=metrics,
    )
    config = EstimateConfig(
        steps=int(options.get("steps") or settings.default_steps), fast=settings.fast_path
    )
    with (slots or DeviceSlots()).job(str(device), model_key) as usage:
        started = time.perf_counter()
        fitted = calibrate(
            model,
            images,
            labels,
            spec=spec,
            config=config,
            device=device,
            progress=ProgressWriter(session_factory, claim),  # in variants
            families=suite.families,
            severities=suite.severities,
            processes=settings.calibration_processes,
            mixes=suite.mixes,
            class_mixes=suite.class_mixes,
            settings=LR_GRID if suite.lr_grid else (),
        )
        seconds = time.perf_counter() - started
    if metrics is not None:
        metrics.job_finished(
            "calibrate",
            seconds=seconds,
            adapted_images=sum(
                len(fitted.points) * config.steps * setting.batch_size
                for setting in fitted.settings
            ),
            peak_memory_bytes=usage.peak_memory_bytes,
            device=str(device),
        )
    return finish_calibrate(session_factory, claim, calibration_id, fitted)


def finish_calibrate(
    session_factory: SessionFactory, claim: Claim, calibration_id: uuid.UUID, fitted: Any
) -> JobOutcome:
    """Commit point `finish`: the calibration result and both rows `succeeded`, together."""
    now = utcnow()
    with session_factory() as session:
        if not mark_succeeded(session, claim, now=now):
            return JobOutcome.LOST
        session.execute(
            update(Calibration)
            .where(Calibration.id == calibration_id)
            .values(
                state="succeeded",
                result=fitted.to_dict(),
                reference_accuracy=fitted.reference_accuracy,
                finished_at=now,
            )
        )
        session.commit()
    log.info("job %s: calibration %s selected %s", claim.job_id, calibration_id, fitted.selected)
    return JobOutcome.SUCCEEDED
