"""The scrape reads the per-stream `latest_estimates` rows, yet exports exactly what reading the
estimates table does (the previous collector's way, written out below as the reference), and its
fast text is byte for byte what prometheus_client's generate_latest writes; on Postgres and on
SQLite (the embedded default)."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import (
    generate_latest as openmetrics_generate_latest,
)
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from flipwatch.service.core.tables import JOB_STATES, AlertRule, Estimate, Job, Model, Stream
from flipwatch.service.estimate.service import stored_result
from flipwatch.service.metrics.collector import read_stream_snapshot
from flipwatch.service.metrics.http import ApiMetrics
from flipwatch.service.metrics.text import render_text
from tests.factories import (
    estimate_result,
    make_alert_rule,
    make_estimate,
    make_job,
    make_model,
    make_stream,
)

SampleKey = tuple[str, frozenset[tuple[str, str]], float]
ERROR_WINDOWS = 3


def metrics_on(session: Session) -> ApiMetrics:
    """ApiMetrics whose collector reads through the test's own connection."""
    session.flush()
    factory = sessionmaker(bind=session.connection(), join_transaction_mode="create_savepoint")
    return ApiMetrics(lambda: factory, error_windows=ERROR_WINDOWS)


def samples_of(text: str) -> Counter[SampleKey]:
    """Per-stream samples as a multiset (order-free; HTTP and database_up families left out)."""
    out: Counter[SampleKey] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(("flipwatch_http_", "flipwatch_database_up")):
                continue
            out[(sample.name, frozenset(sample.labels.items()), sample.value)] += 1
    return out


def openmetrics_samples_of(text: str) -> Counter[SampleKey]:
    """`samples_of` for the OpenMetrics format (which adds _created samples to the counters)."""
    out: Counter[SampleKey] = Counter()
    for family in openmetrics_families(text):
        for sample in family.samples:
            if sample.name.startswith(("flipwatch_http_", "flipwatch_database_up")):
                continue
            out[(sample.name, frozenset(sample.labels.items()), sample.value)] += 1
    return out


def reference_samples(session: Session, *, error_windows: int) -> Counter[SampleKey]:
    """What the collector exported before latest_estimates: every estimate read and parsed."""
    out: Counter[SampleKey] = Counter()

    def add(name: str, labels: dict[str, str], value: float) -> None:
        out[(name, frozenset(labels.items()), float(value))] += 1

    def finite(value: object) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and value == value

    models = {m.id: m for m in session.scalars(select(Model))}
    for stream in session.scalars(select(Stream)):
        model = models[stream.model_id]
        labels = {"stream": stream.name, "model": model.name, "model_version": str(model.version)}
        add("flipwatch_images_ingested_total", labels, stream.images_total)
        estimates = list(session.scalars(select(Estimate).where(Estimate.stream_id == stream.id)))
        jobs = list(session.scalars(select(Job).where(Job.stream_id == stream.id)))
        for state in JOB_STATES:
            add("flipwatch_jobs", {**labels, "state": state}, sum(j.state == state for j in jobs))
        for rule in session.scalars(select(AlertRule).where(AlertRule.stream_id == stream.id)):
            add("flipwatch_drift_alert", {**labels, "rule": rule.name}, rule.state == "firing")
        labeled = sorted(
            (e for e in estimates if e.realized_accuracy is not None),
            key=lambda e: -e.window_index,
        )[:error_windows]
        if labeled:
            add("flipwatch_realized_accuracy_ratio", labels, labeled[0].realized_accuracy)
            error = sum(abs(e.estimated_accuracy - e.realized_accuracy) for e in labeled)
            add("flipwatch_estimator_abs_error_ratio", labels, error / len(labeled))
            add("flipwatch_realized_windows", labels, len(labeled))
        if not estimates:
            continue
        latest = max(estimates, key=lambda e: e.window_index)
        last_at = max(e.created_at for e in estimates)
        add("flipwatch_estimated_accuracy_ratio", labels, latest.estimated_accuracy)
        if latest.weighted_flips is not None:
            add("flipwatch_weighted_flips", labels, latest.weighted_flips)
        add("flipwatch_last_estimate_timestamp_seconds", labels, last_at.timestamp())
        result = stored_result(latest)
        if result is None:
            continue
        for name, value in (
            ("flipwatch_estimated_accuracy_lower_ratio", result.lower),
            ("flipwatch_estimated_accuracy_upper_ratio", result.upper),
            ("flipwatch_label_shift_distance", result.label_shift),
            ("flipwatch_estimate_used_fraction_ratio", result.used_fraction),
        ):
            if finite(value):
                add(name, labels, value)
        for method, value in result.baselines.items():
            if finite(value):
                add("flipwatch_baseline_accuracy_ratio", {**labels, "method": method}, value)
        for kind, value in result.embedding.items():
            if finite(value):
                add("flipwatch_embedding_distance", {**labels, "kind": kind}, value)
        for name, value in (
            ("flipwatch_estimate_signal_value", result.signal_value),
            ("flipwatch_calibration_error_ratio", result.calibration_mae),
        ):
            if finite(value):
                add(name, {**labels, "signal": result.signal}, value)
    calibration_jobs = session.scalars(select(Job).where(Job.stream_id.is_(None))).all()
    for model_id in {j.model_id for j in calibration_jobs}:
        model = models[model_id]
        labels = {"stream": "", "model": model.name, "model_version": str(model.version)}
        for state in JOB_STATES:
            count = sum(j.state == state and j.model_id == model_id for j in calibration_jobs)
            add("flipwatch_jobs", {**labels, "state": state}, count)
    return out


