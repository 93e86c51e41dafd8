"""The keys of batch jobs: a :class:`~skedlib.keys.KeyTable` of their own under the
keyspace prefix, built on the templates of :mod:`skedlib.keys`.

Why the transitions move these keys as they do is in :mod:`skedlib.jobs.store`; the
table is :class:`JobKeyspace`'s body.
"""

from __future__ import annotations

from typing import Any

import msgspec

from skedlib.errors import InvalidName
from skedlib.jobs.models import FINISHED_STATES
from skedlib.keys import KeyTable, KeyTemplate, Name, Segment

__all__ = [
    "EPOCH_DIGITS",
    "AnyJobKey",
    "JobCleanerKey",
    "JobFinishedKey",
    "JobKey",
    "JobKeyspace",
    "JobNodeKey",
    "JobQueuedKey",
    "JobRunningKey",
]

#: finished jobs are listed by the UNIX second they ended, zero-padded so the keys sort
#: by time (10 digits last until the year 2286)
EPOCH_DIGITS = 10


class JobKey(msgspec.Struct, frozen=True, tag=True):
    """A :class:`~skedlib.jobs.Job` record."""

    job_id: str


class JobQueuedKey(msgspec.Struct, frozen=True, tag=True):
    """The job waits to be claimed (the key holds a copy of the record)."""

    job_id: str


class JobRunningKey(msgspec.Struct, frozen=True, tag=True):
    """The job runs on ``node``."""

    node: str
    job_id: str


class JobFinishedKey(msgspec.Struct, frozen=True, tag=True):
    """The job ended in ``state`` (complete, failed, canceled) at UNIX time ``epoch``."""

    state: str
    epoch: int
    job_id: str


class JobNodeKey(msgspec.Struct, frozen=True, tag=True):
    """A live job worker's record, bound to its lease."""

    node: str


class JobCleanerKey(msgspec.Struct, frozen=True, tag=True):
    """The lock of the elected job cleaner."""


AnyJobKey = (JobKey | JobQueuedKey | JobRunningKey | JobFinishedKey | JobNodeKey
             | JobCleanerKey)


class _FinishedState(Segment):
    """One of :data:`~skedlib.jobs.FINISHED_STATES`."""

    def format(self, value: Any) -> str:
        if value not in FINISHED_STATES:
            raise InvalidName(f"invalid finished job state {value!r}: expected one of "
                              f"{', '.join(FINISHED_STATES)}")
        return str(value)

    def parse(self, text: str) -> str | None:
        return text if text in FINISHED_STATES else None


class _Epoch(Segment):
    """UNIX seconds, zero-padded to :data:`EPOCH_DIGITS` digits."""

    def format(self, value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, int) or not (
                0 <= value < 10 ** EPOCH_DIGITS):
            raise InvalidName(f"invalid job epoch {value!r}: must be an integer in "
                              f"[0, 10^{EPOCH_DIGITS})")
        return f"{value:0{EPOCH_DIGITS}d}"

    def parse(self, text: str) -> int | None:
        if text.isascii() and text.isdigit() and len(text) == EPOCH_DIGITS:
            return int(text)
        return None


_JOB_ID = Name("job id")
_NODE = Name("node name")


class JobKeyspace(KeyTable[AnyJobKey]):
    """Builds and parses the job keys under a keyspace's prefix.

    >>> from skedlib.keys import Keyspace
    >>> keys = JobKeyspace(Keyspace())
    >>> keys.job_running("n1", "j1")
    'sked/jobs/status/running/n1/j1'
    >>> keys.parse("sked/jobs/status/failed/0000000060/j1")
    JobFinishedKey(state='failed', epoch=60, job_id='j1')
    """

    schema = "skedlib's job key schema"

    # -- the table: one template per key ---------------------------------------------------
    job = KeyTemplate("jobs/records/{job_id}", JobKey, job_id=_JOB_ID)
    #: exactly one status key per record, moved with it in every transition
    job_queued = KeyTemplate("jobs/status/queued/{job_id}", JobQueuedKey, job_id=_JOB_ID)
    job_running = KeyTemplate("jobs/status/running/{node}/{job_id}", JobRunningKey,
                              node=_NODE, job_id=_JOB_ID)
    job_finished = KeyTemplate("jobs/status/{state}/{epoch}/{job_id}", JobFinishedKey,
                               state=_FinishedState(), epoch=_Epoch(), job_id=_JOB_ID)
    job_node = KeyTemplate("jobs/nodes/{node}", JobNodeKey, node=_NODE)
    job_cleaner = KeyTemplate("jobs/cleaner", JobCleanerKey)

    # -- prefixes --------------------------------------------------------------------------
    job_records = job.prefix()
    #: what job workers watch: the queued jobs
    jobs_queued = job_queued.prefix()
    jobs_running = job_running.prefix()
    #: ``node_jobs_running(node)``: the jobs running on ``node``
    node_jobs_running = job_running.prefix_for("node")
    #: ``jobs_finished(state)``: the jobs that ended in ``state``, by epoch
    jobs_finished = job_finished.prefix_for("state")
    job_nodes = job_node.prefix()

    @property
    def jobs(self) -> str:
        """Prefix of everything about batch jobs."""
        return f"{self.prefix}jobs/"
