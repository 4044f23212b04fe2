"""Per-stream metrics, read from the database at scrape time by a custom Collector.

The collector opens a short-lived session on every scrape, so every API replica reports the same
truth (Postgres) and nothing is lost on restart; no multiprocess mode is needed. Values from the
estimator's output (baselines, embedding distances) come from the typed `EstimateResult` the
worker stored.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import and_, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from flipwatch.service.core.tables import JOB_STATES, AlertRule, Estimate, Job, Model, Stream
from flipwatch.service.estimate.service import stored_result
from flipwatch.service.metrics.names import STREAM_LABELS

log = logging.getLogger(__name__)


@dataclass
class _StreamFamilies:
    """The per-stream families of one scrape, filled row by row."""

    accuracy: GaugeMetricFamily = field(
        default_factory=lambda: GaugeMetricFamily(
            "flipwatch_estimated_accuracy_ratio",
            "Estimated accuracy (Weighted Flips, no labels) of the stream's latest window.",
            labels=STREAM_LABELS,
        )
    )
    lower: GaugeMetricFamily = field(
        default_factory=lambda: GaugeMetricFamily(
            "flipwatch_estimated_accuracy_lower_ratio",
            "Lower bound of the estimate's prediction interval (90 %: split conformal on the "
            "calibration's held-out families, widened for small windows).",
            labels=STREAM_LABELS,
        )
    )
    upper: GaugeMetricFamily = field(
        default_factory=lambda: GaugeMetricFamily(
            "flipwatch_estimated_accuracy_upper_ratio",
            "Upper bound of the estimate's prediction interval: alert on it to page only when "
            "even the optimistic end is below the floor.",
            labels=STREAM_LABELS,
        )
    )
    label_shift: GaugeMetricFamily = field(
        default_factory=lambda: GaugeMetricFamily(
            "flipwatch_label_shift_distance",
            "Total variation between the window's estimated class proportions (MLLS) and the "
            "reference set's: a different class mix, not model failure.",
            labels=STREAM_LABELS,
        )
    )
    flips: GaugeMetricFamily = field(
        default_factory=lambda: GaugeMetricFamily(
            "flipwatch_weighted_flips",
            "Weighted Flips signal of the stream's latest window.",
            labels=STREAM_LABELS,
        )
    )
    baselines: GaugeMetricFamily = field(
        default_factory=lambda: GaugeMetricFamily(
            "flipwatch_baseline_accuracy_ratio",
            "Baseline accuracy estimates (AC, DoC, ATC, ATC-NE, COT) of the latest window.",
            labels=(*STREAM_LABELS, "method"),
        )
    )
    embedding: GaugeMetricFamily = field(
        default_factory=lambda: GaugeMetricFamily(
            "flipwatch_embedding_distance",
            "Embedding distances of the latest window to the reference (frechet, "
            "centroid_shift) and its post-adaptation silhouette.",
            labels=(*STREAM_LABELS, "kind"),
        )
    )
    alerts: GaugeMetricFamily = field(
        default_factory=lambda: GaugeMetricFamily(
            "flipwatch_drift_alert",
            "Drift rule state: 1 firing, 0 not (rules with hysteresis, set through the API).",
            labels=(*STREAM_LABELS, "rule"),
        )
    )
    last_estimate: GaugeMetricFamily = field(
        default_factory=lambda: GaugeMetricFamily(
            "flipwatch_last_estimate_timestamp_seconds",
            "Unix time the stream's most recent estimate was stored.",
            labels=STREAM_LABELS,
        )
    )
    images: CounterMetricFamily = field(
        default_factory=lambda: CounterMetricFamily(
            "flipwatch_images_ingested",
            "Images accepted into the stream since it was created.",
            labels=STREAM_LABELS,
        )
    )
    signal: GaugeMetricFamily = field(
        default_factory=lambda: GaugeMetricFamily(
            "flipwatch_estimate_signal_value",
            "Value of the signal that produced the latest estimate (the calibration's selected "
            "signal@step, e.g. uf_source@250; bounded: 4 signals x the checkpoints).",
            labels=(*STREAM_LABELS, "signal"),
        )
    )
    calibration_error: GaugeMetricFamily = field(
        default_factory=lambda: GaugeMetricFamily(
            "flipwatch_calibration_error_ratio",
            "Held-out (leave-one-family-out) mean absolute error of the calibration fit behind "
            "the latest estimate.",
            labels=(*STREAM_LABELS, "signal"),
        )
    )
    used_fraction: GaugeMetricFamily = field(
        default_factory=lambda: GaugeMetricFamily(
            "flipwatch_estimate_used_fraction_ratio",
            "Share of the latest window's adaptation samples that passed the entropy and "
            "redundancy filters (0: nothing adapted, the estimate is the clean map's floor).",
            labels=STREAM_LABELS,
        )
    )
    # Interval bounds of the estimate (flipwatch_estimated_accuracy_lower_ratio / _upper_ratio)
    # go here once the estimator stores them (the estimate-quality work); same labels.
    realized: GaugeMetricFamily = field(
        default_factory=lambda: GaugeMetricFamily(
            "flipwatch_realized_accuracy_ratio",
            "Accuracy measured on posted labels, of the stream's latest window that has one.",
            labels=STREAM_LABELS,
        )
    )
    estimator_error: GaugeMetricFamily = field(
        default_factory=lambda: GaugeMetricFamily(
            "flipwatch_estimator_abs_error_ratio",
            "The estimator's running error on the stream: mean |estimated - realized accuracy| "
            "over the most recent windows with labels (FLIPWATCH_ESTIMATOR_ERROR_WINDOWS).",
            labels=STREAM_LABELS,
        )
    )
    realized_windows: GaugeMetricFamily = field(
        default_factory=lambda: GaugeMetricFamily(
            "flipwatch_realized_windows",
            "Windows behind flipwatch_estimator_abs_error_ratio (at most "
            "FLIPWATCH_ESTIMATOR_ERROR_WINDOWS).",
            labels=STREAM_LABELS,
        )
    )
    jobs: GaugeMetricFamily = field(
        default_factory=lambda: GaugeMetricFamily(
            "flipwatch_jobs",
            'Jobs per state: estimate jobs per stream; calibration jobs with stream="".',
            labels=(*STREAM_LABELS, "state"),
        )
    )

    def all(self) -> list[Metric]:
        return [
            self.accuracy,
            self.lower,
            self.upper,
            self.label_shift,
            self.flips,
            self.baselines,
            self.embedding,
            self.alerts,
            self.last_estimate,
            self.images,
            self.jobs,
            self.signal,
            self.calibration_error,
            self.used_fraction,
            self.realized,
            self.estimator_error,
            self.realized_windows,
        ]


def read_stream_metrics(session: Session, *, error_windows: int = 10) -> list[Metric]:
    """Every per-stream family, from six aggregate queries (no per-stream round trips)."""
    out = _StreamFamilies()
    models: dict[uuid.UUID, tuple[str, str]] = {
        model_id: (name, str(version))
        for model_id, name, version in session.execute(select(Model.id, Model.name, Model.version))
    }
    streams: dict[uuid.UUID, list[str]] = {}
    for stream_id, name, model_id, images_total in session.execute(
        select(Stream.id, Stream.name, Stream.model_id, Stream.images_total).order_by(Stream.name)
    ):
        labels = [name, *models.get(model_id, ("", ""))]
        streams[stream_id] = labels
        out.images.add_metric(labels, float(images_total))

    latest = (
        select(
            Estimate.stream_id.label("stream_id"),
            func.max(Estimate.window_index).label("window_index"),
            func.max(Estimate.created_at).label("last_at"),
        )
        .group_by(Estimate.stream_id)
        .subquery()
    )
    rows = session.execute(
        select(Estimate, latest.c.last_at).join(
            latest,
            and_(
                Estimate.stream_id == latest.c.stream_id,
                Estimate.window_index == latest.c.window_index,
            ),
        )
    )
    for estimate, last_at in rows:
        labels = streams.get(estimate.stream_id)
        if labels is None:
            continue
        out.accuracy.add_metric(labels, float(estimate.estimated_accuracy))
        if estimate.weighted_flips is not None:
            out.flips.add_metric(labels, float(estimate.weighted_flips))
        result = stored_result(estimate)
        if result is not None:
            interval = {"lower": result.lower, "upper": result.upper, "shift": result.label_shift}
            for name, value in _numbers(interval):
                family = {"lower": out.lower, "upper": out.upper, "shift": out.label_shift}[name]
                family.add_metric(labels, value)
            for method, value in _numbers(result.baselines):
                out.baselines.add_metric([*labels, method], value)
            for kind, value in _numbers(result.embedding):
                out.embedding.add_metric([*labels, kind], value)
            signal = result.signal
            if _finite(result.signal_value):
                out.signal.add_metric([*labels, signal], float(result.signal_value))
            if _finite(result.calibration_mae):
                out.calibration_error.add_metric([*labels, signal], float(result.calibration_mae))
            if _finite(result.used_fraction):
                out.used_fraction.add_metric(labels, float(result.used_fraction))
        out.last_estimate.add_metric(labels, _timestamp(last_at))

    # Realized accuracy: the last `error_windows` windows with labels, per stream.
    recent = (
        select(
            Estimate.stream_id,
            Estimate.estimated_accuracy,
            Estimate.realized_accuracy,
            func.row_number()
            .over(partition_by=Estimate.stream_id, order_by=Estimate.window_index.desc())
            .label("age"),
        )
        .where(Estimate.realized_accuracy.is_not(None))
        .subquery()
    )
    realized: dict[uuid.UUID, list[tuple[float, float]]] = defaultdict(list)
    for stream_id, estimated, actual in session.execute(
        select(recent.c.stream_id, recent.c.estimated_accuracy, recent.c.realized_accuracy)
        .where(recent.c.age <= error_windows)
        .order_by(recent.c.stream_id, recent.c.age)
    ):
        realized[stream_id].append((float(estimated), float(actual)))
    for stream_id, pairs in realized.items():
        labels = streams.get(stream_id)
        if labels is None:
            continue
        out.realized.add_metric(labels, pairs[0][1])  # age 1: the latest labeled window
        out.estimator_error.add_metric(labels, sum(abs(e - r) for e, r in pairs) / len(pairs))
        out.realized_windows.add_metric(labels, float(len(pairs)))

    for stream_id, rule_name, state in session.execute(
        select(AlertRule.stream_id, AlertRule.name, AlertRule.state).order_by(AlertRule.name)
    ):
        if stream_id in streams:
            out.alerts.add_metric([*streams[stream_id], rule_name], float(state == "firing"))

    counts: dict[tuple[str, ...], dict[str, int]] = defaultdict(dict)
    for labels in streams.values():
        counts[tuple(labels)] = {}  # every stream reports every state, zeros included
    for stream_id, model_id, state, count in session.execute(
        select(Job.stream_id, Job.model_id, Job.state, func.count()).group_by(
            Job.stream_id, Job.model_id, Job.state
        )
    ):
        if stream_id is not None and stream_id in streams:
            key = tuple(streams[stream_id])
        else:
            key = ("", *models.get(model_id, ("", "")))
        counts[key][state] = counts[key].get(state, 0) + count
    for key, by_state in counts.items():
        for state in JOB_STATES:
            out.jobs.add_metric([*key, state], float(by_state.get(state, 0)))
    return out.all()


def _numbers(values: Mapping[str, float | None]) -> Iterator[tuple[str, float]]:
    """(name, value) for each finite number, in a stable order; nulls and NaN skipped."""
    for name in sorted(values):
        value = values[name]
        if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
            yield str(name), float(value)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def _timestamp(value: Any) -> float:
    return float(value.timestamp()) if value is not None else 0.0


class DatabaseCollector(Collector):
    """Reads the per-stream families at scrape time with a short-lived session.

    A database failure does not fail the scrape: the process metrics still go out, and
    flipwatch_database_up says 0.
    """

    def __init__(
        self,
        get_sessionmaker: Callable[[], sessionmaker[Session] | None],
        *,
        error_windows: int = 10,
    ) -> None:
        self._get_sessionmaker = get_sessionmaker
        self._error_windows = error_windows

    def describe(self) -> Iterable[Metric]:
        return []  # nothing to check at registration; names are fixed (STREAM_METRICS)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "flipwatch_database_up", "1 when this scrape could read the database, else 0."
        )
        factory = self._get_sessionmaker()
        families: list[Metric] = []
        ok = False
        if factory is not None:
            try:
                with factory() as session:
                    families = read_stream_metrics(session, error_windows=self._error_windows)
                ok = True
            except SQLAlchemyError as exc:
                log.warning("metrics: database unreadable at scrape time: %s", exc)
        up.add_metric([], 1.0 if ok else 0.0)
        yield from families
        yield up
