"""What ``sked tasks``, ``sked hosts`` and ``sked get services`` show, and what the REST
API's ``/v1/tasks``, ``/v1/hosts`` and ``/v1/services`` return: one read model, read
consistently.

Every view is built from one listing of the keyspace (a
:class:`~skedlib.scheduling.Snapshot`), so a table never mixes two moments.

The whole issued state is shown: a task present only in its host's index
(``state/hosts/<host>/<task_id>``, as a hand-rolled scheduler writes it, with no
``state/tasks/<task_id>``) is what that host's agent runs, so it is listed too, marked
``index-only``. :func:`index_problems` says where the index and ``state/tasks`` disagree
(``sked doctor`` reports them).
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence
from typing import Any

import msgspec

from skedlib.client import Client
from skedlib.codecs import decode_record
from skedlib.errors import ValidationError
from skedlib.keys import HostTaskKey, Keyspace
from skedlib.models import Service, Task
from skedlib.scheduler.status import describe, read_statuses
from skedlib.scheduling import Snapshot, is_task_healthy
from skedlib.store.base import ListResult

__all__ = [
    "HOST_HEADERS",
    "SERVICE_HEADERS",
    "TASK_HEADERS",
    "HostRow",
    "IndexProblem",
    "ServiceSummary",
    "TaskRow",
    "View",
    "host_cells",
    "host_rows",
    "index_problems",
    "read_index",
    "read_view",
    "service_labels",
    "service_row",
    "service_summary",
    "task_cells",
    "task_rows",
    "task_state",
    "tasks_by_host",
]

TASK_HEADERS = ["id", "host", "rejected", "cluster", "service", "task def", "version",
                "healthy", "state"]
HOST_HEADERS = ["name", "address", "live", "draining", "memory", "cpu", "tasks",
                "attributes"]
SERVICE_HEADERS = ["name", "task", "version", "scheduler", "desired", "placed", "healthy",
                   "status"]


class View:
    """One consistent reading of the store: a snapshot plus the service statuses."""

    def __init__(self, listing: ListResult, keyspace: Keyspace) -> None:
        self.revision = listing.revision
        self.keys = keyspace
        self.snapshot = Snapshot.from_items(listing.items, listing.revision, keyspace)
        self.statuses = read_statuses(listing.items, keyspace)
        self.index = read_index(listing.items, keyspace, known=self.snapshot.tasks)
        """The by-host index: task id → host → the task stored there (None for a task
        that has a task record: its entries are not decoded a second time)."""
        self.index_only: dict[str, Task] = {
            tid: _on_index_host(hosts) for tid, hosts in self.index.items()
            if tid not in self.snapshot.tasks}
        """Tasks present only in the by-host index, by id (host: the index's)."""

    def tasks(self) -> list[Task]:
        """Every issued task, in task id order (cluster, service, version, instance),
        those present only in the by-host index included."""
        return sorted([*self.snapshot.tasks.values(), *self.index_only.values()],
                      key=lambda t: t.task_id)


def read_index(items: Iterable[Any], keys: Keyspace,
               known: Container[str] = ()) -> dict[str, dict[str, Task | None]]:
    """The by-host index among ``items`` (a listing): task id → host → its task (None,
    not decoded, for the ids in ``known``). An entry that does not decode, or whose task
    id is not its key's, is left out (one warning; ``sked doctor`` lists it)."""
    index: dict[str, dict[str, Task | None]] = {}
    prefix = keys.all_host_tasks
    for kv in items:
        if not kv.key.startswith(prefix):
            continue
        try:
            parsed = keys.parse(kv.key)
        except ValidationError:
            continue
        if not isinstance(parsed, HostTaskKey):
            continue
        if parsed.task_id in known:
            index.setdefault(parsed.task_id, {})[parsed.host] = None
            continue
        task = decode_record(kv, Task)
        if task is not None and task.id == parsed.task_id:
            index.setdefault(parsed.task_id, {})[parsed.host] = task
    return index


def _on_index_host(hosts: dict[str, Task | None]) -> Task:
    """The task of an index-only entry, on the host whose index holds it (the agent of
    that host runs it whatever its ``host`` field says)."""
    host, task = min(hosts.items())
    assert task is not None  # only known ids are left undecoded
    return task if task.host == host else msgspec.structs.replace(task, host=host)


class IndexProblem(msgspec.Struct, frozen=True, kw_only=True):
    """A disagreement between ``state/tasks/<id>`` and the by-host index."""

    task_id: str
    kind: str
    """``no index entry``, ``index entry without task`` or ``host mismatch``."""
    key: str
    """The key to look at (the task record, or the index entry)."""
    reason: str
    """One line: what disagrees."""


def index_problems(view: View) -> list[IndexProblem]:
    """Where the by-host index and the task records disagree, by task id: a placed task
    with no index entry on its host (its agent does not see it), an index entry with no
    task record (run by its agent, unseen by schedulers), an entry on another host than
    the task's (that host's agent runs it too)."""
    keys = view.keys
    out = []
    for tid, task in sorted(view.snapshot.tasks.items()):
        on = view.index.get(tid, {})
        if task.host and not task.rejected and task.host not in on:
            out.append(IndexProblem(
                task_id=tid, kind="no index entry", key=keys.task(tid),
                reason=f"placed on {task.host} but not in {keys.host_task(task.host, tid)}: "
                       "its agent does not run it"))
        for host in sorted(set(on) - {task.host}):
            out.append(IndexProblem(
                task_id=tid, kind="host mismatch", key=keys.host_task(host, tid),
                reason=f"the task record says host {task.host or '(none)'}, the index "
                       f"has it on {host}"))
    for tid in sorted(view.index_only):
        for host in sorted(view.index[tid]):
            out.append(IndexProblem(
                task_id=tid, kind="index entry without task", key=keys.host_task(host, tid),
                reason=f"no {keys.task(tid)}: {host}'s agent runs it, schedulers do not "
                       "see it"))
    return out


def read_view(client: Client) -> View:
    """List the keyspace once and build a :class:`View`."""
    return View(client.backend.list(client.keys.prefix), client.keys)


class TaskRow(msgspec.Struct, kw_only=True):
    """One line of ``sked tasks`` (also its ``-o json`` shape)."""

    id: str
    host: str
    rejected: bool
    cluster: str
    service: str
    task_definition: str
    version: int
    healthy: bool
    state: str
    port: int = 0
    host_live: bool = False
    reject_reason: str = ""
    message: str = ""
    index_only: bool = False
    """Only in the host's index (``state/hosts/<host>/<id>``), no task record: placed
    by something outside the schedulers (see docs/coming-from-sked.md)."""


def task_rows(view: View, tasks: Sequence[Task] | None = None) -> list[TaskRow]:
    """The rows of ``sked tasks``; ``state`` is the agent's (TaskHealth.state)."""
    rows = []
    snap = view.snapshot
    for t in view.tasks() if tasks is None else tasks:
        h = snap.health.get(t.id)
        current = h is not None and h.host in ("", t.host)
        if t.rejected:
            state = "rejected"
        elif not t.host:
            state = "unassigned"
        elif t.host not in snap.hosts:
            state = "host down"
        else:
            state = h.state if h is not None and current else "pending"
        rows.append(TaskRow(
            id=t.id, host=t.host, rejected=t.rejected, cluster=t.cluster.name,
            service=t.service, task_definition=t.task_definition.name,
            version=t.task_definition.version,
            healthy=is_task_healthy(t, h, snap.hosts), state=state,
            port=t.port, host_live=t.host in snap.hosts, reject_reason=t.reject_reason,
            message=(h.message if h is not None and current else "") or t.reject_reason,
            index_only=t.id in view.index_only))
    return rows


def task_cells(row: TaskRow) -> list[Any]:
    """Table cells of a task row, in :data:`TASK_HEADERS` order."""
    return [row.id, row.host, row.rejected, row.cluster, row.service, row.task_definition,
            row.version, row.healthy, task_state(row)]


def task_state(row: TaskRow) -> str:
    """A task row's state as shown: marked ``(index-only)`` for a task only in its
    host's index."""
    return f"{row.state} (index-only)" if row.index_only else row.state


def tasks_by_host(view: View) -> list[tuple[str, str, list[TaskRow]]]:
    """``(host, one-line summary, rows)`` for every live host and every host that has
    tasks, by name; tasks placed nowhere come last under ``(unassigned)``."""
    snap = view.snapshot
    rows = task_rows(view)
    names = sorted(set(snap.hosts) | {r.host for r in rows if r.host})
    out = []
    for name in names:
        mine = [r for r in rows if r.host == name]
        h = snap.hosts.get(name)
        marked = sum(r.index_only for r in mine)
        count = f"{len(mine)} task(s)" + (f" ({marked} index-only)" if marked else "")
        if h is None:
            summary = f"not live, {count}"
        else:
            summary = (f"live{', draining' if h.draining else ''}, {count}, "
                       f"memory {h.allocated.memory}/{h.total.memory} MiB, "
                       f"cpu {h.allocated.cpu_units}/{h.total.cpu_units}")
        out.append((name, summary, mine))
    unassigned = [r for r in rows if not r.host]
    if unassigned:
        out.append(("(unassigned)", f"{len(unassigned)} task(s)", unassigned))
    return out


class HostRow(msgspec.Struct, kw_only=True):
    """One line of ``sked hosts`` (also its ``-o json`` shape): a live host, or a host
    known only by its settings (``live`` false; no address, capacity or usage).

    Memory is MiB, CPU 1/1024-core units; *allocated* is what the issued tasks on the
    host ask for, as schedulers count it, not what its processes use now."""

    name: str
    address: str = ""
    live: bool = False
    draining: bool = False
    memory_allocated: int | None = None
    memory_total: int | None = None
    cpu_allocated: int | None = None
    cpu_total: int | None = None
    tasks: int = 0
    attributes: dict[str, str] = msgspec.field(default_factory=dict)


def host_rows(view: View) -> list[HostRow]:
    """The rows of ``sked hosts``: live hosts, and hosts known only by their settings,
    by name."""
    snap = view.snapshot
    rows: list[HostRow] = []
    index_only = [t.host for t in view.index_only.values()]
    for name in sorted(set(snap.hosts) | set(snap.host_configs)):
        h = snap.hosts.get(name)
        cfg = snap.host_configs.get(name)
        if h is None:
            assert cfg is not None
            rows.append(HostRow(name=name, draining=cfg.draining,
                                tasks=sum(1 for t in snap.tasks.values() if t.host == name)
                                + index_only.count(name),
                                attributes=dict(sorted(cfg.attributes.items()))))
            continue
        rows.append(HostRow(name=name, address=h.address, live=True, draining=h.draining,
                            memory_allocated=h.allocated.memory, memory_total=h.total.memory,
                            cpu_allocated=h.allocated.cpu_units, cpu_total=h.total.cpu_units,
                            tasks=len(h.tasks) + index_only.count(name),
                            attributes=dict(sorted(h.attributes.items()))))
    return rows


def host_cells(row: HostRow) -> list[Any]:
    """Table cells of a host row, in :data:`HOST_HEADERS` order (memory and CPU as
    *allocated/total*)."""
    def used(allocated: int | None, total: int | None) -> str:
        return "-" if allocated is None else f"{allocated}/{total}"
    return [row.name, row.address, row.live, row.draining,
            used(row.memory_allocated, row.memory_total),
            used(row.cpu_allocated, row.cpu_total), row.tasks,
            [f"{k}={v}" for k, v in row.attributes.items()]]


class ServiceSummary(msgspec.Struct, kw_only=True):
    """A service as ``sked get services`` and ``GET /v1/services`` show it: its desired
    state, what runs (``placed``: on a live host and not rejected; ``healthy``) summed
    over the clusters that list it (None when no cluster does), and what the scheduler
    last said of it (``status``, one line)."""

    name: str
    task_definition: str
    version: int
    scheduler: str
    desired: int
    placed: int | None = None
    healthy: int | None = None
    clusters: list[str] = msgspec.field(default_factory=list)
    status: str = ""


def service_summary(view: View, s: Service) -> ServiceSummary:
    """What runs of ``s`` and what its schedulers said, from one :class:`View`."""
    clusters = sorted(c.name for c in view.snapshot.clusters.values()
                      if s.name in c.services)
    base = ServiceSummary(name=s.name, task_definition=s.task_name, version=s.task_version,
                          scheduler=s.scheduler, desired=s.desired, clusters=clusters)
    if not clusters:
        base.status = "not in any cluster"
        return base
    rows = [r for r in task_rows(view) if r.service == s.name and r.cluster in clusters]
    base.placed = sum(1 for r in rows if r.host_live and not r.rejected)
    base.healthy = sum(1 for r in rows if r.healthy)
    parts = []
    for c in clusters:
        st = view.statuses.get((c, s.name))
        text = describe(st)
        if st is not None and st.state == "ok":
            mine = [r for r in rows if r.cluster == c]
            if sum(r.healthy for r in mine) != st.desired or len(mine) != st.desired:
                text = (f"not converged ({sum(r.healthy for r in mine)}/{st.desired} "
                        "healthy; is a scheduler running?)")
        invalid = view.snapshot.invalid_count(c, s.name)
        if invalid:
            text += f"; {invalid} invalid record(s) (see sked doctor)"
        parts.append(text if len(clusters) == 1 else f"{c}: {text}")
    base.status = "; ".join(parts)
    return base


def service_row(view: View, s: Service) -> list[Any]:
    """A row of ``sked get services`` (:func:`service_summary` as table cells)."""
    m = service_summary(view, s)
    return [m.name, m.task_definition, m.version, m.scheduler, m.desired,
            "-" if m.placed is None else m.placed, "-" if m.healthy is None else m.healthy,
            m.status]


def service_labels(view: View, service: str) -> dict[str, str]:
    """The labels of the service ``service`` (none if it is not in the desired state)."""
    s = view.snapshot.services.get(service)
    return dict(s.labels) if s is not None else {}
