"""The shared uvicorn-in-a-thread helper (tests/servers.py): the app answers on its URL, its
lifespan runs on start and on stop, and the port is closed afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI

from tests.servers import serve_in_thread


def test_serves_the_app_with_its_lifespan_and_stops_it() -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    app = FastAPI(lifespan=lifespan)

    @app.get("/ping")
    def ping() -> dict[str, bool]:
        return {"pong": True}

    with serve_in_thread(app) as url:
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(url + "/ping", timeout=5).json() == {"pong": True}
        assert events == ["startup"]

    assert events == ["startup", "shutdown"]
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/ping", timeout=5)
