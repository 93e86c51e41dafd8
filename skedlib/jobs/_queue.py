"""Claiming: an :class:`~skedlib.runtime.Informer` follows ``jobs/status/queued/`` into a
local FIFO of claimable jobs (the queued key carries the record, so no further reads are
needed), and the claimer picks a job that fits the free slots and resources, waits a
little in proportion to how loaded this node is (so idle nodes win the race: the
work-stealing design's answer to contention and fairness), then claims it with one
transaction.

When the queue is deep (more than twice ``claim_window`` jobs: every node will be busy
anyway, so nobody waits) the claimer takes as many jobs as it has free slots for, picked
at random among the oldest that fit, in one transaction. A batch is all or nothing: when
another node took one of its jobs first, its jobs are claimed one by one instead."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Sequence
from typing import NamedTuple

import msgspec

from skedlib.errors import BackendError, SkedError
from skedlib.jobs._config import WorkerConfig, WorkerStats, spawn
from skedlib.jobs._running import RunningJob, Runs, command_line
from skedlib.jobs.models import Job, JobRequirements
from skedlib.jobs.store import JobEnd, JobStore, StoredJob
from skedlib.metrics import METRICS
from skedlib.runtime import Backoff, Informer
from skedlib.store.base import KeyValue, ListResult, WatchEvent

__all__ = ["ClaimQueue"]

log = logging.getLogger("skedlib.jobs.worker")


class _ReqOnly(msgspec.Struct):
    requirements: JobRequirements = msgspec.field(default_factory=JobRequirements)


_req_decoder = msgspec.json.Decoder(_ReqOnly)


class _Queued(NamedTuple):
    """A queued key as the watch delivered it, with the requirements read from it once
    (None: its value is not a job; it is never claimed)."""

    kv: KeyValue
    requirements: JobRequirements | None


def _queued(kv: KeyValue) -> _Queued:
    try:
        return _Queued(kv, _req_decoder.decode(kv.value).requirements)
    except msgspec.DecodeError:
        return _Queued(kv, None)


class ClaimQueue:
    """The queued jobs as this node sees them, and the claimer that takes them.

    Claims only while ``claiming`` is set (the node is registered: ``node_revision`` is
    its record's revision, which every claim compares) and until ``stopping``."""

    def __init__(self, store: JobStore, config: WorkerConfig, runs: Runs,
                 stats: WorkerStats, slots: int, capacity: JobRequirements, limits: str,
                 stopping: threading.Event) -> None:
        self.store = store
        self.config = config
        self.node = config.node
        self.runs = runs
        self.cond = runs.cond  # one condition: a queue change or a job's end wakes the claimer
        self.stats = stats
        self.slots = slots
        self.capacity = capacity
        self.limits = limits
        self.stopping = stopping
        self.claiming = threading.Event()
        self.node_revision = 0
        self.log_url = ""
        self.queued: dict[str, _Queued] = {}
        self._taken: dict[str, _Queued] = {}
        """Jobs out of ``queued`` while a runner claims them with the ends of others (a
        delete seen meanwhile drops them here too)."""
        self._informer: Informer | None = None
        self._claimer: threading.Thread | None = None
        runs.refill = self._refill
        runs.slots = slots

    def start(self) -> None:
        """Follow the queue and start the claimer."""
        self._informer = self.store.store.informer(
            self.store.keys.jobs_queued, on_list=self._listed, on_events=self._changed,
            name=f"job worker {self.node}: queue watch").start()
        METRICS.add_source("skedlib_jobs_queue_depth", self._depth)
        self._claimer = spawn(self.node, "claim", self._claim_loop, f"jobs-claim-{self.node}")

    def _depth(self) -> dict[tuple[str, ...], float]:
        with self.cond:
            return {} if self.stopping.is_set() else {(): float(len(self.queued))}

    def wake(self) -> None:
        """Let the claimer look again (registered, or stopping)."""
        with self.cond:
            self.cond.notify_all()

    def stop(self) -> None:
        """Stop following and claiming (``stopping`` must be set)."""
        self.wake()
        if self._informer is not None:
            self._informer.stop()
        if self._claimer is not None:
            self._claimer.join(5)

    # -- the queue, followed -----------------------------------------------------------------
    def _listed(self, listed: ListResult) -> None:
        with self.cond:
            self.queued = {kv.key: _queued(kv) for kv in listed.items}
            self.cond.notify_all()

    def _changed(self, events: list[WatchEvent]) -> None:
        added = False
        with self.cond:
            for ev in events:
                self._taken.pop(ev.key, None)  # changed: a claim being written fails
                if ev.kind == "put":
                    self.queued.pop(ev.key, None)  # a requeued job goes to the back
                    self.queued[ev.key] = _queued(KeyValue(ev.key, ev.value, ev.revision,
                                                           ev.revision))
                    added = True
                else:
                    self.queued.pop(ev.key, None)
            if added:  # a job claimed (or canceled) elsewhere frees nothing here
                self.cond.notify_all()

    # -- claiming ----------------------------------------------------------------------------
    def _deep(self) -> bool:
        """Every node will be busy anyway: nobody holds back, and claims come in batches."""
        return len(self.queued) > 2 * self.config.claim_window

    def _pick(self, ending: Sequence[Job] = ()) -> list[_Queued]:
        """Up to ``claim_window`` of the oldest queued jobs that fit; one at random, or
        (from a deep queue) as many at random as fit the free slots and resources
        (counting those of the ``ending`` jobs as free)."""
        free_slots = self.slots - len(self.runs.jobs) + len(ending)
        if free_slots <= 0:
            return []
        free = self.capacity.minus(self.runs.used())
        for job in ending:
            free = free.plus(job.requirements)
        fitting: list[_Queued] = []
        for queued in self.queued.values():
            if queued.requirements is not None and queued.requirements.fits(free):
                fitting.append(queued)
                if len(fitting) >= self.config.claim_window:
                    break
        if not fitting:
            return []
        want = min(free_slots, self.store.claim_room()) if self._deep() else 1
        if want == 1:
            return [random.choice(fitting)]
        random.shuffle(fitting)
        batch: list[_Queued] = []
        for queued in fitting:
            assert queued.requirements is not None
            if queued.requirements.fits(free):
                batch.append(queued)
                free = free.minus(queued.requirements)
                if len(batch) >= want:
                    break
        return batch

    def _claim_loop(self) -> None:
        backoff = Backoff(initial=0.2, maximum=5.0)
        while not self.stopping.is_set():
            with self.cond:
                batch: list[_Queued] = []
                while not self.stopping.is_set():
                    if self.claiming.is_set():
                        batch = self._pick()
                        if batch:
                            break
                    self.cond.wait(1.0)
                if not batch:
                    return
                load = len(self.runs.jobs) / self.slots
                deep = self._deep()
            if not deep:
                delay = self.config.claim_delay * load + random.uniform(0, 0.002)
                if self.stopping.wait(delay):
                    return
            try:
                self._claim(batch)
                backoff.reset()
            except SkedError as exc:
                log.warning("job worker %s: claim failed: %s", self.node, exc)
                self.stopping.wait(backoff.next())

    def _claim(self, batch: list[_Queued]) -> None:
        """Claim ``batch`` in one transaction; when that fails and it holds more than one
        job, claim them one by one (another node took some of them, not all)."""
        with self.cond:  # claimed (or changed) while we waited: not ours to try
            batch = [q for q in batch if self.queued.get(q.kv.key) is q]
        if not batch:
            return
        claimed = self._sent(batch, lambda: self.store.claim_many(
            [q.kv for q in batch], self.node, self.node_revision, log_url=self.log_url,
            limits=self.limits))
        if claimed is None and len(batch) > 1:
            with self.cond:
                self.stats.conflicts += 1
            for queued in batch:
                self._claim([queued])
            return
        with self.cond:
            for queued in batch:
                if self.queued.get(queued.kv.key) is queued:
                    del self.queued[queued.kv.key]  # the watch will confirm; do not retry
            if claimed is None:
                self.stats.conflicts += 1
                return
            runs = self._started(claimed)
        self._announce(runs)
        for run in runs:
            self.runs.launch(run)

    def _started(self, claimed: list[StoredJob]) -> list[RunningJob]:
        """Count the jobs just claimed as running (call with ``cond`` held)."""
        runs: list[RunningJob] = []
        for stored in claimed:
            self.stats.claimed += 1
            METRICS.job_claims.inc()
            runs.append(self.runs.add(stored))
        return runs

    def _announce(self, runs: list[RunningJob]) -> None:
        """Log the jobs just claimed and record their events."""
        for run in runs:
            job = run.stored.job
            log.info("job %s claimed by %s (attempt %d): %s", job.id, self.node,
                     job.attempts, command_line(job))
            self.runs.events.record("job", job.id, "running", f"claimed by node {self.node}",
                                    node=self.node, attempt=job.attempts)

    def _refill(self, ends: list[JobEnd]) -> list[RunningJob] | None:
        """From a deep queue, claim the jobs that take the slots of the ``ends`` in the
        transaction that writes those ends (one transaction instead of two per job): the
        jobs claimed, to launch; None when it wrote nothing (nothing to claim, or a
        compare failed: the ends are then written alone, and the jobs go back to the
        queue). Raises what the store raised (the jobs go back to the queue too)."""
        with self.cond:
            if not self.claiming.is_set() or self.stopping.is_set() or not self._deep():
                return None
            batch = self._pick([end.job for end in ends])
            for queued in batch:
                del self.queued[queued.kv.key]
                self._taken[queued.kv.key] = queued
            node_revision = self.node_revision
        if not batch:
            return None
        try:
            # an answer lost in flight is read back: the ends were written with the
            # claim or not at all
            claimed = self._sent(batch, lambda: self.store.finish_and_claim(
                ends, [q.kv for q in batch], self.node, node_revision,
                log_url=self.log_url, limits=self.limits))
        except BaseException:
            self._give_back(batch)
            raise
        if claimed is None:
            self._give_back(batch)
            return None
        with self.cond:
            for queued in batch:
                self._taken.pop(queued.kv.key, None)
            self.stats.claimed_with_ends += len(claimed)
            runs = self._started(claimed)
        self._announce(runs)
        return runs

    def _sent(self, batch: list[_Queued],
              claim: Callable[[], list[StoredJob] | None]) -> list[StoredJob] | None:
        """``claim()``'s jobs (None: a compare failed); when the store failed while it
        was in flight, what :meth:`_read_back` finds, or the store's error when it was
        not written (tried again by the caller)."""
        try:
            return claim()
        except BackendError:
            claimed = self._read_back(batch)
            if claimed is None:
                raise
            return claimed

    def _read_back(self, batch: list[_Queued]) -> list[StoredJob] | None:
        """A claim of ``batch`` failed while it was in flight: whether the store applied
        it, read back from the jobs' records (tried again until the store answers, or
        the worker stops). The jobs it claimed, to run (claimed jobs nobody runs would
        stay running on this node until it registers again), or None: not applied."""
        backoff = Backoff(initial=0.2, maximum=5.0)
        while True:
            try:
                claimed = self.store.claimed_by([q.kv for q in batch], self.node)
            except BackendError as exc:
                log.warning("job worker %s: a claim's outcome is unknown, and reading it "
                            "back failed: %s", self.node, exc)
                if self.stopping.wait(backoff.next()):
                    return None  # taken back when the node registers again
                continue
            if claimed is not None:
                log.info("job worker %s: a claim that failed in flight was written: %d "
                         "job(s)", self.node, len(claimed))
            return claimed

    def _give_back(self, batch: list[_Queued]) -> None:
        """Jobs taken for a claim that was not written: queued again, unless a delete was
        seen meanwhile (another node claimed them, or they were canceled)."""
        with self.cond:
            for queued in batch:
                if self._taken.pop(queued.kv.key, None) is queued:
                    self.queued[queued.kv.key] = queued
            self.cond.notify_all()
