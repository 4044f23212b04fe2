"""An ASGI app under a real uvicorn in a background thread, for the tests that need what only a
real HTTP server gives: a browser (status page, API docs), Prometheus scraping a running API, the
header-size limit of flipwatch's own HTTP protocol (bad-input corpus)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from starlette.types import ASGIApp


@contextmanager
def serve_in_thread(app: ASGIApp, *, start_timeout: float = 30.0, **options: Any) -> Iterator[str]:
    """Serve `app` on a loopback port and yield its base URL; stop it (lifespan shutdown
    included) on exit. `options` go to `uvicorn.Config` (e.g. `uvicorn_options(settings)`).

    The socket is bound here and handed to uvicorn, so no other process can take the port
    between choosing it and listening on it.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", **options))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + start_timeout
    try:
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
