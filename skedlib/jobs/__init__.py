"""Batch jobs with work stealing (work stealing): submit run-to-completion commands; job
workers (``skedlib-agent --jobs``) claim them from the queue in transactions.

>>> from skedlib.jobs.client import JobClient   # doctest: +SKIP
>>> jobs = JobClient(Store.open("sqlite:///tmp/sked.db"))
>>> job = jobs.submit("sh", ["-c", "echo hi"], memory=64)
>>> jobs.wait(job.id).status
'complete'

See ``docs/jobs.md``.
"""

from skedlib.jobs.models import (
    FINISHED_STATES,
    JOB_STATES,
    Job,
    JobNode,
    JobPage,
    JobRequirements,
    JobSpec,
    JobState,
    new_job_id,
)
from skedlib.jobs.store import JobEnd, JobFinished, JobStore, StoredJob

__all__ = [
    "FINISHED_STATES",
    "JOB_STATES",
    "Job",
    "JobEnd",
    "JobFinished",
    "JobNode",
    "JobPage",
    "JobRequirements",
    "JobSpec",
    "JobState",
    "JobStore",
    "StoredJob",
    "new_job_id",
]
