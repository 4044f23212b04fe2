"""Jobs: state, attempts, progress and timestamps of estimate and calibration work."""

from __future__ import annotations

from fastapi import APIRouter

from flipwatch.service.api.deps import JobID, ReadKey, SessionDep
from flipwatch.service.api.problems import problem_responses
from flipwatch.service.job import service as jobs
from flipwatch.service.job.schemas import JobRead

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("/{job_id}", response_model=JobRead, responses=problem_responses(401, 403, 404))
def read_job(session: SessionDep, _key: ReadKey, job_id: JobID) -> JobRead:
    """Poll this after a batch closed a window or an estimate was requested."""
    job = jobs.get_job(session, job_id)
    return JobRead.of(job, estimate_id=jobs.estimate_id_for_job(session, job.id))
