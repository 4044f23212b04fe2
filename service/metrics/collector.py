"""Per-stream metrics, read from the database at scrape time.

Every scrape opens a short-lived session, so every API replica reports the same truth (Postgres)
and nothing is lost on restart; no multiprocess mode is needed. The scrape reads one small
`latest_estimates` row per stream (kept by the estimate job in the transaction that inserts the
estimate, `service/estimate/latest.py`), never the estimates' result documents, into a
`StreamSnapshot` of columns (families.py); `text.render_text` writes it as the text format.
`to_metric_families` gives the same families as prometheus_client objects for any other consumer
of the registry (OpenMetrics, `generate_latest`); a test checks both agree byte for byte.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Connection, Row, Select, String, cast, func, select, true
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
from flipwatch.service.metrics.families import (
    ACCURACY,
    ALERTS,
    BASELINES,
    CALIBRATION_ERROR,
    EMBEDDING,
    ESTIMATOR_ERROR,
    FLIPS,
    IMAGES,
    JOBS,
    LABEL_SHIFT,
    LAST_ESTIMATE,
    LOWER,
    REALIZED,
    REALIZED_WINDOWS,
    SIGNAL,
    UPPER,
    USED_FRACTION,
    FamilySamples,
    StreamSnapshot,
    to_metric_families,
)
from flipwatch.service.metrics.text import render_text

log = logging.getLogger(__name__)


def read_stream_snapshot(session: Session, *, error_windows: int = 10) -> StreamSnapshot:
    """Every per-stream value, from five queries whose cost grows with streams and rules, not
    with estimates or jobs: models, streams with their latest_estimates row, the newest labeled
    windows (a covering partial index), rules, and job_counts.

    At 10,000 streams this reads about 52,000 rows into 272,000 samples, so the loop is lean on
    purpose: rows are read at the Core level and consumed as they arrive (no ORM objects, no list
    of rows), ids are compared as text (no uuid.UUID objects), and samples go into columns of
    ints, strings and floats, which the garbage collector does not track (families.py).
    """
    out = StreamSnapshot()
    conn = session.connection()
    models: dict[str, tuple[str, str]] = {
        model_id: (name, str(version))
        for model_id, name, version in _rows(
            conn, select(_text_id(Model.id), Model.name, Model.version)
        )
    }
    labels = out.labels
    streams: dict[str, int] = {}  # stream id -> index of its label set
    got = out.samples
    images, accuracy, flips, last = (
        _appenders(got[IMAGES.name]),
        _appenders(got[ACCURACY.name]),
        _appenders(got[FLIPS.name]),
        _appenders(got[LAST_ESTIMATE.name]),
    )
    interval = (
        ("lower", _appenders(got[LOWER.name])),
        ("label_shift", _appenders(got[LABEL_SHIFT.name])),
        ("upper", _appenders(got[UPPER.name])),
    )
    used = _appenders(got[USED_FRACTION.name])
    baselines, embedding = _appenders(got[BASELINES.name]), _appenders(got[EMBEDDING.name])
    signal, calibration_error = (
        _appenders(got[SIGNAL.name]),
        _appenders(got[CALIBRATION_ERROR.name]),
    )
    for (
        stream_id,
        name,
        model_id,
        images_total,
        estimated,
        weighted_flips,
        series,
        last_at,
    ) in _rows(
        conn,
        select(
            _text_id(Stream.id),
            Stream.name,
            _text_id(Stream.model_id),
            Stream.images_total,
            LatestEstimate.estimated_accuracy,
            LatestEstimate.weighted_flips,
            LatestEstimate.series,
            LatestEstimate.last_estimate_at,
        )
        .outerjoin(LatestEstimate, LatestEstimate.stream_id == Stream.id)
        .order_by(Stream.name),
    ):
        key = streams[stream_id] = len(labels)
        labels.append((name, *models.get(model_id, ("", ""))))
        images[0](key), images[2](float(images_total))
        if estimated is None:
            continue  # no estimate yet
        accuracy[0](key), accuracy[2](float(estimated))
        if weighted_flips is not None:
            flips[0](key), flips[2](float(weighted_flips))
        if series is not None:
            for field_, (keys, _, values) in interval:
                if field_ in series:
                    keys(key), values(float(series[field_]))
            for method, value in series["baselines"].items():
                baselines[0](key), baselines[1](method), baselines[2](float(value))
            for kind, value in series["embedding"].items():
                embedding[0](key), embedding[1](kind), embedding[2](float(value))
            if "signal_value" in series:
                signal[0](key), signal[1](series["signal"])
                signal[2](float(series["signal_value"]))
            if "calibration_mae" in series:
                calibration_error[0](key), calibration_error[1](series["signal"])
                calibration_error[2](float(series["calibration_mae"]))
            if "used_fraction" in series:
                used[0](key), used[2](float(series["used_fraction"]))
        last[0](key), last[2](_timestamp(last_at))

    # Realized accuracy and the estimator's running error: each stream's newest
    # `error_windows` labeled windows (ix_estimates_stream_id_window_index_realized).
    realized = _appenders(got[REALIZED.name])
    estimator_error = _appenders(got[ESTIMATOR_ERROR.name])
    realized_windows = _appenders(got[REALIZED_WINDOWS.name])
    for stream_id, latest, total, count in _realized_by_stream(conn, error_windows):
        key_ = streams.get(stream_id)
        if key_ is None:
            continue
        realized[0](key_), realized[2](latest)  # age 1: the latest labeled window
        estimator_error[0](key_), estimator_error[2](total / count)
        realized_windows[0](key_), realized_windows[2](float(count))

    alerts = _appenders(got[ALERTS.name])
    for stream_id, rule_name, state in _rows(
        conn,
        select(_text_id(AlertRule.stream_id), AlertRule.name, AlertRule.state).order_by(
            AlertRule.name
        ),
    ):
        key_ = streams.get(stream_id)
        if key_ is not None:
            alerts[0](key_), alerts[1](rule_name), alerts[2](1.0 if state == "firing" else 0.0)

    # Every stream reports every state, zeros included; calibration jobs (no stream) count
    # under stream="" and their model, one label set per model in order of appearance.
    # job_counts is kept by triggers on jobs (tables.JobCount). counts[key * states + state].
    states = len(JOB_STATES)
    state_at = {state: at for at, state in enumerate(JOB_STATES)}
    counts = [0] * (states * len(labels))
    calibration_keys: dict[tuple[str, str], int] = {}
    for stream_key, model_id, state, jobs_ in _rows(
        conn,
        select(
            _text_id(JobCount.stream_key),
            _text_id(JobCount.model_id),
            JobCount.state,
            JobCount.jobs,
        ).where(JobCount.jobs > 0),
    ):
        at = state_at.get(state)
        if at is None:
            continue  # not a state flipwatch exports
        key = streams.get(stream_key)
        if key is None:
            model = models.get(model_id, ("", ""))
            key = calibration_keys.get(model)
            if key is None:
                key = calibration_keys[model] = len(labels)
                labels.append(("", *model))
                counts += [0] * states
        counts[key * states + at] += jobs_
    jobs = got[JOBS.name]
    jobs.keys += [key for key in range(len(labels)) for _ in JOB_STATES]
    jobs.extras += JOB_STATES * len(labels)
    jobs.values += [float(count) for count in counts]
    return out


def _rows(conn: Connection, statement: Select[Any]) -> Iterator[Row[Any]]:
    """The statement's rows, fetched `_CHUNK` at a time: one C-level fetch per chunk instead of
    psycopg's Python `fetchone` per row, and never every row alive at once (fewer live objects
    for the garbage collector to walk)."""
    for chunk in conn.execute(statement).partitions(_CHUNK):
        yield from chunk


_CHUNK = 100


def _text_id(column: object) -> object:
    """An id column read as text: dict keys that hash and compare in C, where uuid.UUID objects
    would hash in Python and be one more tracked object per row. Every query casts the same way,
    so keys match on either database (hyphenated on Postgres, 32 hex digits on SQLite)."""
    return cast(column, String)


def _appenders(
    samples: FamilySamples,
) -> tuple[Callable[[int], None], Callable[[str], None], Callable[[float], None]]:
    """The bound `append`s of a family's three columns, for the hot loop."""
    return samples.keys.append, samples.extras.append, samples.values.append


