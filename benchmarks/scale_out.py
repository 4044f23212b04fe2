"""Scale-out: K worker processes sharing one Redis queue and one Postgres, M streams posting windows
concurrently through the real API (uvicorn on loopback), for K = 1, 2, 4.

Prints ONE JSON object: per K the estimates/s (estimate jobs finished per second, from the first
job created to the last finished, database timestamps), the queue latency p50/p95 (claimed minus
created), and the reconciliation counted from rows (not logs): every closed window has exactly one
estimate row, none is skipped, every job ran exactly once (attempts = 1, one job per window, one
estimate per job); plus hardware and versions.

Set-up (bounded: about 2-4 minutes on 2 shared cores): a fresh Postgres database (dropped at the
end) and a Redis namespace of its own (its keys deleted at the end); the demo MNIST model
(flipwatch/demos, trained once and cached) registered and calibrated through the API on a small
suite (gaussian_noise and contrast at severity 2; steps = --steps); then per K, M new streams of
--window images (the minimum window, 64) and --steps adaptation steps, each posting --windows
windows of held-out MNIST digits as PNGs (one POST per window) from its own thread. Every
estimate job goes to estimates.cpu (FLIPWATCH_ESTIMATE_DEVICE=cpu) and each worker consumes only
that queue, with FLIPWATCH_TORCH_THREADS=1 (one core per worker; K = 4 oversubscribes 2 cores on
purpose: it shows where the machine, not the queue, is the limit).

    python benchmarks/scale_out.py [--workers 1,2,4] [--streams 8] [--windows 2] [--steps 10]

A worker here is `WorkerProcess` (what `flipwatch worker` runs) in its own process, started as
`python benchmarks/scale_out.py --run-worker NAMESPACE` so it can use the run's Redis namespace.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dramatiq  # noqa: E402
import psycopg  # noqa: E402
import redis  # noqa: E402
import sqlalchemy  # noqa: E402
import torch  # noqa: E402
from sqlalchemy import select  # noqa: E402

from benchmarks._env import environment  # noqa: E402
from flipwatch.service.core.dispatch import ESTIMATES_CPU  # noqa: E402
from flipwatch.service.core.settings import Settings  # noqa: E402
from flipwatch.service.core.tables import Estimate, Job, Stream  # noqa: E402

ADMIN_URL = os.environ.get(
    "FLIPWATCH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("FLIPWATCH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
WINDOW = 64


def settings_for(database_url: str, data_dir: Path, steps: int) -> Settings:
    return Settings(
        environment="dev",
        database_url=database_url,
        redis_url=REDIS_URL,
        data_dir=data_dir,
        device="cpu",
        torch_threads=1,
        estimate_device="cpu",
        default_steps=steps,
        default_window_size=WINDOW,
        prefetch_windows=True,
        reconcile_interval_seconds=5.0,
        maintenance_interval_seconds=0,
        webhook_poll_seconds=0,
        log_level="warning",
    )


# --- the worker process ---------------------------------------------------------------------


def run_worker(namespace: str, queues: str) -> None:
    """One worker process: WorkerProcess on `queues` in `namespace`, until SIGTERM."""
    from flipwatch.cli.startup import apply_torch_threads
    from flipwatch.service.core.logging import configure_logging
    from flipwatch.workers.jobs import CalibrationSuite
    from flipwatch.workers.main import WorkerProcess

    settings = Settings(worker_queues=queues)  # everything else from FLIPWATCH_* (the parent's)
    configure_logging("warning", "console")
    apply_torch_threads(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker = WorkerProcess(
        settings,
        metrics_port=None,
        namespace=namespace,
        calibration_suite=CalibrationSuite(
            families=("gaussian_noise", "contrast"), severities=(2,)
        ),
    )
    worker.start()
    print("ready", flush=True)
    stop.wait()
    worker.stop()


class Workers:
    """K worker processes, started and ready (consuming) before any window is posted."""

    def __init__(self, count: int, namespace: str, env: dict[str, str], queues: str) -> None:
        self.processes = [
            subprocess.Popen(
                [sys.executable, __file__, "--run-worker", namespace, "--queues", queues],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(count)
        ]
        for process in self.processes:
            line = process.stdout.readline() if process.stdout else ""
            if line.strip() != "ready":
                self.stop()
                raise RuntimeError(f"a worker did not start (exit {process.poll()})")

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


# --- the API ------------------------------------------------------------------------------------


class Api:
    """`flipwatch serve` with Redis (API only): uvicorn on 127.0.0.1 in a thread of this process."""

    def __init__(self, settings: Settings, namespace: str) -> None:
        import uvicorn

        from flipwatch.cli.startup import build_server, free_port
        from flipwatch.service.api.server import uvicorn_options
        from flipwatch.service.core.auth import create_api_key

        self.stack = build_server(settings, namespace=namespace)
        with self.stack.session_factory() as session:
            _, self.token = create_api_key(session, role="admin", name="scale-out benchmark")
            session.commit()
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.stack.app,
                host="127.0.0.1",
                port=port,
                log_level="warning",
                **uvicorn_options(settings),
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.stack.close()


# --- one round ------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[index], 3)


def run_round(
    k: int,
    *,
    api: Api,
    model_id: str,
    windows: list[list[tuple[str, bytes]]],
    streams: int,
    steps: int,
    namespace: str,
    env: dict[str, str],
    engine: sqlalchemy.Engine,
    timeout: float,
) -> dict[str, Any]:
    from flipwatch.client import FlipwatchClient

    workers = Workers(k, namespace, env, ESTIMATES_CPU)
    try:
        with FlipwatchClient(api.url, token=api.token) as client:
            ids = [
                client.create_stream(
                    f"k{k}-stream-{n}", model_id, window_size=WINDOW, steps=steps
                ).id
                for n in range(streams)
            ]

        def post_all(stream_id: str) -> int:
            with FlipwatchClient(api.url, token=api.token) as own:
                return sum(len(own.post_batch(stream_id, images).jobs) for images in windows)

        started = time.perf_counter()
        with ThreadPoolExecutor(streams) as pool:
            jobs_posted = sum(pool.map(post_all, ids))
        post_seconds = time.perf_counter() - started
        stream_ids = [uuid.UUID(i) for i in ids]
        deadline = time.monotonic() + timeout
        while True:
            with engine.connect() as connection:
                open_jobs = connection.scalar(
                    select(sqlalchemy.func.count())
                    .select_from(Job)
                    .where(Job.stream_id.in_(stream_ids), Job.state.in_(("queued", "running")))
                )
            if open_jobs == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        workers.stop()
    return {
        "workers": k,
        "post_seconds": round(post_seconds, 2),
        **measure(engine, stream_ids, len(windows), jobs_posted),
    }


def measure(
    engine: sqlalchemy.Engine, stream_ids: list[uuid.UUID], windows: int, posted: int
) -> dict[str, Any]:
    """Throughput, queue latency and the reconciliation, from the rows of these streams only."""
    with engine.connect() as connection:
        jobs = connection.execute(
            select(
                Job.id,
                Job.stream_id,
                Job.window_index,
                Job.state,
                Job.attempts,
                Job.worker,
                Job.created_at,
                Job.started_at,
                Job.finished_at,
                Job.queue,
            ).where(Job.stream_id.in_(stream_ids))
        ).all()
        estimates = connection.execute(
            select(Estimate.stream_id, Estimate.window_index, Estimate.job_id).where(
                Estimate.stream_id.in_(stream_ids)
            )
        ).all()
        closed = connection.execute(
            select(Stream.id, Stream.current_window_index).where(Stream.id.in_(stream_ids))
        ).all()
    expected = {(s, w) for s, n in closed for w in range(n)}
    per_window: dict[tuple[uuid.UUID, int], int] = {}
    for row in estimates:
        key = (row.stream_id, row.window_index)
        per_window[key] = per_window.get(key, 0) + 1
    jobs_per_window: dict[tuple[uuid.UUID, int], int] = {}
    for job in jobs:
        key = (job.stream_id, job.window_index)
        jobs_per_window[key] = jobs_per_window.get(key, 0) + 1
    succeeded = [j for j in jobs if j.state == "succeeded"]
    latency = [(j.started_at - j.created_at).total_seconds() for j in jobs if j.started_at]
    span = (
        (max(j.finished_at for j in succeeded) - min(j.created_at for j in jobs)).total_seconds()
        if succeeded
        else 0.0
    )
    reconciliation = {
        "windows_closed": len(expected),
        "windows_expected": len(stream_ids) * windows,
        "estimate_jobs": len(jobs),
        "estimate_jobs_in_post_answers": posted,
        "jobs_succeeded": len(succeeded),
        "estimate_rows": len(estimates),
        "windows_with_exactly_one_estimate": sum(1 for key in expected if per_window.get(key) == 1),
        "windows_skipped": sorted(
            f"{s}:{w}" for s, w in expected if key_missing(per_window, (s, w))
        ),
        "windows_with_two_or_more_jobs": sum(1 for n in jobs_per_window.values() if n > 1),
        "jobs_run_more_than_once": sum(1 for j in jobs if j.attempts != 1),
        "estimate_rows_per_job_distinct": len({r.job_id for r in estimates}) == len(estimates),
        "queues": sorted({j.queue for j in jobs}),
        "distinct_workers": len({j.worker for j in jobs if j.worker}),
    }
    reconciliation["ok"] = (
        len(expected)
        == reconciliation["windows_expected"]
        == len(jobs)
        == len(succeeded)
        == len(estimates)
        == posted
        == reconciliation["windows_with_exactly_one_estimate"]
        and not reconciliation["windows_skipped"]
        and reconciliation["windows_with_two_or_more_jobs"] == 0
        and reconciliation["jobs_run_more_than_once"] == 0
        and reconciliation["estimate_rows_per_job_distinct"]
    )
    # Per job on its worker: the first job of each worker pays the model load and the CPU fast
    # path's plan timing (once per process); later jobs show the steady state.
    first: dict[str, Any] = {}
    for job in sorted((j for j in succeeded if j.started_at), key=lambda j: j.started_at):
        first.setdefault(job.worker, job.id)
    run = {j.id: (j.finished_at - j.started_at).total_seconds() for j in succeeded if j.started_at}
    cold = [run[i] for i in first.values()]
    warm = [seconds for i, seconds in run.items() if i not in set(first.values())]
    return {
        "job_seconds": {
            "first_per_worker_mean": round(statistics.mean(cold), 2) if cold else None,
            "later_p50": percentile(warm, 0.5) if warm else None,
            "later_p95": percentile(warm, 0.95) if warm else None,
        },
        "estimates": len(succeeded),
        "seconds": round(span, 2),
        "estimates_per_second": round(len(succeeded) / span, 3) if span else 0.0,
        "queue_latency_seconds": {
            "p50": percentile(latency, 0.5) if latency else None,
            "p95": percentile(latency, 0.95) if latency else None,
        },
        "reconciliation": reconciliation,
    }


def key_missing(per_window: dict[tuple[uuid.UUID, int], int], key: tuple[uuid.UUID, int]) -> bool:
    return per_window.get(key, 0) == 0


# --- set-up ---------------------------------------------------------------------------------------


def fresh_database() -> tuple[str, str]:
    """CREATE DATABASE flipwatch_scaleout_<random>; returns (its URL, its name)."""
    name = f"flipwatch_scaleout_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    base = sqlalchemy.engine.make_url(ADMIN_URL.replace("postgresql://", "postgresql+psycopg://"))
    return base.set(database=name).render_as_string(hide_password=False), name


def drop_database(name: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def posted_windows(count: int) -> list[list[tuple[str, bytes]]]:
    from flipwatch.demos.data import demo_splits
    from flipwatch.demos.http import png_bytes

    heldout = demo_splits(0).heldout.images
    return [
        [
            (f"w{w}-{i}.png", png_bytes(heldout[(w * WINDOW + i) % len(heldout)]))
            for i in range(WINDOW)
        ]
        for w in range(count)
    ]


def calibrate_demo_model(
    api: Api, work: Path, steps: int, namespace: str, env: dict[str, str]
) -> tuple[str, float]:
    """Register the demo model and calibrate it through the API on one worker; (model id, s)."""
    from flipwatch.client import FlipwatchClient
    from flipwatch.demos.data import demo_splits, ensure_demo_model
    from flipwatch.demos.http import reference_zip

    spec, _ = ensure_demo_model(
        Path(tempfile.gettempdir()) / "flipwatch-e2e-demo-model", log=lambda _m: None
    )
    reference = demo_splits(0).reference
    archive = reference_zip(reference.images[:300], reference.labels[:300], work / "reference.zip")
    workers = Workers(1, namespace, env, "calibrations")
    try:
        with FlipwatchClient(api.url, token=api.token) as client:
            model = client.register_model(spec, Path(spec.weights or ""))
            started = time.perf_counter()
            calibration = client.start_calibration(
                model.id,
                archive,
                steps=steps,
                families=["gaussian_noise", "contrast"],
                severities=[2],
            )
            calibration = client.wait_calibration(calibration.id, timeout=600, poll=0.5)
            if calibration.state != "succeeded":
                raise RuntimeError(f"calibration {calibration.state}: {calibration.error}")
            return model.id, time.perf_counter() - started
    finally:
        workers.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--windows", type=int, default=2, help="windows each stream posts")
    parser.add_argument("--steps", type=int, default=10, help="adaptation steps per estimate")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="per K, for the queue to drain"
    )
    parser.add_argument("--run-worker", metavar="NAMESPACE", help=argparse.SUPPRESS)
    parser.add_argument("--queues", default=ESTIMATES_CPU, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_worker:
        run_worker(args.run_worker, args.queues)
        return

    from flipwatch.service.core.logging import configure_logging

    configure_logging("warning", "console")  # stderr: stdout carries only the JSON object
    started = time.perf_counter()
    database_url, database = fresh_database()
    namespace = f"flipwatch-scaleout-{secrets.token_hex(4)}"
    work = Path(tempfile.mkdtemp(prefix="flipwatch-scaleout-"))
    settings = settings_for(database_url, work / "data", args.steps)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLIPWATCH_")} | {
        f"FLIPWATCH_{name.upper()}": (value if isinstance(value, str) else json.dumps(value))
        for name, value in settings.model_dump(mode="json").items()
        if value is not None
    }
    rounds: list[dict[str, Any]] = []
    api: Api | None = None
    engine = sqlalchemy.create_engine(database_url)
    try:
        from flipwatch.service.core.db import upgrade_database

        upgrade_database(settings)
        api = Api(settings, namespace)
        model_id, calibration_seconds = calibrate_demo_model(api, work, args.steps, namespace, env)
        windows = posted_windows(args.windows)
        for k in (int(x) for x in args.workers.split(",")):
            rounds.append(
                run_round(
                    k,
                    api=api,
                    model_id=model_id,
                    windows=windows,
                    streams=args.streams,
                    steps=args.steps,
                    namespace=namespace,
                    env=env,
                    engine=engine,
                    timeout=args.timeout,
                )
            )
    finally:
        if api is not None:
            api.close()
        engine.dispose()
        drop_database(database)
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{namespace}*"):
            client.delete(key)
        client.close()
    base = (
        rounds[0]["estimates_per_second"] if rounds and rounds[0]["estimates_per_second"] else None
    )
    print(
        json.dumps(
            {
                "benchmark": "scale_out",
                "workload": {
                    "model": "demo MNIST CNN (flipwatch/demos), calibrated through the API",
                    "calibration": "gaussian_noise + contrast at severity 2, 300 reference images",
                    "calibration_seconds": round(calibration_seconds, 1),
                    "streams": args.streams,
                    "windows_per_stream": args.windows,
                    "window_images": WINDOW,
                    "steps": args.steps,
                    "queue": ESTIMATES_CPU,
                    "worker_torch_threads": 1,
                    "api": "uvicorn, 127.0.0.1, one process, Redis dispatcher; one POST per window",
                },
                "results": [
                    r
                    | ({"speedup_vs_1": round(r["estimates_per_second"] / base, 2)} if base else {})
                    for r in rounds
                ],
                "all_reconciled": all(r["reconciliation"]["ok"] for r in rounds),
                "total_seconds": round(time.perf_counter() - started, 1),
                "environment": environment()
                | {
                    "postgres": _postgres_version(),
                    "redis": redis.Redis.from_url(REDIS_URL).info()["redis_version"],
                    "dramatiq": dramatiq.__version__,
                    "sqlalchemy": sqlalchemy.__version__,
                    "loadavg_1m": round(os.getloadavg()[0], 2),
                },
            },
            indent=2,
        )
    )


def _postgres_version() -> str:
    with psycopg.connect(ADMIN_URL) as connection:
        return str(connection.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
