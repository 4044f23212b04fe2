"""The worker process: a Dramatiq worker inside our own process, plus a reconciler and metrics.

`jobs_per_device` worker threads per process (default 1; run one process per GPU): on a GPU several
streams' jobs share the device, each admitted when the memory its model needed last time is free
(jobs.DeviceSlots), and while an estimate adapts the next queued window is decoded
(jobs.WindowPrefetcher). Beside them
a reconciler thread requeues running jobs whose heartbeat went stale (their worker died) and
re-sends queued jobs whose messages were lost, and a Prometheus endpoint serves the worker's own
metrics (flipwatch_worker_*, flipwatch_estimate_*) from a dedicated registry.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from types import FrameType
from typing import Any

import dramatiq
from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server

from flipwatch.service.core.db import make_engine, make_sessionmaker
from flipwatch.service.core.dispatch import JOB_QUEUES, JobDispatcher
from flipwatch.service.core.settings import Settings
from flipwatch.service.core.tracing import instrument_engine
from flipwatch.workers import jobs
from flipwatch.workers.actors import declare_actors
from flipwatch.workers.broker import (
    DEFAULT_NAMESPACE,
    RedisDispatcher,
    configure_broker,
    worker_name,
)
from flipwatch.workers.model_cache import ModelCache

log = logging.getLogger(__name__)

DEFAULT_METRICS_PORT = 9191
RECONCILE_INTERVAL_S = 10.0  # default of the setting reconcile_interval_seconds
STOP_TIMEOUT_MS = 30_000  # the running job is interrupted (notify_shutdown) and requeued
DURATION_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
RATE_BUCKETS = (10, 30, 100, 300, 1000, 3000, 10_000, 30_000, 100_000)
MEMORY_BUCKETS = tuple(2**i for i in range(26, 38))  # 64 MiB .. 128 GiB


class WorkerMetrics:
    """The worker's Prometheus metrics (jobs.JobMetrics), on a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.up = Gauge("flipwatch_worker_up", "1 while this worker runs.", registry=self.registry)
        self.estimate_duration = Histogram(
            "flipwatch_estimate_duration_seconds",
            "Wall time of one window's estimate (adaptation trajectory included).",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.images_per_second = Gauge(
            "flipwatch_estimate_images_per_second",
            "Images per second of the last estimate (window size / duration).",
            registry=self.registry,
        )
        self.cuda_peak_memory = Gauge(
            "flipwatch_worker_cuda_peak_memory_bytes",
            "Peak CUDA memory allocated during the last job (CUDA devices only).",
            registry=self.registry,
        )
        self.job_images_per_second = Histogram(
            "flipwatch_job_images_per_second",
            "Per job: adapted images (steps x batch, x variants for a calibration) per second.",
            ["kind"],
            buckets=RATE_BUCKETS,
            registry=self.registry,
        )
        self.job_peak_memory = Histogram(
            "flipwatch_job_peak_memory_bytes",
            "Per job: peak device memory (CUDA allocator; process resident peak on CPU). With "
            "overlapping jobs on one device it is the device's peak, an upper bound.",
            ["kind", "device"],
            buckets=MEMORY_BUCKETS,
            registry=self.registry,
        )
        self.up.set(1)

    def job_started(self, kind: str, device: str) -> None:
        pass  # peaks are tracked per job by jobs.DeviceSlots (a reset here would hit others)

    def estimate_finished(self, *, seconds: float, images: int, device: str) -> None:
        self.estimate_duration.observe(seconds)
        if seconds > 0:
            self.images_per_second.set(images / seconds)

    def job_finished(
        self,
        kind: str,
        *,
        seconds: float,
        adapted_images: int,
        peak_memory_bytes: int,
        device: str,
    ) -> None:
        if seconds > 0:
            self.job_images_per_second.labels(kind).observe(adapted_images / seconds)
        self.job_peak_memory.labels(kind, device.split(":")[0]).observe(peak_memory_bytes)
        if device.startswith("cuda"):
            self.cuda_peak_memory.set(peak_memory_bytes)


class Reconciler:
    """A thread that runs jobs.reconcile_jobs every `interval` s and re-sends what it returns."""

    def __init__(
        self,
        session_factory: jobs.SessionFactory,
        dispatcher: JobDispatcher,
        *,
        interval: float = RECONCILE_INTERVAL_S,
        stale_after: float = jobs.STALE_AFTER_S,
        lost_after: float = jobs.LOST_AFTER_S,
        pending: Callable[[], set[uuid.UUID]] | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.pending = pending
        self.dispatcher = dispatcher
        self.interval = interval
        self.stale_after = stale_after
        self.lost_after = lost_after
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> list[jobs.QueuedJob]:
        """One pass: requeue stale, find lost; send each to its own queue after the commit.

        Every job is reconciled by whichever worker looks first, whatever queues that worker
        consumes: the message goes to the queue stored on the job's row. Returns what was sent.
        """
        found = jobs.reconcile_jobs(
            self.session_factory,
            stale_after=self.stale_after,
            lost_after=self.lost_after,
            pending=self.pending() if self.pending is not None else frozenset(),
        )
        for job in found:
            self.dispatcher.send(job.id, job.queue)
        if found:
            log.info("reconciler re-sent %d job(s)", len(found))
        return found

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="flipwatch-reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - DB or Redis down: try again next round
                log.warning("reconciler pass failed", exc_info=True)
            if self._stop.wait(self.interval):
                return


def pending_job_ids(broker: Any, queues: Collection[str] = JOB_QUEUES) -> set[uuid.UUID]:
    """Job ids whose message still waits in Redis on any of `queues` (default: every capability
    queue, also those this worker does not consume): queued, delayed (a retry's backoff) or
    fetched and not yet acknowledged. The reconciler does not re-send those, so a short
    `lost_after` re-sends only what Redis really lost (a restart, FLUSHALL, an eviction)."""
    client = broker.client
    found: set[uuid.UUID] = set()
    names = [name for queue in queues for name in (queue, f"{queue}.DQ")]
    for name in names:
        for _, raw in client.hscan_iter(f"{broker.namespace}:{name}.msgs", count=500):
            try:
                found.add(uuid.UUID(str(json.loads(raw)["args"][0])))
            except (ValueError, KeyError, IndexError, TypeError):
                continue  # not one of our messages
    return found


@dataclass
class WorkerProcess:
    """Everything `flipwatch worker` runs; `start()` / `stop()` so tests can run it in a thread.

    The recovery timers come from the settings (FLIPWATCH_JOB_HEARTBEAT_SECONDS,
    _JOB_STALE_SECONDS, _JOB_LOST_SECONDS, _RECONCILE_INTERVAL_SECONDS) unless given here.
    """

    settings: Settings
    metrics_port: int | None = DEFAULT_METRICS_PORT
    namespace: str = DEFAULT_NAMESPACE
    reconcile_interval: float | None = None
    stale_after: float | None = None
    lost_after: float | None = None
    heartbeat_interval: float | None = None
    calibration_suite: jobs.CalibrationSuite | None = None
    queues: tuple[str, ...] | None = None  # default: settings.consumed_queues

    def __post_init__(self) -> None:
        s = self.settings
        self.queues = tuple(self.queues) if self.queues else s.consumed_queues
        self.reconcile_interval = self.reconcile_interval or s.reconcile_interval_seconds
        self.stale_after = self.stale_after or s.job_stale_seconds
        self.lost_after = self.lost_after or s.job_lost_seconds
        self.heartbeat_interval = self.heartbeat_interval or s.job_heartbeat_seconds

    def start(self) -> None:
        self.broker = configure_broker(self.settings, namespace=self.namespace)
        self.engine = make_engine(self.settings)
        instrument_engine(self.engine)  # a no-op unless tracing is configured
        self.metrics = WorkerMetrics()
        runtime = jobs.JobRuntime(
            session_factory=make_sessionmaker(self.engine),
            settings=self.settings,
            model_cache=ModelCache(builders=self.settings.model_builders),
            worker_name=worker_name(),
            metrics=self.metrics,
            heartbeat_interval=self.heartbeat_interval,
            calibration_suite=self.calibration_suite,
            prefetcher=(
                jobs.WindowPrefetcher(self.queues) if self.settings.prefetch_windows else None
            ),
        )
        self.runtime = runtime
        queues = list(self.queues or JOB_QUEUES)
        declare_actors(self.broker, runtime, queues)
        self.worker = dramatiq.Worker(
            self.broker, queues=set(queues), worker_threads=self.settings.jobs_per_device
        )
        self.worker.start()
        dispatcher = RedisDispatcher(self.broker)
        self.reconciler = Reconciler(
            runtime.session_factory,
            dispatcher,
            interval=self.reconcile_interval,
            stale_after=self.stale_after,
            lost_after=self.lost_after,
            pending=lambda: pending_job_ids(self.broker),
        )
        self.reconciler.start()
        self.metrics_server: Any = None
        if self.metrics_port:
            self.metrics_server, _ = start_http_server(
                self.metrics_port, registry=self.metrics.registry
            )
        log.info(
            "worker %s consuming %s (namespace %r)%s",
            runtime.worker_name,
            ", ".join(queues),
            self.namespace,
            f"; metrics on :{self.metrics_port}/metrics" if self.metrics_port else "",
        )

    def stop(self) -> None:
        """Stop consuming, interrupt and requeue the running job, close connections."""
        self.metrics.up.set(0)
        self.reconciler.stop()
        self.worker.stop(timeout=STOP_TIMEOUT_MS)
        if self.runtime.prefetcher is not None:
            self.runtime.prefetcher.close()
        self.broker.close()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
        self.engine.dispose()


def run_worker(
    settings: Settings,
    *,
    metrics_port: int | None = DEFAULT_METRICS_PORT,
    queues: tuple[str, ...] | None = None,
) -> int:
    """`flipwatch worker`: run until SIGTERM or SIGINT, then shut down gracefully."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; stopping after the running job", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    process = WorkerProcess(settings, metrics_port=metrics_port, queues=queues)
    process.start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        process.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0
