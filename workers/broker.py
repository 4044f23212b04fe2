"""How job ids reach a worker: Redis (Dramatiq) in production, a thread in embedded mode.

Both dispatchers implement `flipwatch.service.core.dispatch.JobDispatcher`: the API calls
`send(job_id)` after the transaction that created the job row committed. `configure_broker`
is the only place that sets Dramatiq's global broker, and only the entry point calls it.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import uuid

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from flipwatch.service.core.settings import Settings
from flipwatch.workers import jobs
from flipwatch.workers.actors import run_job_message
from flipwatch.workers.model_cache import ModelCache

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "flipwatch"


def configure_broker(settings: Settings, *, namespace: str = DEFAULT_NAMESPACE) -> RedisBroker:
    """The Redis broker for `settings.redis_url`, set as Dramatiq's global broker.

    `namespace` prefixes every Redis key, so test runs (or two deployments sharing one Redis)
    do not see each other's queues.
    """
    if not settings.redis_url:
        raise ValueError(
            "FLIPWATCH_REDIS_URL is not set: a separate worker needs Redis; "
            "`flipwatch serve` runs API and worker in one process without it"
        )
    broker = RedisBroker(url=settings.redis_url, namespace=namespace)
    dramatiq.set_broker(broker)
    return broker


def worker_name(suffix: str = "") -> str:
    """host:pid[:suffix], shown in jobs.worker and checked on every lifecycle write."""
    name = f"{socket.gethostname()}:{os.getpid()}"
    return f"{name}:{suffix}" if suffix else name


class RedisDispatcher:
    """JobDispatcher that enqueues `estimation.run_job(job_id)` on the job's queue in Redis."""

    def __init__(self, broker: RedisBroker) -> None:
        self.broker = broker

    def send(self, job_id: uuid.UUID, queue: str) -> None:
        self.broker.enqueue(run_job_message(job_id, queue))


class InProcessWorker:
    """Embedded mode's worker: `jobs_per_device` threads (default 1) run jobs from an in-memory
    queue.

    The queue holds only ids; the database stays the truth. On start every job left queued or
    running by a previous run is queued again, and a transient failure is retried after a
    backoff, as Dramatiq would.
    """

    def __init__(
        self,
        session_factory: jobs.SessionFactory,
        settings: Settings,
        *,
        model_cache: ModelCache | None = None,
        name: str | None = None,
        min_backoff: float = 2.0,
        max_backoff: float = 300.0,
        heartbeat_interval: float = jobs.HEARTBEAT_INTERVAL_S,
        calibration_suite: jobs.CalibrationSuite | None = None,
    ) -> None:
        self.runtime = jobs.JobRuntime(
            session_factory=session_factory,
            settings=settings,
            model_cache=(
                model_cache
                if model_cache is not None
                else ModelCache(builders=settings.model_builders)
            ),
            worker_name=name or worker_name("embedded"),
            heartbeat_interval=heartbeat_interval,
            calibration_suite=calibration_suite,
            prefetcher=jobs.WindowPrefetcher() if settings.prefetch_windows else None,
        )
        self.threads = settings.jobs_per_device
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self._queue: queue.Queue[uuid.UUID | None] = queue.Queue()
        self._workers: list[threading.Thread] = []
        self._timers: set[threading.Timer] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def submit(self, job_id: uuid.UUID) -> None:
        """Queue a job id (duplicates are harmless: a claimed or finished job is skipped)."""
        if not self._stopping.is_set():
            self._queue.put(uuid.UUID(str(job_id)))

    def start(self) -> None:
        """Requeue what a previous run left behind, then start the job threads."""
        if self._workers:
            return
        for job_id, _queue in jobs.requeue_interrupted_jobs(self.runtime.session_factory):
            self._queue.put(job_id)
        for index in range(self.threads):
            thread = threading.Thread(
                target=self._loop, name=f"flipwatch-worker-{index}", daemon=True
            )
            thread.start()
            self._workers.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking jobs; a running job finishes if it can within `timeout`.

        One that does not stays `running` in the database and is requeued at the next start.
        """
        self._stopping.set()
        with self._lock:
            for timer in self._timers:
                timer.cancel()
            self._timers.clear()
        for _ in self._workers:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._workers:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._workers = []
        if self.runtime.prefetcher is not None:
            self.runtime.prefetcher.close()

    def wait_idle(self, timeout: float) -> bool:
        """True once the queue is empty and no job runs (tests and the demo use it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                pending_timers = bool(self._timers)
            # unfinished_tasks counts queued ids and the one running (task_done comes after it).
            if self._queue.unfinished_tasks == 0 and not pending_timers:
                return True
            time.sleep(0.05)
        return False

    def _loop(self) -> None:
        while True:
            job_id = self._queue.get()
            try:
                if job_id is None or self._stopping.is_set():
                    return
                self._run(job_id)
            finally:
                self._queue.task_done()

    def _run(self, job_id: uuid.UUID) -> None:
        try:
            jobs.run_with(self.runtime, job_id)
        except jobs.TransientJobError as exc:
            delay = min(self.max_backoff, self.min_backoff * 2 ** max(0, exc.attempts - 1))
            log.warning("%s; retrying in %.0f s", exc, delay)
            self._retry_later(job_id, delay)
        except Exception:  # noqa: BLE001 - keep the thread alive; the job row says what happened
            log.exception("job %s: unexpected error in the embedded worker", job_id)

    def _retry_later(self, job_id: uuid.UUID, delay: float) -> None:
        def fire() -> None:
            self.submit(job_id)  # queued before the timer goes, so wait_idle never sees a gap
            with self._lock:
                self._timers.discard(timer)

        timer = threading.Timer(delay, fire)
        timer.daemon = True
        with self._lock:
            if self._stopping.is_set():
                return
            self._timers.add(timer)
        timer.start()


class InProcessDispatcher:
    """JobDispatcher for embedded mode: hands the id to the InProcessWorker's queue (one process
    runs every kind of job, so the capability queue does not matter there)."""

    def __init__(self, worker: InProcessWorker) -> None:
        self.worker = worker

    def send(self, job_id: uuid.UUID, queue: str) -> None:
        self.worker.submit(job_id)
