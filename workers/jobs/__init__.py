"""The job lifecycle against the database: claim, heartbeat, progress, finish; and the reaper.

Postgres is the truth and a queue message only carries a job id, so everything here must be safe
to run twice for the same id: a job is claimed under a row lock (SELECT ... FOR UPDATE SKIP LOCKED
on Postgres; a conditional UPDATE ... WHERE state = 'queued' on SQLite), a job that is not queued
is a logged no-op, and at most one estimate exists per window (a UNIQUE constraint, not luck).

These are the only explicit commits outside the request edge (style rule 3). Each is one short
transaction, named in the docstring of the function that makes it:

- claim:     queued -> running (attempts + 1, started_at, heartbeat_at, worker)
- heartbeat: heartbeat_at, from a side thread every few seconds while a job runs
- progress:  steps_done / steps_total and heartbeat_at, at most about once a second
- finish:    the estimate row (or calibration result) and `succeeded`, in ONE transaction;
             or `failed` with a message; or back to `queued` after a transient error
- reconcile: stale running jobs back to queued, lost queued jobs marked for re-sending

The modules:

- `lifecycle`: the claim and its ownership, heartbeat, progress, a job row's state changes
  (commit points claim, heartbeat, progress)
- `failures`:  user errors fail a job, others requeue it (commit point finish after an error)
- `model`:     a model row's spec and cache key; the loaded model on its device
- `estimate`:  the estimate job (commit point finish: the estimate row)
- `calibrate`: the calibrate job and `CalibrationSuite` (commit point finish: the calibration)
- `reaper`:    stale and lost jobs (commit point reconcile)
- `prefetch`:  `WindowPrefetcher`: the next queued window decoded while this one adapts
- `resources`: `DeviceSlots`: concurrent jobs on one device, admitted by memory; per-job peaks
- `runner`:    `run_job` (claim, work by kind, finish), `JobRuntime` and `run_with`

Callers import this package (`from workers import jobs`), not its modules.
"""

from flipwatch.workers.jobs.calibrate import CalibrationSuite
from flipwatch.workers.jobs.failures import TransientJobError
from flipwatch.workers.jobs.lifecycle import (
    HEARTBEAT_INTERVAL_S,
    Claim,
    JobMetrics,
    JobOutcome,
    ProgressWriter,
    SessionFactory,
    claim_job,
    heartbeat,
    touch_heartbeat,
    write_progress,
)
from flipwatch.workers.jobs.prefetch import WindowPrefetcher
from flipwatch.workers.jobs.reaper import (
    LOST_AFTER_S,
    STALE_AFTER_S,
    QueuedJob,
    queued_job_ids,
    queued_jobs,
    reconcile_jobs,
    requeue_interrupted_jobs,
    requeue_stale_jobs,
)
from flipwatch.workers.jobs.resources import DeviceSlots, JobUsage
from flipwatch.workers.jobs.runner import JobRuntime, run_job, run_with

__all__ = [
    "HEARTBEAT_INTERVAL_S",
    "LOST_AFTER_S",
    "STALE_AFTER_S",
    "CalibrationSuite",
    "Claim",
    "DeviceSlots",
    "JobMetrics",
    "JobOutcome",
    "JobRuntime",
    "JobUsage",
    "ProgressWriter",
    "SessionFactory",
    "TransientJobError",
    "WindowPrefetcher",
    "claim_job",
    "heartbeat",
    "QueuedJob",
    "queued_job_ids",
    "queued_jobs",
    "reconcile_jobs",
    "requeue_interrupted_jobs",
    "requeue_stale_jobs",
    "run_job",
    "run_with",
    "touch_heartbeat",
    "write_progress",
]
