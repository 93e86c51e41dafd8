"""Which ``(cluster, service)`` pairs a change of the store affects: what to plan again.

The scheduler daemon follows the store through its
:class:`~skedlib.scheduling.SnapshotCache`, which decodes every watch event once and
hands each :class:`~skedlib.scheduling.Change` (the record before and after) here, with
the snapshot as it stands just after the change:

- a cluster → its services (old and new) and the pairs of its issued tasks;
- a service → every cluster listing it, and the pairs of its issued tasks;
- a task definition → the services running it;
- a host that joins, leaves or changes what placement looks at (resources, attributes,
  draining, executors, cluster) → every service of the clusters that may use it (a host
  that left: also the pairs of the tasks issued to it); a host whose record changed
  otherwise (e.g. ports freed) → the unschedulable pairs that may use it;
- a host's configuration → every service of the clusters that may use it;
- a task that an agent rejected, whose host is gone, or whose service is no longer wanted
  → its pair; a task that does not decode → its pair (re-placed); a task that went away
  → its pair if still wanted, and the unschedulable pairs that may use its host (room was
  freed);
- a task whose health flipped → its pair (for the status).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from skedlib.keys import (
    AgentKey,
    ClusterKey,
    HealthKey,
    HostConfigKey,
    ServiceKey,
    TaskDefinitionKey,
    TaskKey,
)
from skedlib.models import Cluster, Host, HostConfig, Task, TaskHealth, TaskId
from skedlib.scheduling import Change, Snapshot

__all__ = ["Pair", "affected_pairs", "all_pairs", "is_wanted", "label"]

Pair = tuple[str, str]
"""``(cluster, service)``: the unit of scheduling work, locking and status."""

_T = TypeVar("_T")


def label(pair: Pair) -> str:
    """How logs name a pair: the service alone in the ``default`` cluster."""
    cluster, service = pair
    return service if cluster == "default" else f"{cluster}/{service}"


def wanted(snap: Snapshot) -> set[Pair]:
    """Every pair the desired state asks for."""
    return {(c.name, s) for c in snap.clusters.values() for s in c.services}


def all_pairs(snap: Snapshot) -> set[Pair]:
    """Wanted pairs, and the pairs of every issued task (to stop orphans)."""
    return wanted(snap) | {(t.cluster.name, t.service) for t in snap.tasks.values()}


def is_wanted(snap: Snapshot, pair: Pair) -> bool:
    """True when the pair's cluster lists the service and the service exists."""
    c = snap.clusters.get(pair[0])
    return c is not None and pair[1] in c.services and pair[1] in snap.services


def affected_pairs(snap: Snapshot, change: Change, unschedulable: set[Pair]) -> set[Pair]:
    """The pairs ``change`` affects (see the module docstring); ``unschedulable`` holds
    the pairs whose last run left tasks that fit no host."""
    key = change.key
    if isinstance(key, TaskKey):  # most changes (a placement each): before the patterns
        return _task(snap, key.task_id, change, unschedulable)
    match key:
        case ClusterKey(name=name):
            old_c, new_c = _as(change.old, Cluster), _as(change.new, Cluster)
            if old_c == new_c:
                return set()
            return {(name, s) for c in (old_c, new_c) if c is not None for s in c.services} \
                | {(t.cluster.name, t.service) for t in snap.tasks.values()
                   if t.cluster.name == name}
        case ServiceKey(name=name):
            if change.old == change.new:
                return set()
            return {(c.name, name) for c in snap.clusters.values() if name in c.services} | {
                (t.cluster.name, t.service) for t in snap.tasks.values() if t.service == name}
        case TaskDefinitionKey(name=name):
            return {(c.name, s.name) for s in snap.services.values() if s.task_name == name
                    for c in snap.clusters.values() if s.name in c.services}
        case HostConfigKey(name=name):
            if _as(change.old, HostConfig) == _as(change.new, HostConfig):
                return set()
            return _pairs_of(_clusters_using(snap, name))
        case AgentKey(host=name):
            return _host(snap, name, _as(change.old, Host), _as(change.new, Host),
                         unschedulable)
        case HealthKey(task_id=task_id):
            old_h, new_h = _as(change.old, TaskHealth), _as(change.new, TaskHealth)
            was = None if old_h is None else old_h.healthy
            now = None if new_h is None else new_h.healthy
            task = snap.tasks.get(task_id)
            if was == now or task is None:
                return set()
            return {(task.cluster.name, task.service)}
        case _:
            return set()


def _as(value: object, type_: type[_T]) -> _T | None:
    return value if isinstance(value, type_) else None


def _clusters_using(snap: Snapshot, host: str) -> list[Cluster]:
    return [c for c in snap.clusters.values() if c.hosts is None or host in c.hosts]


def _pairs_of(clusters: Iterable[Cluster]) -> set[Pair]:
    return {(c.name, s) for c in clusters for s in c.services}


def _unschedulable_using(snap: Snapshot, host: str, unschedulable: set[Pair]) -> set[Pair]:
    names = {c.name for c in _clusters_using(snap, host)}
    return {p for p in unschedulable if p[0] in names}


def _signature(host: Host) -> tuple[object, ...]:
    """What placement looks at in a host record."""
    return (host.total, host.attributes, host.draining, host.executors, host.cluster)


def _host(snap: Snapshot, name: str, old: Host | None, new: Host | None,
          unschedulable: set[Pair]) -> set[Pair]:
    if new is None:  # a host left: re-place its tasks
        return _pairs_of(_clusters_using(snap, name)) | {
            (t.cluster.name, t.service) for t in snap.tasks_on(name)}
    if old is None or _signature(old) != _signature(new):  # joined, or changed
        return _pairs_of(_clusters_using(snap, name))
    return _unschedulable_using(snap, name, unschedulable)  # e.g. ports freed: retry


def _task(snap: Snapshot, task_id: str, change: Change, unschedulable: set[Pair]
          ) -> set[Pair]:
    old, new = _as(change.old, Task), _as(change.new, Task)
    if change.bad:  # unreadable: re-place it
        tid = TaskId.parse(task_id)
        return {(tid.cluster, tid.service)}
    if new is None:
        if old is None:
            return set()
        pair = (old.cluster.name, old.service)
        return ({pair} if is_wanted(snap, pair) else set()) | \
            _unschedulable_using(snap, old.host, unschedulable)  # room was freed
    pair = (new.cluster.name, new.service)
    newly_rejected = new.rejected and (old is None or not old.rejected)
    if newly_rejected or new.host not in snap.hosts or not is_wanted(snap, pair):
        return {pair}
    return set()
