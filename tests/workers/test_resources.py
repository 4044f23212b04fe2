"""Concurrent jobs on one device (DeviceSlots), the next window decoded ahead (WindowPrefetcher),
and the per-job worker metrics, against the real Postgres and the tiny model on CPU."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session, sessionmaker

from flipwatch.service.core import storage
from flipwatch.service.core.settings import Settings
from flipwatch.workers import jobs
from flipwatch.workers.broker import InProcessWorker
from flipwatch.workers.jobs.prefetch import decode_window, window_key
from flipwatch.workers.main import WorkerMetrics
from tests.workers.test_jobs import load_job, run, setup_estimate


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class TestDeviceSlots:
    def test_cpu_jobs_are_admitted_at_once_and_counted(self) -> None:
        slots = jobs.DeviceSlots()
        with slots.job("cpu", "model") as first, slots.job("cpu", "model") as second:
            assert slots.running("cpu") == 2
        assert slots.running("cpu") == 0
        assert first.shared and second.shared
        assert first.peak_memory_bytes > 0  # the process's resident peak

    def test_a_gpu_job_waits_until_the_memory_its_model_needed_is_free(self) -> None:
        clock = FakeClock()
        free = {"bytes": 10 << 30}
        slots = jobs.DeviceSlots(
            free_memory=lambda _: free["bytes"], clock=clock, sleep=clock.sleep
        )
        slots._need["resnet"] = 8 << 30
        slots._running["cuda:0"] = 1  # another job holds the device
        slots._admit("cuda:0", "resnet")  # 10 GiB free >= 8.8 GiB: no wait
        assert clock.now == 0.0
        free["bytes"] = 4 << 30

        def free_up(seconds: float) -> None:
            clock.sleep(seconds)
            if clock.now >= 2.0:
                free["bytes"] = 9 << 30

        slots._sleep = free_up
        slots._admit("cuda:0", "resnet")
        assert clock.now == pytest.approx(2.0)

    def test_a_gpu_job_starts_anyway_when_the_device_is_idle_or_the_wait_is_too_long(self) -> None:
        clock = FakeClock()
        slots = jobs.DeviceSlots(free_memory=lambda _: 0, clock=clock, sleep=clock.sleep)
        slots._need["resnet"] = 8 << 30
        slots._admit("cuda:0", "resnet")  # nothing else runs: go
        assert clock.now == 0.0
        slots._running["cuda:0"] = 1
        slots._admit("cuda:0", "resnet")
        assert clock.now == pytest.approx(600.0)


class TestWindowPrefetcher:
    def test_the_next_queued_window_is_decoded_ahead_and_used_by_its_job(
        self,
        session_factory: sessionmaker[Session],
        worker_settings: Settings,
        tiny_weights: Path,
        tiny_calibration: dict[str, Any],
    ) -> None:
        _, (first,) = setup_estimate(
            session_factory, worker_settings, tiny_weights, tiny_calibration
        )
        _, (second,) = setup_estimate(
            session_factory, worker_settings, tiny_weights, tiny_calibration
        )
        prefetcher = jobs.WindowPrefetcher()
        try:
            assert run(session_factory, worker_settings, first, prefetcher=prefetcher)
            assert prefetcher._slot is not None and prefetcher._slot[0].job_id == second
            assert run(session_factory, worker_settings, second, prefetcher=prefetcher)
        finally:
            prefetcher.close()
        assert (prefetcher.hits, prefetcher.misses) == (1, 1)  # the first job had nothing ahead
        assert load_job(session_factory, second).state == "succeeded"

    def test_a_window_for_another_job_is_not_handed_out(self, tiny_weights: Path) -> None:
        from flipwatch.workers.estimation.spec import ModelSpec
        from tests.factories import TINY_SPEC

        spec = ModelSpec.model_validate({**TINY_SPEC, "weights": str(tiny_weights)})
        prefetcher = jobs.WindowPrefetcher()
        try:
            key = window_key(uuid.uuid4(), [], spec)
            prefetcher._slot = (key, prefetcher._executor.submit(lambda: torch.zeros(1)))
            assert prefetcher.take(window_key(uuid.uuid4(), [], spec)) is None
            assert torch.equal(prefetcher.take(key), torch.zeros(1))
        finally:
            prefetcher.close()

    def test_decode_window_names_a_missing_object(
        self, backend_settings: Settings, tiny_weights: Path
    ) -> None:
        from flipwatch.workers.estimation.spec import ModelSpec
        from tests.factories import TINY_SPEC

        spec = ModelSpec.model_validate({**TINY_SPEC, "weights": str(tiny_weights)})
        store = storage.open_store(backend_settings)
        with pytest.raises(FileNotFoundError, match="images/gone.png"):
            decode_window(store, [("images/gone.png", "gone.png")], spec)


class TestConcurrentJobs:
    def test_two_worker_threads_run_two_estimates_at_once(
        self,
        session_factory: sessionmaker[Session],
        worker_settings: Settings,
        tiny_weights: Path,
        tiny_calibration: dict[str, Any],
    ) -> None:
        settings = worker_settings.model_copy(update={"jobs_per_device": 2})
        ids = [
            setup_estimate(session_factory, settings, tiny_weights, tiny_calibration, steps=40)[1][
                0
            ]
            for _ in range(2)
        ]
        worker = InProcessWorker(session_factory, settings)
        try:
            worker.start()
            for job_id in ids:
                worker.submit(job_id)
            assert worker.wait_idle(120)
        finally:
            worker.stop()
        finished = [load_job(session_factory, i) for i in ids]
        assert all(job.state == "succeeded" for job in finished)
        # Both were claimed before either finished: they ran side by side.
        assert max(j.started_at for j in finished) < min(j.finished_at for j in finished)


def test_worker_metrics_record_images_per_second_and_peak_memory_per_job() -> None:
    metrics = WorkerMetrics(CollectorRegistry())
    metrics.job_finished(
        "estimate", seconds=2.0, adapted_images=16_000, peak_memory_bytes=3 << 30, device="cuda:0"
    )
    registry = metrics.registry
    rate = registry.get_sample_value("flipwatch_job_images_per_second_sum", {"kind": "estimate"})
    assert rate == 8000
    assert (
        registry.get_sample_value(
            "flipwatch_job_peak_memory_bytes_sum", {"kind": "estimate", "device": "cuda"}
        )
        == 3 << 30
    )
    assert registry.get_sample_value("flipwatch_worker_cuda_peak_memory_bytes") == 3 << 30