def _realized_by_stream(
    conn: Connection, error_windows: int
) -> Iterator[tuple[str, float, float, int]]:
    """(stream id, realized accuracy of the latest labeled window, sum of |estimated - realized|
    over its newest `error_windows` labeled windows, how many), per stream with labels.

    Postgres reads, per stream, at most `error_windows` entries of the covering partial index
    (a LATERAL ... LIMIT, walked backwards), so the cost follows streams, not how many windows
    ever got labels; it sums in SQL, newest first (`sum(... ORDER BY)` adds one value at a time
    like Python's `sum`, so the figure is the same to the last bit), one row per stream.
    Elsewhere (SQLite, embedded and small) a window function numbers the labeled windows and the
    rows are summed here.
    """
    if conn.dialect.name == "postgresql":
        newest = (
            select(Estimate.window_index, Estimate.estimated_accuracy, Estimate.realized_accuracy)
            .where(Estimate.stream_id == Stream.id, Estimate.realized_accuracy.is_not(None))
            .order_by(Estimate.window_index.desc())
            .limit(error_windows)
            .lateral("newest")
        )
        newest_first = newest.c.window_index.desc()
        error = func.abs(newest.c.estimated_accuracy - newest.c.realized_accuracy)
        for stream, latest, total, count in _rows(
            conn,
            select(
                _text_id(Stream.id),
                postgresql.array_agg(
                    postgresql.aggregate_order_by(newest.c.realized_accuracy, newest_first)
                )[1],
                func.sum(postgresql.aggregate_order_by(error, newest_first)),
                func.count(),
            )
            .select_from(Stream)
            .join(newest, true())
            .group_by(Stream.id),
        ):
            yield stream, float(latest), float(total), int(count)
        return
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
    pairs: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for stream, estimated, actual in _rows(
        conn,
        select(
            _text_id(recent.c.stream_id), recent.c.estimated_accuracy, recent.c.realized_accuracy
        )
        .where(recent.c.age <= error_windows)
        .order_by(recent.c.stream_id, recent.c.age),
    ):
        pairs[stream].append((float(estimated), float(actual)))
    for stream, found in pairs.items():
        yield stream, found[0][1], sum(abs(e - r) for e, r in found), len(found)


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
