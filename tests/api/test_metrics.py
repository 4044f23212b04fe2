"""GET /metrics: per-stream values equal the database rows at scrape time; HTTP metrics use route
templates; labels never carry ids; a database outage does not fail the scrape."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session, sessionmaker

from flipwatch.service.core.settings import Settings
from flipwatch.service.core.tables import JOB_STATES, Estimate
from flipwatch.service.metrics.http import ApiMetrics
from flipwatch.service.metrics.names import EXPORTED_METRICS, STREAM_LABELS
from tests.conftest import bearer
from tests.factories import (
    estimate_result,
    make_alert_rule,
    make_estimate,
    make_job,
    make_model,
    make_stream,
)

Samples = dict[str, list[tuple[dict[str, str], float]]]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No webhook thread: the scrape reads through the test's own connection (below)."""
    return settings.model_copy(update={"webhook_poll_seconds": 0})


@pytest.fixture
def scrape(client: TestClient, session: Session) -> Iterator[Callable[[], Samples]]:
    """GET /metrics with the collector reading the test transaction (what the test arranged)."""
    client.app.state.sessionmaker = sessionmaker(
        bind=session.connection(), join_transaction_mode="create_savepoint"
    )

    def get() -> Samples:
        session.flush()
        response = client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        return parse(response.text)

    yield get


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def series(samples: Samples, name: str, **labels: str) -> dict[tuple, float]:
    """{label values beyond the matched ones: value} for the samples of `name` matching labels."""
    out = {}
    for sample_labels, value in samples.get(name, []):
        if all(sample_labels.get(k) == v for k, v in labels.items()):
            rest = tuple(sorted((k, v) for k, v in sample_labels.items() if k not in labels))
            out[rest] = value
    return out


def one(samples: Samples, name: str, **labels: str) -> float:
    found = series(samples, name, **labels)
    assert len(found) == 1, (name, labels, found)
    return next(iter(found.values()))


def test_stream_metrics_equal_the_latest_database_rows(session, scrape):
    model = make_model(session, name="shelf-resnet", version=3)
    stream = make_stream(session, model=model, name="checkout-3", images_total=1234)
    for window, accuracy in enumerate((0.91, 0.87, 0.84)):
        make_estimate(
            session,
            stream=stream,
            window_index=window,
            estimated_accuracy=accuracy,
            weighted_flips=0.05 * (window + 1),
            result=estimate_result(
                accuracy,
                baselines={"ac": 0.95 - window / 100, "doc": 0.9, "atc": None, "atc_ne": 0.88,
                           "cot": 0.86},
                embedding={"frechet": 2.5 + window, "silhouette": 0.31, "centroid_shift": None},
            ),
        )  # fmt: skip
    labels = {"stream": "checkout-3", "model": "shelf-resnet", "model_version": "3"}

    samples = scrape()

    latest = session.scalar(
        select(Estimate)
        .where(Estimate.stream_id == stream.id)
        .order_by(Estimate.window_index.desc())
        .limit(1)
    )
    assert latest.window_index == 2
    assert one(samples, "flipwatch_estimated_accuracy_ratio", **labels) == latest.estimated_accuracy
    assert one(samples, "flipwatch_weighted_flips", **labels) == latest.weighted_flips
    # The 90 % interval (0.84 ± 0.05 in the stored result) and the class-mix distance.
    assert one(samples, "flipwatch_estimated_accuracy_lower_ratio", **labels) == 0.79
    assert one(samples, "flipwatch_estimated_accuracy_upper_ratio", **labels) == 0.89
    assert one(samples, "flipwatch_label_shift_distance", **labels) == 0.12
    baselines = series(samples, "flipwatch_baseline_accuracy_ratio", **labels)
    assert baselines == {
        (("method", m),): v for m, v in latest.result["baselines"].items() if v is not None
    }
    embedding = series(samples, "flipwatch_embedding_distance", **labels)
    assert embedding == {(("kind", "frechet"),): 4.5, (("kind", "silhouette"),): 0.31}
    last = max(session.scalars(select(Estimate.created_at).where(Estimate.stream_id == stream.id)))
    assert one(samples, "flipwatch_last_estimate_timestamp_seconds", **labels) == pytest.approx(
        last.timestamp()
    )
    assert one(samples, "flipwatch_images_ingested_total", **labels) == 1234.0


