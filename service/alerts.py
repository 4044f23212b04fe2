"""Drift alerts: per-stream rules, evaluated with hysteresis on every new estimate.

Three kinds of rule, each measuring one value on an estimate:
- `accuracy_below`: estimated accuracy (a ratio); breaching when below `threshold`.
- `drop_below_reference`: (reference accuracy - estimated accuracy) in percentage points, the
  reference being the model's latest succeeded calibration; breaching when above `threshold`.
- `embedding_above`: `result["embedding"][embedding_kind]`; breaching when above `threshold`.

Hysteresis: a rule that is `ok` fires after `windows` (K) consecutive breaching windows; a firing
rule resolves after K consecutive clean ones. A window whose value is missing (no calibration
reference, an embedding the estimator could not compute) is skipped: it is evidence neither way,
so the streak is kept. Each change is stored as an AlertEvent, and as a webhook outbox row when
the rule has a webhook URL (service/webhooks.py delivers it after commit).

The worker calls `evaluate_alerts(session, estimate)` right after flushing an Estimate row, in
the same transaction: the estimate, the rules' new state and the events commit together.
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from flipwatch.service.calibrations import latest_calibration
from flipwatch.service.errors import AlertRuleExists, AlertRuleNotFound, InvalidAlertRule
from flipwatch.service.models import (
    EMBEDDING_KINDS,
    AlertEvent,
    AlertRule,
    Estimate,
    Model,
    Stream,
    utcnow,
)
from flipwatch.service.pagination import Cursor, keyset_page
from flipwatch.service.streams import get_stream
from flipwatch.service.webhooks import enqueue_notification

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlertChange:
    """One state change made by `evaluate_alerts` (already flushed as `event_id`)."""

    event_id: uuid.UUID
    rule_id: uuid.UUID
    rule_name: str
    kind: str
    stream_id: uuid.UUID
    state: str  # "firing" or "resolved"
    window_index: int
    estimate_id: uuid.UUID
    value: float
    threshold: float
    notification_id: uuid.UUID | None


# --- rules (the API's CRUD) ---------------------------------------------------------------------


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
) -> AlertRule:
    get_stream(session, stream_id)
    check_rule(kind, threshold, embedding_kind)
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
    session: Session, *, stream_id: uuid.UUID, rule_id: uuid.UUID, changes: dict[str, Any]
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


# --- evaluation (the worker's call) -------------------------------------------------------------


def evaluate_alerts(session: Session, estimate: Estimate) -> list[AlertChange]:
    """Count `estimate` against every rule of its stream; return the state changes it caused.

    Call right after the Estimate row is flushed, in the same transaction, and commit after.
    Rules are locked (FOR UPDATE) so concurrent estimates of one stream count one at a time. An
    estimate whose window is not newer than a rule's last evaluated window (a redelivery, or a
    late window) does not count for that rule, so calling this twice changes nothing. Only
    flushes; never commits.
    """
    rules = list(
        session.scalars(
            select(AlertRule)
            .where(AlertRule.stream_id == estimate.stream_id)
            .order_by(AlertRule.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    )
    if not rules:
        return []
    reference = None
    if any(rule.kind == "drop_below_reference" for rule in rules):
        reference = _reference_accuracy(session, estimate.model_id)
    changes: list[AlertChange] = []
    for rule in rules:
        if rule.last_window_index is not None and estimate.window_index <= rule.last_window_index:
            continue
        value = measure(rule, estimate, reference)
        rule.last_window_index = estimate.window_index
        rule.last_value = value
        if value is None:
            continue
        change = _step(rule, value)
        if change is not None:
            changes.append(_record(session, rule, estimate, state=change, value=value))
    session.flush()
    return changes


def measure(rule: AlertRule, estimate: Estimate, reference_accuracy: float | None) -> float | None:
    """The value `rule` watches on `estimate`, or None when the estimate does not have it."""
    if rule.kind == "accuracy_below":
        return float(estimate.estimated_accuracy)
    if rule.kind == "drop_below_reference":
        if reference_accuracy is None:
            return None
        return round((reference_accuracy - float(estimate.estimated_accuracy)) * 100, 9)
    embedding = (estimate.result or {}).get("embedding") or {}
    value = embedding.get(rule.embedding_kind or "")
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def breaches(rule: AlertRule, value: float) -> bool:
    if rule.kind == "accuracy_below":
        return value < rule.threshold
    return value > rule.threshold


def _step(rule: AlertRule, value: float) -> str | None:
    """Advance the hysteresis; returns "firing" or "resolved" when the state flips."""
    toward_change = breaches(rule, value) == (rule.state == "ok")
    rule.streak = rule.streak + 1 if toward_change else 0
    if rule.streak < rule.windows:
        return None
    rule.streak = 0
    rule.state = "firing" if rule.state == "ok" else "ok"
    rule.changed_at = utcnow()
    return "firing" if rule.state == "firing" else "resolved"


def _reference_accuracy(session: Session, model_id: uuid.UUID) -> float | None:
    calibration = latest_calibration(session, model_id)
    return calibration.reference_accuracy if calibration is not None else None


def _record(
    session: Session, rule: AlertRule, estimate: Estimate, *, state: str, value: float
) -> AlertChange:
    verb = "fires" if state == "firing" else "resolves"
    streak = f"{rule.windows} consecutive {'breaching' if state == 'firing' else 'clean'} windows"
    message = (
        f"rule {rule.name!r} ({_condition(rule)}) {verb} at window {estimate.window_index} "
        f"after {streak}; value {value:.4g}"
    )
    event = AlertEvent(
        id=uuid.uuid4(),
        stream_id=rule.stream_id,
        rule_id=rule.id,
        rule_name=rule.name,
        kind=rule.kind,
        state=state,
        estimate_id=estimate.id,
        window_index=estimate.window_index,
        value=value,
        threshold=rule.threshold,
        message=message,
        created_at=rule.changed_at or utcnow(),
    )
    session.add(event)
    session.flush()
    notification_id = None
    if rule.webhook_url:
        payload = webhook_payload(session, rule, event, estimate)
        notification_id = enqueue_notification(
            session, event_id=event.id, url=rule.webhook_url, payload=payload
        ).id
    log.info("stream %s: %s", rule.stream_id, message)
    return AlertChange(
        event_id=event.id,
        rule_id=rule.id,
        rule_name=rule.name,
        kind=rule.kind,
        stream_id=rule.stream_id,
        state=state,
        window_index=estimate.window_index,
        estimate_id=estimate.id,
        value=value,
        threshold=rule.threshold,
        notification_id=notification_id,
    )


def _condition(rule: AlertRule) -> str:
    if rule.kind == "accuracy_below":
        return f"estimated accuracy < {rule.threshold:g}"
    if rule.kind == "drop_below_reference":
        return f"more than {rule.threshold:g} points below the reference accuracy"
    return f"embedding {rule.embedding_kind} > {rule.threshold:g}"


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
