"""Start-up code shared by every process: the app, the dispatcher and the in-process worker.

`build_server` with no configuration is embedded mode: SQLite under the data directory, migrations
applied, the API and an in-process worker thread in one process, and an admin key written to
data_dir/admin-key.txt. With FLIPWATCH_REDIS_URL set it serves only the API and sends job ids to
Redis for `flipwatch worker` processes. Settings are built once here and passed down.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from flipwatch.service.core.db import make_engine, make_sessionmaker, upgrade_database
from flipwatch.service.core.dispatch import JobDispatcher, NullDispatcher
from flipwatch.service.core.settings import Settings
from flipwatch.service.core.storage import write_atomic
from flipwatch.service.model.service import ModelCheck
from flipwatch.workers.estimation.spec import ModelSpec

if TYPE_CHECKING:
    from flipwatch.workers.jobs import CalibrationSuite

log = logging.getLogger("flipwatch")

ADMIN_KEY_FILE = "admin-key.txt"


def make_dispatcher(settings: Settings) -> JobDispatcher:
    """Redis (the worker side's dispatcher) when configured; else jobs stay queued for `serve`."""
    if settings.redis_url is None:
        log.warning(
            "no FLIPWATCH_REDIS_URL: jobs stay queued; `flipwatch serve` runs API and worker"
        )
        return NullDispatcher()
    # Imported here: the API process loads dramatiq only when it talks to Redis.
    from flipwatch.workers.broker import RedisDispatcher, configure_broker

    return RedisDispatcher(configure_broker(settings))


def estimator_model_check(settings: Settings) -> ModelCheck:
    """The API's registration check: the estimator's `load_model` with the operator's builders.

    torch is imported on the first registration, not at start-up.
    """

    def check(spec: ModelSpec) -> None:
        from flipwatch.workers.estimation.loading import load_model, resolve_builders

        load_model(spec, builders=resolve_builders(settings.model_builders))

    return check


def apply_torch_threads(settings: Settings) -> None:
    """FLIPWATCH_TORCH_THREADS, for the processes that run the estimator."""
    if settings.torch_threads is not None:
        import torch

        torch.set_num_threads(settings.torch_threads)


@dataclass
class ServerStack:
    """The API app and what runs beside it; `close()` stops the worker and frees the engine."""

    settings: Settings
    app: FastAPI
    engine: Engine
    session_factory: sessionmaker[Session]
    dispatcher: JobDispatcher
    worker: Any = None  # InProcessWorker in embedded mode
    broker: Any = None  # RedisBroker otherwise
    admin_key_path: Path | None = None
    admin_key: str | None = None
    admin_key_created: bool = False

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        if self.broker is not None:
            self.broker.close()
        self.engine.dispose()


def build_server(
    settings: Settings,
    *,
    start_worker: bool = True,
    calibration_suite: CalibrationSuite | None = None,
    namespace: str | None = None,
) -> ServerStack:
    """Migrate (SQLite), build engine, dispatcher and app; start the in-process worker.

    Embedded mode (no FLIPWATCH_REDIS_URL): jobs run on a thread of this process, calibrating
    with `calibration_suite` (default: the full suite). With Redis: job ids go to the broker
    (keys prefixed by `namespace`) for `flipwatch worker` processes.
    """
    from flipwatch.service.main import create_app

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    sqlite = settings.effective_database_url.startswith("sqlite")
    if sqlite:
        upgrade_database(settings)  # a local database is kept at head so a first run just works
    engine = make_engine(settings)
    session_factory = make_sessionmaker(engine)
    worker = broker = None
    dispatcher: JobDispatcher
    if settings.embedded:
        from flipwatch.workers.broker import InProcessDispatcher, InProcessWorker

        worker = InProcessWorker(
            session_factory,
            settings,
            calibration_suite=calibration_suite,
            heartbeat_interval=settings.job_heartbeat_seconds,
        )
        dispatcher = InProcessDispatcher(worker)
    else:
        from flipwatch.workers.broker import DEFAULT_NAMESPACE, RedisDispatcher, configure_broker

        broker = configure_broker(settings, namespace=namespace or DEFAULT_NAMESPACE)
        dispatcher = RedisDispatcher(broker)
    app = create_app(
        settings,
        dispatcher=dispatcher,
        session_factory=session_factory,
        model_check=estimator_model_check(settings),
    )
    stack = ServerStack(
        settings=settings,
        app=app,
        engine=engine,
        session_factory=session_factory,
        dispatcher=dispatcher,
        worker=worker,
        broker=broker,
    )
    if sqlite:
        path = settings.data_dir / ADMIN_KEY_FILE
        stack.admin_key, stack.admin_key_created = ensure_admin_key_file(session_factory, path)
        stack.admin_key_path = path.resolve()
    if worker is not None and start_worker:
        worker.start()
    return stack


def ensure_admin_key_file(session_factory: sessionmaker[Session], path: Path) -> tuple[str, bool]:
    """The admin token stored in `path` if it is still valid, else a new one written there (0600).

    Returns (token, created). The file is the only copy of the plaintext: the database keeps a hash.
    """
    from flipwatch.service.core.auth import authenticate, create_api_key
    from flipwatch.service.core.errors import FlipwatchError

    with session_factory() as session:
        if path.exists():
            token = path.read_text().strip()
            try:
                authenticate(session, f"Bearer {token}")
                return token, False
            except FlipwatchError:
                log.warning("%s holds a revoked or unknown key; creating a new one", path)
        _key, token = create_api_key(session, role="admin", name="flipwatch serve (local admin)")
        session.commit()
    write_atomic(path, (token + "\n").encode(), mode=0o600)
    return token, True


# --- the embedded server in a thread (the HTTP demo and the e2e tests) ---------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    url: str
    admin_key: str
    stack: Any


@contextmanager
def embedded_server(
    data_dir: Path,
    *,
    port: int = 0,
    steps: int = 250,
    calibration_suite: Any = None,
    startup_timeout: float = 60.0,
) -> Iterator[RunningServer]:
    """`flipwatch serve --data-dir DATA_DIR` on 127.0.0.1:PORT (0: a free port), in a thread."""
    import uvicorn

    from flipwatch.service.api.server import uvicorn_options

    # Embedded whatever the environment says: the demo needs no Postgres or Redis.
    settings = Settings(
        data_dir=data_dir,
        database_url=None,
        redis_url=None,
        default_steps=steps,
        calibration_processes=os.cpu_count() or 1,  # the demo owns the machine
    )
    stack = build_server(settings, calibration_suite=calibration_suite)
    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            stack.app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            **uvicorn_options(settings),
        )
    )
    thread = threading.Thread(target=server.run, name="flipwatch-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            stack.close()
            raise RuntimeError(f"the embedded server did not start on 127.0.0.1:{port}")
        time.sleep(0.05)
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", stack.admin_key or "", stack)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        stack.close()
