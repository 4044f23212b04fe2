"""While a job runs, its log lines carry the job id and the request id of the API call that
created it (jobs.request_id), so one grep follows a request into the worker."""

from __future__ import annotations

import structlog
from sqlalchemy import Engine

from flipwatch.service.core.db import make_sessionmaker
from flipwatch.workers.jobs.runner import job_log_context
from tests.conftest import truncate_all
from tests.factories import make_job, make_stream


def test_job_log_context_binds_the_jobs_request_id(engine: Engine):
    factory = make_sessionmaker(engine)
    try:
        with factory() as session:
            job = make_job(session, stream=make_stream(session), request_id="rid-worker-1")
            session.commit()
            job_id = job.id
        with job_log_context(factory, job_id):
            bound = structlog.contextvars.get_contextvars()
            assert bound["request_id"] == "rid-worker-1"
            assert bound["job_id"] == str(job_id)
        assert "job_id" not in structlog.contextvars.get_contextvars()
    finally:
        truncate_all(engine)
