"""The typed Python API of batch jobs: submit, cancel, status, logs, list, wait.

::

    from skedlib.jobs.client import JobClient
    from skedlib.runtime import Store

    jobs = JobClient(Store.open("etcd://10.0.0.1:2379"))
    job = jobs.submit("python3", ["train.py"], memory=2048, cpu_units=2048)
    done = jobs.wait(job.id, timeout=3600)
    print(done.status, done.exit_code)
    for chunk in jobs.logs(job.id):
        sys.stdout.buffer.write(chunk)
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterator

import msgspec

from skedlib.errors import SkedError, ValidationError
from skedlib.jobs.models import (
    JOB_STATES,
    Job,
    JobNode,
    JobPage,
    JobRequirements,
    JobSpec,
    JobState,
)
from skedlib.jobs.store import JobStore, StoredJob
from skedlib.logserver import FOLLOW_IDLE, LogsUnavailable, fetch_log
from skedlib.runtime import Store, wait_for_change
from skedlib.store.base import Backend

__all__ = ["DEFAULT_PAGE_SIZE", "FOLLOW_POLL", "MAX_PAGE_SIZE", "JobClient", "JobWaitTimeout",
           "LogsUnavailable", "explain_waiting"]

FOLLOW_POLL = FOLLOW_IDLE
"""Seconds a node holds a following log request open without new output."""
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class JobWaitTimeout(SkedError):
    """:meth:`JobClient.wait` ran out of time before the job ended."""


def explain_waiting(job: Job, nodes: list[JobNode]) -> str:
    """Why a queued job has not been claimed, from the live nodes' capacities."""
    if not nodes:
        return "no job worker is running"
    if not any(job.requirements.fits(n.capacity) for n in nodes):
        largest = max(nodes, key=lambda n: (n.capacity.memory, n.capacity.cpu_units))
        return (f"no node can meet its requirements ({job.requirements.describe()}); "
                f"the largest node, {largest.name}, offers {largest.capacity.describe()}")
    return "waiting for a node with free resources"


