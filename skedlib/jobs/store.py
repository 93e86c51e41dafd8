"""Every job state transition, each one transaction that rewrites the record and moves
its status key together, so the record and the status prefixes never disagree.

Key layout (under the keyspace prefix, see :mod:`skedlib.jobs.keys`)::

    jobs/records/<id>                         the Job (JSON)
    jobs/status/queued/<id>                   the same bytes as the record, while queued
    jobs/status/running/<node>/<id>           empty
    jobs/status/<complete|failed|canceled>/<epoch>/<id>   empty
    jobs/nodes/<node>                         a JobNode, bound to the worker's lease

The queued key carries a copy of the record so a worker learns the requirements from its
watch alone. A job's record changes only in a transition, and every transition out of
*queued* deletes the queued key, so a claim that compares the queued key's revision
knows the copy is the record. A claim also compares the node's own key, so a node whose
lease ended cannot claim; a finish compares the record, so a node cannot overwrite a
cancel or a requeue.
"""

from __future__ import annotations

import builtins
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import msgspec

from skedlib.errors import ConflictError, NotFound, SkedError, ValidationError
from skedlib.jobs.keys import (
    JobFinishedKey,
    JobKey,
    JobKeyspace,
    JobQueuedKey,
    JobRunningKey,
)
from skedlib.jobs.models import (
    FINISHED_STATES,
    Job,
    JobNode,
    JobSpec,
    JobState,
    check_spec,
)
from skedlib.keys import validate_name
from skedlib.runtime import RETRY, Group, Retry, Store, retry_on_conflict, write_groups
from skedlib.runtime.writer import pack, room_for
from skedlib.store.base import Backend, Compare, Delete, KeyValue, Op, Put, TxnResult

__all__ = ["JobEnd", "JobFinished", "JobStore", "StoredJob", "decode_job", "encode_job"]

log = logging.getLogger("skedlib.jobs")

_encoder = msgspec.json.Encoder()
_job_decoder = msgspec.json.Decoder(Job)
_node_decoder = msgspec.json.Decoder(JobNode)


class JobFinished(ConflictError):
    """The job already ended (complete, failed or canceled): it cannot be canceled."""


def encode_job(job: Job) -> bytes:
    """A job record's stored bytes."""
    return _encoder.encode(job)


def decode_job(data: bytes, key: str = "") -> Job:
    """A job record from stored bytes; a clear error naming ``key`` if they are not one."""
    try:
        return _job_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ValidationError(f"{key or 'job record'}: not a job record: {exc}") from None


@dataclass(frozen=True)
class JobEnd:
    """How a running job (its record read at ``revision``) ended, for
    :meth:`JobStore.finish_many`."""

    job: Job
    revision: int
    status: JobState
    """``complete`` or ``failed``."""
    exit_code: int | None
    reason: str
    output_bytes: int | None = None
    """The size of its output file (see :attr:`Job.output_bytes`); None: not known."""


@dataclass(frozen=True)
class StoredJob:
    """A job as read, with its record's revision (for compares)."""

    job: Job
    revision: int


def _epoch(now: float) -> int:
    return max(0, math.floor(now))


