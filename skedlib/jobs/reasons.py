"""Why queued jobs wait: each queued job's ``reason`` completed with what keeps a node
from claiming it, for listings (``sked job ls``, ``GET /v1/jobs``)."""

from __future__ import annotations

from skedlib.jobs.client import JobClient, explain_waiting
from skedlib.jobs.models import Job

__all__ = ["with_waiting_reasons"]


def with_waiting_reasons(jobs: JobClient, items: list[Job]) -> list[Job]:
    """``items`` with each queued job's ``reason`` saying why no node has claimed it (as
    :meth:`JobClient.status <skedlib.jobs.client.JobClient.status>` does for one job);
    reads the live nodes once, and only when a job is queued."""
    if any(j.status == "queued" for j in items):
        nodes = jobs.nodes()
        for job in items:
            if job.status == "queued":
                why = explain_waiting(job, nodes)
                job.reason = f"{job.reason}; {why}" if job.reason else why
    return items
