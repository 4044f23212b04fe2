"""Alert webhooks through an outbox: a row per state change, delivered after commit, with retries.

`enqueue_notification` adds the row in the transaction that records the alert event, so a change
is notified if and only if it committed. `deliver_due` sends what is due: it first *claims* a row
with a conditional UPDATE that moves `next_attempt_at` forward by a lease (atomic on Postgres and
SQLite, so two API replicas, or the API and a worker, never send one row at the same time), commits
the claim, POSTs, then marks the row delivered or schedules the retry with exponential backoff.
A 2xx answer marks it delivered and it is never sent again; after `webhook_max_attempts` failures
it is `failed`. Only a process dying between the POST and the mark re-sends a row (once its lease
ends), so receivers should dedupe on the `X-Flipwatch-Delivery` header (the notification id).

`WebhookDeliverer` runs `deliver_due` every `webhook_poll_seconds` in a daemon thread; the API's
lifespan starts one, and a worker process may start its own.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from flipwatch.service.alert.targets import check_webhook_target
from flipwatch.service.core.errors import InvalidAlertRule
from flipwatch.service.core.settings import Settings
from flipwatch.service.core.tables import (
    AlertEvent,
    AlertRule,
    Estimate,
    Model,
    Stream,
    WebhookNotification,
    utcnow,
)

log = logging.getLogger(__name__)

USER_AGENT = "flipwatch-webhooks/1"
MAX_ERROR_CHARS = 1000


def enqueue_notification(
    session: Session, *, event_id: uuid.UUID, url: str, payload: dict[str, Any]
) -> WebhookNotification:
    """Add the outbox row for one alert event (due now); flushed, not committed."""
    notification = WebhookNotification(
        id=uuid.uuid4(),
        event_id=event_id,
        url=url,
        payload=payload,
        state="pending",
        attempts=0,
        next_attempt_at=utcnow(),
    )
    session.add(notification)
    session.flush()
    return notification


def webhook_payload(
    session: Session, rule: AlertRule, event: AlertEvent, estimate: Estimate
) -> dict[str, Any]:
    """The JSON a webhook receives: what changed, on which stream and model, and why."""
    stream = session.get(Stream, rule.stream_id)
    model = session.get(Model, estimate.model_id)
    return {
        "event_id": str(event.id),
        "state": event.state,
        "message": event.message,
        "at": event.created_at.isoformat(),
        "stream": {"id": str(rule.stream_id), "name": stream.name if stream else None},
        "model": {
            "id": str(estimate.model_id),
            "name": model.name if model else None,
            "version": estimate.model_version,
        },
        "rule": {
            "id": str(rule.id),
            "name": rule.name,
            "kind": rule.kind,
            "threshold": rule.threshold,
            "embedding_kind": rule.embedding_kind,
            "windows": rule.windows,
        },
        "estimate": {
            "id": str(estimate.id),
            "window_index": estimate.window_index,
            "estimated_accuracy": estimate.estimated_accuracy,
        },
        "value": event.value,
        "links": {
            "alerts": f"/v1/streams/{rule.stream_id}/alerts",
            "estimate": f"/v1/estimates/{estimate.id}",
        },
    }


@dataclass(frozen=True)
class DeliveryResult:
    notification_id: uuid.UUID
    attempt: int
    delivered: bool
    status: int | None
    error: str | None


def backoff_seconds(settings: Settings, attempt: int) -> float:
    """Delay after failed attempt number `attempt` (1-based): base * 2^(attempt-1), capped."""
    delay = settings.webhook_backoff_seconds * 2 ** (attempt - 1)
    return min(delay, settings.webhook_backoff_max_seconds)


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def deliver_due(
    session_factory: Callable[[], Session],
    *,
    settings: Settings,
    client: httpx.Client | None = None,
    now: datetime | None = None,
    limit: int = 50,
) -> list[DeliveryResult]:
    """Send every pending notification due at `now` (default: the current time), oldest first.

    Each row is claimed, sent and marked in its own short transactions; returns what happened.
    """
    now = now or utcnow()
    with session_factory() as session:
        due = list(
            session.scalars(
                select(WebhookNotification.id)
                .where(
                    WebhookNotification.state == "pending",
                    WebhookNotification.next_attempt_at <= now,
                )
                .order_by(WebhookNotification.created_at, WebhookNotification.id)
                .limit(limit)
            )
        )
    if not due:
        return []
    own_client = client is None
    client = client or httpx.Client(timeout=settings.webhook_timeout_seconds)
    try:
        results = []
        for notification_id in due:
            result = _deliver_one(session_factory, notification_id, settings, client, now)
            if result is not None:
                results.append(result)
        return results
    finally:
        if own_client:
            client.close()


def _deliver_one(
    session_factory: Callable[[], Session],
    notification_id: uuid.UUID,
    settings: Settings,
    client: httpx.Client,
    now: datetime,
) -> DeliveryResult | None:
    lease = timedelta(seconds=settings.webhook_timeout_seconds + 30)
    with session_factory() as session:
        claimed = session.execute(
            update(WebhookNotification)
            .where(
                WebhookNotification.id == notification_id,
                WebhookNotification.state == "pending",
                WebhookNotification.next_attempt_at <= now,
            )
            .values(
                attempts=WebhookNotification.attempts + 1,
                next_attempt_at=now + lease,
            )
        ).rowcount
        if not claimed:
            session.rollback()
            return None  # another deliverer took it, or it is no longer due
        notification = session.get(WebhookNotification, notification_id, populate_existing=True)
        assert notification is not None
        url, payload, attempt = notification.url, notification.payload, notification.attempts
        session.commit()

    try:
        check_webhook_target(url, settings)  # again: DNS answers change after the rule was saved
    except InvalidAlertRule as exc:
        status, error = None, f"target refused: {exc.detail}"[:MAX_ERROR_CHARS]
    else:
        status, error = _post(client, url, payload, settings, notification_id, attempt)
    delivered = status is not None and 200 <= status < 300
    with session_factory() as session:
        values: dict[str, Any] = {"last_status": status, "last_error": error}
        if delivered:
            values |= {"state": "delivered", "delivered_at": utcnow(), "last_error": None}
        elif attempt >= settings.webhook_max_attempts:
            values |= {"state": "failed"}
        else:
            values |= {
                "next_attempt_at": now + timedelta(seconds=backoff_seconds(settings, attempt))
            }
        session.execute(
            update(WebhookNotification)
            .where(WebhookNotification.id == notification_id)
            .values(**values)
        )
        session.commit()
    if not delivered:
        log.warning(
            "webhook %s to %s: attempt %d of %d failed: %s",
            notification_id,
            url,
            attempt,
            settings.webhook_max_attempts,
            error,
        )
    return DeliveryResult(notification_id, attempt, delivered, status, error)


def _post(
    client: httpx.Client,
    url: str,
    payload: dict[str, Any],
    settings: Settings,
    notification_id: uuid.UUID,
    attempt: int,
) -> tuple[int | None, str | None]:
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Flipwatch-Delivery": str(notification_id),
        "X-Flipwatch-Attempt": str(attempt),
    }
    if settings.webhook_secret:
        headers["X-Flipwatch-Signature"] = sign(settings.webhook_secret, body)
    try:
        response = client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
    if 200 <= response.status_code < 300:
        return response.status_code, None
    return response.status_code, f"HTTP {response.status_code}: {response.text}"[:MAX_ERROR_CHARS]


class WebhookDeliverer:
    """A daemon thread that calls `deliver_due` every `webhook_poll_seconds` until stopped.

    `get_sessionmaker` returns the sessionmaker, or None while there is none yet
    (the API builds its engine in the lifespan).
    """

    def __init__(
        self,
        get_sessionmaker: Callable[[], sessionmaker[Session] | None],
        settings: Settings,
    ) -> None:
        self._get_sessionmaker = get_sessionmaker
        self._settings = settings
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="flipwatch-webhooks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        with httpx.Client(timeout=self._settings.webhook_timeout_seconds) as client:
            while not self._stop.is_set():
                factory = self._get_sessionmaker()
                if factory is not None:
                    try:
                        deliver_due(factory, settings=self._settings, client=client)
                    except Exception:  # noqa: BLE001 - keep the thread alive; the rows stay due
                        log.exception("webhook delivery pass failed; retrying at the next poll")
                self._stop.wait(self._settings.webhook_poll_seconds)
