"""One run of the scheduler for a ``(cluster, service)`` pair: the daemon workers' step.

:meth:`PairRunner.run_once` takes the pair's lock (a try-lock: when another daemon holds
it, that daemon does the work), plans on the :class:`~skedlib.scheduling.SnapshotCache`'s
snapshot with the service's Scheduler plugin, drops what
:func:`~skedlib.scheduling.validate_plan` refuses, commits the rest with
:func:`~skedlib.scheduling.commit_plan` fenced by the lock, writes the commit through to
the cache, then stores the rollout (:mod:`skedlib.scheduler.rollouts`) and the service's
status (:mod:`skedlib.scheduler.status`) when they changed. The status a run leaves when
its whole plan commits goes with the commit's last transaction (the common run is one
transaction, not two); after a conflict, or when the store changed meanwhile, the status
is written on its own. An exec scheduler's program
runs between two borrowings of the snapshot (:class:`~skedlib.scheduling.ExecRun`). A
pair that is not wanted any more has its tasks stopped and its status removed. What it
did is a :class:`RunOutcome`, with the delay after which the pair should run again.

**Pipelined commits.** The snapshot is borrowed to plan and to prepare the commit, not
while the transactions travel: a plan that only adds tasks writes them into the snapshot
(:meth:`~skedlib.scheduling.SnapshotCache.place_pending`) and sends its commit after
giving the snapshot back, so another worker plans the next service meanwhile, counting
those tasks. Its commit is guarded, host by host, by the marker revisions the commit in
flight leaves (:class:`~skedlib.scheduling.commit.InflightAllocs`); a plan that stops or
moves tasks commits while it holds the snapshot, as the room it frees is not free before.

**Locks.** In a started daemon the pairs' locks are bound to one lease, renewed for all
of them (:class:`_HeldLocks`): taking a lock is one transaction. A lock is kept for a
moment after its run (a pair often runs again at once: its commit's own changes, a
conflict), and given back when its worker finds nothing to do, or when the daemon stops.
"""

from __future__ import annotations

import logging
import random
import threading
import time

import msgspec

from skedlib.codecs import encode
from skedlib.errors import LeaseExpired, PluginError
from skedlib.events import EventLog
from skedlib.locks import KeptLease, Lock
from skedlib.metrics import METRICS
from skedlib.models import EXTERNAL_SCHEDULER, Service, ServiceStatus, scheduler_name
from skedlib.plugins import Registry
from skedlib.runtime import Backoff, Store
from skedlib.scheduler.affected import Pair, label
from skedlib.scheduler.rollouts import with_rollout, write_rollout
from skedlib.scheduler.status import compute_status, same_status
from skedlib.scheduling import (
    CommitResult,
    ExecRun,
    ExecScheduler,
    ExecSchedulerError,
    Plan,
    PlanProblem,
    Scheduler,
    SchedulingResult,
    Snapshot,
    SnapshotCache,
    commit_plan,
    validate_plan,
)
from skedlib.scheduling.commit import PreparedCommit, prepare_commit
from skedlib.store.base import Delete, Op, Put

__all__ = ["LOGGED_EACH", "PairRunner", "RunOutcome"]

log = logging.getLogger("skedlib.scheduler")

LOGGED_EACH = 10
"""A run that places, moves or stops at most this many tasks logs a line for each at
INFO; a larger one logs one INFO line with its counts and each task's line at DEBUG. A
deploy of thousands of tasks is then not thousands of lines (formatting and writing
them took a quarter of the daemon's throughput), and every placement is still in the
task's events (``sked describe``)."""


def _each_level(changed: int) -> int:
    """The level of a run's line per task (:data:`LOGGED_EACH`)."""
    return logging.INFO if changed <= LOGGED_EACH else logging.DEBUG


class RunOutcome(msgspec.Struct, kw_only=True):
    """What one run for a pair did (returned by :meth:`SchedulerDaemon.run_once`)."""

    pair: Pair
    skipped: bool = False
    """Another daemon held the pair's lock."""
    placed: list[str] = msgspec.field(default_factory=list)
    stopped: list[str] = msgspec.field(default_factory=list)
    conflicts: list[str] = msgspec.field(default_factory=list)
    invalid: list[str] = msgspec.field(default_factory=list)
    """Parts of the plan that failed validation (dropped, planned again)."""
    fenced_out: bool = False
    status: ServiceStatus | None = None
    retry_after: float | None = None
    """Seconds after which the pair should run again (None: only on a change)."""


