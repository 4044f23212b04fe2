"""Drift alerts: per-stream rules, evaluated with hysteresis on every new estimate.

Three kinds of rule, each measuring one value on an estimate:
- `accuracy_below`: estimated accuracy (a ratio); breaching when below `threshold`.
- `drop_below_reference`: (reference accuracy - estimated accuracy) in percentage points, the
  reference being the model's latest succeeded calibration; breaching when above `threshold`.
- `embedding_above`: the stored `EstimateResult.embedding[embedding_kind]`; breaching when above
  `threshold`.

Hysteresis: a rule that is `ok` fires after `windows` (K) consecutive breaching windows; a firing
rule resolves after K consecutive clean ones. A window whose value is missing (no calibration
reference, an embedding the estimator could not compute) is skipped: it is evidence neither way,
so the streak is kept. Each change is stored as an AlertEvent, and as a webhook outbox row when
the rule has a webhook URL (`webhooks.py` delivers it after commit).

The worker calls `evaluate_alerts(session, estimate)` right after flushing an Estimate row, in
the same transaction: the estimate, the rules' new state and the events commit together.
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from flipwatch.service.alert.webhooks import enqueue_notification, webhook_payload
from flipwatch.service.calibration.service import latest_calibration
from flipwatch.service.core.tables import AlertEvent, AlertRule, Estimate, utcnow
from flipwatch.service.estimate.service import stored_result

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
    result = stored_result(estimate)
    value = result.embedding.get(rule.embedding_kind or "") if result is not None else None
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
