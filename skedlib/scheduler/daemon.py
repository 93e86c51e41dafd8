"""The scheduler daemon: keeps every service of every cluster placed.

::

    snapshot cache (list + watch) ──▶ affected (cluster, service) pairs ──▶ work queue
                                                                              │
              workers: try-lock locks/<cluster>/<service> ◀───────────────────┘
                       plan on the cached snapshot with the service's Scheduler plugin
                       → validate the plan → commit it fenced by the lock
                       → write the rollout and the service's status → requeue on conflict

- **Watching.** A :class:`~skedlib.scheduling.SnapshotCache` follows the whole keyspace
  (list, then watch from the list's revision + 1; after a compaction it lists again) and
  decodes every event once. Each change it applies is mapped to the pairs it affects by
  :func:`~skedlib.scheduler.affected.affected_pairs` (a cluster → its services, a host
  that joins or leaves → the services of the clusters that may use it, a task rejected or
  on a host that is gone → its service, a health flip → its service …).
- **Queue.** A de-duplicating :class:`~skedlib.scheduler.queue.WorkQueue`: a pair queued
  twice runs once; a pair that changes while it is being worked on runs again after.
- **Locks.** A worker takes ``locks/<cluster>/<service>`` with a non-blocking try-lock.
  If another daemon holds it, that daemon does the work (it saw the same change); this one
  only checks again after ``lock_ttl`` in case the holder died. The lock is kept while
  planning and committing, and every write is fenced with its token, so a daemon that
  stalled past its lease cannot write. All the daemon's locks are bound to one lease
  (renewed once for all), and a lock is kept a moment after its run, until a worker finds
  the queue empty (or the daemon stops).
- **Pipelining.** The cached snapshot is held to plan, not while a commit that only adds
  tasks is on the wire: those tasks are written into the snapshot first, so the next
  service is planned meanwhile, counting them (see :mod:`skedlib.scheduler.run`).
- **Running a scheduler.** The cached snapshot, the service's scheduler
  (``service.scheduler``, from the plugin registry; one not installed makes only that
  service unschedulable), :func:`~skedlib.scheduling.validate_plan` (invalid parts are
  dropped and planned again), :func:`~skedlib.scheduling.commit_plan`, then the rollout
  (:mod:`skedlib.scheduler.rollouts`) and the status (:mod:`skedlib.scheduler.status`).
  Conflicts and dropped parts requeue the pair at once (with a small growing jittered
  delay); unschedulable tasks are retried when a host changes, when a task goes away, and
  every ``min(resync, 10)`` seconds.
- **Deleted services.** Tasks of a service that no cluster lists any more (or whose
  cluster or service was deleted) are stopped, and the status record removed.
- **Resync.** Every ``resync`` seconds every pair is queued: the safety net.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import sys
import threading
import time
import uuid

from skedlib.errors import BackendError
from skedlib.events import EventLog
from skedlib.metrics import METRICS
from skedlib.models import ServiceStatus
from skedlib.plugins import Registry, get_registry
from skedlib.runtime import Store
from skedlib.scheduler.affected import Pair, affected_pairs, all_pairs, label
from skedlib.scheduler.queue import WorkQueue
from skedlib.scheduler.run import PairRunner, RunOutcome
from skedlib.scheduling import Change, Snapshot, SnapshotCache

__all__ = ["GC_THRESHOLDS", "SWITCH_INTERVAL", "Pair", "RunOutcome", "SchedulerDaemon",
           "tune_gc", "tune_switch_interval"]

log = logging.getLogger("skedlib.scheduler")

GC_THRESHOLDS = (10_000, 20, 20)
"""The cyclic garbage collector's thresholds :func:`tune_gc` sets (Python's default:
``(700, 10, 10)``)."""


def tune_gc() -> tuple[int, int, int]:
    """Set this process's garbage collector for a scheduler daemon; the thresholds before.

    A process setting, for a program whose main work is a :class:`SchedulerDaemon`
    (``skedlib-scheduler`` calls it at its start), not for the library: it acts on every
    thread of the process. The daemon's snapshot is tens of thousands of long-lived
    objects (tasks, hosts, their lists and sets), and at Python's default thresholds each
    growth of it by a quarter sets off a full collection that walks all of them while
    every thread stands still. :data:`GC_THRESHOLDS` makes a young collection wait for
    10,000 new objects instead of 700, and a full one for 400 young ones instead of 100
    (besides Python's own rule that it waits until the objects that survived grow by a
    quarter); objects without cycles are freed at once as before, cyclic garbage a
    little later.
    """
    before = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    return before


SWITCH_INTERVAL = 0.0002
"""Seconds a thread runs Python before it must let a waiting thread have the interpreter,
as :func:`tune_switch_interval` sets it (Python's default: 0.005)."""


def tune_switch_interval() -> float:
    """Set this process's thread switch interval for a scheduler daemon; the one before.

    A process setting, as :func:`tune_gc`. A thread that comes back from a call made
    without the interpreter lock (an SQLite statement, a gRPC call) waits for the thread
    that holds it, and a thread running Python lets go only when the switch interval is
    up: 5 ms by default. A commit is a sequence of such calls, and commits wait for each
    other (SQLite writes one at a time; commits on the same hosts go in order) while the
    other workers plan, so they are the daemon's critical path: a commit of 500 tasks on
    SQLite took 30 to 45 ms beside three planning workers, 10 to 13 ms alone. At 0.2 ms
    it gets the interpreter back sooner; the planning threads switch more often, which
    cost no measurable CPU (docs/performance.md, "The thread switch interval").
    """
    before = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    return before


class SchedulerDaemon:
    """Runs the registered schedulers over the desired state, for as long as it runs.

    >>> daemon = SchedulerDaemon(Store.open("sqlite:///tmp/sked.db"))  # doctest: +SKIP
    >>> daemon.start(); daemon.wait_ready(10)                          # doctest: +SKIP
    >>> daemon.stop()                                                  # doctest: +SKIP

    Several daemons may run against one store: per-pair try-locks keep them from doing
    the same work twice, per-host guards in :func:`~skedlib.scheduling.commit_plan` keep
    them from overfilling a host, and fencing keeps a stalled one from writing.
    """

    def __init__(self, store: Store, registry: Registry | None = None, *, workers: int = 4,
                 lock_ttl: float = 10.0, resync: float = 30.0,
                 events: bool = True) -> None:
        self.store = store
        self.keys = store.keys
        self.registry = registry or get_registry()
        self.workers = max(1, workers)
        self.lock_ttl = lock_ttl
        self.resync = resync
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.queue: WorkQueue[Pair] = WorkQueue()
        self.cache = SnapshotCache(store, on_change=self._changed,
                                   on_reset=self._listed)
        """The desired and issued state, kept current by the watch; every run plans
        on it (see :class:`~skedlib.scheduling.SnapshotCache`)."""
        self.events = EventLog(store, "scheduler", enabled=events)
        """Records placed, moved and unschedulable events (see :mod:`skedlib.events`)."""
        self.runner = PairRunner(self.cache, self.registry, holder=self.holder,
                                 lock_ttl=lock_ttl, resync=resync, events=self.events)
        """Does each run (lock, plan, commit, rollout, status)."""
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._threads: list[threading.Thread] = []
        self.runs = 0
        """Runs done (skipped ones included): a figure for tests and benchmarks."""
        METRICS.add_source("skedlib_scheduler_queue_depth", self._queue_depth)
        METRICS.add_source("skedlib_scheduler_unschedulable_tasks", self._unschedulable)

    # -- life cycle -------------------------------------------------------------------
    def start(self) -> None:
        """Start watching, the workers and the resync timer; returns at once."""
        if self._threads:
            raise RuntimeError("the scheduler daemon was already started")
        log.info("scheduler %s starting: %d workers, prefix %r", self.holder, self.workers,
                 self.keys.prefix)
        for i in range(self.workers):
            self._threads.append(threading.Thread(
                target=self._work_loop, name=f"scheduler-worker-{i}", daemon=True))
        self._threads.append(threading.Thread(target=self._resync_loop,
                                              name="scheduler-resync", daemon=True))
        for t in self._threads:
            t.start()
        self.cache.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the keyspace was listed once and every pair was queued."""
        return self._ready.wait(timeout)

    def run(self, stop_event: threading.Event) -> None:
        """Start, wait for ``stop_event``, then :meth:`stop`."""
        self.start()
        stop_event.wait()
        self.stop()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop watching and working; runs in progress finish (or time out). Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        self.queue.close()
        self.cache.stop()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self.runner.close()
        self.events.close(timeout=max(0.5, min(5.0, deadline - time.monotonic())))
        log.info("scheduler %s stopped", self.holder)

    # -- watching (called by the cache, under its lock) -------------------------------
    # A daemon that was not started (run_once from a test or a script) lists and records
    # too, but has no workers: it queues nothing.
    def _listed(self, snap: Snapshot) -> None:
        if not self.cache.started:
            return
        for pair in sorted(all_pairs(snap)):
            self.queue.add(pair)
        self._ready.set()

    def _changed(self, snap: Snapshot, change: Change) -> None:
        if not self.cache.started:
            return
        # queued while the cache is locked: the pairs' runs see this change
        for pair in sorted(affected_pairs(snap, change, self.runner.unschedulable)):
            self.queue.add(pair)

    def _resync_loop(self) -> None:
        while not self._stop.wait(self.resync):
            for pair in self.pairs():
                self.queue.add(pair)

    # -- working ----------------------------------------------------------------------
    def _work_loop(self) -> None:
        while not self._stop.is_set():
            pair = self.queue.get(timeout=0.25)
            if pair is None:  # nothing to do: give back the locks kept after runs
                self.runner.sweep_locks()
                continue
            try:
                outcome = self.run_once(pair)
            except BackendError as exc:
                METRICS.runs.labels("error").inc()
                delay = self._backoff(pair, base=0.5, cap=10.0)
                log.warning("%s: %s (retrying in %.1fs)", label(pair), exc, delay)
                self.queue.add_after(pair, delay)
            except Exception:  # a bug must not take the daemon down
                METRICS.runs.labels("error").inc()
                delay = self._backoff(pair, base=1.0, cap=30.0)
                log.exception("%s: internal error (retrying in %.1fs)", label(pair), delay)
                self.queue.add_after(pair, delay)
            else:
                METRICS.runs.labels("skipped" if outcome.skipped else
                                    "conflict" if outcome.conflicts or outcome.fenced_out
                                    else "done").inc()
                if outcome.retry_after is not None:
                    self.queue.add_after(pair, outcome.retry_after)
            finally:
                self.queue.done(pair)

    def _backoff(self, pair: Pair, base: float, cap: float) -> float:
        return self.runner.backoff(pair, base, cap)

    def run_once(self, pair: Pair) -> RunOutcome:
        """Lock the pair, plan it and commit; the workers' step (see
        :meth:`~skedlib.scheduler.run.PairRunner.run_once`).

        A started daemon plans on its watch-fed cache; one that was not started (a test,
        a one-shot script) reads the keyspace first.
        """
        self.runs += 1
        return self.runner.run_once(pair)

    # -- introspection ----------------------------------------------------------------
    def _queue_depth(self) -> dict[tuple[str, ...], float]:
        return {(): float(self.queue.pending())} if self._threads else {}

    def _unschedulable(self) -> dict[tuple[str, ...], float]:
        statuses = [self.last_status(pair) for pair in list(self.runner.unschedulable)]
        return {(): float(sum(s.unschedulable for s in statuses if s is not None))}

    def idle(self) -> bool:
        """True when nothing is queued, being worked on, or waiting for a retry."""
        return self.queue.pending() == 0

    def last_status(self, pair: Pair) -> ServiceStatus | None:
        """The status this daemon computed in its last run of ``pair`` (written or not:
        a record is only rewritten when it changes), or None."""
        return self.runner.last_status(pair)

    def pairs(self) -> list[Pair]:
        """Every pair the daemon currently knows of."""
        with self.cache.view() as snap:
            return sorted(all_pairs(snap))
