"""The status page (GET /) and its data (GET /v1/status): content, and who may see them.
The chart itself is drawn by a browser in tests/e2e/test_status_page.py."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from flipwatch.service.alert.evaluation import evaluate_alerts
from flipwatch.service.core.settings import Settings
from flipwatch.service.core.tables import Estimate
from tests.conftest import bearer
from tests.factories import (
    estimate_result,
    make_alert_rule,
    make_calibration,
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


class TestStreamPage:
    def test_lists_every_window_newest_first_with_realized_accuracy(self, client, session):
        stream = make_stream(session, name="cam-hist")
        for w, acc in enumerate((0.91, 0.72, 0.88)):
            make_estimate(session, stream=stream, window_index=w, estimated_accuracy=acc)
        labeled = session.scalar(
            select(Estimate).where(Estimate.stream_id == stream.id, Estimate.window_index == 1)
        )
        labeled.realized_accuracy, labeled.labeled_count = 0.75, 120

        response = client.get(f"/streams/{stream.id}")

        assert response.status_code == 200
        page = response.text
        rows = re.findall(r'<tr data-window="(\d+)">(.*?)</tr>', page)
        assert [int(w) for w, _ in rows] == [2, 1, 0]
        cells = dict((int(w), re.findall(r"<td>(.*?)</td>", r)) for w, r in rows)
        assert cells[1][2:6] == ["72.0%", "75.0%", "120", "-3.0 pts"]
        assert cells[0][3] == "-"  # no labels: no realized accuracy
        assert f'data-stream-id="{stream.id}"' in page  # the chart's figure
        assert "/static/status.js" in page

    def test_main_page_links_each_stream_to_its_page(self, client, session):
        stream = make_stream(session, name="linked")
        make_estimate(session, stream=stream, window_index=0)
        assert f'<a href="/streams/{stream.id}">linked</a>' in client.get("/").text

    def test_unknown_stream_is_404(self, client):
        assert client.get("/streams/00000000-0000-0000-0000-000000000000").status_code == 404

    def test_needs_a_read_key_in_prod(self, private, session):
        stream = make_stream(session)
        response = private.get(f"/streams/{stream.id}")
        assert response.status_code == 401
        assert "read API key" in response.text


class TestCalibrationPage:
    def test_draws_the_fitted_curve_with_variants_and_ranks_every_candidate(self, client, session):
        model = make_model(session, name="cal-page", calibrated=False)
        quadratic = {"a": 0.0, "b": -0.001, "c": 0.95, "x_min": 0.0, "x_max": 300.0}
        result = {
            "selected": "uf@250",
            "fits": [
                {"signal": "wf", "step": 250, "map": quadratic, "mae": 0.05, "train_mae": 0.04},
                {"signal": "uf", "step": 250, "map": quadratic, "mae": 0.02, "train_mae": 0.01},
            ],
            "points": [
                {"family": "clean", "severity": 0, "mixed": False, "accuracy": 0.95,
                 "signals": {"uf": {"250": 0.0}}},
                {"family": "fog", "severity": 3, "mixed": False, "accuracy": 0.75,
                 "signals": {"uf": {"250": 200.0}}},
            ],
            "baseline_mae": {"ac": 0.08},
        }  # fmt: skip
        make_calibration(session, model=model, state="succeeded", result=result)

        page = client.get(f"/models/{model.id}/calibration").text

        assert 'data-selected="uf@250"' in page and 'class="fit-curve"' in page
        variants = re.findall(
            r'class="variant"[^>]*data-x="([\d.]+)" data-accuracy="([\d.]+)"', page
        )
        assert variants == [("0", "0.95"), ("200", "0.75")]
        candidates = re.findall(r'data-candidate="([^"]+)"><td>[^<]+</td><td>([^<]+)</td>', page)
        assert candidates == [("uf@250", "2.00%"), ("wf@250", "5.00%")]  # best first
        assert '<tr class="selected" data-candidate="uf@250">' in page
        assert 'data-baseline="ac"' in page

    def test_map_value_follows_the_estimators_rule(self):
        from flipwatch.service.status.calibration_page import map_value
        from flipwatch.workers.estimation.flips import QuadraticMap

        for m in (
            QuadraticMap(a=1e-5, b=-0.004, c=0.97, x_min=10.0, x_max=150.0),
            QuadraticMap(a=-1e-4, b=-0.02, c=0.99, x_min=-3.0, x_max=20.0, scale="sqrt"),
        ):
            for x in (-25.0, 0.0, 10.0, 80.0, 150.0, 400.0, 900.0):
                assert map_value(m.to_dict(), x) == pytest.approx(m(x))
