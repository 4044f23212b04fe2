"""A real Prometheus (Debian's package) scrapes a running API and worker with the project's rules.

Production shape: the API under uvicorn on Postgres, job ids through Redis to a Dramatiq worker,
/metrics on the API's internal metrics port (FLIPWATCH_METRICS_PORT), Prometheus started through
deploy/prometheus/entrypoint.sh (basic auth, no lifecycle API) with 1 s scrape and evaluation
intervals. A stream with an accuracy floor rule (K=1) gets a Gaussian-noise window: the
project's FlipwatchDriftAlertFiring fires in Prometheus's /api/v1/alerts. Then a clean window: the
alert is resolved (gone from the active alerts). Then labels for the clean window: its realized
accuracy reaches the API and Prometheus.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import yaml
from sqlalchemy import Engine

from flipwatch.cli.startup import build_server, free_port
from flipwatch.client import Estimate, FlipwatchClient
from flipwatch.demos.data import DemoSplits
from flipwatch.demos.http import png_bytes
from flipwatch.service.core.auth import create_api_key
from flipwatch.workers.estimation.spec import ModelSpec
from flipwatch.workers.estimation.variants import make_variant
from flipwatch.workers.main import WorkerProcess
from tests.conftest import truncate_all
from tests.e2e.conftest import (
    E2E_STEPS,
    E2E_SUITE,
    E2E_WINDOW,
    JOB_TIMEOUT,
    REDIS_URL,
    e2e_settings,
)
from tests.servers import serve_in_thread

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = shutil.which("prometheus")
ENTRYPOINT = ROOT / "deploy" / "prometheus" / "entrypoint.sh"
RULES = ROOT / "deploy" / "prometheus" / "rules" / "flipwatch.yml"
USER = "e2e"
PASSWORD = "e2e-prometheus-password"
# bcrypt of PASSWORD (cost 4: fast to check); made once with crypt.crypt(PASSWORD, mksalt(...)).
PASSWORD_BCRYPT = "$2b$04$UlT7qMVNx3irjr4E52HwZeE8.jUiiZn.snHCpnvgHWVpk5uML98Lm"
ALERT_TIMEOUT = 30.0

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        PROMETHEUS is None and not os.environ.get("CI"),
        reason="needs Debian's prometheus (bash deploy/check.sh installs it as root)",
    ),
]


@dataclass
class Stack:
    api_url: str
    metrics_port: int
    worker_port: int
    admin_token: str


@pytest.fixture
def stack(
    database_url: str, engine: Engine, redis_namespace: str, tmp_path: Path
) -> Iterator[Stack]:
    """API under uvicorn (metrics on their own port) and a worker, on Postgres and Redis."""
    metrics_port, worker_port = free_port(), free_port()
    settings = e2e_settings(
        tmp_path / "data",
        database_url=database_url,
        redis_url=REDIS_URL,
        metrics_port=metrics_port,
        metrics_host="127.0.0.1",
        webhook_poll_seconds=0,
    )
    worker = WorkerProcess(
        settings,
        metrics_port=worker_port,
        namespace=redis_namespace,
        calibration_suite=E2E_SUITE,
        reconcile_interval=5.0,
    )
    worker.start()
    server = build_server(settings, namespace=redis_namespace)
    with server.session_factory() as session:
        _, token = create_api_key(session, role="admin", name="e2e-prometheus")
        session.commit()
    try:
        with serve_in_thread(server.app) as api_url:
            yield Stack(api_url, metrics_port, worker_port, token)
    finally:
        server.close()
        worker.stop()
        truncate_all(engine)


@dataclass
class Prometheus:
    url: str
    env: dict[str, str]

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(self.url + path, params=params, auth=(USER, PASSWORD), timeout=5)
        response.raise_for_status()
        return response.json()["data"]

    def alerts(self, name: str, stream: str) -> list[dict[str, Any]]:
        return [
            a
            for a in self.get("/api/v1/alerts")["alerts"]
            if a["labels"]["alertname"] == name and a["labels"].get("stream") == stream
        ]


@pytest.fixture
def prometheus(stack: Stack, tmp_path: Path) -> Iterator[Prometheus]:
    """Prometheus through the compose entrypoint, scraping this test's API and worker every 1 s."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "flipwatch-api",
                "static_configs": [{"targets": [f"127.0.0.1:{stack.metrics_port}"]}],
            },
            {
                "job_name": "flipwatch-worker",
                "static_configs": [{"targets": [f"127.0.0.1:{stack.worker_port}"]}],
            },
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    (tmp_path / "tsdb").mkdir()
    port = free_port()
    env = os.environ | {
        "PROMETHEUS_BIN": PROMETHEUS or "prometheus",
        "PROMETHEUS_CONFIG": str(tmp_path / "prometheus.yml"),
        "PROMETHEUS_DATA_DIR": str(tmp_path / "tsdb"),
        "PROMETHEUS_LISTEN": f"127.0.0.1:{port}",
        "PROMETHEUS_USER": USER,
        "PROMETHEUS_PASSWORD_BCRYPT": PASSWORD_BCRYPT,
        "PROMETHEUS_PASSWORD": PASSWORD,
    }
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        ["sh", str(ENTRYPOINT), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            try:
                if httpx.get(url + "/-/ready", auth=(USER, PASSWORD), timeout=1).is_success:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "Prometheus did not become ready"
            time.sleep(0.1)
        yield Prometheus(url, env)
    finally:
        process.terminate()
        process.wait(15)
        log.close()


def wait_for(what: str, condition: Callable[[], Any], timeout: float = ALERT_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.25)


def test_prometheus_requires_its_login_and_has_no_lifecycle_api(prometheus: Prometheus):
    assert httpx.get(prometheus.url + "/api/v1/alerts", timeout=5).status_code == 401
    wrong = httpx.get(prometheus.url + "/-/healthy", auth=(USER, "nope"), timeout=5)
    assert wrong.status_code == 401
    quit_ = httpx.post(prometheus.url + "/-/quit", auth=(USER, PASSWORD), timeout=5)
    assert quit_.status_code == 403  # lifecycle API disabled
    healthcheck = subprocess.run(
        ["sh", str(ENTRYPOINT), "healthcheck"], env=prometheus.env, capture_output=True, timeout=30
    )
    assert healthcheck.returncode == 0, healthcheck.stderr


def test_prometheus_reads_the_api_metrics_port(prometheus: Prometheus):
    """The metrics port's own handler (text format, gzipped on request) is what Prometheus
    ingests: the target is up and the database gauge arrives."""

    def scraped() -> list[dict[str, Any]]:
        query = 'flipwatch_database_up{job="flipwatch-api"} == 1'
        return prometheus.get("/api/v1/query", query=query)["result"]

    wait_for("flipwatch_database_up from the API port", scraped, timeout=30)
    (target,) = [
        t
        for t in prometheus.get("/api/v1/targets")["activeTargets"]
        if t["labels"]["job"] == "flipwatch-api"
    ]
    assert (target["health"], target["lastError"]) == ("up", "")


def test_drift_alert_fires_on_shifted_windows_and_resolves_on_clean_ones(
    stack: Stack,
    prometheus: Prometheus,
    demo_model: tuple[ModelSpec, Path],
    reference_archive: Path,
    splits: DemoSplits,
):
    spec, _ = demo_model
    clean = splits.heldout.images[:E2E_WINDOW]
    shifted = make_variant(clean, "gaussian_noise", 4, False, seed=1000)
    with httpx.Client(base_url=stack.api_url, timeout=60) as http:
        client = FlipwatchClient(token=stack.admin_token, http=http)
        model = client.register_model(spec, Path(spec.weights or ""))
        calibration = client.start_calibration(model.id, reference_archive)
        client.wait_job(str(calibration.job_id), timeout=JOB_TIMEOUT)
        stream = client.create_stream(
            f"prom-{secrets.token_hex(3)}", model.id, window_size=E2E_WINDOW, steps=E2E_STEPS
        )
        client.create_alert_rule(
            stream.id, name="floor", kind="accuracy_below", threshold=0.8, windows=1
        )
        name = stream.name

        def window_estimate(images: torch.Tensor) -> Estimate:
            """Post one whole window; the estimate its closing batch queued."""
            batches = client.post_images(stream.id, [png_bytes(i) for i in images], batch_size=64)
            (job,) = [link for batch in batches for link in batch.jobs]
            finished = client.wait_job(job.id, timeout=JOB_TIMEOUT)
            return client.get_estimate(str(finished.estimate_id))

        # Both targets are scraped and up.
        def targets_up() -> bool:
            active = prometheus.get("/api/v1/targets")["activeTargets"]
            return len(active) == 2 and all(t["health"] == "up" for t in active)

        wait_for("both scrape targets up", targets_up)

        shifted_estimate = window_estimate(shifted)
        assert shifted_estimate.estimated_accuracy < 0.8
        started = time.monotonic()
        (firing,) = wait_for(
            "FlipwatchDriftAlertFiring to fire",
            lambda: [
                a
                for a in prometheus.alerts("FlipwatchDriftAlertFiring", name)
                if a["state"] == "firing"
            ],
        )
        fired_in = time.monotonic() - started
        assert firing["labels"]["rule"] == "floor"
        assert firing["labels"]["severity"] == "warning"
        assert firing["labels"]["model"] == model.name
        # The accuracy alert waits its `for: 15m`: pending, not firing.
        (low,) = wait_for(
            "FlipwatchEstimatedAccuracyLow pending",
            lambda: prometheus.alerts("FlipwatchEstimatedAccuracyLow", name),
        )
        assert low["state"] == "pending"
        assert float(low["value"]) == pytest.approx(shifted_estimate.estimated_accuracy)

        clean_estimate = window_estimate(clean)
        assert clean_estimate.estimated_accuracy >= 0.8
        started = time.monotonic()
        wait_for(
            "FlipwatchDriftAlertFiring to resolve",
            lambda: not prometheus.alerts("FlipwatchDriftAlertFiring", name),
        )
        resolved_in = time.monotonic() - started
        assert not prometheus.alerts("FlipwatchEstimatedAccuracyLow", name)

        # Labels arrive later for the clean window (by content hash): the worker stored the
        # model's prediction per image, so the realized accuracy is the model's true accuracy.
        true = splits.heldout.labels[:E2E_WINDOW].tolist()
        labeled = client.post_labels(
            stream.id,
            [
                {"sha256": hashlib.sha256(png_bytes(image)).hexdigest(), "label": int(label)}
                for image, label in zip(clean, true, strict=True)
            ],
        )
        (window,) = labeled.windows
        assert window.window_index == 1 and window.labeled_count == E2E_WINDOW
        realized = window.realized_accuracy
        assert 0.85 <= realized <= 1.0  # the demo CNN on clean MNIST digits
        assert window.estimator_error == pytest.approx(clean_estimate.estimated_accuracy - realized)
        series = wait_for(
            "flipwatch_realized_accuracy_ratio in Prometheus",
            lambda: prometheus.get(
                "/api/v1/query", query=f'flipwatch_realized_accuracy_ratio{{stream="{name}"}}'
            )["result"],
        )
        assert float(series[0]["value"][1]) == pytest.approx(realized)

    # The recording rules evaluate on the same data.
    gap = prometheus.get(
        "/api/v1/query", query=f'flipwatch:estimated_accuracy_below_ac:ratio{{stream="{name}"}}'
    )["result"]
    assert len(gap) == 1
    print(
        f"fired {fired_in:.1f} s after the shifted estimate, "
        f"resolved {resolved_in:.1f} s after the clean one"
    )
