"""Real processes on loopback for the fault suite: a private Redis, a private Postgres cluster,
`flipwatch api`, `flipwatch worker` and `flipwatch serve`, each started, killed and restarted by
the test. Nothing here touches the shared Postgres or Redis servers (only a database of its own).

Every process gets a clean FLIPWATCH_* environment of its own and logs to a file, which a failing
test prints (`Service.log_tail`).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

FLIPWATCH = str(Path(sys.executable).with_name("flipwatch"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], *, timeout: float, interval: float = 0.1, what: str = ""
) -> Any:
    """Poll `predicate` until it returns something truthy; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except (httpx.HTTPError, OSError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or predicate}")
        time.sleep(interval)


def _stop_process(process: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    """Signal the process group (start_new_session), then SIGKILL it if it outlives `timeout`."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


# --- Redis -----------------------------------------------------------------------------------


@dataclass
class RedisServer:
    """A private `redis-server` on a free port: no persistence, so a restart loses every key."""

    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        wait_until(self.ping, timeout=10, what=f"redis on port {self.port}")

    def ping(self) -> bool:
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None:
            _stop_process(self.process, signal.SIGKILL, 5)
            self.process = None

    def restart(self) -> None:
        """Kill and start again on the same port: every queued message is gone."""
        self.stop()
        self.start()

    def flushall(self) -> None:
        import redis

        client = redis.Redis(port=self.port)
        try:
            client.flushall()
        finally:
            client.close()


# --- Postgres --------------------------------------------------------------------------------


def postgres_bin_dir() -> Path | None:
    """Debian's server binaries (initdb, pg_ctl, postgres), newest major version first."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if found:
        return Path(found[0]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class PostgresCluster:
    """A private cluster (initdb + pg_ctl) on a free port, trust auth, fsync off (commits still
    synchronous); the test stops and starts it. As root, the server runs as the `postgres` user
    (it refuses to run as root)."""

    root: Path
    bin_dir: Path
    port: int = field(default_factory=free_port)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 60) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=timeout)

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:  # `root` must sit in a folder `postgres` can traverse (/tmp)
            shutil.chown(self.root, "postgres", "postgres")
            os.chmod(self.root, 0o700)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def start(self) -> None:
        # fsync off is safe for a server crash (WAL still reaches the kernel at each commit);
        # synchronous_commit must stay on: off, an `immediate` stop loses the last commits, and
        # the tests would see acknowledged rows vanish that production Postgres keeps.
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off "
            f"-c full_page_writes=off -k {self.root}"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-w", "-t", "30", "start",
                  "-l", str(self.root / "server.log"))  # fmt: skip

    def stop(self, mode: str = "immediate") -> None:
        """`immediate`: like a crash, every connection is cut at once."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def is_running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


# --- flipwatch processes ---------------------------------------------------------------------


@dataclass
class Service:
    """One `flipwatch <command>` process with its own environment and log file."""

    command: list[str]
    env: dict[str, str]
    log_path: Path
    port: int | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, ready_path: str | None = "/healthz", timeout: float = 60) -> Service:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [FLIPWATCH, *self.command],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        if ready_path is not None:
            wait_until(
                lambda: self._alive() and httpx.get(self.url + ready_path, timeout=2).is_success,
                timeout=timeout,
                what=f"{' '.join(self.command)} on {self.url}{ready_path}\n{self.log_tail()}",
            )
        return self

    def _alive(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"{' '.join(self.command)} exited:\n{self.log_tail()}")
        return True

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (an OOM kill, a lost machine)."""
        if self.process is not None:
            _stop_process(self.process, signal.SIGKILL, 10)

    def stop(self, timeout: float = 40) -> None:
        """SIGTERM, as a deploy would, then SIGKILL after `timeout` s."""
        if self.process is not None:
            _stop_process(self.process, signal.SIGTERM, timeout)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text[-lines:])


def service_env(values: Mapping[str, object]) -> dict[str, str]:
    """The test's environment without any FLIPWATCH_* variable, plus `values` (FLIPWATCH_<KEY>)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLIPWATCH_")}
    env.update({f"FLIPWATCH_{k.upper()}": str(v) for k, v in values.items() if v is not None})
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env
