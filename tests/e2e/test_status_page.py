"""The status page in a real browser: headless Chromium loads GET / from uvicorn, the page's script
fetches /v1/status and draws the charts; the rendered DOM has one point per estimate row, the
baselines and a marker per alert state change."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from html.parser import HTMLParser

import pytest
from sqlalchemy import Engine, select

from flipwatch.service.alert.evaluation import evaluate_alerts
from flipwatch.service.core.db import make_sessionmaker
from flipwatch.service.core.settings import Settings
from flipwatch.service.core.tables import Estimate
from flipwatch.service.main import create_app
from tests.conftest import truncate_all
from tests.e2e.chromium import CHROMIUM, dump_dom
from tests.factories import (
    estimate_result,
    make_alert_rule,
    make_estimate,
    make_job,
    make_model,
    make_stream,
)
from tests.servers import serve_in_thread

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium: apt-get install -y "
        "--no-install-recommends chromium (.ci/run installs it)",
    ),
]

ACCURACIES = [0.91, 0.9, 0.78, 0.74, 0.76, 0.86, 0.89]  # the floor (0.8, K=2) fires and resolves


class ChartDom(HTMLParser):
    """Collects each chart's SVG elements by stream name, and the <html> attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.html: dict[str, str | None] = {}
        self.charts: dict[str, list[tuple[str, dict[str, str | None]]]] = {}
        self._svg: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "html":
            self.html = values
        elif tag == "svg" and values.get("data-stream"):
            self._svg = values["data-stream"]
            self.charts[self._svg] = []
        elif self._svg is not None:
            self.charts[self._svg].append((tag, values))

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._svg = None

    def elements(self, stream: str, tag: str, css_class: str) -> list[dict[str, str | None]]:
        return [
            attrs
            for t, attrs in self.charts.get(stream, [])
            if t == tag and css_class in (attrs.get("class") or "").split()
        ]


@pytest.fixture
def seeded(engine: Engine) -> Iterator[dict]:
    """Committed rows (the server runs in another thread): a stream with estimates and a floor
    rule evaluated on each, a stream without estimates, a queued job. Emptied afterwards."""
    factory = make_sessionmaker(engine)
    with factory() as session:
        model = make_model(session, name="page-model", version=4)
        stream = make_stream(session, model=model, name="page-cams", images_total=448)
        make_alert_rule(session, stream=stream, name="floor", threshold=0.8, windows=2)
        changes = []
        for window, accuracy in enumerate(ACCURACIES):
            estimate = make_estimate(
                session,
                stream=stream,
                window_index=window,
                estimated_accuracy=accuracy,
                result=estimate_result(
                    accuracy, baselines={"ac": 0.95, "doc": accuracy + 0.02, "atc": None}
                ),
            )
            changes += evaluate_alerts(session, estimate)
        make_stream(session, model=model, name="page-empty")
        make_job(session, stream=stream, window_index=len(ACCURACIES), state="queued")
        session.commit()
        rows = session.scalars(
            select(Estimate).where(Estimate.stream_id == stream.id).order_by(Estimate.window_index)
        ).all()
        seeded = {"estimates": [(e.window_index, e.estimated_accuracy) for e in rows]}
        seeded["changes"] = [(c.window_index, c.state) for c in changes]
    try:
        yield seeded
    finally:
        truncate_all(engine)


@pytest.fixture
def server_url(settings: Settings, engine: Engine) -> Iterator[str]:
    """The app under uvicorn in a background thread on a free port (public page, as in dev)."""
    app = create_app(
        settings.model_copy(update={"public_status_page": True, "webhook_poll_seconds": 0}),
        session_factory=make_sessionmaker(engine),
    )
    with serve_in_thread(app) as url:
        yield url


def test_chart_has_one_point_per_estimate_with_baselines_and_alert_markers(seeded, server_url):
    dom = ChartDom()
    dom.feed(dump_dom(server_url + "/"))

    assert dom.html.get("data-rendered") == "true", "status.js did not finish rendering"
    points = dom.elements("page-cams", "circle", "point")
    assert len(points) == len(seeded["estimates"]) == len(ACCURACIES)
    assert [(int(p["data-window"]), float(p["data-value"])) for p in points] == seeded["estimates"]

    baselines = {p["data-method"] for p in dom.elements("page-cams", "path", "baseline")}
    assert baselines == {"ac", "doc"}  # atc is null everywhere: no line
    assert dom.elements("page-cams", "line", "threshold")[0]["data-rule"] == "floor"

    markers = dom.elements("page-cams", "g", "alert-marker")
    assert seeded["changes"] == [(3, "firing"), (6, "resolved")]
    assert [(int(m["data-window"]), m["data-state"]) for m in markers] == seeded["changes"]
    assert {m["data-rule"] for m in markers} == {"floor"}

    # The 90% interval: one closed band through every estimate's upper, then lower, bound.
    (band,) = dom.elements("page-cams", "path", "interval-band")
    corners = re.findall(r"[ML](-?[\d.]+),(-?[\d.]+)", band["d"] or "")
    assert len(corners) == 2 * len(ACCURACIES) and (band["d"] or "").endswith("Z")

    assert set(dom.charts) == {"page-cams"}  # page-empty has no estimates: no chart


def test_chart_has_a_time_axis_distinct_baselines_and_labelled_markers_in_lanes(seeded, server_url):
    dom = ChartDom()
    dom.feed(dump_dom(server_url + "/"))

    ticks = [t["data-time"] for t in dom.elements("page-cams", "text", "tick")
             if t.get("data-time")]  # fmt: skip
    assert len(ticks) == 6 and ticks == sorted(ticks), ticks  # ISO times, left to right
    dashes = {
        p["data-method"]: p["stroke-dasharray"]
        for p in dom.elements("page-cams", "path", "baseline")
    }
    assert set(dashes) == {"ac", "doc"} and dashes["ac"] != dashes["doc"]  # AC visible on DoC
    assert {g["data-method"] for g in dom.elements("page-cams", "g", "baseline-points")} == {
        "ac",
        "doc",
    }

    labels = dom.elements("page-cams", "text", "alert-label")
    markers = dom.elements("page-cams", "g", "alert-marker")
    assert len(labels) == len(markers) == 2
    # Labels sharing a lane never overlap: each is about 6 px per character plus the marker.
    lanes: dict[str, list[float]] = {}
    for marker, label in zip(markers, labels, strict=True):
        lanes.setdefault(marker["data-lane"], []).append(float(label["x"]))
    widest = len("floor resolved") * 6 + 14
    for xs in lanes.values():
        xs.sort()
        assert all(b - a >= len("floor fired") * 6 + 14 for a, b in itertools.pairwise(xs)), xs
        assert all(44 <= x <= 640 - widest + 8 for x in xs), xs
