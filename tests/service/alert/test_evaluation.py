"""Alert evaluation: hysteresis per rule kind (fires exactly at K breaching windows, resolves
exactly after K clean ones), skipped values, and the events stored for each change."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from flipwatch.service.alert.evaluation import evaluate_alerts
from flipwatch.service.core.tables import (
    AlertEvent,
    Estimate,
)
from tests.factories import (
    make_calibration,
    make_estimate,
    make_model,
    make_stream,
)
from tests.service.alert.windows import KINDS, Windows, fresh, rule_for

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
