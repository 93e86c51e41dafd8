"""A :class:`Snapshot` kept current by a watch, instead of re-read for every plan.

Reading the whole keyspace for every run costs time in proportion to the cluster (at
5,000 hosts and 10,000 tasks, more than the planning). A :class:`SnapshotCache` is the
informer pattern: list once (:meth:`~SnapshotCache.reset`), then apply every watch batch
(:meth:`~SnapshotCache.apply`) to one live snapshot; a planner borrows it under a lock
(:meth:`~SnapshotCache.view`), plans and commits, and records what it committed
(:meth:`~SnapshotCache.record`) so the next plan sees it before the watch delivers it.

Why this stays safe although the view may lag the store:

- every placement is committed with compares on the task's revision and on its host's
  allocation marker, at the revisions the cache holds (see
  :mod:`skedlib.scheduling.commit`); anything written since makes that part a conflict,
  planned again once the watch has caught up;
- a recorded commit is written through with the revisions its transactions got, and a
  late watch event older than a recorded write of the same key is ignored, so the cache
  never goes back in time for a key.

Watch batches must hold whole transactions (every backend of skedlib delivers a
revision's events together).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from skedlib.codecs import decode
from skedlib.errors import ValidationError
from skedlib.keys import (
    AgentKey,
    ClusterKey,
    HealthKey,
    HostAllocKey,
    HostConfigKey,
    Keyspace,
    RolloutKey,
    ServiceKey,
    ServiceStatusKey,
    TaskDefinitionKey,
    TaskKey,
)
from skedlib.models import (
    Cluster,
    Host,
    HostConfig,
    RolloutHistory,
    Service,
    ServiceStatus,
    Task,
    TaskDefinition,
    TaskHealth,
)
from skedlib.scheduling.commit import CommitResult
from skedlib.scheduling.plan import Plan
from skedlib.scheduling.snapshot import Snapshot
from skedlib.store.base import KeyValue, ListResult, WatchEvent

__all__ = ["SnapshotCache"]

OnBad = Callable[[KeyValue, ValidationError], None]
_T = TypeVar("_T")
_K = TypeVar("_K")


class SnapshotCache:
    """One live :class:`Snapshot` of a keyspace, fed by a listing and its watch.

    >>> cache = SnapshotCache()
    >>> cache.reset(backend.list(cache.keys.prefix))          # doctest: +SKIP
    >>> # on every watch batch:  cache.apply(events)
    >>> with cache.view() as snap:                              # doctest: +SKIP
    ...     plan = scheduler.plan(snap, cluster, service).plan
    ...     cache.record(plan, commit_plan(backend, snap, plan))

    Thread-safe: :meth:`apply` and :meth:`reset` wait while a view is borrowed. Records
    that do not decode are left out and reported to ``on_bad`` (default: raise).
    """

    def __init__(self, keyspace: Keyspace | None = None, on_bad: OnBad | None = None) -> None:
        self.keys = keyspace or Keyspace()
        self._on_bad = on_bad
        self._lock = threading.RLock()
        self._snap = Snapshot(0, alloc_revisions={})
        self._statuses: dict[tuple[str, str], ServiceStatus] = {}
        self._written: dict[str, int] = {}
        """Keys written through by :meth:`record`: revision (ignore older events)."""
        self._deleted: dict[str, int] = {}
        """Keys deleted through :meth:`record`: revision of the delete."""
        self._ready = threading.Event()

    # -- feeding ------------------------------------------------------------------------
    def reset(self, listing: ListResult) -> None:
        """Start over from a listing of the whole keyspace (also after a compaction)."""
        snap = Snapshot.from_items(listing.items, listing.revision, self.keys,
                                   on_bad=self._bad)
        statuses: dict[tuple[str, str], ServiceStatus] = {}
        n = len(self.keys.service_statuses)
        for kv in listing.items:
            if kv.key.startswith(self.keys.service_statuses):
                status = self._decode(kv, ServiceStatus)
                cluster, _, service = kv.key[n:].partition("/")
                if status is not None:
                    statuses[(cluster, service)] = status
        with self._lock:
            self._snap = snap
            self._statuses = statuses
            self._written.clear()
            self._deleted.clear()
            self._ready.set()

    def apply(self, events: Iterable[WatchEvent]) -> None:
        """Apply one watch batch, in order."""
        with self._lock:
            snap = self._snap
            for ev in events:
                if self._stale(ev):
                    continue
                self._apply(snap, ev)
                if ev.revision > snap.revision:
                    snap.revision = ev.revision
            self._prune(snap.revision)

    def record(self, plan: Plan, result: CommitResult) -> None:
        """Write the committed part of ``plan`` through to the cache, at the revisions
        its transactions got, so planning goes on from it at once."""
        placed = {t.id: t for t in plan.place}
        with self._lock:
            snap = self._snap
            for task_id in result.committed:
                rev = result.task_revisions.get(task_id, 0)
                key = self.keys.task(task_id)
                task = placed.get(task_id)
                if task is not None:
                    snap.put_task(task, rev)
                    self._written[key] = rev
                    self._deleted.pop(key, None)
                else:
                    snap.remove_task(task_id)
                    snap.health.pop(task_id, None)
                    self._deleted[key] = rev
                    self._written.pop(key, None)
            allocs = snap.alloc_revisions
            assert allocs is not None
            for host, rev in result.alloc_revisions.items():
                if rev > allocs.get(host, 0):
                    allocs[host] = rev
                    self._written[self.keys.host_alloc(host)] = rev

    def record_status(self, cluster: str, service: str, status: ServiceStatus | None,
                      revision: int) -> None:
        """Write a status record (None: its deletion) through, at ``revision``."""
        key = self.keys.service_status(cluster, service)
        with self._lock:
            if status is None:
                self._statuses.pop((cluster, service), None)
                self._deleted[key] = revision
                self._written.pop(key, None)
            else:
                self._statuses[(cluster, service)] = status
                self._written[key] = revision
                self._deleted.pop(key, None)

    def record_rollouts(self, history: RolloutHistory, revision: int) -> None:
        """Write a service's rollout history through, at ``revision``."""
        key = self.keys.rollout(history.cluster, history.service)
        with self._lock:
            self._snap.rollouts[(history.cluster, history.service)] = history
            self._written[key] = revision
            self._deleted.pop(key, None)

    # -- reading ------------------------------------------------------------------------
    @contextmanager
    def view(self) -> Iterator[Snapshot]:
        """Borrow the live snapshot; the watch waits until the block ends.

        Plan with it as with any snapshot (planners copy the hosts they change); do not
        keep it after the block.
        """
        with self._lock:
            yield self._snap

    def status(self, cluster: str, service: str) -> ServiceStatus | None:
        """The service's status record as last seen, or None."""
        with self._lock:
            return self._statuses.get((cluster, service))

    @property
    def revision(self) -> int:
        """The store revision the cache has seen every change up to."""
        return self._snap.revision

    @property
    def ready(self) -> bool:
        """True once :meth:`reset` was called."""
        return self._ready.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait for the first :meth:`reset`."""
        return self._ready.wait(timeout)

    # -- internals ----------------------------------------------------------------------
    def _stale(self, ev: WatchEvent) -> bool:
        written = self._written.get(ev.key)
        if written is not None and ev.revision < written:
            return True
        deleted = self._deleted.get(ev.key)
        return deleted is not None and ev.revision < deleted

    def _prune(self, revision: int) -> None:
        """Write-throughs the watch has caught up with need no guarding any more."""
        for marks in (self._written, self._deleted):
            if marks:
                for key in [k for k, rev in marks.items() if rev <= revision]:
                    del marks[key]

    def _bad(self, kv: KeyValue, exc: ValidationError) -> None:
        if self._on_bad is None:
            raise exc
        self._on_bad(kv, exc)

    def _decode(self, kv: KeyValue, type_: type[_T]) -> _T | None:
        try:
            return decode(kv.value, type_, where=kv.key)
        except ValidationError as exc:
            self._bad(kv, exc)
            return None

    def _apply(self, snap: Snapshot, ev: WatchEvent) -> None:
        try:
            key = self.keys.parse(ev.key)
        except ValidationError:
            return  # not a key of the schema
        put = ev.kind == "put"
        kv = KeyValue(ev.key, ev.value, ev.revision, 0)
        match key:
            case TaskKey(task_id=task_id):
                task = self._decode(kv, Task) if put else None
                if task is not None:
                    snap.put_task(task, ev.revision)
                else:
                    snap.remove_task(task_id)
            case AgentKey(host=name):
                host = self._decode(kv, Host) if put else None
                if host is not None:
                    snap.put_host(host)
                else:
                    snap.remove_host(name)
            case HostConfigKey(name=name):
                snap.put_host_config(name, self._decode(kv, HostConfig) if put else None)
            case HostAllocKey(host=name):
                assert snap.alloc_revisions is not None
                if put:
                    snap.alloc_revisions[name] = ev.revision
                else:
                    snap.alloc_revisions.pop(name, None)
            case HealthKey(task_id=task_id):
                self._set(snap.health, task_id, kv, TaskHealth, put)
            case ServiceKey(name=name):
                self._set(snap.services, name, kv, Service, put)
            case ClusterKey(name=name):
                self._set(snap.clusters, name, kv, Cluster, put)
            case TaskDefinitionKey(name=name, version=version):
                self._set(snap.task_definitions, (name, version), kv, TaskDefinition, put)
            case RolloutKey(cluster=cluster, service=service):
                self._set(snap.rollouts, (cluster, service), kv, RolloutHistory, put)
            case ServiceStatusKey(cluster=cluster, service=service):
                self._set(self._statuses, (cluster, service), kv, ServiceStatus, put)
            case _:
                pass  # host index entries and locks: nothing a planner reads

    def _set(self, table: dict[_K, _T], name: _K, kv: KeyValue, type_: type[_T],
             put: bool) -> None:
        """Put the decoded value of ``kv`` in ``table`` (or drop ``name``: a delete, or a
        value that does not decode)."""
        value = self._decode(kv, type_) if put else None
        if value is not None:
            table[name] = value
        else:
            table.pop(name, None)
