"""job_counts (kept by triggers on jobs) always equals counting the jobs table: after inserts,
state changes through the ORM and through bulk UPDATEs, moves and deletes, on Postgres and
SQLite."""

from __future__ import annotations

import uuid

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from flipwatch.service.core.tables import NO_STREAM, Job, JobCount
from tests.factories import make_job, make_model, make_stream

Counts = dict[tuple[uuid.UUID, uuid.UUID, str], int]


def kept(session: Session) -> Counts:
    session.flush()
    return {
        (r.stream_key, r.model_id, r.state): r.jobs
        for r in session.scalars(select(JobCount))
        if r.jobs
    }


def counted(session: Session) -> Counts:
    """The jobs table grouped the way flipwatch_jobs reads it."""
    session.flush()
    return {
        (stream_id or NO_STREAM, model_id, state): n
        for stream_id, model_id, state, n in session.execute(
            select(Job.stream_id, Job.model_id, Job.state, func.count()).group_by(
                Job.stream_id, Job.model_id, Job.state
            )
        )
    }


def test_inserts_count_per_stream_model_and_state(any_session: Session) -> None:
    stream = make_stream(any_session)
    for window, state in enumerate(("queued", "queued", "running", "failed")):
        make_job(any_session, stream=stream, window_index=window, state=state)
    make_job(any_session, stream=stream, kind="calibrate", stream_id=None, window_index=None)

    assert kept(any_session) == counted(any_session)
    assert kept(any_session)[(stream.id, stream.model_id, "queued")] == 2
    assert kept(any_session)[(NO_STREAM, stream.model_id, "queued")] == 1


def test_state_changes_move_one_count_to_another(any_session: Session) -> None:
    stream = make_stream(any_session)
    job = make_job(any_session, stream=stream, state="queued")
    other = make_job(any_session, stream=stream, window_index=1, state="queued")

    job.state = "running"  # a claim
    any_session.flush()
    job.state = "succeeded"
    job.steps_done = 10  # a column the triggers ignore
    any_session.flush()
    any_session.execute(  # a reaper-style bulk requeue
        update(Job).where(Job.id == other.id).values(state="running")
    )
    any_session.execute(update(Job).where(Job.state == "running").values(state="queued"))

    assert kept(any_session) == counted(any_session)
    assert kept(any_session) == {
        (stream.id, stream.model_id, "succeeded"): 1,
        (stream.id, stream.model_id, "queued"): 1,
    }


def test_moving_a_job_to_another_model_and_deleting_it(any_session: Session) -> None:
    stream = make_stream(any_session)
    elsewhere = make_model(any_session)
    job = make_job(any_session, stream=stream, state="failed")
    make_job(any_session, stream=stream, window_index=1, state="failed")

    job.model_id = elsewhere.id
    any_session.flush()
    assert kept(any_session) == counted(any_session)

    any_session.execute(delete(Job).where(Job.id == job.id))
    assert kept(any_session) == counted(any_session)
    assert kept(any_session) == {(stream.id, stream.model_id, "failed"): 1}


def test_an_update_that_keeps_the_state_changes_nothing(any_session: Session) -> None:
    stream = make_stream(any_session)
    make_job(any_session, stream=stream, state="running")

    any_session.execute(update(Job).values(state="running", heartbeat_at=func.now()))

    assert kept(any_session) == {(stream.id, stream.model_id, "running"): 1}
