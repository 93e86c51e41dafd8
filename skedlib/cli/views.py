"""What the get and list commands of ``sked`` show (see :mod:`skedlib.cli.output`): the
columns and listings over the read model of :mod:`skedlib.views`, which the REST API
shares."""

from __future__ import annotations

from collections.abc import Sequence

from skedlib.cli.output import (
    Column,
    Listing,
    OutputOptions,
    columns,
    state_style,
    table,
)
from skedlib.models import Service, Task
from skedlib.views import (
    HOST_HEADERS,
    SERVICE_HEADERS,
    HostRow,
    TaskRow,
    View,
    host_cells,
    host_rows,
    service_labels,
    service_row,
    task_rows,
    task_state,
    tasks_by_host,
)

__all__ = ["HOST_COLUMNS", "TASK_COLUMNS", "host_listing", "service_listing", "task_listing"]


TASK_COLUMNS: list[Column[TaskRow]] = [
    Column("id", lambda r: r.id), Column("host", lambda r: r.host),
    Column("rejected", lambda r: r.rejected), Column("cluster", lambda r: r.cluster),
    Column("service", lambda r: r.service), Column("task def", lambda r: r.task_definition),
    Column("version", lambda r: r.version), Column("healthy", lambda r: r.healthy, state=True),
    Column("state", task_state, state=True),
    Column("port", lambda r: r.port or "", wide=True),
    Column("message", lambda r: r.message, wide=True),
]
HOST_COLUMNS: list[Column[HostRow]] = columns(HOST_HEADERS, host_cells, states=("live",))


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
