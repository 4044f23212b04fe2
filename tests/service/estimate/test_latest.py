"""latest_estimates stays exact: each estimate insert moves its stream's row (newest window wins,
newest time kept), a rolled-back insert leaves no trace, retention does not touch it, and it
always equals a rebuild from the estimates table."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from flipwatch.service.core.db import make_sessionmaker
from flipwatch.service.core.settings import Settings
from flipwatch.service.core.tables import LatestEstimate, Stream
from flipwatch.service.estimate.latest import latest_series, rebuild_latest_estimates
from flipwatch.service.retention.service import enforce_retention
from tests.conftest import truncate_all
from tests.factories import estimate_result, make_estimate, make_stream
from tests.service.retention.test_service import stream_of_five_batches

Row = tuple[Any, ...]


def rows(session: Session) -> dict[uuid.UUID, Row]:
    session.expire_all()
    return {
        r.stream_id: (
            r.estimate_id,
            r.window_index,
            r.estimated_accuracy,
            r.weighted_flips,
            r.series,
            r.last_estimate_at,
        )
        for r in session.scalars(select(LatestEstimate))
    }


def rebuilt(session: Session) -> dict[uuid.UUID, Row]:
    """The rows a rebuild from the estimates table gives (inside a savepoint, then undone)."""
    nested = session.begin_nested()
    rebuild_latest_estimates(session)
    found = rows(session)
    nested.rollback()
    return found


class TestLatestSeries:
    def test_keeps_the_finite_values_the_scrape_exports(self) -> None:
        result = estimate_result(
            0.84,
            baselines={"doc": 0.9, "ac": 0.95, "atc": None, "cot": math.nan},
            embedding={"frechet": 4.5, "silhouette": 0.31, "centroid_shift": None},
        ) | {"calibration_mae": 0.02, "used_fraction": 0.5}

        assert latest_series(result) == {
            "lower": 0.79,
            "upper": 0.89,
            "label_shift": 0.12,
            "baselines": {"ac": 0.95, "doc": 0.9},
            "embedding": {"frechet": 4.5, "silhouette": 0.31},
            "signal": "wf",
            "signal_value": 10.0,
            "calibration_mae": 0.02,
            "used_fraction": 0.5,
        }

    def test_a_result_that_does_not_parse_has_no_series(self) -> None:
        assert latest_series({}) is None
        assert latest_series(None) is None
        assert latest_series({"estimated_accuracy": 0.9}) is None


class TestRecordLatestEstimate:
    def test_each_insert_moves_the_row_to_the_newest_window(self, session: Session) -> None:
        stream = make_stream(session)
        for window in range(3):
            estimate = make_estimate(session, stream=stream, window_index=window)

        assert rows(session) == {
            stream.id: (
                estimate.id,
                2,
                estimate.estimated_accuracy,
                0.1,
                latest_series(estimate.result),
                estimate.created_at,
            )
        }
        assert rows(session) == rebuilt(session)

    def test_an_older_window_estimated_late_keeps_the_values_and_moves_the_time(
        self, session: Session
    ) -> None:
        stream = make_stream(session)
        newest = make_estimate(session, stream=stream, window_index=5, estimated_accuracy=0.7)
        late = make_estimate(
            session,
            stream=stream,
            window_index=3,
            estimated_accuracy=0.6,
            created_at=newest.created_at + timedelta(minutes=1),
        )

        (row,) = rows(session).values()
        assert row[:3] == (newest.id, 5, 0.7)
        assert row[5] == late.created_at
        assert rows(session) == rebuilt(session)

    def test_an_earlier_time_on_a_newer_window_keeps_the_newest_time(
        self, session: Session
    ) -> None:
        stream = make_stream(session)
        first = make_estimate(session, stream=stream, window_index=0)
        second = make_estimate(
            session,
            stream=stream,
            window_index=1,
            created_at=first.created_at - timedelta(minutes=1),
        )

        (row,) = rows(session).values()
        assert (row[0], row[5]) == (second.id, first.created_at)
        assert rows(session) == rebuilt(session)

    def test_streams_are_independent(self, session: Session) -> None:
        a, b = make_stream(session), make_stream(session)
        make_estimate(session, stream=a, window_index=4)
        make_estimate(session, stream=b, window_index=1)
        make_estimate(session, stream=a, window_index=2)

        found = rows(session)
        assert {k: v[1] for k, v in found.items()} == {a.id: 4, b.id: 1}
        assert found == rebuilt(session)

    def test_a_rolled_back_insert_leaves_the_previous_row(self, session: Session) -> None:
        stream = make_stream(session)
        kept = make_estimate(session, stream=stream, window_index=0)
        before = rows(session)

        with pytest.raises(IntegrityError):
            with session.begin_nested():
                make_estimate(session, stream=stream, window_index=1)
                make_estimate(session, stream=stream, window_index=1)  # UNIQUE window

        assert rows(session) == before
        assert before[stream.id][0] == kept.id

    def test_a_result_that_does_not_parse_keeps_the_columns(self, session: Session) -> None:
        stream = make_stream(session)
        make_estimate(session, stream=stream, window_index=0, weighted_flips=None, result={})

        (row,) = rows(session).values()
        assert row[1:5] == (0, 0.9, None, None)


@pytest.fixture
def session_factory(engine: Engine) -> Iterator[sessionmaker[Session]]:
    yield make_sessionmaker(engine)
    truncate_all(engine)


def test_retention_leaves_the_rows_equal_to_a_rebuild(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    """Retention deletes images and batches, never estimates: the rows stay what they were."""
    stream_id = stream_of_five_batches(session_factory, settings, retain_images=4)
    with session_factory() as session:
        stream = session.get(Stream, stream_id)
        assert stream is not None
        for window in range(4):
            make_estimate(session, stream=stream, window_index=window)
        session.commit()
        before = rows(session)

    report = enforce_retention(session_factory, settings)

    assert report.images_deleted > 0
    with session_factory() as session:
        assert rows(session) == before == rebuilt(session)
        assert before[stream_id][1] == 3
