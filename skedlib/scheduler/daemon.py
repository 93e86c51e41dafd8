"""The scheduler daemon: keeps every service of every cluster placed.

::

    watch the keyspace ──▶ index ──▶ affected (cluster, service) pairs ──▶ work queue
                                                                              │
              workers: try-lock locks/<cluster>/<service> ◀───────────────────┘
                       read a snapshot → run the service's Scheduler plugin
                       → validate the plan → commit it fenced by the lock
                       → write the service's status → requeue on conflict

- **Watching.** The daemon lists the whole keyspace, then watches it from the list's
  revision + 1 (after a compaction it lists again). A small index of what it saw maps each
  change to the pairs it affects: a cluster → its services (old and new), a service →
  every cluster listing it, a task definition → the services running it, a host that
  joins, leaves or changes → every service of the clusters that may use it, a task that
  an agent rejected, whose host is gone, or whose service is no longer wanted → its
  service, a task whose health flipped → its service (for the status).
- **Queue.** A de-duplicating :class:`~skedlib.scheduler.queue.WorkQueue`: a pair queued
  twice runs once; a pair that changes while it is being worked on runs again after.
- **Locks.** A worker takes ``locks/<cluster>/<service>`` with a non-blocking try-lock.
  If another daemon holds it, that daemon does the work (it saw the same change); this one
  only checks again after ``lock_ttl`` in case the holder died. The lock is kept while
  planning and committing, and every write is fenced with its token, so a daemon that
  stalled past its lease cannot write.
- **Running a scheduler.** A fresh snapshot, the service's scheduler (``service.scheduler``,
  from the plugin registry; one not installed makes only that service unschedulable),
  :func:`~skedlib.scheduling.validate_plan` (invalid parts are dropped and planned again),
  :func:`~skedlib.scheduling.commit_plan`. Conflicts and dropped parts requeue the pair
  at once (with a small growing jittered delay); unschedulable tasks are retried when a
  host changes, when a task goes away, and every ``min(resync, 10)`` seconds.
- **Deleted services.** Tasks of a service that no cluster lists any more (or whose
  cluster or service was deleted) are stopped, and the status record removed.
- **Resync.** Every ``resync`` seconds every pair is queued: the safety net.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

from skedlib.agent.issued import IssuedWatcher
from skedlib.codecs import decode, encode
from skedlib.errors import BackendError, PluginError, ValidationError
from skedlib.keys import (
    AgentKey,
    ClusterKey,
    HealthKey,
    HostConfigKey,
    Keyspace,
    ServiceKey,
    TaskDefinitionKey,
    TaskKey,
)
from skedlib.locks import Lock
from skedlib.models import (
    Cluster,
    Host,
    HostConfig,
    Rollout,
    RolloutHistory,
    Service,
    ServiceState,
    ServiceStatus,
    Task,
    TaskHealth,
    TaskId,
)
from skedlib.plugins import Registry, get_registry
from skedlib.scheduler.queue import WorkQueue
from skedlib.scheduler.status import reasons_of, same_status
from skedlib.scheduling import (
    CommitResult,
    Plan,
    PlanProblem,
    Scheduler,
    SchedulingResult,
    Snapshot,
    SnapshotCache,
    commit_plan,
    validate_plan,
)
from skedlib.store.base import (
    Backend,
    Compare,
    Delete,
    KeyValue,
    ListResult,
    Op,
    Put,
    WatchEvent,
)

__all__ = ["Pair", "RunOutcome", "SchedulerDaemon"]

log = logging.getLogger("skedlib.scheduler")

Pair = tuple[str, str]
"""``(cluster, service)``: the unit of scheduling work, locking and status."""


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


class _TaskInfo(msgspec.Struct, frozen=True):
    cluster: str
    service: str
    host: str
    rejected: bool


def _label(cluster: str, service: str) -> str:
    return service if cluster == "default" else f"{cluster}/{service}"


class _Index:
    """What the watcher knows of the store: enough to map a change to affected pairs."""

    def __init__(self, keyspace: Keyspace) -> None:
        self.keys = keyspace
        self.clusters: dict[str, Cluster] = {}
        self.services: dict[str, Service] = {}
        self.tasks: dict[str, _TaskInfo] = {}
        self.hosts: dict[str, tuple[Any, ...]] = {}
        self.host_configs: dict[str, HostConfig] = {}
        self.healthy: dict[str, bool] = {}
        self.unschedulable: set[Pair] = set()

    # -- queries --------------------------------------------------------------------------
    def wanted(self) -> set[Pair]:
        """Every pair the desired state asks for."""
        return {(c.name, s) for c in self.clusters.values() for s in c.services}

    def all_pairs(self) -> set[Pair]:
        """Wanted pairs, and the pairs of every issued task (to stop orphans)."""
        return self.wanted() | {(t.cluster, t.service) for t in self.tasks.values()}

    def is_wanted(self, pair: Pair) -> bool:
        c = self.clusters.get(pair[0])
        return c is not None and pair[1] in c.services and pair[1] in self.services

    def clusters_using(self, host: str) -> list[Cluster]:
        return [c for c in self.clusters.values() if c.hosts is None or host in c.hosts]

    def pairs_of_clusters(self, clusters: Iterable[Cluster]) -> set[Pair]:
        return {(c.name, s) for c in clusters for s in c.services}

    def unschedulable_using(self, host: str) -> set[Pair]:
        names = {c.name for c in self.clusters_using(host)}
        return {p for p in self.unschedulable if p[0] in names}

    # -- updates --------------------------------------------------------------------------
    def reset(self, items: Iterable[KeyValue]) -> None:
        """Forget everything but the unschedulable pairs, then read a full listing."""
        for table in (self.clusters, self.services, self.tasks, self.hosts,
                      self.host_configs, self.healthy):
            table.clear()
        for kv in items:
            self.apply("put", kv.key, kv.value)

    def apply(self, kind: str, key: str, value: bytes) -> set[Pair]:
        """Record one change; the pairs it affects."""
        try:
            parsed = self.keys.parse(key)
        except ValidationError:
            return set()
        put = kind == "put"
        try:
            if isinstance(parsed, ClusterKey):
                return self._cluster(parsed.name, decode(value, Cluster) if put else None)
            if isinstance(parsed, ServiceKey):
                return self._service(parsed.name, decode(value, Service) if put else None)
            if isinstance(parsed, TaskDefinitionKey):
                return {(c.name, s.name) for s in self.services.values()
                        if s.task_name == parsed.name for c in self.clusters.values()
                        if s.name in c.services}
            if isinstance(parsed, HostConfigKey):
                return self._host_config(parsed.name,
                                         decode(value, HostConfig) if put else None)
            if isinstance(parsed, AgentKey):
                return self._host(parsed.host, decode(value, Host) if put else None)
            if isinstance(parsed, TaskKey):
                return self._task(parsed.task_id, value if put else None)
            if isinstance(parsed, HealthKey):
                return self._health(parsed.task_id,
                                    decode(value, TaskHealth) if put else None)
        except ValidationError as exc:
            log.warning("ignoring %s: %s", key, exc)
        return set()

    def _cluster(self, name: str, new: Cluster | None) -> set[Pair]:
        old = self.clusters.pop(name, None)
        if new is not None:
            self.clusters[name] = new
        if old == new:
            return set()
        pairs = {(name, s) for c in (old, new) if c is not None for s in c.services}
        return pairs | {(t.cluster, t.service) for t in self.tasks.values()
                        if t.cluster == name}

    def _service(self, name: str, new: Service | None) -> set[Pair]:
        old = self.services.pop(name, None)
        if new is not None:
            self.services[name] = new
        if old == new:
            return set()
        return {(c.name, name) for c in self.clusters.values() if name in c.services} | {
            (t.cluster, t.service) for t in self.tasks.values() if t.service == name}

    def _host_config(self, name: str, new: HostConfig | None) -> set[Pair]:
        old = self.host_configs.pop(name, None)
        if new is not None:
            self.host_configs[name] = new
        if old == new:
            return set()
        return self.pairs_of_clusters(self.clusters_using(name))

    def _host(self, name: str, new: Host | None) -> set[Pair]:
        old = self.hosts.pop(name, None)
        if new is None:  # a host left: re-place its tasks
            return self.pairs_of_clusters(self.clusters_using(name)) | {
                (t.cluster, t.service) for t in self.tasks.values() if t.host == name}
        signature = (new.total, new.attributes, new.draining, new.executors, new.cluster)
        self.hosts[name] = signature
        if old != signature:  # joined, or changed in a way that matters for placement
            return self.pairs_of_clusters(self.clusters_using(name))
        return self.unschedulable_using(name)  # e.g. ports freed: retry what did not fit

    def _task(self, task_id: str, value: bytes | None) -> set[Pair]:
        old = self.tasks.pop(task_id, None)
        if value is None:
            if old is None:
                return set()
            pair = (old.cluster, old.service)
            return ({pair} if self.is_wanted(pair) else set()) | \
                self.unschedulable_using(old.host)  # room was freed
        try:
            task = decode(value, Task)
            info = _TaskInfo(task.cluster.name, task.service, task.host, task.rejected)
        except ValidationError:
            tid = TaskId.parse(task_id)
            info = _TaskInfo(tid.cluster, tid.service, "", True)  # unreadable: re-place
        self.tasks[task_id] = info
        pair = (info.cluster, info.service)
        newly_rejected = info.rejected and (old is None or not old.rejected)
        if newly_rejected or info.host not in self.hosts or not self.is_wanted(pair):
            return {pair}
        return set()

    def _health(self, task_id: str, new: TaskHealth | None) -> set[Pair]:
        old = self.healthy.pop(task_id, None)
        if new is not None:
            self.healthy[task_id] = new.healthy
        now = None if new is None else new.healthy
        info = self.tasks.get(task_id)
        if old == now or info is None:
            return set()
        return {(info.cluster, info.service)}


class SchedulerDaemon:
    """Runs the registered schedulers over the desired state, for as long as it runs.

    >>> daemon = SchedulerDaemon(open_backend("sqlite:///tmp/sked.db"))  # doctest: +SKIP
    >>> daemon.start(); daemon.wait_ready(10)                              # doctest: +SKIP
    >>> daemon.stop()                                                      # doctest: +SKIP

    Several daemons may run against one store: per-pair try-locks keep them from doing
    the same work twice, per-host guards in :func:`~skedlib.scheduling.commit_plan` keep
    them from overfilling a host, and fencing keeps a stalled one from writing.
    """

    def __init__(self, backend: Backend, keyspace: Keyspace | None = None,
                 registry: Registry | None = None, *, workers: int = 4,
                 lock_ttl: float = 10.0, resync: float = 30.0) -> None:
        self.backend = backend
        self.keys = keyspace or Keyspace()
        self.registry = registry or get_registry()
        self.workers = max(1, workers)
        self.lock_ttl = lock_ttl
        self.resync = resync
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.queue: WorkQueue[Pair] = WorkQueue()
        self._index = _Index(self.keys)
        self._index_lock = threading.Lock()
        self.cache = SnapshotCache(self.keys, on_bad=self._bad_record)
        """The desired and issued state, kept current by the watch; every run plans
        on it (see :class:`~skedlib.scheduling.SnapshotCache`)."""
        self._failures: dict[Pair, int] = {}
        self._logged: dict[Pair, str] = {}
        self._last: dict[Pair, ServiceStatus] = {}
        self._bad: dict[str, int] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watcher: IssuedWatcher | None = None
        self.runs = 0
        """Runs done (skipped ones included): a figure for tests and benchmarks."""

    # -- life cycle -------------------------------------------------------------------
    def start(self) -> None:
        """Start watching, the workers and the resync timer; returns at once."""
        if self._threads:
            raise RuntimeError("the scheduler daemon was already started")
        log.info("scheduler %s starting: %d workers, prefix %r", self.holder, self.workers,
                 self.keys.prefix)
        self._watcher = IssuedWatcher(self.backend, self.keys.prefix, self._on_list,
                                      self._on_events)
        for i in range(self.workers):
            t = threading.Thread(target=self._work_loop, name=f"scheduler-worker-{i}",
                                 daemon=True)
            self._threads.append(t)
        self._threads.append(threading.Thread(target=self._resync_loop,
                                              name="scheduler-resync", daemon=True))
        for t in self._threads:
            t.start()
        self._watcher.start()

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
        if self._watcher is not None:
            self._watcher.stop()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        log.info("scheduler %s stopped", self.holder)

    # -- watching ---------------------------------------------------------------------
    def _on_list(self, listing: ListResult) -> None:
        try:
            self.cache.reset(listing)
            with self._index_lock:
                self._index.reset(listing.items)
                pairs = self._index.all_pairs()
        except Exception:  # a bug must not stop the watch: resync covers what is missed
            log.exception("indexing a listing failed")
            return
        for pair in sorted(pairs):
            self.queue.add(pair)
        self._ready.set()

    def _on_events(self, events: list[WatchEvent]) -> None:
        try:  # before the pairs are queued, so their runs see these events
            self.cache.apply(events)
        except Exception:  # a bug must not stop the watch: resync covers what is missed
            log.exception("caching a watch batch failed")
        pairs: set[Pair] = set()
        with self._index_lock:
            for ev in events:
                try:
                    pairs |= self._index.apply(ev.kind, ev.key, ev.value)
                except Exception:  # one bad event must not stop the watch
                    log.exception("indexing %s %s failed", ev.kind, ev.key)
        for pair in sorted(pairs):
            self.queue.add(pair)

    def _resync_loop(self) -> None:
        while not self._stop.wait(self.resync):
            with self._index_lock:
                pairs = self._index.all_pairs()
            for pair in sorted(pairs):
                self.queue.add(pair)

    # -- working ----------------------------------------------------------------------
    def _work_loop(self) -> None:
        while not self._stop.is_set():
            pair = self.queue.get(timeout=0.5)
            if pair is None:
                continue
            try:
                outcome = self.run_once(pair)
            except BackendError as exc:
                delay = self._backoff(pair, base=0.5, cap=10.0)
                log.warning("%s: %s (retrying in %.1fs)", _label(*pair), exc, delay)
                self.queue.add_after(pair, delay)
            except Exception:  # a bug must not take the daemon down
                delay = self._backoff(pair, base=1.0, cap=30.0)
                log.exception("%s: internal error (retrying in %.1fs)", _label(*pair), delay)
                self.queue.add_after(pair, delay)
            else:
                if outcome.retry_after is not None:
                    self.queue.add_after(pair, outcome.retry_after)
            finally:
                self.queue.done(pair)

    def _backoff(self, pair: Pair, base: float, cap: float) -> float:
        n = self._failures.get(pair, 0)
        self._failures[pair] = n + 1
        delay: float = min(base * 2.0 ** min(n, 20), cap)
        return delay * random.uniform(0.5, 1.5)

    def run_once(self, pair: Pair) -> RunOutcome:
        """Lock the pair, plan it and commit; the workers' step.

        A started daemon plans on its watch-fed cache; one that was not started (a test,
        a one-shot script) reads the keyspace first.

        Raises :class:`~skedlib.errors.BackendError` when the store cannot be reached.
        """
        self.runs += 1
        cluster, service = pair
        lock_key = self.keys.lock(cluster, service)
        lock = Lock(self.backend, lock_key, ttl=self.lock_ttl, holder=self.holder)
        # a get first: a lock that is held costs nothing (try_acquire grants a lease)
        if self.backend.get(lock_key) is not None or not lock.try_acquire():
            return RunOutcome(pair=pair, skipped=True, retry_after=self.lock_ttl)
        try:
            if self._watcher is None:
                self.cache.reset(self.backend.list(self.keys.prefix))
            return self._schedule(pair, lock)
        finally:
            lock.release()

    def _bad_record(self, kv: KeyValue, exc: ValidationError) -> None:
        """Leave out (and log once) a record that does not decode, so one bad value
        written by hand cannot stop every service."""
        if self._bad.get(kv.key) != kv.revision:
            self._bad[kv.key] = kv.revision
            log.warning("ignoring a record that does not decode: %s", exc)

    def _schedule(self, pair: Pair, lock: Lock) -> RunOutcome:
        with self.cache.view() as snap:
            return self._schedule_on(pair, lock, snap)

    def _schedule_on(self, pair: Pair, lock: Lock, snap: Snapshot) -> RunOutcome:
        cluster_name, service_name = pair
        status_key = self.keys.service_status(cluster_name, service_name)
        old_status = self.cache.status(cluster_name, service_name)
        cluster = snap.clusters.get(cluster_name)
        service = snap.services.get(service_name)
        if cluster is None or service is None or service_name not in cluster.services:
            return self._stop_all(pair, snap, lock, old_status)
        outcome = RunOutcome(pair=pair)
        try:
            scheduler = self._scheduler(service.scheduler)
        except PluginError as exc:
            status = self._status(pair, service, snap, state="error", message=str(exc))
            self._note(pair, str(exc), warn=True)
            outcome.status = self._write_status(lock, status_key, old_status, status)
            return outcome
        try:
            result = scheduler.plan(snap, cluster, service)
            if not isinstance(result, SchedulingResult):
                raise PluginError(f"plan() returned {type(result).__name__}, not a "
                                  "SchedulingResult")
        except Exception as exc:
            message = f"scheduler {service.scheduler!r} failed: {exc}"
            log.exception("%s: %s", _label(*pair), message)
            status = self._status(pair, service, snap, state="error", message=message)
            outcome.status = self._write_status(lock, status_key, old_status, status)
            outcome.retry_after = self._backoff(pair, base=1.0, cap=30.0)
            return outcome
        plan, problems = self._valid_part(snap, result.plan)
        outcome.invalid = sorted({p.task_id for p in problems})
        for p in problems:
            log.warning("%s: plan refused %s on %s: %s", _label(*pair), p.task_id, p.host,
                        p.reason)
        res = commit_plan(self.backend, snap, plan, fence=[lock.fence()],
                          keyspace=self.keys) if plan else CommitResult()
        self._log_commit(pair, snap, plan, res, outcome)
        self.cache.record(plan, res)
        if res.fenced_out:
            log.warning("%s: lost the lock while committing; will plan again", _label(*pair))
            outcome.fenced_out = True
            outcome.retry_after = self._backoff(pair, base=0.1, cap=5.0)
            return outcome
        message = result.message
        self._note(pair, message)
        rollout = self._write_rollout(pair, snap, service, result.rollout, lock) \
            if result.rollout is not None else None
        status = self._status(pair, service, snap, result=result, plan=plan, commit=res,
                              problems=problems)
        if rollout is not None and rollout.to_version == service.task_version:
            if rollout.state == "running":
                status.state = "progressing"
                status.message = (f"rolling out version {rollout.from_version} → "
                                  f"{rollout.to_version}: {rollout.updated}/{rollout.desired} "
                                  f"updated, {rollout.old} old left"
                                  + (f"; {rollout.message}" if rollout.message else ""))
            elif rollout.state == "failed":
                status.state = "error"
                status.message = f"rollout to version {rollout.to_version} failed: " + (
                    rollout.message + (f"; reverted to version {rollout.reverted_to}"
                                       if rollout.reverted_to else ""))
        outcome.status = self._write_status(lock, status_key, old_status, status)
        with self._index_lock:
            if result.unschedulable:
                self._index.unschedulable.add(pair)
            else:
                self._index.unschedulable.discard(pair)
        if res.conflicts or problems:
            outcome.retry_after = self._backoff(pair, base=0.05, cap=5.0)
        else:
            self._failures.pop(pair, None)
            if result.unschedulable:
                outcome.retry_after = min(self.resync, 10.0)
        if result.retry_after is not None:
            outcome.retry_after = min(outcome.retry_after or result.retry_after,
                                      result.retry_after)
        return outcome

    def _write_rollout(self, pair: Pair, snap: Snapshot, service: Service,
                       rollout: Rollout, lock: Lock) -> Rollout:
        """Store the rollout a plan reported in the service's history (when it changed);
        on a failed rollout with ``auto_revert``, set the service back to the version it
        came from. Returns the rollout as stored."""
        cluster, name = pair
        key = self.keys.rollout(cluster, name)
        history = snap.rollouts.get(pair) or RolloutHistory(cluster=cluster, service=name)
        rollouts = list(history.rollouts)
        current = rollouts[-1] if rollouts else None
        same = current is not None and current.to_version == rollout.to_version and \
            current.started_at == rollout.started_at
        ops: list[Op] = []
        compares = [lock.fence()]
        if rollout.state == "failed" and service.update.auto_revert and \
                not rollout.reverted_to and service.task_version == rollout.to_version and \
                (service.task_name, rollout.from_version) in snap.task_definitions:
            kv = self.backend.get(self.keys.service(name))
            if kv is not None:
                stored = decode(kv.value, Service, where=kv.key)
                if stored.task_version == rollout.to_version:
                    reverted = msgspec.structs.replace(stored,
                                                       task_version=rollout.from_version)
                    ops.append(Put(kv.key, encode(reverted)))
                    compares.append(Compare(kv.key, kv.revision))
                    rollout = msgspec.structs.replace(rollout,
                                                      reverted_to=rollout.from_version)
        if same and current == rollout and not ops:
            return rollout
        if same:
            rollouts[-1] = rollout
        else:
            rollouts.append(rollout)
        history = RolloutHistory(cluster=cluster, service=name, rollouts=rollouts[-20:])
        ops.append(Put(key, encode(history)))
        res = self.backend.txn(compares, ops)
        if not res.succeeded:
            log.warning("%s: the rollout record was not written (lock lost or the service "
                        "changed meanwhile)", _label(*pair))
            return rollout
        self.cache.record_rollouts(history, res.revision)
        if rollout != current:
            if not same:
                log.info("%s: rollout %d → %d started", _label(*pair), rollout.from_version,
                         rollout.to_version)
            elif rollout.state != (current.state if current else ""):
                (log.warning if rollout.state == "failed" else log.info)(
                    "%s: rollout %d → %d %s%s", _label(*pair), rollout.from_version,
                    rollout.to_version, rollout.state,
                    f": {rollout.message}" if rollout.message else "")
            if len(ops) > 1:
                log.warning("%s: auto_revert: service set back to version %d", _label(*pair),
                            rollout.reverted_to)
        return rollout

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
            plan = Plan(place=[t for t in plan.place if t.id not in bad],
                        stop=[t for t in plan.stop if t not in bad])
        return plan, refused

    def _log_commit(self, pair: Pair, snap: Snapshot, plan: Plan, res: CommitResult,
                    outcome: RunOutcome) -> None:
        placed = {t.id: t for t in plan.place}
        for tid in res.committed:
            task = placed.get(tid)
            if task is None:
                outcome.stopped.append(tid)
                log.info("stopped %s", tid)
                continue
            outcome.placed.append(tid)
            old = snap.tasks.get(tid)
            if old is not None and old.host and old.host != task.host:
                why = f"rejected: {old.reject_reason}" if old.rejected else \
                    "its host is gone" if old.host not in snap.hosts else "moved"
                log.info("placed %s on %s (was on %s: %s)", tid, task.host, old.host, why)
            else:
                log.info("placed %s on %s", tid, task.host)
        outcome.conflicts = list(res.conflicts)
        if res.conflicts:
            log.info("%s: %d write conflict(s) (%s…); planning again", _label(*pair),
                     len(res.conflicts), res.conflicts[0])

    def _note(self, pair: Pair, message: str, warn: bool = False) -> None:
        """Log a pair's problem once, and once more when it is gone."""
        last = self._logged.get(pair, "")
        if message == last:
            return
        if message:
            self._logged[pair] = message
            (log.warning if warn else log.info)("%s: %s", _label(*pair), message)
        else:
            self._logged.pop(pair, None)
            log.info("%s: every task placed", _label(*pair))

    def _status(self, pair: Pair, service: Service, snap: Snapshot, *,
                result: SchedulingResult | None = None, plan: Plan | None = None,
                commit: CommitResult | None = None, problems: list[PlanProblem] | None = None,
                state: ServiceState | None = None, message: str = "") -> ServiceStatus:
        cluster_name, service_name = pair
        final = {t.id: t for t in snap.service_tasks(cluster_name, service_name)}
        fresh: set[str] = set()
        if plan is not None and commit is not None:
            placed = {t.id: t for t in plan.place}
            for tid in commit.committed:
                if tid in placed:
                    final[tid] = placed[tid]
                    fresh.add(tid)
                else:
                    final.pop(tid, None)
        running = [t for t in final.values() if not t.rejected and t.host in snap.hosts]
        healthy = sum(1 for t in running if t.id not in fresh and snap.is_healthy(t.id)
                      and snap.health[t.id].host in ("", t.host))
        unschedulable = result.unschedulable if result is not None else {}
        if plan is not None:
            wanted = ({tid for tid in final if tid not in plan.stop}
                      | {t.id for t in plan.place} | set(unschedulable))
            desired = len(wanted)
        else:
            desired = service.desired
        if not state:
            if unschedulable:
                state, message = "unschedulable", result.message if result else ""
            elif len(running) == desired and healthy == desired and not problems and \
                    not (commit and commit.conflicts):
                state = "ok"
            else:
                state = "progressing"
                waiting = desired - healthy
                message = (f"{healthy}/{desired} healthy" if waiting > 0 else
                           f"{len(running)} placed, {desired} wanted")
        return ServiceStatus(
            cluster=cluster_name, service=service_name, scheduler=service.scheduler,
            task_version=service.task_version, state=state,
            desired=desired, placed=len(running), healthy=healthy,
            unschedulable=len(unschedulable), message=message,
            reasons=reasons_of(unschedulable), revision=snap.revision,
            updated_at=time.time())

    def _write_status(self, lock: Lock, key: str, old: ServiceStatus | None,
                      new: ServiceStatus | None) -> ServiceStatus | None:
        """Write (or delete, for None) the status when it changed; fenced by the lock."""
        if new is not None:
            self._last[(new.cluster, new.service)] = new
        if same_status(old, new):
            return new
        op = Put(key, encode(new)) if new is not None else Delete(key)
        res = self.backend.txn([lock.fence()], [op])
        if not res.succeeded:
            log.warning("%s: lost the lock before writing the status", key)
        else:
            cluster, _, service = key[len(self.keys.service_statuses):].partition("/")
            self.cache.record_status(cluster, service, new, res.revision)
        return new

    def _stop_all(self, pair: Pair, snap: Snapshot, lock: Lock,
                  old_status: ServiceStatus | None) -> RunOutcome:
        """The pair is not wanted any more: stop its tasks, then drop its status."""
        outcome = RunOutcome(pair=pair)
        tasks = snap.service_tasks(*pair)
        status_key = self.keys.service_status(*pair)
        with self._index_lock:
            self._index.unschedulable.discard(pair)
        self._logged.pop(pair, None)
        self._last.pop(pair, None)
        if not tasks:
            self._write_status(lock, status_key, old_status, None)
            return outcome
        plan = Plan(stop=[t.id for t in tasks])
        res = commit_plan(self.backend, snap, plan, fence=[lock.fence()], keyspace=self.keys)
        self.cache.record(plan, res)
        for tid in res.committed:
            log.info("stopped %s (%s is no longer wanted)", tid, _label(*pair))
        outcome.stopped = list(res.committed)
        outcome.conflicts = list(res.conflicts)
        if res.conflicts or res.fenced_out:
            outcome.retry_after = self._backoff(pair, base=0.05, cap=5.0)
            outcome.status = ServiceStatus(
                cluster=pair[0], service=pair[1], state="stopping",
                placed=len(res.conflicts), message="no longer wanted: stopping its tasks",
                revision=snap.revision, updated_at=time.time())
            self._write_status(lock, status_key, old_status, outcome.status)
        else:
            self._failures.pop(pair, None)
            self._write_status(lock, status_key, old_status, None)
        return outcome

    # -- introspection ----------------------------------------------------------------
    def idle(self) -> bool:
        """True when nothing is queued, being worked on, or waiting for a retry."""
        return self.queue.pending() == 0

    def last_status(self, pair: Pair) -> ServiceStatus | None:
        """The status this daemon computed in its last run of ``pair`` (written or not:
        a record is only rewritten when it changes), or None."""
        return self._last.get(pair)

    def pairs(self) -> Iterator[Pair]:
        """Every pair the daemon currently knows of."""
        with self._index_lock:
            yield from sorted(self._index.all_pairs())
