"""End-to-end fixtures: the demo MNIST model (trained once per session), a labeled reference zip,
small calibration and window settings, a Redis namespace per test, and `pipeline`, which drives
register -> calibrate -> streams -> batches -> estimates over HTTP like a production pipeline.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from flipwatch.demos.data import DemoSplits, demo_splits, ensure_demo_model
from flipwatch.demos.http import FlipwatchClient, reference_zip
from flipwatch.service.core.settings import Settings
from flipwatch.workers.estimation.spec import ModelSpec
from flipwatch.workers.estimation.variants import make_variant
from flipwatch.workers.jobs import CalibrationSuite

REDIS_URL = os.environ.get("FLIPWATCH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

# Small on purpose: the whole e2e run must stay within a few minutes on 2 CPU cores.
E2E_SUITE = CalibrationSuite(families=("gaussian_noise", "contrast"), severities=(2, 4))
E2E_STEPS = 50
E2E_WINDOW = 300
E2E_REFERENCE = 300
JOB_TIMEOUT = 240.0


@pytest.fixture(scope="session")
def demo_model() -> tuple[ModelSpec, Path]:
    """The demo CNN trained on MNIST-5k: about 20-30 s on an idle 2-core machine, once.

    The cache lives in a fixed folder under the system temp dir so later runs skip training;
    `ensure_demo_model` retrains when the recipe or the weights' hash no longer match.
    """
    cache = Path(tempfile.gettempdir()) / "flipwatch-e2e-demo-model"
    return ensure_demo_model(cache, log=lambda _: None)


@pytest.fixture(scope="session")
def splits() -> DemoSplits:
    return demo_splits(0)


@pytest.fixture(scope="session")
def reference_archive(tmp_path_factory: pytest.TempPathFactory, splits: DemoSplits) -> Path:
    """A zip of 300 labeled MNIST reference images in ImageFolder layout (<label>/<n>.png)."""
    ref = splits.reference
    path = tmp_path_factory.mktemp("reference") / "reference.zip"
    return reference_zip(ref.images[:E2E_REFERENCE], ref.labels[:E2E_REFERENCE], path)


def e2e_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "dev",
        "data_dir": data_dir,
        "database_url": None,
        "redis_url": None,
        "device": "cpu",
        "default_steps": E2E_STEPS,
        "default_window_size": E2E_WINDOW,
        "bootstrap_admin_key": None,
    }
    return Settings(**(values | overrides))


@pytest.fixture
def redis_namespace() -> Iterator[str]:
    """A Dramatiq namespace of this test's own; its keys are deleted afterwards (only those)."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"Redis is not reachable at {REDIS_URL}: {exc}. Start it with `bash .ci/services.sh` "
            "or set FLIPWATCH_TEST_REDIS_URL.",
            pytrace=False,
        )
    namespace = f"flipwatch-test-{secrets.token_hex(4)}"
    try:
        yield namespace
    finally:
        for key in client.scan_iter(match=f"{namespace}*"):
            client.delete(key)
        client.close()


@dataclass(frozen=True)
class PipelineRun:
    model_id: str
    calibration: dict[str, Any]
    clean_stream: dict[str, Any]
    shifted_stream: dict[str, Any]
    clean_job: dict[str, Any]
    shifted_job: dict[str, Any]


Pipeline = Callable[[FlipwatchClient], PipelineRun]


@pytest.fixture
def pipeline(
    demo_model: tuple[ModelSpec, Path], reference_archive: Path, splits: DemoSplits
) -> Pipeline:
    """Register -> calibrate -> two streams -> clean and shifted batches -> both estimate jobs."""
    spec, _ = demo_model
    held = splits.heldout
    clean = held.images[:E2E_WINDOW]
    shifted = make_variant(clean, "gaussian_noise", 4, False, seed=1000)

    def run(client: FlipwatchClient) -> PipelineRun:
        model = client.register_model(spec, Path(spec.weights or ""))
        calibration = client.start_calibration(model["id"], reference_archive)
        assert calibration["state"] == "queued"
        client.wait_job(str(calibration["job_id"]), timeout=JOB_TIMEOUT)
        calibration = client.calibration(calibration["id"])
        assert calibration["state"] == "succeeded", calibration

        streams = {}
        for name in ("clean", "shifted"):
            streams[name] = client.create_stream(
                f"e2e-{name}-{secrets.token_hex(3)}",
                model["id"],
                window_size=E2E_WINDOW,
                steps=E2E_STEPS,
            )
        clean_jobs = client.post_images(streams["clean"]["id"], clean)
        shifted_jobs = client.post_images(streams["shifted"]["id"], shifted)
        assert len(clean_jobs) == len(shifted_jobs) == 1  # one full window each

        return PipelineRun(
            model_id=model["id"],
            calibration=calibration,
            clean_stream=streams["clean"],
            shifted_stream=streams["shifted"],
            clean_job=client.wait_job(clean_jobs[0], timeout=JOB_TIMEOUT),
            shifted_job=client.wait_job(shifted_jobs[0], timeout=JOB_TIMEOUT),
        )

    return run
