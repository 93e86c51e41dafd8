"""Claiming: an :class:`~skedlib.runtime.Informer` follows ``jobs/status/queued/`` into a
local FIFO of claimable jobs (the queued key carries the record, so no further reads are
needed), and the claimer picks a job that fits the free slots and resources, waits a
little in proportion to how loaded this node is (so idle nodes win the race: the
work-stealing design's answer to contention and fairness), then claims it with one transaction."""

from __future__ import annotations

import logging
import random
import threading

import msgspec

from skedlib.errors import SkedError
from skedlib.jobs._config import WorkerConfig, WorkerStats, spawn
from skedlib.jobs._running import Runs, command_line
from skedlib.jobs.models import JobRequirements
from skedlib.jobs.store import JobStore
from skedlib.metrics import METRICS
from skedlib.runtime import Backoff, Informer
from skedlib.store.base import KeyValue, ListResult, WatchEvent

__all__ = ["ClaimQueue"]

log = logging.getLogger("skedlib.jobs.worker")


class _ReqOnly(msgspec.Struct):
    requirements: JobRequirements = msgspec.field(default_factory=JobRequirements)


_req_decoder = msgspec.json.Decoder(_ReqOnly)


def _requirements(value: bytes) -> JobRequirements:
    return _req_decoder.decode(value).requirements


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
        self.queued: dict[str, KeyValue] = {}
        self._informer: Informer | None = None
        self._claimer: threading.Thread | None = None

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
            self.queued = {kv.key: kv for kv in listed.items}
            self.cond.notify_all()

    def _changed(self, events: list[WatchEvent]) -> None:
        with self.cond:
            for ev in events:
                if ev.kind == "put":
                    self.queued.pop(ev.key, None)  # a requeued job goes to the back
                    self.queued[ev.key] = KeyValue(ev.key, ev.value, ev.revision,
                                                   ev.revision)
                else:
                    self.queued.pop(ev.key, None)
            self.cond.notify_all()

    # -- claiming ----------------------------------------------------------------------------
    def _pick(self) -> KeyValue | None:
        """Up to ``claim_window`` of the oldest queued jobs that fit; one at random."""
        if len(self.runs.jobs) >= self.slots:
            return None
        free = self.capacity.minus(self.runs.used())
        fitting: list[KeyValue] = []
        for kv in self.queued.values():
            try:
                req = _requirements(kv.value)
            except msgspec.DecodeError:
                continue
            if req.fits(free):
                fitting.append(kv)
                if len(fitting) >= self.config.claim_window:
                    break
        return random.choice(fitting) if fitting else None

    def _claim_loop(self) -> None:
        backoff = Backoff(initial=0.2, maximum=5.0)
        while not self.stopping.is_set():
            with self.cond:
                kv = None
                while not self.stopping.is_set():
                    if self.claiming.is_set():
                        kv = self._pick()
                        if kv is not None:
                            break
                    self.cond.wait(1.0)
                if kv is None:
                    return
                load = len(self.runs.jobs) / self.slots
                # A deep queue saturates every node anyway: holding back helps nobody.
                deep = len(self.queued) > 2 * self.config.claim_window
            if not deep:
                delay = self.config.claim_delay * load + random.uniform(0, 0.002)
                if self.stopping.wait(delay):
                    return
            with self.cond:
                if self.queued.get(kv.key) is not kv:
                    continue  # claimed (or changed) while we waited
            try:
                self._claim(kv)
                backoff.reset()
            except SkedError as exc:
                log.warning("job worker %s: claim failed: %s", self.node, exc)
                self.stopping.wait(backoff.next())

    def _claim(self, kv: KeyValue) -> None:
        stored = self.store.claim(kv, self.node, self.node_revision, log_url=self.log_url,
                                  limits=self.limits)
        with self.cond:
            if self.queued.get(kv.key) is kv:
                del self.queued[kv.key]  # the watch will confirm; do not retry it
            if stored is None:
                self.stats.conflicts += 1
                return
            self.stats.claimed += 1
            METRICS.job_claims.inc()
            run = self.runs.add(stored)
        log.info("job %s claimed by %s (attempt %d): %s", stored.job.id, self.node,
                 stored.job.attempts, command_line(stored.job))
        self.runs.events.record("job", stored.job.id, "running",
                                f"claimed by node {self.node}", node=self.node,
                                attempt=stored.job.attempts)
        self.runs.launch(run)