class JobClient:
    """Jobs on one :class:`~skedlib.runtime.Store`. Every call is a few backend calls;
    safe to share."""

    def __init__(self, store: Store, http_timeout: float = 10.0) -> None:
        self.store = JobStore(store)
        self.keys = self.store.keys
        self.http_timeout = http_timeout

    @property
    def backend(self) -> Backend:
        """The store's backend."""
        return self.store.backend

    def submit(self, command: str, args: list[str] | tuple[str, ...] = (), *,
               env: dict[str, str] | None = None, cwd: str = "", memory: int = 0,
               cpu_units: int = 0, disk: int = 0, restart_on_node_failure: bool = True,
               max_attempts: int = 3, timeout: float = 0.0, name: str = "",
               job_id: str | None = None) -> Job:
        """Queue ``command args…``; returns the queued job (its ``id`` is a UUID v7).

        ``memory`` and ``disk`` in MiB, ``cpu_units`` 1024 per core, ``timeout`` in
        seconds (0: none). Raises :class:`~skedlib.errors.ValidationError` for a spec no
        worker could run.
        """
        if timeout < 0:
            raise ValidationError("job: field timeout: must be >= 0")
        for field, value in (("memory", memory), ("cpu_units", cpu_units), ("disk", disk)):
            if value < 0:
                raise ValidationError(f"job: field requirements.{field}: must be >= 0")
        if not 1 <= max_attempts <= 100:
            raise ValidationError("job: field max_attempts: must be within 1..100")
        spec = JobSpec(command=command, args=list(args), env=dict(env or {}), cwd=cwd,
                       requirements=JobRequirements(memory=memory, cpu_units=cpu_units,
                                                    disk=disk),
                       restart_on_node_failure=restart_on_node_failure,
                       max_attempts=max_attempts, timeout=int(timeout * 1e9), name=name)
        return self.store.submit(spec, job_id)

    def submit_spec(self, spec: JobSpec, job_id: str | None = None) -> Job:
        """Queue a job from a :class:`JobSpec` (the HTTP API's body)."""
        return self.store.submit(spec, job_id)

    def status(self, job_id: str) -> Job:
        """The job; for a queued one, ``reason`` also says why no node has claimed it.

        Raises :class:`~skedlib.errors.NotFound` for an unknown id.
        """
        job = self.store.get(job_id).job
        if job.status == "queued":
            why = explain_waiting(job, self.nodes())
            job.reason = f"{job.reason}; {why}" if job.reason else why
        return job

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job; a running one is stopped by its node.

        Raises :class:`~skedlib.errors.NotFound` and :class:`~skedlib.jobs.JobFinished`.
        """
        return self.store.cancel(job_id, "canceled")

    def list(self, status: JobState | None = None) -> list[Job]:
        """Every job, oldest first, or those in ``status``."""
        if status is not None and status not in JOB_STATES:
            raise ValidationError(f"unknown job status {status!r}: expected one of "
                                  f"{', '.join(JOB_STATES)}")
        return self.store.list(status)

    def page(self, status: JobState | None = None, limit: int = DEFAULT_PAGE_SIZE,
             next_token: str | None = None) -> JobPage:
        """One page of :meth:`list`: up to ``limit`` jobs after the ``next_token`` id."""
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise ValidationError(f"limit must be within 1..{MAX_PAGE_SIZE}, got {limit}")
        jobs = [j for j in self.list(status) if next_token is None or j.id > next_token]
        items = jobs[:limit]
        more = len(jobs) > limit
        return JobPage(items=items, next_token=items[-1].id if more and items else None)

    def nodes(self) -> builtins.list[JobNode]:
        """The live job workers."""
        return [node for node, _ in self.store.nodes().values()]

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Block until the job ends (complete, failed, canceled); returns it.

        Raises :class:`JobWaitTimeout` after ``timeout`` seconds (None: wait forever).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            stored = self.store.get(job_id)
            if stored.job.finished:
                return stored.job
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise JobWaitTimeout(f"job {job_id} is still {stored.job.status} after "
                                     f"{timeout:g}s")
            self._wait_for_record(stored, min(left, 5.0) if left is not None else 5.0)

    def _wait_for_record(self, stored: StoredJob, timeout: float) -> None:
        """Until the job's record changes after ``stored`` (at most ``timeout`` s)."""
        wait_for_change(self.backend, self.keys.job(stored.job.id), stored.revision, timeout)

    def logs(self, job_id: str, follow: bool = False, offset: int = 0) -> Iterator[bytes]:
        """The job's output (stdout and stderr as they came), fetched from the node that
        ran it, from byte ``offset``; with ``follow``, until the job ends.

        Following is a series of long polls (each ends after :data:`FOLLOW_POLL` seconds
        without output, and the next resumes at the byte it stopped), so no read waits
        without a timeout. When the job is queued again and claimed by another node,
        following goes on with the new attempt's output.

        Raises :class:`LogsUnavailable` when the job never started or its node cannot
        be reached, and :class:`~skedlib.errors.NotFound` for an unknown id.
        """
        job = self.store.get(job_id).job
        if not job.log_url:
            raise LogsUnavailable(f"job {job_id} has no output yet: it is {job.status}"
                                  + (" and never started" if job.attempts == 0 else ""))
        first = self._fetch(job, follow and not job.finished, offset)
        return self._follow(job, first, offset) if follow else first

    def _follow(self, job: Job, first: Iterator[bytes], offset: int) -> Iterator[bytes]:
        received, url, stream = offset, job.log_url, first
        while True:
            for chunk in stream:
                received += len(chunk)
                yield chunk
            if job.finished:
                return
            stored = self.store.get(job.id)
            while not stored.job.finished and (stored.job.status == "queued"
                                               or not stored.job.log_url):
                self._wait_for_record(stored, 5.0)  # between attempts: the next claim
                stored = self.store.get(job.id)
            job = stored.job
            if job.log_url != url:
                received, url = 0, job.log_url
            if not job.log_url:
                return
            # one more read after the end drains what the node wrote last
            stream = self._fetch(job, not job.finished, received)

    def _fetch(self, job: Job, follow: bool, offset: int) -> Iterator[bytes]:
        if job.finished and job.output_bytes == 0:
            return iter(())  # its node keeps no file of an output that is empty
        try:
            return fetch_log(job.log_url, "jobs", job.id, self._log_token(job.node),
                             offset=offset, follow=follow, timeout=self.http_timeout,
                             where=f"node {job.node} ({job.log_url})", what=f"job {job.id}")
        except LogsUnavailable:
            # it may have ended meanwhile, writing nothing: its node then has no file
            now = self.store.get(job.id).job
            if now.finished and now.output_bytes == 0 and \
                    (now.node, now.attempts) == (job.node, job.attempts):
                return iter(())
            raise

    def _log_token(self, node: str) -> str:
        """The token the log server of ``node`` wants, from the node's record ('' when
        the node is gone: its output went with it)."""
        kv = self.backend.get(self.keys.job_node(node)) if node else None
        if kv is None:
            return ""
        try:
            return msgspec.json.decode(kv.value, type=JobNode).log_token
        except msgspec.DecodeError:
            return ""
