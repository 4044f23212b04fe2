"""workers/objects.py and the jobs on the S3 backend: a window fetched from the bucket, weights
cached locally by digest (verified, bounded), reference sets downloaded for calibration. The S3
server is real (`rclone serve s3`)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from flipwatch.demos.data import write_image_folder
from flipwatch.service.core import storage
from flipwatch.service.core.settings import Settings
from flipwatch.service.core.tables import Calibration, Estimate
from flipwatch.workers import jobs
from flipwatch.workers.model_cache import ModelCache
from flipwatch.workers.objects import (
    WeightsCache,
    WeightsMismatch,
    fetch_objects,
    reference_folder,
)
from tests.conftest import s3_storage
from tests.s3server import S3Server
from tests.tiny_models import blob_images as window_images
from tests.workers.test_jobs import run, setup_calibration, setup_estimate


@pytest.fixture
def s3_settings(worker_settings: Settings, s3_server: S3Server, tmp_path: Path) -> Settings:
    """Worker settings on the real S3 server, with a cache dir of their own."""
    return worker_settings.model_copy(
        update=s3_storage(s3_server) | {"storage_cache_dir": tmp_path / "cache"}
    )


def put_weights(store: storage.ObjectStore, data: bytes) -> tuple[str, str]:
    digest = hashlib.sha256(data).hexdigest()
    key = storage.weights_key(digest)
    store.put(key, data)
    return key, digest


class TestWeightsCache:
    def test_fetches_once_then_serves_the_local_copy(
        self, s3_settings: Settings, tmp_path: Path
    ) -> None:
        store = storage.open_store(s3_settings)
        key, digest = put_weights(store, b"weights" * 100)
        cache = WeightsCache(store, tmp_path / "c", max_bytes=10**6)

        first = cache.path(key, digest)
        store.delete(key)  # the second call must not need the bucket
        second = cache.path(key, digest)

        assert first == second == tmp_path / "c" / "models" / f"{digest}.pt"
        assert second.read_bytes() == b"weights" * 100
        assert (cache.misses, cache.hits) == (1, 1)

    def test_refuses_bytes_that_do_not_match_the_registered_digest(
        self, s3_settings: Settings, tmp_path: Path
    ) -> None:
        store = storage.open_store(s3_settings)
        key, _ = put_weights(store, b"real weights")
        cache = WeightsCache(store, tmp_path / "c", max_bytes=10**6)

        with pytest.raises(WeightsMismatch, match="register the model again"):
            cache.path(key, "0" * 64)
        assert list((tmp_path / "c" / "models").iterdir()) == []

    def test_evicts_the_least_recently_used_past_its_bound(
        self, s3_settings: Settings, tmp_path: Path
    ) -> None:
        store = storage.open_store(s3_settings)
        a, b, c = (put_weights(store, bytes([i]) * 1000) for i in range(3))
        cache = WeightsCache(store, tmp_path / "c", max_bytes=2500)

        cache.path(*a)
        cache.path(*b)
        cache.path(*a)  # a is now more recent than b
        cache.path(*c)

        kept = sorted(p.name for p in (tmp_path / "c" / "models").iterdir())
        assert kept == sorted([f"{a[1]}.pt", f"{c[1]}.pt"])

    def test_the_local_backend_reads_the_stored_file_in_place(
        self, worker_settings: Settings, tmp_path: Path
    ) -> None:
        store = storage.open_store(worker_settings)
        key, digest = put_weights(store, b"w")
        cache = WeightsCache(store, tmp_path / "c", max_bytes=10)

        assert cache.path(key, digest) == Path(worker_settings.data_dir).resolve() / key
        assert not (tmp_path / "c").exists()


def test_fetch_objects_keeps_the_window_order(s3_settings: Settings) -> None:
    store = storage.open_store(s3_settings)
    keys = [f"images/{i:02d}.png" for i in range(40)]
    for i, key in enumerate(keys):
        store.put(key, bytes([i]))
    assert fetch_objects(store, keys, threads=8) == [bytes([i]) for i in range(40)]


def test_reference_folder_downloads_the_set_and_removes_it_after(
    s3_settings: Settings, tmp_path: Path
) -> None:
    store = storage.open_store(s3_settings)
    store.put("calibrations/c1/ref/cat/0.png", b"c")
    store.put("calibrations/c1/ref/dog/0.png", b"d")

    with reference_folder(store, "calibrations/c1/ref", tmp_path / "scratch") as folder:
        assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png")) == [
            "cat/0.png",
            "dog/0.png",
        ]
    assert not folder.exists()


class TestJobsOnS3:
    def test_estimate_reads_its_window_and_weights_from_the_bucket(
        self,
        session_factory: sessionmaker[Session],
        s3_settings: Settings,
        tiny_weights: Path,
        tiny_calibration: dict[str, Any],
    ) -> None:
        stream_id, (job_id,) = setup_estimate(
            session_factory, s3_settings, tiny_weights, tiny_calibration
        )

        assert run(session_factory, s3_settings, job_id) is jobs.JobOutcome.SUCCEEDED

        with session_factory() as session:
            estimate = session.scalars(
                select(Estimate).where(Estimate.stream_id == stream_id)
            ).one()
        assert estimate.result["num_images"] == 96
        digest = storage.sha256_file(tiny_weights)
        assert (s3_settings.effective_cache_dir / "models" / f"{digest}.pt").is_file()
        assert not list(Path(s3_settings.data_dir).glob("images/**/*.png"))  # not on local disk

    def test_calibrate_reads_its_reference_set_from_the_bucket(
        self,
        session_factory: sessionmaker[Session],
        s3_settings: Settings,
        tiny_weights: Path,
        tmp_path: Path,
    ) -> None:
        write_image_folder(window_images(100, seed=1), tmp_path / "ref", torch.arange(100) % 10)
        _, calibration_id, job_id = setup_calibration(
            session_factory,
            s3_settings,
            tiny_weights,
            tmp_path / "ref",
            # what is under test is where the reference set comes from: the smallest suite
            {"steps": 4, "families": ["gaussian_noise"], "severities": [2, 4]},
        )

        outcome = run(session_factory, s3_settings, job_id, ModelCache())

        assert outcome is jobs.JobOutcome.SUCCEEDED
        with session_factory() as session:
            stored = session.get(Calibration, calibration_id)
            assert stored is not None and stored.state == "succeeded"
        assert list((s3_settings.effective_cache_dir / "references").iterdir()) == []
