"""Per-stream metrics, read from the database at scrape time.

Every scrape opens a short-lived session, so every API replica reports the same truth (Postgres)
and nothing is lost on restart; no multiprocess mode is needed. The scrape reads one small
`latest_estimates` row per stream (kept by the estimate job in the transaction that inserts the
estimate, `service/estimate/latest.py`), never the estimates' result documents, and the per-stream
families are written as text directly (`render_text`): each stream's label set is escaped once,
not once per series. `to_metric_families` gives the same families as prometheus_client objects for
any other consumer of the registry (OpenMetrics, `generate_latest`); a test checks both agree.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from sqlalchemy import Connection, Subquery, func, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from flipwatch.service.core.tables import (
    JOB_STATES,
    AlertRule,
    Estimate,
    JobCount,
    LatestEstimate,
    Model,
    Stream,
)
from flipwatch.service.metrics.names import STREAM_LABELS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FamilySpec:
    """One per-stream family: labels are STREAM_LABELS plus `extra` when set."""

    name: str
    documentation: str
    kind: str = "gauge"  # or "counter" (exposed as <name>_total)
    extra: str | None = None


ACCURACY = FamilySpec(
    "flipwatch_estimated_accuracy_ratio",
    "Estimated accuracy (Weighted Flips, no labels) of the stream's latest window.",
)
LOWER = FamilySpec(
    "flipwatch_estimated_accuracy_lower_ratio",
    "Lower bound of the estimate's prediction interval (90 %: split conformal on the "
    "calibration's held-out families, widened for small windows).",
)
UPPER = FamilySpec(
    "flipwatch_estimated_accuracy_upper_ratio",
    "Upper bound of the estimate's prediction interval: alert on it to page only when "
    "even the optimistic end is below the floor.",
)
LABEL_SHIFT = FamilySpec(
    "flipwatch_label_shift_distance",
    "Total variation between the window's estimated class proportions (MLLS) and the "
    "reference set's: a different class mix, not model failure.",
)
FLIPS = FamilySpec(
    "flipwatch_weighted_flips", "Weighted Flips signal of the stream's latest window."
)
BASELINES = FamilySpec(
    "flipwatch_baseline_accuracy_ratio",
    "Baseline accuracy estimates (AC, DoC, ATC, ATC-NE, COT) of the latest window.",
    extra="method",
)
EMBEDDING = FamilySpec(
    "flipwatch_embedding_distance",
    "Embedding distances of the latest window to the reference (frechet, "
    "centroid_shift) and its post-adaptation silhouette.",
    extra="kind",
)
ALERTS = FamilySpec(
    "flipwatch_drift_alert",
    "Drift rule state: 1 firing, 0 not (rules with hysteresis, set through the API).",
    extra="rule",
)
LAST_ESTIMATE = FamilySpec(
    "flipwatch_last_estimate_timestamp_seconds",
    "Unix time the stream's most recent estimate was stored.",
)
IMAGES = FamilySpec(
    "flipwatch_images_ingested",
    "Images accepted into the stream since it was created.",
    kind="counter",
)
JOBS = FamilySpec(
    "flipwatch_jobs",
    'Jobs per state: estimate jobs per stream; calibration jobs with stream="".',
    extra="state",
)
SIGNAL = FamilySpec(
    "flipwatch_estimate_signal_value",
    "Value of the signal that produced the latest estimate (the calibration's selected "
    "signal@step, e.g. uf_source@250; bounded: 4 signals x the checkpoints).",
    extra="signal",
)
CALIBRATION_ERROR = FamilySpec(
    "flipwatch_calibration_error_ratio",
    "Held-out (leave-one-family-out) mean absolute error of the calibration fit behind "
    "the latest estimate.",
    extra="signal",
)
USED_FRACTION = FamilySpec(
    "flipwatch_estimate_used_fraction_ratio",
    "Share of the latest window's adaptation samples that passed the entropy and "
    "redundancy filters (0: nothing adapted, the estimate is the clean map's floor).",
)
REALIZED = FamilySpec(
    "flipwatch_realized_accuracy_ratio",
    "Accuracy measured on posted labels, of the stream's latest window that has one.",
)
ESTIMATOR_ERROR = FamilySpec(
    "flipwatch_estimator_abs_error_ratio",
    "The estimator's running error on the stream: mean |estimated - realized accuracy| "
    "over the most recent windows with labels (FLIPWATCH_ESTIMATOR_ERROR_WINDOWS).",
)
REALIZED_WINDOWS = FamilySpec(
    "flipwatch_realized_windows",
    "Windows behind flipwatch_estimator_abs_error_ratio (at most "
    "FLIPWATCH_ESTIMATOR_ERROR_WINDOWS).",
)
# The exposition order of the families (unchanged since the first collector).
FAMILIES: tuple[FamilySpec, ...] = (
    ACCURACY,
    LOWER,
    UPPER,
    LABEL_SHIFT,
    FLIPS,
    BASELINES,
    EMBEDDING,
    ALERTS,
    LAST_ESTIMATE,
    IMAGES,
    JOBS,
    SIGNAL,
    CALIBRATION_ERROR,
    USED_FRACTION,
    REALIZED,
    ESTIMATOR_ERROR,
    REALIZED_WINDOWS,
)
# Sample = (index into StreamSnapshot.labels, value of the family's extra label or "", value).
Sample = tuple[int, str, float]


@dataclass
class StreamSnapshot:
    """What one scrape read: the label sets (stream, model, model_version) and each family's
    samples pointing at them, so a label set is stored (and escaped) once per stream."""

    labels: list[tuple[str, str, str]] = field(default_factory=list)
    samples: dict[str, list[Sample]] = field(
        default_factory=lambda: {spec.name: [] for spec in FAMILIES}
    )


def read_stream_snapshot(session: Session, *, error_windows: int = 10) -> StreamSnapshot:
    """Every per-stream value, from five queries whose cost grows with streams and rules, not
    with estimates or jobs: models, streams with their latest_estimates row, the newest labeled
    windows (a covering partial index), rules, and job_counts.

    Rows are read at the Core level (no ORM row objects) and appended to local lists: at 10,000
    streams this loop handles about 270,000 samples per scrape.
    """
    out = StreamSnapshot()
    conn = session.connection()
    got = {spec.name: out.samples[spec.name].append for spec in FAMILIES}
    models: dict[uuid.UUID, tuple[str, str]] = {
        model_id: (name, str(version))
        for model_id, name, version in conn.execute(
            select(Model.id, Model.name, Model.version)
        ).all()
    }
    streams: dict[uuid.UUID, int] = {}
    rows = conn.execute(
        select(
            Stream.id,
            Stream.name,
            Stream.model_id,
            Stream.images_total,
            LatestEstimate.estimated_accuracy,
            LatestEstimate.weighted_flips,
            LatestEstimate.series,
            LatestEstimate.last_estimate_at,
        )
        .outerjoin(LatestEstimate, LatestEstimate.stream_id == Stream.id)
        .order_by(Stream.name)
    ).all()
    images, accuracies, flips_, last = (
        got[IMAGES.name],
        got[ACCURACY.name],
        got[FLIPS.name],
        got[LAST_ESTIMATE.name],
    )
    interval = (
        ("lower", got[LOWER.name]),
        ("label_shift", got[LABEL_SHIFT.name]),
        ("upper", got[UPPER.name]),
    )
    baselines, embedding, used = got[BASELINES.name], got[EMBEDDING.name], got[USED_FRACTION.name]
    signal, calibration_error = got[SIGNAL.name], got[CALIBRATION_ERROR.name]
    labels = out.labels
    for stream_id, name, model_id, images_total, accuracy, flips, series, last_at in rows:
        key = len(labels)
        labels.append((name, *models.get(model_id, ("", ""))))
        streams[stream_id] = key
        images((key, "", float(images_total)))
        if accuracy is None:
            continue  # no estimate yet
        accuracies((key, "", float(accuracy)))
        if flips is not None:
            flips_((key, "", float(flips)))
        if series is not None:
            for field_, append in interval:
                if field_ in series:
                    append((key, "", series[field_]))
            for method, value in series["baselines"].items():
                baselines((key, method, value))
            for kind, value in series["embedding"].items():
                embedding((key, kind, value))
            if "signal_value" in series:
                signal((key, series["signal"], series["signal_value"]))
            if "calibration_mae" in series:
                calibration_error((key, series["signal"], series["calibration_mae"]))
            if "used_fraction" in series:
                used((key, "", series["used_fraction"]))
        last((key, "", _timestamp(last_at)))

    # Realized accuracy: the last `error_windows` windows with labels, per stream (only labeled
    # estimates are read, through ix_estimates_stream_id_window_index_realized).
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
    realized_ = got[REALIZED.name]
    estimator_error, realized_windows = got[ESTIMATOR_ERROR.name], got[REALIZED_WINDOWS.name]
    for stream_id, latest, total, count in _realized_by_stream(conn, recent, error_windows):
        key_ = streams.get(stream_id)
        if key_ is None:
            continue
        realized_((key_, "", latest))  # age 1: the latest labeled window
        estimator_error((key_, "", total / count))
        realized_windows((key_, "", float(count)))

    alerts = got[ALERTS.name]
    for stream_id, rule_name, state in conn.execute(
        select(AlertRule.stream_id, AlertRule.name, AlertRule.state).order_by(AlertRule.name)
    ).all():
        if stream_id in streams:
            alerts((streams[stream_id], rule_name, float(state == "firing")))

    # Every stream reports every state, zeros included; calibration jobs (no stream) count
    # under stream="" and their model. job_counts is kept by triggers on jobs (tables.JobCount).
    counts: dict[int, dict[str, int]] = {key: {} for key in streams.values()}
    calibration_keys: dict[tuple[str, str], int] = {}
    for stream_key, model_id, state, count in conn.execute(
        select(JobCount.stream_key, JobCount.model_id, JobCount.state, JobCount.jobs).where(
            JobCount.jobs > 0
        )
    ).all():
        if stream_key in streams:
            key = streams[stream_key]
        else:
            model = models.get(model_id, ("", ""))
            if model not in calibration_keys:
                calibration_keys[model] = len(labels)
                labels.append(("", *model))
                counts[calibration_keys[model]] = {}
            key = calibration_keys[model]
        counts[key][state] = counts[key].get(state, 0) + count
    jobs = got[JOBS.name]
    for key, by_state in counts.items():
        for state in JOB_STATES:
            jobs((key, state, float(by_state.get(state, 0))))
    return out


def _realized_by_stream(
    conn: Connection, recent: Subquery, error_windows: int
) -> list[tuple[uuid.UUID, float, float, int]]:
    """(stream id, realized accuracy of the latest labeled window, sum of |estimated - realized|
    over its newest `error_windows` labeled windows, how many), per stream.

    Postgres sums in SQL, in age order (`sum(... ORDER BY age)` adds one value at a time like
    Python's `sum`, so the figure is the same to the last bit) and returns one row per stream;
    elsewhere (SQLite, embedded and small) the rows are summed here.
    """
    window = recent.c.age <= error_windows
    if conn.dialect.name == "postgresql":
        error = func.abs(recent.c.estimated_accuracy - recent.c.realized_accuracy)
        return [
            (stream_id, float(latest), float(total), int(count))
            for stream_id, latest, total, count in conn.execute(
                select(
                    recent.c.stream_id,
                    func.max(recent.c.realized_accuracy).filter(recent.c.age == 1),
                    func.sum(postgresql.aggregate_order_by(error, recent.c.age)),
                    func.count(),
                )
                .where(window)
                .group_by(recent.c.stream_id)
            ).all()
        ]
    pairs: dict[uuid.UUID, list[tuple[float, float]]] = defaultdict(list)
    for stream_id, estimated, actual in conn.execute(
        select(recent.c.stream_id, recent.c.estimated_accuracy, recent.c.realized_accuracy)
        .where(window)
        .order_by(recent.c.stream_id, recent.c.age)
    ).all():
        pairs[stream_id].append((float(estimated), float(actual)))
    return [
        (stream_id, found[0][1], sum(abs(e - r) for e, r in found), len(found))
        for stream_id, found in pairs.items()
    ]


def to_metric_families(snapshot: StreamSnapshot) -> list[Metric]:
    """The snapshot as prometheus_client families (for `generate_latest`, OpenMetrics)."""
    families: list[Metric] = []
    for spec in FAMILIES:
        labels = (*STREAM_LABELS, spec.extra) if spec.extra else STREAM_LABELS
        family: Metric = (CounterMetricFamily if spec.kind == "counter" else GaugeMetricFamily)(
            spec.name, spec.documentation, labels=labels
        )
        for key, extra, value in snapshot.samples[spec.name]:
            values = [*snapshot.labels[key], extra] if spec.extra else list(snapshot.labels[key])
            family.add_metric(values, value)
        families.append(family)
    return families


def read_stream_metrics(session: Session, *, error_windows: int = 10) -> list[Metric]:
    """Every per-stream family as prometheus_client objects."""
    return to_metric_families(read_stream_snapshot(session, error_windows=error_windows))


def render_text(snapshot: StreamSnapshot) -> str:
    """The Prometheus text format (0.0.4) of the snapshot, byte for byte what `generate_latest`
    writes for `to_metric_families(snapshot)`: labels sorted by name, the same escaping and
    float formatting, but each stream's label pairs escaped once for all its series."""
    base = sorted(STREAM_LABELS)
    escaped = [
        [
            f'{name}="{_escape(value)}"'
            for name, value in sorted(zip(STREAM_LABELS, labels, strict=True))
        ]
        for labels in snapshot.labels
    ]
    extras: dict[str, str] = {}  # escaped values of the extra labels (few distinct ones)
    # Each stream's labels around the extra one, by where it sorts in: "name{head" + "tail}".
    joined: dict[int, tuple[list[str], list[str]]] = {}
    plain = [",".join(pairs) for pairs in escaped]
    out: list[str] = []
    for spec in FAMILIES:
        name = f"{spec.name}_total" if spec.kind == "counter" else spec.name
        out.append(f"# HELP {name} {_escape_help(spec.documentation)}\n")
        out.append(f"# TYPE {name} {spec.kind}\n")
        samples = snapshot.samples[spec.name]
        if spec.extra is None:
            out.extend(f"{name}{{{plain[k]}}} {_go(v)}\n" for k, _, v in samples)
            continue
        at = sum(label < spec.extra for label in base)
        if at not in joined:
            joined[at] = (
                [",".join(pairs[:at]) + ("," if at else "") for pairs in escaped],
                [(",".join(["", *pairs[at:]]) if at < len(base) else "") for pairs in escaped],
            )
        heads, tails = joined[at]
        extra = spec.extra
        extras.clear()  # keyed by value only: the label name changes with the family
        for key, value_of_extra, value in samples:
            quoted = extras.get(value_of_extra)
            if quoted is None:
                quoted = extras[value_of_extra] = f'{extra}="{_escape(value_of_extra)}"'
            out.append(f"{name}{{{heads[key]}{quoted}{tails[key]}}} {_go(value)}\n")
    return "".join(out)


def _go(value: float) -> str:
    """floatToGoString, with its common case (a finite float under 1e6: plain repr) inline."""
    return repr(value) if -_INF < value < 1e6 else floatToGoString(value)


_INF = float("inf")


def _escape(value: str) -> str:
    """A label value as the text format quotes it (backslash, newline, double quote)."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _timestamp(value: datetime | None) -> float:
    return float(value.timestamp()) if value is not None else 0.0


class DatabaseCollector(Collector):
    """Reads the per-stream families at scrape time with a short-lived session.

    A database failure does not fail the scrape: the process metrics still go out, and
    flipwatch_database_up says 0. `collect` serves any registry consumer; `exposition` is the
    fast text path the /metrics handlers use.
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

    def snapshot(self) -> StreamSnapshot | None:
        """This scrape's values, or None (logged) when the database cannot be read."""
        factory = self._get_sessionmaker()
        if factory is None:
            return None
        try:
            with factory() as session:
                return read_stream_snapshot(session, error_windows=self._error_windows)
        except SQLAlchemyError as exc:
            log.warning("metrics: database unreadable at scrape time: %s", exc)
            return None

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot()
        if snapshot is not None:
            yield from to_metric_families(snapshot)
        yield _database_up(snapshot is not None)

    def exposition(self) -> str:
        """The text format of `collect()`'s families, written without building them."""
        snapshot = self.snapshot()
        up = "1.0" if snapshot is not None else "0.0"
        return (render_text(snapshot) if snapshot is not None else "") + (
            "# HELP flipwatch_database_up 1 when this scrape could read the database, else 0.\n"
            f"# TYPE flipwatch_database_up gauge\nflipwatch_database_up {up}\n"
        )


def _database_up(ok: bool) -> GaugeMetricFamily:
    up = GaugeMetricFamily(
        "flipwatch_database_up", "1 when this scrape could read the database, else 0."
    )
    up.add_metric([], 1.0 if ok else 0.0)
    return up
