"""/docs and /redoc render in headless Chromium with the network refused: every host but the
API's own address is unresolvable, so a page that needs a CDN stays blank (the control below)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from sqlalchemy import Engine

from flipwatch.service.core.db import make_sessionmaker
from flipwatch.service.core.settings import Settings
from flipwatch.service.main import create_app
from tests.e2e.chromium import CHROMIUM, dump_dom
from tests.servers import serve_in_thread

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (.ci/run installs it)",
    ),
]


@pytest.fixture
def api_url(settings: Settings, engine: Engine) -> Iterator[str]:
    app = create_app(
        settings.model_copy(update={"webhook_poll_seconds": 0}),
        session_factory=make_sessionmaker(engine),
    )
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture
def cdn_docs_url() -> Iterator[str]:
    """A bare FastAPI app with FastAPI's default /docs (Swagger UI from a CDN)."""
    app = FastAPI(title="control")

    @app.get("/ping")
    def ping() -> dict[str, str]:
        return {"ok": "yes"}

    with serve_in_thread(app) as url:
        yield url


def dump_dom_offline(url: str) -> str:
    """The DOM after scripts ran, with every host name except 127.0.0.1 unresolvable."""
    return dump_dom(
        url,
        budget_ms=8000,
        timeout=120,
        extra=(
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--proxy-server=http://127.0.0.1:9",  # nothing listens: any proxied fetch fails
            "--proxy-bypass-list=127.0.0.1",
        ),
    )


def test_swagger_ui_renders_every_operation_offline(api_url: str):
    dom = dump_dom_offline(api_url + "/docs")
    operations = set(re.findall(r'id="operations-[\w-]+?-(\w+)"', dom))
    assert {"create_stream", "create_batch", "read_estimate", "create_alert_rule"} <= operations
    assert len(operations) >= 20
    assert 'class="title"' in dom and "flipwatch" in dom


def test_redoc_renders_offline(api_url: str):
    dom = dump_dom_offline(api_url + "/redoc")
    assert "redoc-wrap" in dom or 'class="redoc' in dom
    assert "create_stream" in dom or "Create Stream" in dom


def test_control_a_cdn_docs_page_stays_blank_with_the_network_refused(cdn_docs_url: str):
    dom = dump_dom_offline(cdn_docs_url + "/docs")
    assert 'id="swagger-ui"' in dom
    assert "opblock" not in dom  # the CDN script never loaded: nothing rendered