def varied_streams(session: Session) -> None:
    """Streams that exercise every branch: no estimate, a late older window, a result that does
    not parse, null values, labeled windows beyond the error window, rules, calibration
    jobs, and label values that need escaping."""
    first = make_model(session, name="shelf-resnet", version=3)
    second = make_model(session, name='odd "model"\\ name', version=1)
    empty = make_stream(session, model=first, name="fresh", images_total=7)
    make_job(session, stream=empty, window_index=0, state="queued")

    busy = make_stream(session, model=first, name="checkout-3", images_total=1234)
    for window in range(6):
        estimate = make_estimate(
            session,
            stream=busy,
            window_index=window,
            estimated_accuracy=0.9 - window / 50,
            weighted_flips=0.05 * window,
            result=estimate_result(
                0.9 - window / 50,
                baselines={"ac": 0.95, "doc": None, "atc": 0.9, "atc_ne": 0.88, "cot": 0.86},
                embedding={"frechet": 2.5 + window, "silhouette": 0.31, "centroid_shift": None},
            ),
        )
        if window != 4:
            estimate.realized_accuracy = 0.8 + window / 100
        make_job(session, stream=busy, window_index=window, state="succeeded")
    make_job(session, stream=busy, window_index=6, state="running")
    make_alert_rule(session, stream=busy, name="floor", state="firing")
    make_alert_rule(session, stream=busy, name="drop", kind="drop_below_reference", threshold=5)

    late = make_stream(session, model=second, name="late\nwindow", images_total=99)
    result = estimate_result(0.7) | {"calibration_mae": 0.021, "label_shift": None}
    newest = make_estimate(
        session, stream=late, window_index=8, estimated_accuracy=0.7, result=result
    )
    make_estimate(
        session,
        stream=late,
        window_index=7,
        estimated_accuracy=0.6,
        created_at=newest.created_at + timedelta(minutes=5),
    )

    broken = make_stream(session, model=second, name="legacy")
    make_estimate(session, stream=broken, window_index=0, weighted_flips=None, result={})
    make_job(
        session, stream=broken, kind="calibrate", stream_id=None, window_index=None, state="failed"
    )
    session.flush()


def test_scrape_exports_what_the_estimates_table_says(any_session: Session) -> None:
    varied_streams(any_session)

    metrics = metrics_on(any_session)

    exported = samples_of(metrics.exposition().decode())
    assert exported == reference_samples(any_session, error_windows=ERROR_WINDOWS)
    labels = {"stream": "late\nwindow", "model": 'odd "model"\\ name', "model_version": "1"}
    key = frozenset(labels.items())
    assert exported[("flipwatch_estimated_accuracy_ratio", key, 0.7)] == 1  # window 8, not 7


def test_fast_text_is_byte_for_byte_what_generate_latest_writes(any_session: Session) -> None:
    varied_streams(any_session)
    metrics = metrics_on(any_session)

    assert metrics.exposition() == generate_latest(metrics.registry)


def test_openmetrics_consumers_of_the_registry_get_the_same_samples(any_session: Session) -> None:
    varied_streams(any_session)
    metrics = metrics_on(any_session)

    openmetrics = openmetrics_generate_latest(metrics.registry).decode()

    assert openmetrics.endswith("# EOF\n")
    assert openmetrics_samples_of(openmetrics) == samples_of(metrics.exposition().decode())


def test_render_text_of_an_empty_database_has_every_family_and_no_samples(
    any_session: Session,
) -> None:
    text = render_text(read_stream_snapshot(any_session))

    assert text.count("# TYPE ") == 17
    assert [line for line in text.splitlines() if not line.startswith("#")] == []
