"""Alert webhooks: each state change delivered once to a local receiver, retried after a 500 with
backoff, given up after the last attempt, signed when a secret is set, sent by the API process."""

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

from flipwatch.service.alert.webhooks import backoff_seconds, deliver_due, sign
from flipwatch.service.core.db import make_sessionmaker
from flipwatch.service.core.settings import Settings
from flipwatch.service.core.tables import (
    AlertEvent,
    AlertRule,
    Calibration,
    Estimate,
    LatestEstimate,
    Model,
    Stream,
    WebhookNotification,
    utcnow,
)
from flipwatch.service.main import create_app
from tests.factories import (
    make_stream,
)
from tests.service.alert.windows import Windows, rule_for

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
        update={
            "webhook_backoff_seconds": 30.0,
            "webhook_max_attempts": 3,
            "webhook_secret": None,
            "webhook_allowed_networks": ["127.0.0.0/8"],  # the local receiver
        }
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
            session.execute(delete(LatestEstimate).where(LatestEstimate.stream_id == stream.id))
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
        settings.model_copy(
            update={"webhook_poll_seconds": 0.05, "webhook_allowed_networks": ["127.0.0.0/8"]}
        ),
        session_factory=factory,
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


def test_a_target_that_turned_private_is_not_posted_to(
    session, receiver, outbox_sessions, hook_settings
):
    """The rule was saved when its host was public; by delivery it resolves to loopback."""
    stream = make_stream(session)
    rule_for(session, stream, "accuracy_below", 1, webhook_url=receiver.url)
    Windows(session, stream, "accuracy_below").run("breach")
    session.commit()
    strict = hook_settings.model_copy(update={"webhook_allowed_networks": []})

    (result,) = deliver_due(outbox_sessions, settings=strict)

    assert not result.delivered and result.status is None
    assert "target refused" in (result.error or "") and "loopback" in (result.error or "")
    assert receiver.requests == []
