"""The status page (GET /) and its data (GET /v1/status): content, and who may see them.
The chart itself is drawn by a browser in tests/e2e/test_status_page.py."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from flipwatch.service.alert.evaluation import evaluate_alerts
from flipwatch.service.core.settings import Settings
from flipwatch.service.core.tables import Estimate
from tests.conftest import bearer
from tests.factories import (
    estimate_result,
    make_alert_rule,
    make_estimate,
    make_job,
    make_model,
    make_stream,
)


@pytest.fixture
def private(client, settings):
    """The page as in prod: a read key is needed."""
    client.app.state.settings = settings.model_copy(update={"public_status_page": False})
    return client


def test_public_page_renders_streams_and_queue(client, session):
    model = make_model(session, name="shelf", version=2)
    stream = make_stream(session, model=model, name="cam-<1>", images_total=300)
    for w in range(3):
        make_estimate(session, stream=stream, window_index=w, estimated_accuracy=0.9 - w / 100)
    make_job(session, stream=stream, window_index=3, state="running", steps_done=5)
    make_alert_rule(session, stream=stream, name="floor", state="firing")

    response = client.get("/")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page = response.text
    assert "cam-&lt;1&gt;" in page and "cam-<1>" not in page  # escaped
    assert f'data-stream-id="{stream.id}" data-points="3"' in page
    assert "88.0%" in page  # the latest estimate
    assert "floor: firing" in page
    assert '<strong data-state="running">1</strong>' in page
    assert "/static/status.js?v=" in page


def test_status_data_has_series_oldest_first_with_alerts(client, session):
    stream = make_stream(session, name="data")
    for w in (2, 0, 1):
        make_estimate(
            session,
            stream=stream,
            window_index=w,
            result=estimate_result(0.9, baselines={"ac": 0.95, "doc": None}),
        )
    rule = make_alert_rule(session, stream=stream, windows=1, threshold=0.95)
    latest = session.scalar(
        select(Estimate).where(Estimate.stream_id == stream.id, Estimate.window_index == 2)
    )
    evaluate_alerts(session, latest)
    make_job(session, stream=stream, window_index=3, state="queued")

    body = client.get("/v1/status").json()

    (data,) = [s for s in body["streams"] if s["name"] == "data"]
    assert [p["window_index"] for p in data["series"]] == [0, 1, 2]
    assert data["latest"]["window_index"] == 2
    assert data["series"][0]["baselines"] == {"ac": 0.95, "doc": None}
    assert [(a["window_index"], a["state"]) for a in data["alerts"]] == [(2, "firing")]
    assert data["rules"] == [
        {"name": rule.name, "kind": "accuracy_below", "threshold": 0.95, "state": "firing"}
    ]
    assert body["jobs"]["queued"] >= 1
    assert any(j["stream"] == "data" and j["window_index"] == 3 for j in body["queue"])


def test_static_files_are_served(client):
    script = client.get("/static/status.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert client.get("/static/status.css").status_code == 200


class TestAccess:
    def test_public_by_default_in_dev_only(self):
        assert Settings(environment="dev").status_page_is_public
        assert not Settings(environment="prod").status_page_is_public
        assert Settings(environment="prod", public_status_page=True).status_page_is_public
        assert not Settings(environment="dev", public_status_page=False).status_page_is_public

    def test_private_page_asks_for_a_key(self, private):
        page = private.get("/")
        assert page.status_code == 401
        assert page.headers["content-type"].startswith("text/html")
        assert '<form method="post" action="/">' in page.text
        data = private.get("/v1/status")
        assert data.status_code == 401
        assert data.headers["content-type"] == "application/problem+json"

    def test_key_in_the_url_becomes_a_cookie(self, private, read_token):
        response = private.get(f"/?key={read_token}", follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"] == "/"
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(f"flipwatch_key={read_token}")
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        private.cookies.set("flipwatch_key", read_token)
        assert private.get("/").status_code == 200
        assert private.get("/v1/status").status_code == 200

    def test_the_login_form_posts_the_key(self, private, read_token):
        response = private.post("/", data={"key": read_token}, follow_redirects=False)
        assert response.status_code == 303
        assert "flipwatch_key=" in response.headers["set-cookie"]

    def test_bearer_header_works_and_bad_keys_do_not(self, private, read_token):
        assert private.get("/v1/status", headers=bearer(read_token)).status_code == 200
        assert private.get("/v1/status", headers=bearer("fw_nope")).status_code == 401
        bad = private.get("/?key=fw_000000000000_nope", follow_redirects=False)
        assert bad.status_code == 401
        assert "set-cookie" not in bad.headers