class JobStore:
    """The job transitions on one :class:`~skedlib.runtime.Store` (its backend, under its
    keyspace's prefix). Safe to share between threads.

    ``clock`` gives UNIX seconds (``time.time`` unless a test sets another).
    """

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.keys = JobKeyspace(store.keys)
        self.clock = clock

    @property
    def backend(self) -> Backend:
        """The store's backend."""
        return self.store.backend

    # -- reading --------------------------------------------------------------------------
    def get(self, job_id: str) -> StoredJob:
        """The job and its record's revision; :class:`NotFound` if there is none."""
        key = self.keys.job(job_id)
        kv = self.backend.get(key)
        if kv is None:
            raise NotFound(f"job {job_id} not found")
        return StoredJob(decode_job(kv.value, key), kv.revision)

    def list(self, status: JobState | None = None) -> list[Job]:
        """Every job (oldest first, as ids sort by submit time), or those in ``status``."""
        jobs = [decode_job(kv.value, kv.key)
                for kv in self.backend.list(self.keys.job_records).items]
        return [j for j in jobs if status is None or j.status == status]

    def nodes(self) -> dict[str, tuple[JobNode, KeyValue]]:
        """The live job workers by name, each with its stored key."""
        out: dict[str, tuple[JobNode, KeyValue]] = {}
        for kv in self.backend.list(self.keys.job_nodes).items:
            try:
                out[kv.key.rsplit("/", 1)[1]] = (_node_decoder.decode(kv.value), kv)
            except msgspec.DecodeError:
                log.warning("%s: not a job node record; ignored", kv.key)
        return out

    # -- transitions ----------------------------------------------------------------------
    def submit(self, spec: JobSpec, job_id: str | None = None) -> Job:
        """Queue a new job; :class:`ConflictError` if ``job_id`` is taken."""
        check_spec(spec)
        if job_id is not None:
            validate_name(job_id, "job id")
        job = Job.from_spec(spec, job_id, now=self.clock())
        data = encode_job(job)
        res = self.backend.txn([Compare(self.keys.job(job.id), 0)],
                               [Put(self.keys.job(job.id), data),
                                Put(self.keys.job_queued(job.id), data)])
        if not res.succeeded:
            raise ConflictError(f"job {job.id} already exists")
        return job

    def claim(self, queued: KeyValue, node: str, node_revision: int, *,
              log_url: str = "", limits: str = "") -> StoredJob | None:
        """Claim the job of a queued key for ``node``, as read (value and revision).

        Holds only while the key is unchanged and the node's own key is still the one at
        ``node_revision``; returns the running job with its record's revision, or None
        when somebody else was first (or the node's lease ended).
        """
        claimed = self.claim_many([queued], node, node_revision, log_url=log_url,
                                  limits=limits)
        return claimed[0] if claimed else None

    def claim_many(self, queued: Sequence[KeyValue], node: str, node_revision: int, *,
                   log_url: str = "", limits: str = "") -> builtins.list[StoredJob] | None:
        """Claim the jobs of several queued keys for ``node`` in one transaction, all or
        none (see :meth:`claim`): None when any of them was taken first (or the node's
        lease ended). :meth:`claim_room` says how many fit in one transaction."""
        return self.finish_and_claim((), queued, node, node_revision, log_url=log_url,
                                     limits=limits)

    def finish_and_claim(self, ends: Sequence[JobEnd], queued: Sequence[KeyValue], node: str,
                         node_revision: int, *, log_url: str = "", limits: str = ""
                         ) -> builtins.list[StoredJob] | None:
        """End the running jobs of ``ends`` (see :meth:`finish`) and claim the jobs of
        ``queued`` for ``node`` (see :meth:`claim_many`) in one transaction, all or
        nothing: the claimed jobs, or None when any compare failed or it would not fit in
        one transaction (then nothing is written: :meth:`finish_many` and
        :meth:`claim_many` apart)."""
        if node_revision <= 0:
            raise ValueError("claim: node_revision must be the revision of the node's "
                             "registered key (jobs/nodes/<node>)")
        now = self.clock()
        compares = [Compare(self.keys.job_node(node), node_revision)]
        ops: list[Op] = []
        for _, group in self._end_groups(ends, now):
            compares += group.compares
            ops += group.ops
        jobs: list[Job] = []
        for kv in queued:
            job = decode_job(kv.value, kv.key)
            running = msgspec.structs.replace(
                job, status="running", node=node, attempts=job.attempts + 1,
                exit_code=None, reason="", limits=limits, log_url=log_url,
                output_bytes=None, started_at=now, finished_at=None)
            compares.append(Compare(kv.key, kv.revision))
            ops += [Delete(kv.key), Put(self.keys.job_running(node, job.id), b""),
                    Put(self.keys.job(job.id), encode_job(running))]
            jobs.append(running)
        limit = self.backend.max_txn_ops
        if ends and limit is not None and len(compares) + len(ops) > limit:
            return None
        res = self.backend.txn(compares, ops)
        return [StoredJob(job, res.revision) for job in jobs] if res.succeeded else None

    def claimed_by(self, queued: Sequence[KeyValue], node: str
                   ) -> builtins.list[StoredJob] | None:
        """Whether a claim of ``queued`` for ``node`` (:meth:`claim_many`,
        :meth:`finish_and_claim`) whose outcome is unknown was applied — the store
        failed while it was in flight: the jobs as that claim left them (those not
        canceled since), or None when it was not applied. Only that claim can have
        made a queued record the next attempt running on ``node`` (its compares name
        the queued keys' revisions). Raises :class:`~skedlib.errors.BackendError` when
        the records cannot be read."""
        jobs = [decode_job(kv.value, kv.key) for kv in queued]
        keys = [self.keys.job(job.id) for job in jobs]
        found = self.backend.get_many(keys)
        claimed: list[StoredJob] = []
        for job, key in zip(jobs, keys, strict=True):
            kv = found.get(key)
            if kv is None:
                continue
            now = decode_job(kv.value, key)
            if (now.status, now.node, now.attempts) == ("running", node, job.attempts + 1):
                claimed.append(StoredJob(now, kv.revision))
        return claimed or None

    def claim_room(self) -> int:
        """How many jobs one :meth:`claim_many` transaction can claim on this backend."""
        limit = self.backend.max_txn_ops
        return 1_000 if limit is None else max(1, (limit - 1) // 4)

    def finish(self, job: Job, revision: int, status: JobState, *, exit_code: int | None,
               reason: str) -> bool:
        """End a running job (read at ``revision``) as complete or failed.

        False when the record changed meanwhile: the job was canceled, or requeued
        because its node was taken for lost; then nothing is written.
        """
        return self.finish_many([JobEnd(job, revision, status, exit_code, reason)])[0]

    def finish_many(self, ends: Sequence[JobEnd]) -> builtins.list[bool]:
        """End several running jobs (see :meth:`finish`) in as few transactions as the
        backend takes; whether each was written, in order.

        Each job is a group of its own (its record compared, its status key moved): when
        a transaction's compares fail because one of its jobs changed meanwhile, its jobs
        are written one by one, so one cancel costs the others nothing but a retry.
        """
        results = [False] * len(ends)
        groups = self._end_groups(ends, self.clock())
        room = room_for(self.backend, (), sum(g.size for _, g in groups))
        for chunk in pack(groups, room, lambda item: item[1].size):
            if self._write(g for _, g in chunk):
                for i, _ in chunk:
                    results[i] = True
            elif len(chunk) > 1:
                for i, g in chunk:
                    results[i] = self._write([g])
        return results

    def _end_groups(self, ends: Sequence[JobEnd], now: float
                    ) -> builtins.list[tuple[int, Group]]:
        """The transition of each running job of ``ends`` (by its index) to its end."""
        groups: list[tuple[int, Group]] = []
        for i, end in enumerate(ends):
            if end.status not in ("complete", "failed"):
                raise ValueError(f"finish: {end.status!r} is not complete or failed")
            if end.job.status != "running":
                continue
            done = msgspec.structs.replace(end.job, status=end.status,
                                           exit_code=end.exit_code, reason=end.reason,
                                           output_bytes=end.output_bytes, finished_at=now)
            groups.append((i, self._move_group(end.job, end.revision, done, now)))
        return groups

    def _write(self, groups: Iterable[Group]) -> bool:
        compares: list[Compare] = []
        ops: list[Op] = []
        for g in groups:
            compares += g.compares
            ops += g.ops
        return self.backend.txn(compares, ops).succeeded

    def cancel(self, job_id: str, reason: str = "canceled") -> Job:
        """Cancel a queued or running job (its node sees the running key go and stops it).

        Raises :class:`NotFound` for an unknown id and :class:`JobFinished` for a job
        that already ended.
        """
        def attempt() -> Job | Retry:
            stored = self.get(job_id)
            job = stored.job
            if job.finished:
                raise JobFinished(f"job {job_id} is already {job.status}"
                                  + (f" ({job.reason})" if job.reason else ""))
            now = self.clock()
            done = msgspec.structs.replace(job, status="canceled", reason=reason,
                                           finished_at=now)
            return done if self._move(job, stored.revision, done, now, []).succeeded \
                else RETRY

        return retry_on_conflict(attempt, what=f"job {job_id}")

    def requeue_or_fail(self, stored: StoredJob, why: str,
                        fence: Sequence[Compare] = ()) -> Job | None:
        """Take a running job back from its node (lost, or giving it up): queue it again
        when it asks for restarts and has attempts left, else fail it.

        None when the record changed meanwhile (nothing written).
        """
        job = stored.job
        if job.status != "running":
            return None
        now = self.clock()
        if job.restart_on_node_failure and job.attempts < job.max_attempts:
            new = msgspec.structs.replace(
                job, status="queued",
                reason=f"{why} during attempt {job.attempts}; queued again",
                started_at=None)
        else:
            tail = ("" if not job.restart_on_node_failure
                    else f" (all {job.max_attempts} attempts used)")
            new = msgspec.structs.replace(job, status="failed", finished_at=now,
                                          reason=f"{why}{tail}")
        return new if self._move(job, stored.revision, new, now, fence).succeeded else None

    def requeue_node(self, node: str, why: str,
                     fence: Sequence[Compare] = ()) -> builtins.list[Job]:
        """Take back every job recorded as running on ``node`` (see :meth:`requeue_or_fail`)."""
        moved: list[Job] = []
        for kv in self.backend.list(self.keys.node_jobs_running(node)).items:
            job_id = kv.key.rsplit("/", 1)[1]
            try:
                stored = self.get(job_id)
            except NotFound:
                continue
            except ValidationError as exc:  # one bad record must not hold up the rest
                log.warning("%s; left as it is", exc)
                continue
            if stored.job.node != node:
                continue
            new = self.requeue_or_fail(stored, why, fence)
            if new is not None:
                moved.append(new)
        return moved

    def purge(self, older_than: float, fence: Sequence[Compare] = (),
              limit: int = 10_000) -> int:
        """Delete finished jobs (record and status key) that ended before UNIX time
        ``older_than``; at most ``limit``. Returns how many were deleted.

        Each job is one group (its record, compared on the revision listed, and its
        status key) for :func:`~skedlib.runtime.write_groups`, which packs them into as
        few fenced transactions as the backend allows; a chunk whose compares fail (a
        lost fence) is skipped, and the next candidates are tried up to ``limit``."""
        cutoff = _epoch(older_than)
        old: list[tuple[KeyValue, str]] = []
        for state in FINISHED_STATES:
            for kv in self.backend.list(self.keys.jobs_finished(state)).items:
                parsed = self.keys.parse(kv.key)
                if isinstance(parsed, JobFinishedKey) and parsed.epoch < cutoff:
                    old.append((kv, parsed.job_id))
        if not old:
            return 0
        # read after the status keys: a finished record no longer changes until purged
        records = {kv.key: kv for kv in self.backend.list(self.keys.job_records).items}
        groups: list[Group] = []
        for kv, job_id in old:
            record = records.get(self.keys.job(job_id))
            if record is None:  # a stray status key: remove it alone
                groups.append(Group((Compare(kv.key, kv.revision),), (Delete(kv.key),)))
            else:
                groups.append(Group((Compare(record.key, record.revision),),
                                    (Delete(record.key), Delete(kv.key))))
        deleted = 0
        while groups and deleted < limit:
            take, groups = groups[:limit - deleted], groups[limit - deleted:]
            deleted += write_groups(self.backend, take, fence=fence,
                                    on_conflict="skip").written_groups
        return deleted

    # -- the one way a status moves -------------------------------------------------------
    def _status_key(self, job: Job, epoch: int) -> str:
        if job.status == "queued":
            return self.keys.job_queued(job.id)
        if job.status == "running":
            return self.keys.job_running(job.node, job.id)
        return self.keys.job_finished(job.status, epoch, job.id)

    def _move_group(self, old: Job, revision: int, new: Job, now: float) -> Group:
        """The transition of one job from ``old`` (its record at ``revision``) to
        ``new``: the record compared and rewritten, the status key moved."""
        data = encode_job(new)
        new_key = self._status_key(new, _epoch(now))
        return Group((Compare(self.keys.job(old.id), revision),),
                     (Delete(self._status_key(old, _epoch(old.finished_at or 0.0))),
                      Put(self.keys.job(new.id), data),
                      Put(new_key, data if new.status == "queued" else b"")))

    def _move(self, old: Job, revision: int, new: Job, now: float,
              fence: Sequence[Compare]) -> TxnResult:
        group = self._move_group(old, revision, new, now)
        return self.backend.txn([*group.compares, *fence], group.ops)

    # -- consistency ----------------------------------------------------------------------
    def inconsistencies(self) -> builtins.list[str]:
        """Every way the records and the status keys disagree (empty when they agree).

        Reads the whole ``jobs/`` prefix at one revision: every record has exactly the one
        status key its status, node and finish time name, a queued key holds the record's
        bytes, and no status key lacks its record.
        """
        listed = self.backend.list(self.keys.jobs)
        records: dict[str, KeyValue] = {}
        status_keys: dict[str, list[str]] = {}
        queued_values: dict[str, bytes] = {}
        problems: list[str] = []
        for kv in listed.items:
            try:
                parsed = self.keys.parse(kv.key)
            except SkedError:
                problems.append(f"{kv.key}: not a job key")
                continue
            match parsed:
                case JobKey(job_id=job_id):
                    records[job_id] = kv
                case JobQueuedKey(job_id=job_id):
                    status_keys.setdefault(job_id, []).append(kv.key)
                    queued_values[job_id] = kv.value
                case JobRunningKey(job_id=job_id) | JobFinishedKey(job_id=job_id):
                    status_keys.setdefault(job_id, []).append(kv.key)
        for job_id, kv in records.items():
            job = decode_job(kv.value, kv.key)
            want = self._status_key(job, _epoch(job.finished_at or 0.0))
            have = status_keys.get(job_id, [])
            if have != [want]:
                problems.append(f"job {job_id} is {job.status}: status keys {have}, "
                                f"expected [{want}]")
            if job.status == "queued" and queued_values.get(job_id) != kv.value:
                problems.append(f"job {job_id}: queued key differs from the record")
        for job_id, keys in status_keys.items():
            if job_id not in records:
                problems.append(f"status keys {keys} have no job record")
        return problems