class _HeldLocks:
    """The pairs' locks of a started daemon: on one kept lease, kept between runs.

    A pair's lock is used by one worker at a time (the work queue never hands a pair to
    two); between runs it waits here, held, until :meth:`sweep` gives back the ones not
    used for ``hold`` seconds.
    """

    def __init__(self, store: Store, holder: str, ttl: float, hold: float) -> None:
        self._store = store
        self._holder = holder
        self._ttl = ttl
        self._hold = hold
        self._mutex = threading.Lock()
        self._lease: KeptLease | None = None
        self._idle: dict[Pair, tuple[Lock, float]] = {}
        self._closed = False

    def _session(self, renew: bool = False) -> KeptLease:
        with self._mutex:
            if self._closed:
                raise LeaseExpired(f"{self._store.keys.prefix}locks: the scheduler stopped")
            lease = self._lease
            if lease is None or renew or lease.lost.is_set():
                if lease is not None:
                    # lost, or refused by the store: its keys are gone or going, and the
                    # locks on it must not pass for held any more
                    lease.abandon()
                    lease.lost.set()
                # the locks on the old lease went with it
                self._idle = {p: e for p, e in self._idle.items() if e[0].held}
                lease = self._lease = KeptLease(self._store.backend, self._ttl)
            return lease

    def take(self, pair: Pair) -> Lock | None:
        """The pair's lock, held (kept from the last run, or taken now); None when
        somebody else holds it."""
        with self._mutex:
            entry = self._idle.pop(pair, None)
        if entry is not None and entry[0].held:
            return entry[0]
        key = self._store.keys.lock(*pair)
        for renew in (False, True):
            lock = Lock(self._store.backend, key, ttl=self._ttl, holder=self._holder,
                        lease=self._session(renew))
            try:
                return lock if lock.try_acquire() else None
            except LeaseExpired:
                continue  # the store ended the lease before its renewal: a new one
        return None

    def keep(self, pair: Pair, lock: Lock, fenced_out: bool = False) -> None:
        """Keep ``lock`` after the pair's run (released when the daemon stopped, or
        when its fence failed: the next run takes the lock again)."""
        if fenced_out or not lock.held:
            lock.release()  # deletes the key only while it is still this holder's
        if lock.held:  # kept, or its key could not be deleted: given back by a sweep
            with self._mutex:
                if not self._closed:
                    self._idle[pair] = (lock, time.monotonic())
                    return
            lock.release()

    def sweep(self, everything: bool = False) -> None:
        """Give back the locks not used for ``hold`` seconds (``everything``: all)."""
        now = time.monotonic()
        cutoff = now - (0.0 if everything else self._hold)
        with self._mutex:
            old = [p for p, (_, since) in self._idle.items() if everything or since <= cutoff]
            locks = [(p, self._idle.pop(p)[0]) for p in old]
        for pair, lock in locks:
            lock.release()
            if lock.held:  # the store did not answer: try again at the next sweep
                with self._mutex:
                    if not self._closed:
                        self._idle.setdefault(pair, (lock, now))

    def close(self) -> None:
        """Give every lock back and end the lease."""
        with self._mutex:
            self._closed = True
        self.sweep(everything=True)
        with self._mutex:
            lease, self._lease = self._lease, None
        if lease is not None:
            lease.revoke()


class _Step(msgspec.Struct, kw_only=True):
    """A run between planning and committing (what :meth:`PairRunner._schedule` hands
    to :meth:`PairRunner._finish`)."""

    pair: Pair
    service: Service
    result: SchedulingResult
    plan: Plan
    problems: list[PlanProblem]
    prepared: PreparedCommit | None = None
    """The plan's commit (None: nothing to commit)."""
    pipelined: bool = False
    """The commit is sent after giving the snapshot back (else it was sent already)."""
    status: ServiceStatus | None = None
    """The status the run leaves if every part of the plan commits, written by the
    commit's last transaction (None: unchanged, or left to the run's end)."""
    res: CommitResult | None = None
    outcome: RunOutcome


