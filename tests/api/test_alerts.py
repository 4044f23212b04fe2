"""Drift alerts: hysteresis per rule kind (fires exactly at K, resolves exactly after K clean
windows), history and its API, rule CRUD, and webhooks delivered once each to a local receiver,
retried after a 500."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session, sessionmaker

from flipwatch.service.alerts import evaluate_alerts
from flipwatch.service.db import make_sessionmaker
from flipwatch.service.main import create_app
from flipwatch.service.models import (
    AlertEvent,
    AlertRule,
    Calibration,
    Estimate,
    Model,
    Stream,
    WebhookNotification,
    utcnow,
)
from flipwatch.service.settings import Settings
from flipwatch.service.webhooks import backoff_seconds, deliver_due, sign
from tests.conftest import bearer
from tests.factories import (
    estimate_result,
    make_alert_rule,
    make_calibration,
    make_estimate,
    make_model,
    make_stream,
)

# --- helpers ------------------------------------------------------------------------------------

# Per rule kind: the rule's settings, and estimate fields for a breaching and a clean window.
# The reference accuracy is make_calibration's 0.9.
KINDS: dict[str, dict[str, Any]] = {
    "accuracy_below": {
        "rule": {"threshold": 0.8},
        "breach": {"estimated_accuracy": 0.7},
        "clean": {"estimated_accuracy": 0.85},
    },
    "drop_below_reference": {
        "rule": {"threshold": 5.0},  # points below 0.9
        "breach": {"estimated_accuracy": 0.8},  # 10 points below
        "clean": {"estimated_accuracy": 0.88},  # 2 points below
    },
    "embedding_above": {
        "rule": {"threshold": 10.0, "embedding_kind": "frechet"},
        "breach": {"embedding": {"frechet": 25.0}},
        "clean": {"embedding": {"frechet": 3.0}},
    },
}


class Windows:
    """Feeds one stream estimate after estimate, as the worker would, and evaluates each."""

    def __init__(self, session: Session, stream: Stream, kind: str) -> None:
        self.session, self.stream, self.kind = session, stream, kind
        self.next_index = 0

    def send(self, which: str, **extra: Any) -> list:
        fields = {**KINDS[self.kind][which], **extra}
        accuracy = fields.pop("estimated_accuracy", 0.85)
        embedding = fields.pop("embedding", None)
        estimate = make_estimate(
            self.session,
            stream=self.stream,
            window_index=self.next_index,
            estimated_accuracy=accuracy,
            result=estimate_result(accuracy, embedding=embedding),
            **fields,
        )
        self.next_index += 1
        return evaluate_alerts(self.session, estimate)

    def run(self, *which: str) -> list:
        changes = []
        for w in which:
            changes.extend(self.send(w))
        return changes


def rule_for(session: Session, stream: Stream, kind: str, windows: int, **extra: Any) -> AlertRule:
    return make_alert_rule(
        session, stream=stream, kind=kind, windows=windows, **{**KINDS[kind]["rule"], **extra}
    )


def fresh(session: Session, row: Any) -> Any:
    session.refresh(row)
    return row


# --- hysteresis ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("k", [1, 3])
class TestHysteresis:
    def test_fires_exactly_at_k_breaching_windows(self, session, kind, k):
        stream = make_stream(session)
        rule = rule_for(session, stream, kind, k)
        feed = Windows(session, stream, kind)

        for n in range(1, k):
            assert feed.send("breach") == [], f"fired after {n} of {k} windows"
            assert fresh(session, rule).streak == n
        (change,) = feed.send("breach")

        assert change.state == "firing"
        assert change.window_index == k - 1
        assert (change.rule_id, change.kind) == (rule.id, kind)
        rule = fresh(session, rule)
        assert (rule.state, rule.streak) == ("firing", 0)

    def test_resolves_exactly_after_k_clean_windows(self, session, kind, k):
        stream = make_stream(session)
        rule = rule_for(session, stream, kind, k)
        feed = Windows(session, stream, kind)
        assert [c.state for c in feed.run(*["breach"] * k)] == ["firing"]

        for n in range(1, k):
            assert feed.send("clean") == [], f"resolved after {n} of {k} clean windows"
            assert fresh(session, rule).state == "firing"
        (change,) = feed.send("clean")

        assert change.state == "resolved"
        assert change.window_index == 2 * k - 1
        assert fresh(session, rule).state == "ok"

    def test_an_interrupted_streak_starts_over(self, session, kind, k):
        stream = make_stream(session)
        rule_for(session, stream, kind, k)
        feed = Windows(session, stream, kind)

        assert feed.run(*["breach"] * (k - 1), "clean", *["breach"] * (k - 1)) == []
        assert [c.state for c in feed.run("breach")] == ["firing"]
        # while firing, a breach between clean windows restarts the clean count
        assert feed.run(*["clean"] * (k - 1), "breach", *["clean"] * (k - 1)) == []
        assert [c.state for c in feed.run("clean")] == ["resolved"]


class TestEvaluateAlerts:
    def test_a_window_counts_once(self, session):
        stream = make_stream(session)
        rule = rule_for(session, stream, "accuracy_below", 2)
        first = make_estimate(session, stream=stream, window_index=5, estimated_accuracy=0.5)
        assert evaluate_alerts(session, first) == []
        assert evaluate_alerts(session, first) == []  # a redelivered job
        older = make_estimate(session, stream=stream, window_index=4, estimated_accuracy=0.5)
        assert evaluate_alerts(session, older) == []  # a late window does not count
        assert fresh(session, rule).streak == 1
        assert rule.last_window_index == 5

    def test_missing_reference_accuracy_is_skipped_not_counted(self, session):
        model = make_model(session, calibrated=False)
        make_calibration(session, model=model, reference_accuracy=None)
        stream = make_stream(session, model=model)
        rule = rule_for(session, stream, "drop_below_reference", 1)

        estimate = make_estimate(session, stream=stream, window_index=0, estimated_accuracy=0.1)
        assert evaluate_alerts(session, estimate) == []
        rule = fresh(session, rule)
        assert (rule.state, rule.streak, rule.last_value) == ("ok", 0, None)

    def test_missing_embedding_keeps_the_streak(self, session):
        stream = make_stream(session)
        rule = rule_for(session, stream, "embedding_above", 2)
        feed = Windows(session, stream, "embedding_above")
        feed.send("breach")
        assert feed.send("clean", embedding={"frechet": None}) == []
        assert fresh(session, rule).streak == 1
        assert [c.state for c in feed.run("breach")] == ["firing"]

    def test_reference_is_the_latest_succeeded_calibration(self, session):
        model = make_model(session)  # reference 0.9
        make_calibration(session, model=model, reference_accuracy=0.99)
        make_calibration(session, model=model, state="failed", reference_accuracy=0.5)
        stream = make_stream(session, model=model)
        rule_for(session, stream, "drop_below_reference", 1, threshold=5.0)
        estimate = make_estimate(session, stream=stream, window_index=0, estimated_accuracy=0.9)
        (change,) = evaluate_alerts(session, estimate)
        assert change.value == pytest.approx(9.0)

    def test_only_the_estimates_stream_is_evaluated(self, session):
        stream, other = make_stream(session), make_stream(session)
        mine = rule_for(session, stream, "accuracy_below", 1)
        theirs = rule_for(session, other, "accuracy_below", 1)
        estimate = make_estimate(session, stream=stream, window_index=0, estimated_accuracy=0.1)
        assert [c.rule_id for c in evaluate_alerts(session, estimate)] == [mine.id]
        assert fresh(session, theirs).last_window_index is None

    def test_each_change_is_stored_with_its_estimate(self, session):
        stream = make_stream(session)
        rule = rule_for(session, stream, "accuracy_below", 1)
        feed = Windows(session, stream, "accuracy_below")
        changes = feed.run("breach", "clean")

        events = session.scalars(
            select(AlertEvent)
            .where(AlertEvent.stream_id == stream.id)
            .order_by(AlertEvent.window_index)
        ).all()
        assert [(e.state, e.window_index, e.rule_id, e.rule_name) for e in events] == [
            ("firing", 0, rule.id, rule.name),
            ("resolved", 1, rule.id, rule.name),
        ]
        estimates = {
            e.window_index: e
            for e in session.scalars(select(Estimate).where(Estimate.stream_id == stream.id))
        }
        for event, change in zip(events, changes, strict=True):
            assert event.id == change.event_id
            assert event.estimate_id == estimates[event.window_index].id
            assert event.value == estimates[event.window_index].estimated_accuracy
            assert event.threshold == 0.8
            assert rule.name in event.message and f"window {event.window_index}" in event.message


# --- the API ------------------------------------------------------------------------------------


class TestAlertRulesApi:
    def test_admin_creates_and_read_lists(self, client, session, admin_token, read_token):
        stream = make_stream(session)
        body = {"name": "floor", "kind": "accuracy_below", "threshold": 0.8, "windows": 3}
        response = client.post(
            f"/v1/streams/{stream.id}/alert-rules", json=body, headers=bearer(admin_token)
        )
        assert response.status_code == 201, response.text
        created = response.json()
        assert response.headers["Location"] == (
            f"/v1/streams/{stream.id}/alert-rules/{created['id']}"
        )
        assert created | body == created
        assert (created["state"], created["streak"], created["webhook_url"]) == ("ok", 0, None)

        listed = client.get(f"/v1/streams/{stream.id}/alert-rules", headers=bearer(read_token))
        assert [r["id"] for r in listed.json()["items"]] == [created["id"]]
        one = client.get(response.headers["Location"], headers=bearer(read_token))
        assert one.json() == created

    def test_read_and_ingest_keys_may_not_write(self, client, session, read_token, ingest_token):
        stream = make_stream(session)
        body = {"name": "floor", "kind": "accuracy_below", "threshold": 0.8}
        for token in (read_token, ingest_token):
            response = client.post(
                f"/v1/streams/{stream.id}/alert-rules", json=body, headers=bearer(token)
            )
            assert response.status_code == 403
            assert response.json()["code"] == "permission-denied"

    @pytest.mark.parametrize(
        ("body", "reason"),
        [
            ({"kind": "accuracy_below", "threshold": 80}, "ratio in (0, 1]"),
            ({"kind": "drop_below_reference", "threshold": 0}, "percentage points"),
            ({"kind": "embedding_above", "threshold": 3}, "needs embedding_kind"),
            (
                {"kind": "accuracy_below", "threshold": 0.8, "embedding_kind": "frechet"},
                "embedding_above only",
            ),
        ],
    )
    def test_refuses_meaningless_rules(self, client, session, admin_token, body, reason):
        stream = make_stream(session)
        response = client.post(
            f"/v1/streams/{stream.id}/alert-rules",
            json={"name": "r", **body},
            headers=bearer(admin_token),
        )
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "invalid-alert-rule"
        assert reason in response.json()["detail"]

    def test_duplicate_name_is_409_and_unknown_stream_404(self, client, session, admin_token):
        stream = make_stream(session)
        make_alert_rule(session, stream=stream, name="floor")
        body = {"name": "floor", "kind": "accuracy_below", "threshold": 0.7}
        response = client.post(
            f"/v1/streams/{stream.id}/alert-rules", json=body, headers=bearer(admin_token)
        )
        assert (response.status_code, response.json()["code"]) == (409, "alert-rule-exists")
        missing = client.post(
            "/v1/streams/00000000-0000-0000-0000-000000000001/alert-rules",
            json=body,
            headers=bearer(admin_token),
        )
        assert (missing.status_code, missing.json()["code"]) == (404, "stream-not-found")

    def test_patch_restarts_the_streak_and_clears_the_webhook(self, client, session, admin_token):
        stream = make_stream(session)
        rule = make_alert_rule(session, stream=stream, streak=1, webhook_url="http://hook/x")
        url = f"/v1/streams/{stream.id}/alert-rules/{rule.id}"
        response = client.patch(
            url, json={"threshold": 0.7, "webhook_url": None}, headers=bearer(admin_token)
        )
        assert response.status_code == 200, response.text
        assert (response.json()["threshold"], response.json()["streak"]) == (0.7, 0)
        assert response.json()["webhook_url"] is None
        bad = client.patch(url, json={"threshold": 7}, headers=bearer(admin_token))
        assert bad.status_code == 422

    def test_delete_keeps_the_history(self, client, session, admin_token, read_token):
        stream = make_stream(session)
        rule = rule_for(session, stream, "accuracy_below", 1, name="floor")
        Windows(session, stream, "accuracy_below").send("breach")
        url = f"/v1/streams/{stream.id}/alert-rules/{rule.id}"
        assert client.delete(url, headers=bearer(admin_token)).status_code == 204
        assert client.get(url, headers=bearer(read_token)).status_code == 404

        (event,) = client.get(f"/v1/streams/{stream.id}/alerts", headers=bearer(read_token)).json()[
            "items"
        ]
        assert (event["rule_id"], event["rule_name"], event["state"]) == (None, "floor", "firing")


class TestAlertHistoryApi:
    def test_newest_first_with_keyset_pages(self, client, session, read_token):
        stream = make_stream(session)
        rule_for(session, stream, "accuracy_below", 1)
        feed = Windows(session, stream, "accuracy_below")
        base = utcnow()
        for i, which in enumerate(("breach", "clean", "breach", "clean", "breach")):
            (change,) = feed.send(which)
            session.get(AlertEvent, change.event_id).created_at = base + timedelta(seconds=i)
        session.flush()

        seen, cursor = [], None
        while True:
            params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
            page = client.get(
                f"/v1/streams/{stream.id}/alerts", params=params, headers=bearer(read_token)
            ).json()
            seen.extend((e["window_index"], e["state"]) for e in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == [
            (4, "firing"),
            (3, "resolved"),
            (2, "firing"),
            (1, "resolved"),
            (0, "firing"),
        ]

    def test_filters_by_rule_and_needs_a_key(self, client, session, read_token):
        stream = make_stream(session)
        floor = rule_for(session, stream, "accuracy_below", 1)
        rule_for(session, stream, "embedding_above", 1)
        Windows(session, stream, "accuracy_below").send(
            "breach", embedding={"frechet": 99.0}
        )  # both rules fire on this window
        url = f"/v1/streams/{stream.id}/alerts"
        assert len(client.get(url, headers=bearer(read_token)).json()["items"]) == 2
        only = client.get(url, params={"rule_id": str(floor.id)}, headers=bearer(read_token))
        assert [e["rule_name"] for e in only.json()["items"]] == [floor.name]
        assert client.get(url).status_code == 401


# --- webhooks -----------------------------------------------------------------------------------


@dataclass
class Receiver:
    """A local HTTP endpoint: records every POST and answers the scripted statuses (then 200)."""

    url: str = ""
    answers: deque[int] = field(default_factory=deque)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def bodies(self) -> list[dict[str, Any]]:
        return [r["body"] for r in self.requests]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["Content-Length"]))
            receiver.requests.append(
                {"path": self.path, "headers": dict(self.headers), "raw": body,
                 "body": json.loads(body)}
            )  # fmt: skip
            status = receiver.answers.popleft() if receiver.answers else 200
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/flipwatch"
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def outbox_sessions(session: Session) -> sessionmaker[Session]:
    """Sessions on the test's connection: the deliverer's commits stay inside the rollback."""
    return sessionmaker(
        bind=session.connection(), join_transaction_mode="create_savepoint", expire_on_commit=False
    )


@pytest.fixture
def hook_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"webhook_backoff_seconds": 30.0, "webhook_max_attempts": 3, "webhook_secret": None}
    )


def notifications(session: Session, stream: Stream) -> list[WebhookNotification]:
    session.expire_all()
    return list(
        session.scalars(
            select(WebhookNotification)
            .join(AlertEvent, AlertEvent.id == WebhookNotification.event_id)
            .where(AlertEvent.stream_id == stream.id)
            .order_by(AlertEvent.window_index)
        )
    )


class TestWebhooks:
    def test_each_state_change_is_delivered_exactly_once(
        self, session, receiver, outbox_sessions, hook_settings
    ):
        stream = make_stream(session, name="cams")
        rule = rule_for(session, stream, "accuracy_below", 2, webhook_url=receiver.url)
        changes = Windows(session, stream, "accuracy_below").run(
            "breach", "breach", "clean", "clean"
        )
        assert [c.state for c in changes] == ["firing", "resolved"]
        assert all(c.notification_id for c in changes)

        results = deliver_due(outbox_sessions, settings=hook_settings)
        assert [r.delivered for r in results] == [True, True]
        assert deliver_due(outbox_sessions, settings=hook_settings) == []
        later = utcnow() + timedelta(days=1)
        assert deliver_due(outbox_sessions, settings=hook_settings, now=later) == []

        assert [(b["state"], b["estimate"]["window_index"]) for b in receiver.bodies()] == [
            ("firing", 1),
            ("resolved", 3),
        ]
        first = receiver.requests[0]
        assert first["path"] == "/hooks/flipwatch"
        assert first["body"]["event_id"] == str(changes[0].event_id)
        assert first["body"]["stream"]["name"] == "cams"
        assert first["body"]["rule"] | {"name": rule.name, "windows": 2} == first["body"]["rule"]
        assert first["headers"]["X-Flipwatch-Delivery"] == str(changes[0].notification_id)
        assert first["headers"]["Content-Type"] == "application/json"
        assert "X-Flipwatch-Signature" not in first["headers"]
        rows = notifications(session, stream)
        assert [(n.state, n.attempts, n.last_status) for n in rows] == [("delivered", 1, 200)] * 2
        assert all(n.delivered_at is not None for n in rows)

    def test_a_500_is_retried_after_backoff_and_then_delivered_once(
        self, session, receiver, outbox_sessions, hook_settings
    ):
        stream = make_stream(session)
        rule_for(session, stream, "accuracy_below", 1, webhook_url=receiver.url)
        (change,) = Windows(session, stream, "accuracy_below").run("breach")
        receiver.answers.append(500)
        start = utcnow()

        (first,) = deliver_due(outbox_sessions, settings=hook_settings, now=start)
        assert (first.delivered, first.status, first.attempt) == (False, 500, 1)
        (row,) = notifications(session, stream)
        assert (row.state, row.attempts, row.last_status) == ("pending", 1, 500)
        assert "HTTP 500" in row.last_error
        retry_at = start + timedelta(seconds=backoff_seconds(hook_settings, 1))
        assert row.next_attempt_at == retry_at

        # not due before the backoff has passed
        assert deliver_due(outbox_sessions, settings=hook_settings, now=start) == []
        (second,) = deliver_due(outbox_sessions, settings=hook_settings, now=retry_at)
        assert (second.delivered, second.status, second.attempt) == (True, 200, 2)
        assert deliver_due(outbox_sessions, settings=hook_settings, now=retry_at) == []

        assert len(receiver.requests) == 2
        assert {r["headers"]["X-Flipwatch-Delivery"] for r in receiver.requests} == {
            str(change.notification_id)
        }
        assert [r["headers"]["X-Flipwatch-Attempt"] for r in receiver.requests] == ["1", "2"]
        (row,) = notifications(session, stream)
        assert (row.state, row.attempts, row.last_error) == ("delivered", 2, None)

    def test_gives_up_after_max_attempts(self, session, receiver, outbox_sessions, hook_settings):
        stream = make_stream(session)
        rule_for(session, stream, "accuracy_below", 1, webhook_url=receiver.url)
        Windows(session, stream, "accuracy_below").run("breach")
        receiver.answers.extend([503] * 10)
        now = utcnow()
        for _ in range(5):
            deliver_due(outbox_sessions, settings=hook_settings, now=now)
            now += timedelta(hours=1)
        assert len(receiver.requests) == hook_settings.webhook_max_attempts
        (row,) = notifications(session, stream)
        assert (row.state, row.attempts, row.last_status) == ("failed", 3, 503)

    def test_unreachable_receiver_is_retried(self, session, outbox_sessions, hook_settings):
        stream = make_stream(session)
        rule_for(session, stream, "accuracy_below", 1, webhook_url="http://127.0.0.1:1/none")
        Windows(session, stream, "accuracy_below").run("breach")
        (result,) = deliver_due(outbox_sessions, settings=hook_settings)
        assert (result.delivered, result.status) == (False, None)
        (row,) = notifications(session, stream)
        assert row.state == "pending" and "ConnectError" in row.last_error

    def test_signs_the_body_when_a_secret_is_set(
        self, session, receiver, outbox_sessions, hook_settings
    ):
        secret = "s" * 40
        stream = make_stream(session)
        rule_for(session, stream, "accuracy_below", 1, webhook_url=receiver.url)
        Windows(session, stream, "accuracy_below").run("breach")
        settings = hook_settings.model_copy(update={"webhook_secret": secret})
        deliver_due(outbox_sessions, settings=settings)
        (request,) = receiver.requests
        assert request["headers"]["X-Flipwatch-Signature"] == sign(secret, request["raw"])

    def test_rules_without_a_webhook_queue_nothing(self, session):
        stream = make_stream(session)
        rule_for(session, stream, "accuracy_below", 1)
        (change,) = Windows(session, stream, "accuracy_below").run("breach")
        assert change.notification_id is None
        assert notifications(session, stream) == []


@pytest.fixture
def committed(engine: Engine) -> Iterator[Callable[[Session], None]]:
    """For the one test that needs another thread to see its rows: they are committed, and the
    rows of the streams handed to `track` are deleted afterwards."""
    streams: list[Stream] = []
    yield streams.append
    with make_sessionmaker(engine)() as session:
        for stream in streams:
            events = select(AlertEvent.id).where(AlertEvent.stream_id == stream.id)
            session.execute(
                delete(WebhookNotification).where(WebhookNotification.event_id.in_(events))
            )
            session.execute(delete(AlertEvent).where(AlertEvent.stream_id == stream.id))
            session.execute(delete(AlertRule).where(AlertRule.stream_id == stream.id))
            session.execute(delete(Estimate).where(Estimate.stream_id == stream.id))
            session.execute(delete(Stream).where(Stream.id == stream.id))
            session.execute(delete(Calibration).where(Calibration.model_id == stream.model_id))
            session.execute(delete(Model).where(Model.id == stream.model_id))
        session.commit()


def test_the_api_process_delivers_in_the_background(settings, engine, receiver, committed):
    """create_app's lifespan runs the deliverer thread: a committed change reaches the receiver."""
    factory = make_sessionmaker(engine)
    with factory() as session:
        stream = make_stream(session)
        committed(stream)
        rule_for(session, stream, "accuracy_below", 1, webhook_url=receiver.url)
        (change,) = Windows(session, stream, "accuracy_below").run("breach")
        session.commit()

    app = create_app(
        settings.model_copy(update={"webhook_poll_seconds": 0.05}), session_factory=factory
    )
    with TestClient(app):
        deadline = time.monotonic() + 10
        while not receiver.requests and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)  # a second delivery would have happened by now
    assert [r["body"]["event_id"] for r in receiver.requests] == [str(change.event_id)]
    with factory() as session:
        row = session.get(WebhookNotification, change.notification_id)
        assert (row.state, row.attempts) == ("delivered", 1)
