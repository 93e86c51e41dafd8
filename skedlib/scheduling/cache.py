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

:meth:`~SnapshotCache.start` follows the store with an
:class:`~skedlib.runtime.Informer` (list, watch, resume, relist after a compaction).
Every watch event is decoded once, here: a process that must react to changes (the
scheduler daemon maps them to the services to plan again) passes ``on_change`` and is
handed each :class:`Change` — the record before and after — with the snapshot as it
stands just after it, instead of keeping and decoding a copy of its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TypeVar

import msgspec

from skedlib.codecs import decode_record
from skedlib.errors import ValidationError
from skedlib.keys import (
    AgentKey,
    ClusterKey,
    HealthKey,
    HostAllocKey,
    HostConfigKey,
    Key,
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
from skedlib.runtime.informer import Informer
from skedlib.runtime.store import Store
from skedlib.scheduling.commit import CommitResult, InflightAllocs
from skedlib.scheduling.plan import Plan
from skedlib.scheduling.snapshot import Snapshot
from skedlib.store.base import KeyValue, ListResult, WatchEvent

__all__ = ["Change", "Record", "SnapshotCache"]

log = logging.getLogger(__name__)

Record = (Cluster | Service | TaskDefinition | Host | HostConfig | Task | TaskHealth
          | RolloutHistory | ServiceStatus)
"""A decoded record of the keyspace."""


class Change(msgspec.Struct, frozen=True):
    """One key of the keyspace changed: its record before and after (None: absent).

    ``bad`` is True when the new value was written but does not decode (it is then left
    out of the snapshot, so ``new`` is None). A change to a record that the cache did not
    hold and still does not (a delete written through by :meth:`SnapshotCache.record`,
    seen again on the watch) has ``old`` and ``new`` both None.
    """

    key: Key
    old: Record | None
    new: Record | None
    bad: bool = False


OnBad = Callable[[KeyValue, ValidationError], None]
OnChange = Callable[[Snapshot, Change], None]
OnReset = Callable[[Snapshot], None]
_T = TypeVar("_T")
_K = TypeVar("_K")
_R = TypeVar("_R", bound=Record)


class SnapshotCache:
    """One live :class:`Snapshot` of a store's keyspace, fed by a listing and its watch.

    ```python
    cache = SnapshotCache(store).start()       # lists, then follows the watch on a thread
    cache.wait_ready(10)
    with cache.view() as snap:                 # the snapshot, held still while borrowed
        plan = scheduler.plan(snap, cluster, service).plan
        cache.record(plan, commit_plan(store, snap, plan))   # see one's own commit at once
    cache.stop()
    ```

    Without :meth:`start`, feed it by hand: :meth:`refresh` (or :meth:`reset` with a
    listing) and :meth:`apply` with every watch batch.

    Thread-safe: :meth:`apply` and :meth:`reset` wait while a view is borrowed. Records
    that do not decode, or whose id does not match their key, are left out with one
    warning, marked in the snapshot's ``invalid`` (a task key stays occupied), and
    reported to ``on_bad`` when given.
    ``on_change`` is called with every change applied (from the watch, or written through
    by :meth:`record`) and ``on_reset`` after every listing, each with the snapshot as it
    stands then and under the cache's lock: they must be quick and must not wait for a
    view.

    Args:
        store: The store to follow (its backend and keyspace).
        on_bad: Called with a record that does not decode, and why.
        on_change: Called with the snapshot and each :class:`Change` applied.
        on_reset: Called with the snapshot after each full listing.

    Raises:
        BackendError: From :meth:`refresh` when the store cannot be reached (a started
            cache retries on its own, with backoff).
    """

    def __init__(self, store: Store, on_bad: OnBad | None = None, *,
                 on_change: OnChange | None = None, on_reset: OnReset | None = None
                 ) -> None:
        self.store = store
        self.keys = store.keys
        self._on_bad = on_bad
        self._on_change = on_change
        self._on_reset = on_reset
        self._lock = threading.RLock()
        self._snap = Snapshot(0, alloc_revisions={})
        self._statuses: dict[tuple[str, str], ServiceStatus] = {}
        self._written: dict[str, int] = {}
        """Keys written through by :meth:`record`: revision (ignore older events)."""
        self._deleted: dict[str, int] = {}
        """Keys deleted through :meth:`record`: revision of the delete."""
        self._ready = threading.Event()
        self._informer: Informer | None = None
        # what the snapshot is made of: config/ and state/ but for the host index
        # entries (a task's record has the same); the rest of the keyspace (events,
        # locks, the index) goes by on the watch without being parsed
        self._kept = (self.keys.config, self.keys.prefix + "state/")
        self._skipped = self.keys.all_host_tasks
        self._echoes: dict[str, tuple[bytes, str, Task]] = {}
        """Task key of a pending placement → (the value its commit writes, task id, the
        placed task): the watch's copy of that write only gives its revision."""
        self._confirmed: set[str] = set()
        """Pending placements whose very record the watch has shown in the store."""
        self._pending: dict[str, tuple[Task, Task | None]] = {}
        """Placements written in by :meth:`place_pending`, not yet recorded: task id →
        (the placed task, the record it replaced)."""
        self.inflight = InflightAllocs()
        """The host markers of commits prepared on this cache and not yet sent (pass it
        to :func:`~skedlib.scheduling.commit.prepare_commit`)."""

    # -- following the store ------------------------------------------------------------
    def start(self) -> SnapshotCache:
        """Follow the store's keyspace on a thread of its own (an
        :class:`~skedlib.runtime.Informer`); returns ``self``."""
        if self._informer is not None:
            raise RuntimeError("the snapshot cache was already started")
        self._informer = self.store.informer(
            self.keys.prefix, on_list=self._listed, on_events=self._watched,
            name=f"snapshot cache {self.keys.prefix}")
        self._informer.start()  # after the assignment: its callbacks may ask `started`
        return self

    def stop(self) -> None:
        """Stop following the store (idempotent; the snapshot stays readable)."""
        if self._informer is not None:
            self._informer.stop()

    @property
    def started(self) -> bool:
        """True once :meth:`start` was called."""
        return self._informer is not None

    def refresh(self) -> None:
        """List the store's keyspace now and start over from it."""
        self.reset(self.store.list(self.keys.prefix))

    def _listed(self, listing: ListResult) -> None:
        try:
            self.reset(listing)
        except Exception:  # a bug must not stop the watch; the next listing starts over
            log.exception("caching a listing of %s failed", self.keys.prefix)

    def _watched(self, events: list[WatchEvent]) -> None:
        try:
            self.apply(events)
        except Exception:  # a bug must not stop the watch
            log.exception("caching a watch batch of %s failed", self.keys.prefix)

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
            # placements of commits still in flight are not in the listing yet: keep
            # them counted (record() settles them)
            for task_id, (task, _) in self._pending.items():
                if task_id not in snap.tasks:
                    snap.put_task(task, 0)
            self._snap = snap
            self._statuses = statuses
            self._written.clear()
            self._deleted.clear()
            self._ready.set()
            if self._on_reset is not None:
                self._on_reset(snap)

    def apply(self, events: Iterable[WatchEvent]) -> None:
        """Apply one watch batch, in order."""
        with self._lock:
            snap = self._snap
            kept, skipped = self._kept, self._skipped
            echoes = self._echoes
            for ev in events:
                key = ev.key
                echo = echoes.get(key) if echoes else None
                if echo is not None and ev.kind == "put" and ev.value == echo[0] and \
                        snap.tasks.get(echo[1]) is echo[2]:
                    # a pending placement's own write (recorded, with its change, later)
                    snap.task_revisions[echo[1]] = ev.revision
                    del echoes[key]
                    self._confirmed.add(echo[1])
                    snap.revision = max(snap.revision, ev.revision)
                    continue
                if self._stale(ev):
                    continue
                if not key.startswith(kept) or key.startswith(skipped) or self._echo(ev):
                    change = None  # nothing the snapshot holds, or held already
                else:
                    change = self._apply(snap, ev)
                if ev.revision > snap.revision:
                    snap.revision = ev.revision
                if change is not None and self._on_change is not None:
                    try:
                        self._on_change(snap, change)
                    except Exception:  # one bad event must not stop the others
                        log.exception("reacting to %s %s failed", ev.kind, ev.key)
            self._prune(snap.revision)

    def place_pending(self, plan: Plan, values: Mapping[str, bytes] | None = None
                      ) -> None:
        """Write ``plan``'s placements into the snapshot before they are committed (call
        it holding a :meth:`view`, right after preparing the commit), so plans made while
        the commit is in flight count the room they take; :meth:`record` then keeps the
        committed ones and takes the others out again.

        Only for placements that take room and free none: new tasks, or tasks without a
        host (a stop, or a move, frees room that is not free until it is committed).
        ``values`` (task key → the value the commit writes there:
        :attr:`~skedlib.scheduling.commit.PreparedCommit.values`) lets the watch's copy of
        those writes through without decoding them again.
        """
        with self._lock:
            snap = self._snap
            for task, task_id in zip(plan.place, plan.place_ids(), strict=True):
                old = snap.tasks.get(task_id)
                if old is not None and old.host:
                    raise ValueError(f"task {task_id}: a move cannot be placed before it "
                                     "is committed")
                snap.put_task(task, snap.task_revisions.get(task_id, 0), task_id)
                self._pending[task_id] = (task, old)
                key = self.keys.task(task_id)
                value = values.get(key) if values is not None else None
                if value is not None:
                    self._echoes[key] = (value, task_id, task)

    def record(self, plan: Plan, result: CommitResult) -> None:
        """Write the committed part of ``plan`` through to the cache, at the revisions
        its transactions got, so planning goes on from it at once (placements written in
        by :meth:`place_pending` that did not commit are taken out). A task key the watch
        has already shown written again since the commit keeps that later record."""
        placed = plan.by_id()
        with self._lock:
            snap = self._snap
            pending = {tid: self._pending.pop(tid) for tid in placed if tid in self._pending}
            confirmed = self._confirmed & pending.keys()
            self._confirmed -= confirmed
            task_key = self.keys.task
            keys = {task_id: task_key(task_id) for task_id in pending}
            for key in keys.values():
                self._echoes.pop(key, None)
            committed = set(result.committed)
            for task_id, (tentative, before) in pending.items():
                if task_id in committed or task_id in confirmed or \
                        snap.tasks.get(task_id) is not tentative:
                    continue  # committed (below), in the store all the same (written by
                    # somebody else, as the watch showed), or a newer record came
                rev = snap.task_revisions.get(task_id, 0)  # the one before (kept)
                snap.remove_task(task_id)
                if before is not None:
                    snap.put_task(before, rev)
                # no change is reported: the store never held it (reporting its removal
                # would queue the service again at once, bypassing its conflict backoff)
            for task_id in result.committed:
                rev = result.task_revisions.get(task_id, 0)
                if snap.task_revisions.get(task_id, 0) > rev:
                    # the watch applied a later write of the key before this record (an
                    # agent's patch of a task it just started): it stands, as the store
                    # has it; going back to the commit's record would leave every later
                    # compare on the key at a revision the store has left
                    continue
                key = keys.get(task_id) or task_key(task_id)
                old = snap.tasks.get(task_id)
                if task_id in pending and old is pending[task_id][0]:
                    old = pending[task_id][1]  # the change is from the record before
                task = placed.get(task_id)
                if task is not None:
                    if snap.tasks.get(task_id) is task:  # placed pending: as it was put
                        snap.task_revisions[task_id] = rev
                    else:
                        snap.put_task(task, rev)
                    self._written[key] = rev
                    self._deleted.pop(key, None)
                else:
                    snap.remove_task(task_id)
                    snap.health.pop(task_id, None)
                    self._deleted[key] = rev
                    self._written.pop(key, None)
                if self._on_change is not None:
                    self._on_change(snap, Change(TaskKey(task_id), old, task))
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

    def _echo(self, ev: WatchEvent) -> bool:
        """The watch's copy of a write recorded through (the cache holds it already: it
        is not decoded and applied again)."""
        if ev.kind == "put":
            return self._written.get(ev.key) == ev.revision
        return self._deleted.get(ev.key) == ev.revision

    def _prune(self, revision: int) -> None:
        """Write-throughs the watch has caught up with need no guarding any more."""
        for marks in (self._written, self._deleted):
            if marks:
                for key in [k for k, rev in marks.items() if rev <= revision]:
                    del marks[key]

    def _bad(self, kv: KeyValue, exc: ValidationError) -> None:
        if self._on_bad is not None:
            self._on_bad(kv, exc)

    def _decode(self, kv: KeyValue, type_: type[_T], key: Key | None = None,
                snap: Snapshot | None = None) -> _T | None:
        """Decode or quarantine (one warning per key and revision); with ``snap``, the
        key is marked invalid in it, or no longer invalid."""
        reason: list[str] = []

        def bad(kv: KeyValue, exc: ValidationError) -> None:
            reason.append(str(exc))
            self._bad(kv, exc)

        value = decode_record(kv, type_, key, on_bad=bad)
        if snap is not None:
            snap.put_invalid(kv.key, key, reason[0] if reason else None)
        return value

    def _apply(self, snap: Snapshot, ev: WatchEvent) -> Change | None:
        """Apply one event; the change it made (None: not a record the cache keeps)."""
        try:
            key = self.keys.parse(ev.key)
        except ValidationError:
            return None  # not a key of the schema
        put = ev.kind == "put"
        kv = KeyValue(ev.key, ev.value, ev.revision, 0)
        if not put:
            snap.put_invalid(ev.key, key, None)
        old: Record | None
        new: Record | None
        match key:
            case TaskKey(task_id=task_id):
                old = snap.tasks.get(task_id)
                new = self._decode(kv, Task, key, snap) if put else None
                if new is not None:
                    snap.put_task(new, ev.revision)
                else:
                    snap.remove_task(task_id)
            case AgentKey(host=name):
                state = snap.hosts.get(name)
                old = state.host if state else None
                new = self._decode(kv, Host, key, snap) if put else None
                if new is not None:
                    snap.put_host(new)
                else:
                    snap.remove_host(name)
            case HostConfigKey(name=name):
                old = snap.host_configs.get(name)
                new = self._decode(kv, HostConfig, key, snap) if put else None
                snap.put_host_config(name, new)
            case HostAllocKey(host=name):
                assert snap.alloc_revisions is not None
                if put:
                    snap.alloc_revisions[name] = ev.revision
                else:
                    snap.alloc_revisions.pop(name, None)
                return None
            case HealthKey(task_id=task_id):
                return self._set(key, snap.health, task_id, kv, TaskHealth, put)
            case ServiceKey(name=name):
                return self._set(key, snap.services, name, kv, Service, put)
            case ClusterKey(name=name):
                return self._set(key, snap.clusters, name, kv, Cluster, put)
            case TaskDefinitionKey(name=name, version=version):
                return self._set(key, snap.task_definitions, (name, version), kv,
                                 TaskDefinition, put)
            case RolloutKey(cluster=cluster, service=service):
                return self._set(key, snap.rollouts, (cluster, service), kv,
                                 RolloutHistory, put)
            case ServiceStatusKey(cluster=cluster, service=service):
                return self._set(key, self._statuses, (cluster, service), kv,
                                 ServiceStatus, put)
            case _:
                return None  # host index entries and locks: nothing a planner reads
        return Change(key, old, new, bad=put and new is None)

    def _set(self, key: Key, table: dict[_K, _R], name: _K, kv: KeyValue, type_: type[_R],
             put: bool) -> Change:
        """Put the decoded value of ``kv`` in ``table`` (or drop ``name``: a delete, or a
        value that does not decode); the change made."""
        old = table.get(name)
        value = self._decode(kv, type_, key, self._snap) if put else None
        if value is not None:
            table[name] = value
        else:
            table.pop(name, None)
        return Change(key, old, value, bad=put and value is None)