class PairRunner:
    """Runs the scheduler for one pair at a time, on ``cache`` (thread-safe: runs hold
    the cache's view for their whole length)."""

    def __init__(self, cache: SnapshotCache, registry: Registry, *, holder: str,
                 lock_ttl: float, resync: float, events: EventLog | None = None) -> None:
        self.cache = cache
        self.store = cache.store
        self.keys = cache.store.keys
        self.registry = registry
        self.holder = holder
        self.lock_ttl = lock_ttl
        self.resync = resync
        self.unschedulable: set[Pair] = set()
        """Pairs whose last run left tasks that fit no host (under the cache's lock)."""
        self._failures: dict[Pair, int] = {}
        self._logged: dict[Pair, str] = {}
        self._last: dict[Pair, ServiceStatus] = {}
        self.events = events if events is not None else EventLog(cache.store, "scheduler",
                                                                 enabled=False)
        """Where placements are recorded (placed, moved, unschedulable)."""
        self._unschedulable_noted: dict[Pair, dict[str, str]] = {}
        self._locks = _HeldLocks(self.store, holder, lock_ttl, hold=min(1.0, lock_ttl / 4))

    def sweep_locks(self) -> None:
        """Give back the locks kept after runs that have not been used for a moment."""
        self._locks.sweep()

    def close(self) -> None:
        """Give back every lock kept and end their lease (the daemon stopped)."""
        self._locks.close()

    def last_status(self, pair: Pair) -> ServiceStatus | None:
        """The status computed in the last run of ``pair``, or None."""
        return self._last.get(pair)

    def run_once(self, pair: Pair) -> RunOutcome:
        """Lock the pair, plan it and commit.

        Raises :class:`~skedlib.errors.BackendError` when the store cannot be reached.
        """
        started = self.cache.started
        if started:
            lock = self._locks.take(pair)
        else:  # a run from a test or a script: a lock of its own, given back after
            lock_key = self.keys.lock(*pair)
            lock = Lock(self.store.backend, lock_key, ttl=self.lock_ttl, holder=self.holder)
            # a get first: a lock that is held costs nothing (try_acquire grants a lease)
            if self.store.get(lock_key) is not None or not lock.try_acquire():
                lock = None
        if lock is None:
            return RunOutcome(pair=pair, skipped=True, retry_after=self.lock_ttl)
        fenced_out = True  # until the run says otherwise (an error: take it again)
        try:
            if not started:
                self.cache.refresh()
            with self.cache.view() as snap:
                staged = self._exec_run(pair, snap)
                if staged is None:
                    step = self._schedule(pair, lock, snap)
            if staged is not None:
                staged.execute()  # a program's seconds do not hold the snapshot
                with self.cache.view() as snap:
                    step = self._schedule(pair, lock, snap, staged)
            outcome = step if isinstance(step, RunOutcome) else self._finish(step, lock)
            fenced_out = outcome.fenced_out
            return outcome
        finally:
            if started:
                self._locks.keep(pair, lock, fenced_out)
            else:
                lock.release()

    def _exec_run(self, pair: Pair, snap: Snapshot) -> ExecRun | None:
        """The first step of an exec scheduler's run, when the pair's scheduler is one."""
        cluster = snap.clusters.get(pair[0])
        service = snap.services.get(pair[1])
        if cluster is None or service is None or pair[1] not in cluster.services:
            return None
        try:
            scheduler = self._scheduler(service.scheduler)
        except PluginError:
            return None  # said in the status by _schedule
        if not isinstance(scheduler, ExecScheduler):
            return None
        return ExecRun.start(scheduler, snap, cluster, service)

    def backoff(self, pair: Pair, base: float, cap: float) -> float:
        """The delay before the pair's next try: grows with its failures in a row (one
        count per pair, whatever failed), jittered by ±50%."""
        n = self._failures.get(pair, 0) + 1
        self._failures[pair] = n
        return Backoff(initial=base, maximum=cap).delay(n) * random.uniform(0.5, 1.5)

    def _schedule(self, pair: Pair, lock: Lock, snap: Snapshot,
                  staged: ExecRun | None = None) -> RunOutcome | _Step:
        """Plan (holding the snapshot); a finished run, or the step to commit."""
        cluster = snap.clusters.get(pair[0])
        service = snap.services.get(pair[1])
        if cluster is None or service is None or pair[1] not in cluster.services:
            return self._stop_all(pair, snap, lock)
        if staged is not None and staged.stale(cluster, service):
            # changed while its exec scheduler ran: plan the service as it is now
            return RunOutcome(pair=pair, retry_after=0.05)
        outcome = RunOutcome(pair=pair)
        if service.scheduler == EXTERNAL_SCHEDULER:
            # placed by something outside the daemon: its tasks are left alone, and
            # the status counts them (and says so) instead of reporting an error
            outcome.status = self._write_status(lock, pair, compute_status(
                pair, service, snap, external=True))
            return outcome
        try:
            scheduler = self._scheduler(scheduler_name(service.scheduler))
        except PluginError as exc:
            self._note(pair, str(exc), warn=True)
            outcome.status = self._write_status(lock, pair, compute_status(
                pair, service, snap, state="error", message=str(exc)))
            return outcome
        try:
            with METRICS.plan_seconds.time():
                result = staged.plan(snap) if staged is not None else \
                    scheduler.plan(snap, cluster, service)
            if not isinstance(result, SchedulingResult):
                raise PluginError(f"plan() returned {type(result).__name__}, not a "
                                  "SchedulingResult")
        except Exception as exc:
            message = f"scheduler {service.scheduler!r} failed: {exc}"
            if isinstance(exc, ExecSchedulerError):  # the program's fault: no traceback
                self._note(pair, message, warn=True)
            else:
                log.exception("%s: %s", label(pair), message)
            outcome.status = self._write_status(lock, pair, compute_status(
                pair, service, snap, state="error", message=message))
            outcome.retry_after = self.backoff(pair, base=1.0, cap=30.0)
            return outcome
        plan, problems = self._valid_part(snap, result.plan)
        outcome.invalid = sorted({p.task_id for p in problems})
        for p in problems:
            log.warning("%s: plan refused %s on %s: %s", label(pair), p.task_id, p.host,
                        p.reason)
        step = _Step(pair=pair, service=service, result=result, plan=plan,
                     problems=problems, outcome=outcome)
        if not plan:
            step.res = CommitResult()
            return step
        step.pipelined = not plan.stop and all(
            (old := snap.tasks.get(tid)) is None or not old.host for tid in plan.place_ids())
        step.prepared = prepare_commit(self.store, snap, plan, [lock.fence()],
                                       inflight=self.cache.inflight,
                                       also=self._status_ops(step, snap))
        try:
            if step.pipelined:
                # planned on by others while it is sent
                self.cache.place_pending(plan, step.prepared.values)
            else:  # it frees room: not free for others before it is committed
                with METRICS.commit_seconds.time():
                    step.res = step.prepared.run()
        except BaseException:
            step.prepared.cancel()
            raise
        return step

    def _status_ops(self, step: _Step, snap: Snapshot) -> list[Op]:
        """The put of the status the run leaves if its whole plan commits, when that
        differs from the one stored: sent with the commit (one transaction a run, not
        two). A rollout's run writes its status at the end, with the rollout's state."""
        if step.result.rollout is not None:
            return []
        plan = step.plan
        status = compute_status(step.pair, step.service, snap, result=step.result,
                                plan=plan, problems=step.problems,
                                commit=CommitResult(committed=(*plan.place_ids(),
                                                               *plan.stop)))
        if same_status(self.cache.status(*step.pair), status):
            return []
        step.status = status
        return [Put(self.keys.service_status(*step.pair), encode(status))]

    def _finish(self, step: _Step, lock: Lock) -> RunOutcome:
        """Send the commit (the snapshot is free meanwhile), record it, write the
        rollout and the status."""
        try:
            return self._finish_commit(step, lock)
        finally:
            if step.prepared is not None:
                step.prepared.cancel()  # nothing if it ran; its claims go in any case

    def _finish_commit(self, step: _Step, lock: Lock) -> RunOutcome:
        pair, service, result, plan = step.pair, step.service, step.result, step.plan
        outcome, problems = step.outcome, step.problems
        if step.pipelined and step.prepared is not None:
            try:
                with METRICS.commit_seconds.time():
                    step.res = step.prepared.run()
            except BaseException:
                self.cache.record(plan, CommitResult())  # take its placements out again
                raise
        res = step.res
        assert res is not None
        with self.cache.view() as snap:
            self._log_commit(pair, snap, plan, res, outcome, result.placed)
            self._note_unschedulable(pair, result.unschedulable)
            self.cache.record(plan, res)
            if res.also_revision and step.status is not None:  # written by the commit
                self.cache.record_status(*pair, step.status, res.also_revision)
            if step.prepared is not None:
                step.prepared.release()  # its markers' revisions are in the snapshot
            if res.fenced_out:
                log.warning("%s: lost the lock while committing; will plan again",
                            label(pair))
                outcome.fenced_out = True
                outcome.retry_after = self.backoff(pair, base=0.1, cap=5.0)
                return outcome
            self._note(pair, result.message)
            rollout = write_rollout(self.cache, snap, pair, service, result.rollout,
                                    lock.fence()) if result.rollout is not None else None
            status = compute_status(pair, service, snap, result=result, plan=plan,
                                    commit=res, problems=problems)
            if result.unschedulable:  # read by the watch's callbacks, under the lock
                self.unschedulable.add(pair)
            else:
                self.unschedulable.discard(pair)
        outcome.status = self._write_status(lock, pair, with_rollout(status, service, rollout))
        if res.conflicts or problems:
            outcome.retry_after = self.backoff(pair, base=0.05, cap=5.0)
        else:
            self._failures.pop(pair, None)
            if result.unschedulable:
                outcome.retry_after = min(self.resync, 10.0)
        if result.retry_after is not None:
            outcome.retry_after = min(outcome.retry_after or result.retry_after,
                                      result.retry_after)
        return outcome

    def _scheduler(self, name: str) -> Scheduler:
        scheduler = self.registry.scheduler_factory(name)()
        if not isinstance(scheduler, Scheduler):
            raise PluginError(f"scheduler factory {name!r} returned "
                              f"{type(scheduler).__name__}, not a Scheduler")
        return scheduler

    @staticmethod
    def _valid_part(snap: Snapshot, plan: Plan) -> tuple[Plan, list[PlanProblem]]:
        """``plan`` without the parts :func:`validate_plan` refuses (checked again until
        what is left is valid)."""
        refused: list[PlanProblem] = []
        for _ in range(len(plan.place) + 1):
            problems = validate_plan(snap, plan)
            if not problems:
                break
            refused += problems
            bad = {p.task_id for p in problems}
            plan = plan.without(bad)
        return plan, refused

    def _log_commit(self, pair: Pair, snap: Snapshot, plan: Plan, res: CommitResult,
                    outcome: RunOutcome, why: dict[str, str]) -> None:
        placed = plan.by_id()
        record = self.events.record
        level = _each_level(len(res.committed))
        each = log.isEnabledFor(level)
        moved = 0
        for tid in res.committed:
            task = placed.get(tid)
            if task is None:
                outcome.stopped.append(tid)
                if each:
                    log.log(level, "stopped %s", tid)
                record("task", tid, "stopping", "the scheduler stopped it")
                continue
            outcome.placed.append(tid)
            old = snap.tasks.get(tid)
            if old is not None and old.host and old.host != task.host:
                moved += 1
                gone = old.host not in snap.hosts
                reason = f"rejected: {old.reject_reason}" if old.rejected else \
                    "its host is gone" if gone else "moved"
                if each:
                    log.log(level, "placed %s on %s (was on %s: %s)", tid, task.host,
                            old.host, reason)
                if gone:
                    record("task", tid, "moved", f"host {old.host} is gone",
                           host=task.host, was=old.host)
                    record("host", old.host, "moved", f"{tid} moved to {task.host}: the host "
                                                      "is gone")
                record("task", tid, "placed", f"on {task.host} (was on {old.host}: {reason}); "
                       f"{why.get(tid, '')}".rstrip("; "), host=task.host)
            else:
                if each:
                    log.log(level, "placed %s on %s", tid, task.host)
                record("task", tid, "placed", f"on {task.host}; {why.get(tid, '')}"
                       .rstrip("; "), host=task.host)
        if level != logging.INFO:
            log.info("%s: placed %d task(s) (%d of them moved), stopped %d; each at DEBUG",
                     label(pair), len(outcome.placed), moved, len(outcome.stopped))
        if outcome.placed:
            record("service", pair[1], "placed", f"{len(outcome.placed)} task(s) in cluster "
                   f"{pair[0]}: {', '.join(outcome.placed[:5])}"
                   + ("…" if len(outcome.placed) > 5 else ""))
        outcome.conflicts = list(res.conflicts)
        METRICS.placements.inc(len(outcome.placed))
        METRICS.stops.inc(len(outcome.stopped))
        METRICS.conflicts.inc(len(res.conflicts))
        if res.conflicts:
            log.info("%s: %d write conflict(s) (%s…); planning again", label(pair),
                     len(res.conflicts), res.conflicts[0])

    def _note_unschedulable(self, pair: Pair, unschedulable: dict[str, str]) -> None:
        """An ``unschedulable`` event for each task whose reason is new (not on every
        run: a task that fits nowhere is planned again and again)."""
        noted = self._unschedulable_noted.get(pair, {})
        for tid, reason in unschedulable.items():
            if noted.get(tid) != reason:
                self.events.record("task", tid, "unschedulable", reason)
        if unschedulable:
            self._unschedulable_noted[pair] = dict(unschedulable)
        else:
            self._unschedulable_noted.pop(pair, None)

    def _note(self, pair: Pair, message: str, warn: bool = False) -> None:
        """Log a pair's problem once, and once more when it is gone."""
        last = self._logged.get(pair, "")
        if message == last:
            return
        if message:
            self._logged[pair] = message
            (log.warning if warn else log.info)("%s: %s", label(pair), message)
        else:
            self._logged.pop(pair, None)
            log.info("%s: every task placed", label(pair))

    def _write_status(self, lock: Lock, pair: Pair, new: ServiceStatus | None
                      ) -> ServiceStatus | None:
        """Write (or delete, for None) the status when it changed; fenced by the lock."""
        if new is not None:
            self._last[pair] = new
        if same_status(self.cache.status(*pair), new):
            return new
        key = self.keys.service_status(*pair)
        res = self.store.txn([lock.fence()], [Put(key, encode(new)) if new is not None
                                              else Delete(key)])
        if not res.succeeded:
            log.warning("%s: lost the lock before writing the status", key)
        else:
            self.cache.record_status(*pair, new, res.revision)
        return new

    def _stop_all(self, pair: Pair, snap: Snapshot, lock: Lock) -> RunOutcome:
        """The pair is not wanted any more: stop its tasks, then drop its status."""
        outcome = RunOutcome(pair=pair)
        tasks = snap.service_tasks(*pair)
        self.unschedulable.discard(pair)
        self._logged.pop(pair, None)
        self._last.pop(pair, None)
        if not tasks:
            self._write_status(lock, pair, None)
            return outcome
        plan = Plan(stop=[t.id for t in tasks])
        res = commit_plan(self.store, snap, plan, fence=[lock.fence()])
        self.cache.record(plan, res)
        level = _each_level(len(res.committed))
        if log.isEnabledFor(level):
            for tid in res.committed:
                log.log(level, "stopped %s (%s is no longer wanted)", tid, label(pair))
        if level != logging.INFO:
            log.info("%s: stopped %d task(s): no longer wanted; each at DEBUG", label(pair),
                     len(res.committed))
        outcome.stopped = list(res.committed)
        outcome.conflicts = list(res.conflicts)
        if res.conflicts or res.fenced_out:
            outcome.retry_after = self.backoff(pair, base=0.05, cap=5.0)
            outcome.status = ServiceStatus(
                cluster=pair[0], service=pair[1], state="stopping",
                placed=len(res.conflicts), message="no longer wanted: stopping its tasks",
                revision=snap.revision, updated_at=time.time())
            self._write_status(lock, pair, outcome.status)
        else:
            self._failures.pop(pair, None)
            self._write_status(lock, pair, None)
        return outcome
