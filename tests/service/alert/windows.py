"""Alert test helpers: estimates fed window by window to `evaluate_alerts`, per rule kind."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from flipwatch.service.alert.evaluation import evaluate_alerts
from flipwatch.service.core.tables import (
    AlertRule,
    Stream,
)
from tests.factories import (
    estimate_result,
    make_alert_rule,
    make_estimate,
)

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
