"""Alert rules of a stream (the API's create, list, read, change, delete) and their history.

What each kind of rule measures, and how its state changes, is in `evaluation.py`.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from flipwatch.service.alert.targets import check_webhook_target
from flipwatch.service.core.errors import AlertRuleExists, AlertRuleNotFound, InvalidAlertRule
from flipwatch.service.core.pagination import Cursor, keyset_page
from flipwatch.service.core.settings import Settings
from flipwatch.service.core.tables import EMBEDDING_KINDS, AlertEvent, AlertRule, utcnow
from flipwatch.service.stream.service import get_stream


def check_rule(kind: str, threshold: float, embedding_kind: str | None) -> None:
    """Refuse thresholds that cannot mean what the kind measures (a 422 naming the fix)."""
    if not math.isfinite(threshold):
        raise InvalidAlertRule("threshold must be a finite number")
    if kind == "accuracy_below" and not 0 < threshold <= 1:
        raise InvalidAlertRule(
            f"accuracy_below takes an accuracy ratio in (0, 1], got {threshold}; e.g. 0.8"
        )
    if kind == "drop_below_reference" and not 0 < threshold <= 100:
        raise InvalidAlertRule(
            f"drop_below_reference takes percentage points in (0, 100], got {threshold}; "
            "e.g. 5 fires when the estimate is more than 5 points below the reference accuracy"
        )
    if kind == "embedding_above":
        if embedding_kind not in EMBEDDING_KINDS:
            raise InvalidAlertRule(
                f"embedding_above needs embedding_kind, one of {', '.join(EMBEDDING_KINDS)}"
            )
    elif embedding_kind is not None:
        raise InvalidAlertRule(f"embedding_kind applies to kind embedding_above only, not {kind}")


def create_alert_rule(
    session: Session,
    *,
    stream_id: uuid.UUID,
    name: str,
    kind: str,
    threshold: float,
    embedding_kind: str | None,
    windows: int,
    webhook_url: str | None,
    settings: Settings,
) -> AlertRule:
    get_stream(session, stream_id)
    check_rule(kind, threshold, embedding_kind)
    if webhook_url is not None:
        check_webhook_target(webhook_url, settings)
    _check_name_free(session, stream_id=stream_id, name=name)
    now = utcnow()
    rule = AlertRule(
        id=uuid.uuid4(),
        stream_id=stream_id,
        name=name,
        kind=kind,
        threshold=threshold,
        embedding_kind=embedding_kind,
        windows=windows,
        webhook_url=webhook_url,
        state="ok",
        streak=0,
        created_at=now,
        updated_at=now,
    )
    session.add(rule)
    session.flush()
    return rule


def list_alert_rules(session: Session, *, stream_id: uuid.UUID) -> list[AlertRule]:
    get_stream(session, stream_id)
    return list(
        session.scalars(
            select(AlertRule)
            .where(AlertRule.stream_id == stream_id)
            .order_by(AlertRule.created_at, AlertRule.id)
        )
    )


def get_alert_rule(session: Session, *, stream_id: uuid.UUID, rule_id: uuid.UUID) -> AlertRule:
    rule = session.get(AlertRule, rule_id)
    if rule is None or rule.stream_id != stream_id:
        get_stream(session, stream_id)
        raise AlertRuleNotFound(
            f"stream {stream_id} has no alert rule {rule_id}; list them with "
            f"GET /v1/streams/{stream_id}/alert-rules"
        )
    return rule


def update_alert_rule(
    session: Session,
    *,
    stream_id: uuid.UUID,
    rule_id: uuid.UUID,
    changes: dict[str, Any],
    settings: Settings,
) -> AlertRule:
    """Apply `changes` (fields the client sent). A new condition restarts the streak but keeps
    the state: a firing rule stays firing until K windows are clean under the new condition."""
    rule = get_alert_rule(session, stream_id=stream_id, rule_id=rule_id)
    if changes.get("name") not in (None, rule.name):
        _check_name_free(session, stream_id=stream_id, name=changes["name"])
        rule.name = changes["name"]
    threshold = changes.get("threshold")
    threshold = rule.threshold if threshold is None else threshold
    embedding_kind = changes.get("embedding_kind") or rule.embedding_kind
    windows = changes.get("windows") or rule.windows
    check_rule(rule.kind, threshold, embedding_kind)
    if (threshold, embedding_kind, windows) != (rule.threshold, rule.embedding_kind, rule.windows):
        rule.threshold, rule.embedding_kind, rule.windows = threshold, embedding_kind, windows
        rule.streak = 0
    if "webhook_url" in changes:
        if changes["webhook_url"] is not None:
            check_webhook_target(changes["webhook_url"], settings)
        rule.webhook_url = changes["webhook_url"]
    rule.updated_at = utcnow()
    session.flush()
    return rule


def delete_alert_rule(session: Session, *, stream_id: uuid.UUID, rule_id: uuid.UUID) -> None:
    """Delete the rule; its history stays (events keep the rule's name, rule_id becomes null)."""
    rule = get_alert_rule(session, stream_id=stream_id, rule_id=rule_id)
    session.delete(rule)
    session.flush()


def list_alert_events(
    session: Session,
    *,
    stream_id: uuid.UUID,
    limit: int,
    cursor: Cursor | None,
    rule_id: uuid.UUID | None = None,
) -> tuple[list[AlertEvent], Cursor | None]:
    """A stream's state changes, newest first (keyset on created_at, id)."""
    get_stream(session, stream_id)
    stmt = select(AlertEvent).where(AlertEvent.stream_id == stream_id)
    if rule_id is not None:
        stmt = stmt.where(AlertEvent.rule_id == rule_id)
    return keyset_page(session, stmt, AlertEvent, limit=limit, cursor=cursor)


def _check_name_free(session: Session, *, stream_id: uuid.UUID, name: str) -> None:
    taken = session.scalar(
        select(AlertRule.id).where(AlertRule.stream_id == stream_id, AlertRule.name == name)
    )
    if taken is not None:
        raise AlertRuleExists(
            f"stream {stream_id} already has an alert rule named {name!r}; pick another name "
            "or change that rule with PATCH"
        )
