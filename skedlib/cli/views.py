"""What ``sked tasks``, ``sked hosts`` and ``sked get services`` show, read consistently.

Every view is built from one listing of the keyspace (a
:class:`~skedlib.scheduling.Snapshot`), so a table never mixes two moments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from skedlib.client import Client
from skedlib.keys import Keyspace
from skedlib.models import Service, Task
from skedlib.scheduler.status import describe, read_statuses
from skedlib.scheduling import Snapshot, is_task_healthy
from skedlib.store.base import ListResult

__all__ = [
    "HOST_HEADERS",
    "SERVICE_HEADERS",
    "TASK_HEADERS",
    "TaskRow",
    "View",
    "host_rows",
    "read_view",
    "service_row",
    "task_cells",
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


def host_rows(view: View) -> list[list[Any]]:
    """The rows of ``sked hosts``: live hosts, and hosts known only by their settings.

    Memory and CPU are *allocated/total* as schedulers count them (from the issued
    tasks), not what the host's processes use now."""
    snap = view.snapshot
    rows: list[list[Any]] = []
    for name in sorted(set(snap.hosts) | set(snap.host_configs)):
        h = snap.hosts.get(name)
        cfg = snap.host_configs.get(name)
        if h is None:
            assert cfg is not None
            rows.append([name, "", False, cfg.draining, "-", "-",
                         sum(1 for t in snap.tasks.values() if t.host == name),
                         [f"{k}={v}" for k, v in sorted(cfg.attributes.items())]])
            continue
        rows.append([name, h.address, True, h.draining,
                     f"{h.allocated.memory}/{h.total.memory}",
                     f"{h.allocated.cpu_units}/{h.total.cpu_units}", len(h.tasks),
                     [f"{k}={v}" for k, v in sorted(h.attributes.items())]])
    return rows


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
