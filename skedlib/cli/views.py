"""What ``sked tasks``, ``sked hosts`` and ``sked get services`` show, read consistently.

Every view is built from one listing of the keyspace (a
:class:`~skedlib.scheduling.Snapshot`), so a table never mixes two moments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from skedlib.cli.output import (
    Column,
    Listing,
    OutputOptions,
    columns,
    state_style,
    table,
)
from skedlib.client import Client
from skedlib.keys import Keyspace
from skedlib.models import Service, Task
from skedlib.scheduler.status import describe, read_statuses
from skedlib.scheduling import Snapshot, is_task_healthy
from skedlib.store.base import ListResult

__all__ = [
    "HOST_COLUMNS",
    "HOST_HEADERS",
    "SERVICE_HEADERS",
    "TASK_COLUMNS",
    "TASK_HEADERS",
    "HostRow",
    "TaskRow",
    "View",
    "host_cells",
    "host_listing",
    "host_rows",
    "read_view",
    "service_labels",
    "service_listing",
    "service_row",
    "task_cells",
    "task_listing",
    "task_rows",
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
        self.snapshot = Snapshot.from_items(listing.items, listing.revision, keyspace)
        self.statuses = read_statuses(listing.items, keyspace)

    def tasks(self) -> list[Task]:
        """Every issued task, in task id order (cluster, service, version, instance)."""
        return sorted(self.snapshot.tasks.values(), key=lambda t: t.task_id)


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
            message=(h.message if h is not None and current else "") or t.reject_reason))
    return rows


def task_cells(row: TaskRow) -> list[Any]:
    """Table cells of a task row, in :data:`TASK_HEADERS` order."""
    return [row.id, row.host, row.rejected, row.cluster, row.service, row.task_definition,
            row.version, row.healthy, row.state]


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
        if h is None:
            summary = f"not live, {len(mine)} task(s)"
        else:
            summary = (f"live{', draining' if h.draining else ''}, {len(mine)} task(s), "
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
    for name in sorted(set(snap.hosts) | set(snap.host_configs)):
        h = snap.hosts.get(name)
        cfg = snap.host_configs.get(name)
        if h is None:
            assert cfg is not None
            rows.append(HostRow(name=name, draining=cfg.draining,
                                tasks=sum(1 for t in snap.tasks.values() if t.host == name),
                                attributes=dict(sorted(cfg.attributes.items()))))
            continue
        rows.append(HostRow(name=name, address=h.address, live=True, draining=h.draining,
                            memory_allocated=h.allocated.memory, memory_total=h.total.memory,
                            cpu_allocated=h.allocated.cpu_units, cpu_total=h.total.cpu_units,
                            tasks=len(h.tasks), attributes=dict(sorted(h.attributes.items()))))
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


def service_row(view: View, s: Service) -> list[Any]:
    """A row of ``sked get services``: desired state, then what runs (placed on a live
    host and not rejected; healthy) summed over the clusters that list the service, and
    what the scheduler last said of it (``status``)."""
    clusters = sorted(c.name for c in view.snapshot.clusters.values()
                      if s.name in c.services)
    if not clusters:
        return [s.name, s.task_name, s.task_version, s.scheduler, s.desired, "-", "-",
                "not in any cluster"]
    rows = [r for r in task_rows(view) if r.service == s.name and r.cluster in clusters]
    placed = sum(1 for r in rows if r.host_live and not r.rejected)
    healthy = sum(1 for r in rows if r.healthy)
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
    return [s.name, s.task_name, s.task_version, s.scheduler, s.desired, placed, healthy,
            "; ".join(parts)]


# -- what the get and list commands show (see skedlib.cli.output) --------------------------
TASK_COLUMNS: list[Column[TaskRow]] = [
    Column("id", lambda r: r.id), Column("host", lambda r: r.host),
    Column("rejected", lambda r: r.rejected), Column("cluster", lambda r: r.cluster),
    Column("service", lambda r: r.service), Column("task def", lambda r: r.task_definition),
    Column("version", lambda r: r.version), Column("healthy", lambda r: r.healthy, state=True),
    Column("state", lambda r: r.state, state=True),
    Column("port", lambda r: r.port or "", wide=True),
    Column("message", lambda r: r.message, wide=True),
]
HOST_COLUMNS: list[Column[HostRow]] = columns(HOST_HEADERS, host_cells, states=("live",))


def service_labels(view: View, service: str) -> dict[str, str]:
    """The labels of the service ``service`` (none if it is not in the desired state)."""
    s = view.snapshot.services.get(service)
    return dict(s.labels) if s is not None else {}


def task_listing(view: View, tasks: Sequence[Task] | None = None, *,
                 single: bool = False, by_host: bool = False) -> Listing[TaskRow]:
    """``sked tasks`` (and the table of ``sked get tasks``): rows of the issued tasks,
    selected by their service's labels; ``by_host`` groups the table by host."""
    def grouped(rows: Sequence[TaskRow], opts: OutputOptions) -> str:
        ids = {r.id for r in rows}
        sections = []
        for host, summary, mine in tasks_by_host(view):
            mine = [r for r in mine if r.id in ids]
            if not mine and opts.selector:
                continue
            text = f"{host}: {summary}"
            if mine:
                cols = [c for c in TASK_COLUMNS if c.header != "host" and not c.wide]
                text += "\n" + table([c.header for c in cols],
                                     [[c.cell(r) for c in cols] for r in mine],
                                     no_headers=opts.no_headers,
                                     styles=[state_style if c.state else None for c in cols],
                                     colour=opts.colour)
            sections.append(text)
        return "\n\n".join(sections) if sections else "no hosts and no tasks"

    return Listing("task", task_rows(view, tasks), TASK_COLUMNS, name=lambda r: r.id,
                   labels=lambda r: service_labels(view, r.service), single=single,
                   empty="no hosts and no tasks" if by_host else "no tasks",
                   text=grouped if by_host else None)


def host_listing(view: View, name: str | None = None) -> Listing[HostRow]:
    """``sked hosts`` (and the table of ``sked get hosts``), selected by attributes."""
    rows = [r for r in host_rows(view) if name in (None, r.name)]
    return Listing("host", rows, HOST_COLUMNS, name=lambda r: r.name,
                   labels=lambda r: r.attributes, single=name is not None, empty="no hosts")


def service_listing(view: View, name: str | None = None) -> Listing[Service]:
    """``sked get services``: desired state, then placed/healthy/status (see
    :func:`service_row`); ``-o wide`` adds the labels; selected by labels."""
    services = sorted((s for s in view.snapshot.services.values() if name in (None, s.name)),
                      key=lambda s: s.name)
    cols: list[Column[Service]] = columns(SERVICE_HEADERS, lambda s: service_row(view, s),
                                          states=("status",))
    cols.append(Column("labels", lambda s: s.labels, wide=True))
    return Listing("service", services, cols, name=lambda s: s.name,
                   labels=lambda s: s.labels, single=name is not None)
