"""Every malformed request of the corpus gets its 4xx problem body and stores nothing.

The app is the real one on Postgres (tests/conftest.py `client`: a fresh migrated database, each
test rolled back); rows of every table and files under data_dir are counted before and after.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from flipwatch.service.core.settings import Settings
from tests.badinput.conftest import LiveServer, World, stored
from tests.badinput.corpus import CORPUS, UNSET, Case, Request
from tests.conftest import bearer


def _fill(value: Any, world: World) -> Any:
    """Put the world's ids into a request's path, JSON body or raw body."""
    names = {
        "{stream}": world.stream_id,
        "{model}": world.model_id,
        "{cmodel}": world.calibration_model_id,
        "{rule}": world.rule_id,
    }
    if isinstance(value, str):
        for name, real in names.items():
            value = value.replace(name, real)
        return value
    if isinstance(value, bytes):
        for name, real in names.items():
            value = value.replace(name.encode(), real.encode())
        return value
    if isinstance(value, dict):
        return {k: _fill(v, world) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, world) for v in value]
    return value


def _send(http: TestClient | httpx.Client, request: Request, world: World) -> httpx.Response:
    headers = dict(request.headers)
    if request.role in world.tokens and "Authorization" not in headers:
        headers |= bearer(world.tokens[request.role])
    kwargs: dict[str, Any] = {"headers": headers}
    if request.content is not None:
        kwargs["content"] = _fill(request.content, world)
    if request.files is not None:
        kwargs["files"] = request.files
    if request.data is not None:
        kwargs["data"] = request.data
    if request.json is not UNSET:
        kwargs["json"] = _fill(request.json, world)
    if request.params is not None:
        kwargs["params"] = request.params
    return http.request(request.method, _fill(request.path, world), **kwargs)


def assert_problem(response: httpx.Response, case: Case) -> dict[str, Any]:
    assert response.status_code == case.status, response.text[:2000]
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == case.status
    assert body["code"] == case.code
    assert {"type", "title", "detail"} <= body.keys()
    text = " ".join(_strings(body)).lower()
    for mention in case.mentions:
        assert mention.lower() in text, f"{mention!r} not in {text[:1500]}"
    return body


def _strings(value: Any) -> list[str]:
    """Every string and number in a JSON document, as text (what a reader of the body sees)."""
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [str(value)]


ROWS = [c for c in CORPUS if not c.live]
LIVE = [c for c in CORPUS if c.live]


def test_the_corpus_is_large_and_every_name_is_unique() -> None:
    names = [case.name for case in CORPUS]
    assert len(names) == len(set(names))
    assert len(names) >= 100


@pytest.mark.parametrize("case", ROWS, ids=lambda c: c.name)
def test_malformed_request_is_refused_with_a_problem_and_stores_nothing(
    case: Case,
    client: TestClient,
    session: Session,
    settings: Settings,
    data_dir: Path,
    world: World,
) -> None:
    if case.settings:
        client.app.state.settings = settings.model_copy(update=case.settings)  # type: ignore[attr-defined]
    request = case.request()
    before = stored(session, data_dir)

    response = _send(client, request, world)

    assert_problem(response, case)
    session.expire_all()
    assert stored(session, data_dir) == before


@pytest.mark.parametrize("case", LIVE, ids=lambda c: c.name)
def test_malformed_request_head_is_refused_by_the_server_and_stores_nothing(
    case: Case,
    live_server: LiveServer,
    engine: Engine,
    world: World,
) -> None:
    with Session(engine) as fresh:
        before = stored(fresh, live_server.settings.data_dir)
    with httpx.Client(base_url=live_server.url, timeout=30) as http:
        response = _send(http, case.request(), world)

    assert_problem(response, case)
    with Session(engine) as fresh:
        assert stored(fresh, live_server.settings.data_dir) == before