def test_stream_without_estimates_reports_ingest_and_jobs_only(session, scrape):
    model = make_model(session, name="m-empty", version=1)
    make_stream(session, model=model, name="fresh", images_total=10)
    labels = {"stream": "fresh", "model": "m-empty", "model_version": "1"}

    samples = scrape()

    assert series(samples, "flipwatch_estimated_accuracy_ratio", **labels) == {}
    assert series(samples, "flipwatch_last_estimate_timestamp_seconds", **labels) == {}
    assert one(samples, "flipwatch_images_ingested_total", **labels) == 10.0
    jobs = series(samples, "flipwatch_jobs", **labels)
    assert jobs == {(("state", s),): 0.0 for s in JOB_STATES}


def test_jobs_per_state_and_calibrations_without_stream(session, scrape):
    model = make_model(session, name="m-jobs", version=2)
    stream = make_stream(session, model=model, name="jobs-stream")
    for window, state in enumerate(("queued", "queued", "running", "succeeded", "failed")):
        make_job(session, stream=stream, window_index=window, state=state)
    make_job(
        session, stream=stream, kind="calibrate", stream_id=None, window_index=None, state="running"
    )

    samples = scrape()

    per_stream = series(
        samples, "flipwatch_jobs", stream="jobs-stream", model="m-jobs", model_version="2"
    )
    assert per_stream == {
        (("state", "queued"),): 2.0,
        (("state", "running"),): 1.0,
        (("state", "succeeded"),): 1.0,
        (("state", "failed"),): 1.0,
    }
    # A calibration job has no stream: stream="" (which Prometheus stores as no label at all).
    calibrations = series(samples, "flipwatch_jobs", stream="", model="m-jobs", model_version="2")
    assert calibrations == {(("state", s),): float(s == "running") for s in JOB_STATES}


def test_drift_alert_is_one_per_rule_firing_else_zero(session, scrape):
    model = make_model(session, name="m-alerts", version=1)
    stream = make_stream(session, model=model, name="alerting")
    make_alert_rule(session, stream=stream, name="floor", state="firing")
    make_alert_rule(session, stream=stream, name="drop", kind="drop_below_reference", threshold=5)

    samples = scrape()

    labels = {"stream": "alerting", "model": "m-alerts", "model_version": "1"}
    assert series(samples, "flipwatch_drift_alert", **labels) == {
        (("rule", "floor"),): 1.0,
        (("rule", "drop"),): 0.0,
    }


def test_labels_are_names_never_ids(session, scrape):
    model = make_model(session, name="m-labels", version=1)
    stream = make_stream(session, model=model, name="labels")
    job = make_job(session, stream=stream, state="queued")
    estimate = make_estimate(session, stream=stream, window_index=0, job_id=job.id)
    rule = make_alert_rule(session, stream=stream, name="floor")
    ids = {str(x) for x in (model.id, stream.id, job.id, estimate.id, rule.id)}

    samples = scrape()

    allowed = {*STREAM_LABELS, "method", "kind", "rule", "state", "route", "status", "le", "signal"}
    for name, found in samples.items():
        for labels, _ in found:
            assert set(labels) <= allowed, (name, labels)
            assert not ids & set(labels.values()), (name, labels)


def test_every_exported_family_is_in_the_shared_list(session, scrape, client, admin_token):
    stream = make_stream(session)
    make_estimate(session, stream=stream, window_index=0, result=estimate_result(0.9))
    make_alert_rule(session, stream=stream)
    make_job(session, stream=stream)
    client.get("/v1/streams", headers=bearer(admin_token))

    samples = scrape()

    families = set()
    for name in samples:
        for suffix in ("_bucket", "_sum", "_count", "_created"):
            if name.endswith(suffix):
                base = name[: -len(suffix)]
                if base in EXPORTED_METRICS or f"{base}_total" in EXPORTED_METRICS:
                    name = base if base in EXPORTED_METRICS else f"{base}_total"
        families.add(name)
    assert families <= EXPORTED_METRICS
    assert families >= {
        "flipwatch_estimated_accuracy_ratio",
        "flipwatch_baseline_accuracy_ratio",
        "flipwatch_drift_alert",
        "flipwatch_images_ingested_total",
        "flipwatch_jobs",
        "flipwatch_http_requests_total",
        "flipwatch_http_request_duration_seconds",
        "flipwatch_database_up",
    }


