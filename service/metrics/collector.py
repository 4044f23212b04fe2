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
            self.flips,
            self.baselines,
            self.embedding,
            self.alerts,
            self.last_estimate,
            self.images,
            self.jobs,
        ]


def read_stream_metrics(session: Session) -> list[Metric]:
    """Every per-stream family, from five aggregate queries (no per-stream round trips)."""
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
            for method, value in _numbers(result.baselines):
                out.baselines.add_metric([*labels, method], value)
            for kind, value in _numbers(result.embedding):
                out.embedding.add_metric([*labels, kind], value)
        out.last_estimate.add_metric(labels, _timestamp(last_at))

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


def _timestamp(value: Any) -> float:
    return float(value.timestamp()) if value is not None else 0.0


class DatabaseCollector(Collector):
    """Reads the per-stream families at scrape time with a short-lived session.

    A database failure does not fail the scrape: the process metrics still go out, and
    flipwatch_database_up says 0.
    """

    def __init__(self, get_sessionmaker: Callable[[], sessionmaker[Session] | None]) -> None:
        self._get_sessionmaker = get_sessionmaker

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
                    families = read_stream_metrics(session)
                ok = True
            except SQLAlchemyError as exc:
                log.warning("metrics: database unreadable at scrape time: %s", exc)
        up.add_metric([], 1.0 if ok else 0.0)
        yield from families
        yield up
