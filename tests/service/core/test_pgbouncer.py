"""Every process is safe behind PgBouncer in transaction mode: the API's ingest/read path and the
worker's claim and reconcile run through a real PgBouncer (Debian's `pgbouncer`, started here on
loopback with pool_mode = transaction and fewer server connections than clients), and no code keeps
session state on a server connection.

Skipped when the `pgbouncer` binary is missing (`apt-get install pgbouncer`; .ci/run installs it).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.engine import make_url

from flipwatch.service.core.db import make_engine, make_sessionmaker
from flipwatch.service.core.settings import Settings
from flipwatch.service.core.tables import Image, Job
from flipwatch.service.main import create_app
from flipwatch.workers import jobs
from tests.conftest import truncate_all
from tests.dispatchers import RecordingDispatcher
from tests.factories import files, image_bytes, make_api_key, make_model, make_stream

ROOT = Path(__file__).resolve().parents[3]
PGBOUNCER = shutil.which("pgbouncer") or (
    "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
)
SERVER_CONNECTIONS = 2  # fewer than the clients below: transactions hop between connections
CLIENTS = 6


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def pgbouncer_url(database_url: str) -> Iterator[str]:
    """The test database's URL through a PgBouncer of this test (transaction pooling)."""
    if PGBOUNCER is None:
        pytest.skip("needs Debian's pgbouncer (apt-get install pgbouncer)")
    url = make_url(database_url)
    port = free_port()
    # Its own folder under /tmp: pytest's tmp_path is private to root, and PgBouncer runs as the
    # postgres user when the tests run as root.
    holder = tempfile.TemporaryDirectory(prefix="flipwatch-pgbouncer-")
    folder = Path(holder.name)
    (folder / "userlist.txt").write_text(f'"{url.username}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        f"""[databases]
* = host={url.host} port={url.port or 5432}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder / "userlist.txt"}
pool_mode = transaction
default_pool_size = {SERVER_CONNECTIONS}
max_client_conn = 200
server_reset_query =
logfile = {folder / "pgbouncer.log"}
"""
    )
    for path in (folder, *folder.iterdir()):
        os.chmod(path, 0o777 if path.is_dir() else 0o666)
    command = [PGBOUNCER, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        command[1:1] = ["-u", "postgres"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                log = (
                    (folder / "pgbouncer.log").read_text()
                    if (folder / "pgbouncer.log").exists()
                    else ""
                )
                pytest.fail(f"pgbouncer did not start: {process.stdout.read()!r} {log}")  # type: ignore[union-attr]
            time.sleep(0.1)
    try:
        yield url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    finally:
        process.terminate()
        process.wait(timeout=10)
        holder.cleanup()


@pytest.fixture
def bouncer_settings(settings: Settings, pgbouncer_url: str) -> Settings:
    return settings.model_copy(
        update={
            "database_url": pgbouncer_url,
            "database_pool_size": CLIENTS,
            "database_max_overflow": 0,
        }
    )


def test_the_engine_makes_no_server_side_prepared_statements(settings: Settings) -> None:
    engine = make_engine(
        settings.model_copy(update={"database_pool_size": 3, "database_max_overflow": 2})
    )
    try:
        with engine.connect() as connection:
            assert connection.connection.dbapi_connection.prepare_threshold is None  # type: ignore[union-attr]
        assert (engine.pool.size(), engine.pool._max_overflow) == (3, 2)  # type: ignore[attr-defined]
    finally:
        engine.dispose()


def test_no_code_keeps_session_state_on_a_server_connection() -> None:
    """Session-level SET, advisory locks, LISTEN/NOTIFY, temporary tables and explicit PREPARE
    would leak across transactions (or vanish) behind a transaction pooler."""
    # SQL sits in string literals: a quote, then one of the statements.
    pattern = re.compile(
        r"[\"']\s*(SELECT\s+pg_(try_)?advisory_lock|LISTEN\s|NOTIFY\s|CREATE\s+TEMP|PREPARE\s|"
        r"SET\s+(SESSION\s+)?(?!LOCAL\b)[a-z_]+\s*(=|TO\b))",
        re.IGNORECASE,
    )
    assert pattern.search('text("SET search_path = audit")')  # the check itself bites
    assert not pattern.search('text("SET LOCAL lock_timeout = 1000")')  # one transaction: fine
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for folder in ("service", "workers", "flipwatch", "migrations")
        for path in (ROOT / folder).rglob("*.py")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_api_ingest_and_worker_claims_run_through_pgbouncer_in_transaction_mode(
    bouncer_settings: Settings, engine: Engine
) -> None:
    bounced = make_engine(bouncer_settings)
    session_factory = make_sessionmaker(bounced)
    try:
        with session_factory() as session:
            model = make_model(session)
            streams = [make_stream(session, model=model, window_size=64) for _ in range(CLIENTS)]
            _, token = make_api_key(session, role="ingest")
            session.commit()
        dispatcher = RecordingDispatcher()
        app = create_app(bouncer_settings, dispatcher=dispatcher, session_factory=session_factory)
        headers = {"Authorization": f"Bearer {token}"}

        def client_session(stream_id: uuid.UUID) -> list[int]:
            """One client: a window's batch (its estimate job is created), then reads."""
            with TestClient(app) as client:
                batch = client.post(
                    f"/v1/streams/{stream_id}/batches",
                    headers=headers | {"Idempotency-Key": f"batch-{stream_id}"},
                    files=files(*[(f"{i}.png", image_bytes(i)) for i in range(64)]),
                )
                codes = [batch.status_code]
                job_url = batch.json()["job_url"]
                for _ in range(10):  # the same statements again and again, on any connection
                    codes.append(
                        client.get(f"/v1/streams/{stream_id}", headers=headers).status_code
                    )
                    codes.append(client.get(job_url, headers=headers).status_code)
                    codes.append(
                        client.get(
                            f"/v1/streams/{stream_id}/estimates", headers=headers
                        ).status_code
                    )
                return codes

        with ThreadPoolExecutor(CLIENTS) as pool:
            results = list(pool.map(client_session, [s.id for s in streams]))

        assert [sorted(set(codes)) for codes in results] == [[200, 202]] * CLIENTS
        assert len(dispatcher.sent) == CLIENTS

        # Worker side: every job claimed exactly once by concurrent claimers (FOR UPDATE SKIP
        # LOCKED, one transaction each), then the reconciler's pass.
        def claim_all(worker: str) -> list[uuid.UUID]:
            return [
                job_id
                for job_id in dispatcher.sent
                if jobs.claim_job(session_factory, job_id, worker=worker) is not None
            ]

        with ThreadPoolExecutor(CLIENTS) as pool:
            claimed = [
                i for got in pool.map(claim_all, [f"w{n}" for n in range(CLIENTS)]) for i in got
            ]
        assert sorted(claimed) == sorted(dispatcher.sent)
        assert jobs.reconcile_jobs(session_factory, stale_after=3600, lost_after=3600) == []

        with session_factory() as session:
            assert session.scalar(select(func.count()).select_from(Image)) == 64 * CLIENTS
            assert session.scalar(select(func.count()).where(Job.state == "running")) == CLIENTS
    finally:
        bounced.dispose()
        truncate_all(engine)