def test_http_metrics_use_the_route_template(session, scrape, client, admin_token):
    stream = make_stream(session)
    for _ in range(2):
        assert (
            client.get(f"/v1/streams/{stream.id}", headers=bearer(admin_token)).status_code == 200
        )
    assert client.get(f"/v1/streams/{stream.id}").status_code == 401
    assert client.get("/no/such/path").status_code == 404

    samples = scrape()

    route = "/v1/streams/{stream_id}"
    assert (
        one(samples, "flipwatch_http_requests_total", method="GET", route=route, status="200") == 2
    )
    assert (
        one(samples, "flipwatch_http_requests_total", method="GET", route=route, status="401") == 1
    )
    assert one(samples, "flipwatch_http_requests_total", route="unmatched", status="404") == 1
    assert (
        one(samples, "flipwatch_http_request_duration_seconds_count", method="GET", route=route)
        == 3
    )
    raw_paths = {labels.get("route") for labels, _ in samples["flipwatch_http_requests_total"]}
    assert not any(str(stream.id) in (path or "") for path in raw_paths)


def test_each_app_has_its_own_registry(settings, engine):
    from flipwatch.service.core.db import make_sessionmaker
    from flipwatch.service.main import create_app

    first = create_app(settings, session_factory=make_sessionmaker(engine))
    second = create_app(settings, session_factory=make_sessionmaker(engine))
    assert first.state.metrics.registry is not second.state.metrics.registry


def test_database_outage_keeps_the_scrape_alive():
    broken = create_engine(
        "postgresql+psycopg://postgres@127.0.0.1:1/none", connect_args={"connect_timeout": 2}
    )
    try:
        metrics = ApiMetrics(lambda: sessionmaker(bind=broken))
        metrics.observe(method="GET", route="/healthz", status=200, seconds=0.01)
        samples = parse(generate_latest(metrics.registry).decode())
    finally:
        broken.dispose()
    assert one(samples, "flipwatch_database_up") == 0.0
    assert one(samples, "flipwatch_http_requests_total", route="/healthz") == 1.0
    assert "flipwatch_jobs" not in samples


def test_database_up_is_one_when_readable(session, scrape):
    assert one(scrape(), "flipwatch_database_up") == 1.0


def test_metrics_port_serves_metrics_there_and_not_on_the_api_port(
    settings: Settings, engine
) -> None:
    """FLIPWATCH_METRICS_PORT: Prometheus scrapes an internal port; the public one has none."""
    import httpx

    from flipwatch.cli.startup import free_port
    from flipwatch.service.core.db import make_sessionmaker
    from flipwatch.service.main import create_app

    port = free_port()
    app = create_app(
        settings.model_copy(update={"metrics_port": port, "metrics_host": "127.0.0.1"}),
        session_factory=make_sessionmaker(engine),
    )
    with TestClient(app) as client:
        assert client.get("/metrics").status_code == 404
        client.get("/healthz")
        scraped = parse(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
    assert scraped["flipwatch_database_up"] == [({}, 1.0)]
    assert ({"method": "GET", "route": "/healthz", "status": "200"}, 1.0) in scraped[
        "flipwatch_http_requests_total"
    ]
    with pytest.raises(httpx.ConnectError):  # stopped with the app
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_scrape_is_gzipped_only_for_scrapers_that_accept_it(session, scrape, client):
    """Prometheus asks for gzip: 10,000 streams are ~29 MB of text, ~2.6 MB gzipped."""
    make_stream(session, name="zipped")
    session.flush()

    plain = client.get("/metrics", headers={"Accept-Encoding": "identity"})
    zipped = client.get("/metrics", headers={"Accept-Encoding": "gzip"})

    assert "content-encoding" not in plain.headers
    assert zipped.headers["content-encoding"] == "gzip"
    assert int(zipped.headers["content-length"]) < len(zipped.content)  # decoded by the client
    for response in (plain, zipped):
        assert response.headers["content-type"].startswith("text/plain")
        assert one(parse(response.text), "flipwatch_images_ingested_total", stream="zipped") == 0
