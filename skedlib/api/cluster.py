"""The cluster routes: what runs where, read (``/v1/services``, ``/v1/tasks``,
``/v1/hosts``), the operator's writes (scale, drain, delete a service), and a stream of
changes (``/v1/changes``, server-sent events) for a page or a program that follows the
store without polling.

Reads come from one listing of the keyspace (:class:`~skedlib.views.View`), the same read
model as ``sked tasks``, ``sked hosts`` and ``sked get services``, so the API and the CLI
never disagree. A server started with datacenters (``sked serve --datacenters``) also
serves ``/v1/datacenters`` and ``/v1/all-datacenters/tasks|hosts|services``: the same
rows read from every datacenter at once by :func:`skedlib.federation.each_datacenter`
(the reader of ``sked --all-datacenters``), each marked with its datacenter, and the
datacenters that did not answer in time listed as ``unreachable``. Writes go through
:class:`~skedlib.client.Client` (compare-and-swap, bounds and limits checked as for the
CLI).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import msgspec

from skedlib.agent.logs import task_logs
from skedlib.api.errors import HttpError
from skedlib.api.responses import Response, Stream
from skedlib.api.routing import (
    Call,
    QueryParam,
    Route,
    between,
    boolean,
    non_negative,
    one_of,
    seconds,
)
from skedlib.client import Client
from skedlib.federation import Datacenter, Unreachable, each_datacenter, unreachable
from skedlib.models import HostConfig, Service, Task, TaskHealth
from skedlib.runtime import wait_for_change
from skedlib.views import (
    HostRow,
    ServiceSummary,
    TaskRow,
    View,
    host_rows,
    read_view,
    service_summary,
    task_rows,
)

__all__ = [
    "DEFAULT_TASK_PAGE",
    "HEARTBEAT",
    "MAX_STREAMS",
    "MAX_TASK_PAGE",
    "ROUTES",
    "DatacenterHostList",
    "DatacenterHostRow",
    "DatacenterList",
    "DatacenterRead",
    "DatacenterServiceList",
    "DatacenterServiceSummary",
    "DatacenterTaskList",
    "DatacenterTaskRow",
    "DrainRequest",
    "HostDetail",
    "HostList",
    "ScaleRequest",
    "ServiceDetail",
    "ServiceList",
    "ServiceRemoved",
    "TaskDetail",
    "TaskPage",
]

DEFAULT_TASK_PAGE = 1000
"""Tasks per page of ``GET /v1/tasks`` when no ``limit`` is given."""
MAX_TASK_PAGE = 10_000
"""The largest ``limit`` ``GET /v1/tasks`` accepts."""
HEARTBEAT = 15.0
"""Seconds between keep-alive comments on a quiet change stream (a closed client is
noticed by the next write)."""
MAX_STREAMS = 64
"""Change streams open at once; more get 503 (each holds a server thread)."""
MAX_STREAM_SECONDS = 3600.0
"""The longest ``timeout`` a change stream accepts; an EventSource reconnects by itself."""

class ScaleRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``PUT /v1/services/{name}/scale``."""

    desired: int
    """The new desired count, within the service's min and max and the store's limit."""


class DrainRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``PUT /v1/hosts/{name}/drain``."""

    draining: bool = True
    """True: no new tasks are placed on the host and its tasks are moved away; false:
    the host takes tasks again."""


class ServiceList(msgspec.Struct, kw_only=True):
    """``GET /v1/services``: every service (of one cluster, if asked), by name."""

    items: list[ServiceSummary]
    revision: int
    """The store revision this listing was read at."""


class ServiceDetail(msgspec.Struct, kw_only=True):
    """``GET /v1/services/{name}``: the stored service, its summary and its tasks."""

    service: Service
    summary: ServiceSummary
    tasks: list[TaskRow]
    revision: int


class ServiceRemoved(msgspec.Struct, kw_only=True):
    """``DELETE /v1/services/{name}``: the service is gone from the store and from its
    clusters; the scheduler stops its tasks."""

    name: str
    message: str


class TaskPage(msgspec.Struct, kw_only=True):
    """``GET /v1/tasks``: issued tasks in id order, a page at a time."""

    items: list[TaskRow]
    next_token: str | None = None
    """Pass it as next_token for the next page; null on the last page."""
    revision: int


class TaskDetail(msgspec.Struct, kw_only=True):
    """``GET /v1/tasks/{id}``: the task as ``sked tasks`` shows it, its stored record and
    what its agent last reported of its health (null before the first report)."""

    row: TaskRow
    task: Task
    health: TaskHealth | None = None
    revision: int


class HostList(msgspec.Struct, kw_only=True):
    """``GET /v1/hosts``: live hosts and hosts known only by their settings, by name."""

    items: list[HostRow]
    revision: int


class HostDetail(msgspec.Struct, kw_only=True):
    """``GET /v1/hosts/{name}``: the host's summary and the tasks issued to it."""

    summary: HostRow
    tasks: list[TaskRow]
    revision: int


class DatacenterList(msgspec.Struct, kw_only=True):
    """``GET /v1/datacenters``: the datacenters this server reads for
    ``/v1/all-datacenters/…``, by name (empty: it was started without any)."""

    items: list[str]
    timeout: float
    """Seconds a datacenter has to answer before it is reported as unreachable."""


class DatacenterRead(msgspec.Struct, kw_only=True):
    """A datacenter that answered: the revision of its store the rows were read at."""

    datacenter: str
    revision: int
    more: bool = False
    """Tasks only: the datacenter has more rows than ``limit``; filter to see them."""


class DatacenterTaskRow(TaskRow, kw_only=True):
    """A row of ``GET /v1/tasks``, and the datacenter it was read from (a task id is
    unique within its datacenter only)."""

    datacenter: str


class DatacenterHostRow(HostRow, kw_only=True):
    """A row of ``GET /v1/hosts``, and the datacenter it was read from."""

    datacenter: str


class DatacenterServiceSummary(ServiceSummary, kw_only=True):
    """A service of ``GET /v1/services``, and the datacenter it was read from."""

    datacenter: str


class DatacenterTaskList(msgspec.Struct, kw_only=True):
    """``GET /v1/all-datacenters/tasks``: the tasks of every datacenter that answered
    (in the server's order of datacenters, then by id), and those that did not."""

    items: list[DatacenterTaskRow]
    answered: list[DatacenterRead]
    unreachable: list[Unreachable]
    """The datacenters that failed or did not answer in time, each with why."""


class DatacenterHostList(msgspec.Struct, kw_only=True):
    """``GET /v1/all-datacenters/hosts``: the hosts of every datacenter that answered,
    and those that did not."""

    items: list[DatacenterHostRow]
    answered: list[DatacenterRead]
    unreachable: list[Unreachable]
    """The datacenters that failed or did not answer in time, each with why."""


class DatacenterServiceList(msgspec.Struct, kw_only=True):
    """``GET /v1/all-datacenters/services``: the services of every datacenter that
    answered, and those that did not."""

    items: list[DatacenterServiceSummary]
    answered: list[DatacenterRead]
    unreachable: list[Unreachable]
    """The datacenters that failed or did not answer in time, each with why."""


MODELS = (ScaleRequest, DrainRequest, ServiceList, ServiceDetail, ServiceRemoved, TaskPage,
          TaskDetail, HostList, HostDetail, DatacenterList, DatacenterRead, Unreachable,
          DatacenterTaskRow, DatacenterHostRow, DatacenterServiceSummary, DatacenterTaskList,
          DatacenterHostList, DatacenterServiceList)
"""The request and response types of these routes (for the OpenAPI document)."""


# -- services -------------------------------------------------------------------------------
def _services(call: Call) -> Response:
    view = read_view(call.client)
    cluster = call.query.get("cluster")
    services = sorted(view.snapshot.services.values(), key=lambda s: s.name)
    items = [service_summary(view, s) for s in services]
    if cluster is not None:
        items = [m for m in items if cluster in m.clusters]
    return Response(200, ServiceList(items=items, revision=view.revision))


def _service(call: Call) -> Response:
    name = call.path["name"]
    view = read_view(call.client)
    service = view.snapshot.services.get(name)
    if service is None:
        raise HttpError(404, f"no service named {name!r}")
    summary = service_summary(view, service)
    tasks = [r for r in task_rows(view)
             if r.service == name and r.cluster in summary.clusters]
    return Response(200, ServiceDetail(service=service, summary=summary, tasks=tasks,
                                       revision=view.revision))


def _scale(call: Call) -> Response:
    req: ScaleRequest = call.data
    return Response(200, call.client.scale(call.path["name"], req.desired))


def _delete_service(call: Call) -> Response:
    name = call.path["name"]
    if call.client.service(name) is None:
        raise HttpError(404, f"no service named {name!r}")
    call.client.delete("service", name)
    return Response(200, ServiceRemoved(
        name=name, message=f"service {name!r} deleted; the scheduler stops its tasks"))


# -- tasks ----------------------------------------------------------------------------------
def _tasks(call: Call) -> Response:
    view = read_view(call.client)
    q = call.query
    after = q.get("next_token", "")
    limit = q.get("limit", DEFAULT_TASK_PAGE)
    rows = [r for r in task_rows(view)
            if r.id > after
            and q.get("cluster", r.cluster) == r.cluster
            and q.get("service", r.service) == r.service
            and q.get("host", r.host) == r.host
            and q.get("state", r.state) == r.state]
    page = rows[:limit]
    more = len(rows) > limit
    return Response(200, TaskPage(items=page, next_token=page[-1].id if more else None,
                                  revision=view.revision))


def _task(call: Call) -> Response:
    task_id = call.path["id"]
    view = read_view(call.client)
    task = view.snapshot.tasks.get(task_id)
    if task is None:
        raise HttpError(404, f"no task {task_id!r} is issued")
    (row,) = task_rows(view, [task])
    return Response(200, TaskDetail(row=row, task=task,
                                    health=view.snapshot.health.get(task_id),
                                    revision=view.revision))


def _task_logs(call: Call) -> Response:
    q = call.query
    chunks = task_logs(call.client.store, call.path["id"], container=q.get("container", ""),
                       stream=q.get("stream", "out"), follow=q.get("follow", False),
                       offset=q.get("offset", 0))
    return Response(200, Stream(chunks), {"Cache-Control": "no-store",
                                          "X-Content-Type-Options": "nosniff"})


# -- hosts ----------------------------------------------------------------------------------
def _hosts(call: Call) -> Response:
    view = read_view(call.client)
    return Response(200, HostList(items=host_rows(view), revision=view.revision))


def _host(call: Call) -> Response:
    name = call.path["name"]
    view = read_view(call.client)
    found = [h for h in host_rows(view) if h.name == name]
    if not found:
        raise HttpError(404, f"no host named {name!r} (neither live nor configured)")
    tasks = [r for r in task_rows(view) if r.host == name]
    return Response(200, HostDetail(summary=found[0], tasks=tasks, revision=view.revision))


def _drain(call: Call) -> Response:
    req: DrainRequest = call.data
    config: HostConfig = call.client.set_draining(call.path["name"], req.draining)
    return Response(200, config)


# -- every datacenter -----------------------------------------------------------------------
R = TypeVar("R")


def _asked(call: Call) -> Sequence[Datacenter]:
    """The datacenters this request reads: all the server knows, or the one named by
    ``datacenter``."""
    if not call.datacenters:
        raise HttpError(404, "this server reads no datacenters (start it with sked serve "
                             "--datacenters, over a context that lists them)")
    name = call.query.get("datacenter")
    if name is None:
        return call.datacenters
    found = [dc for dc in call.datacenters if dc.name == name]
    if not found:
        known = ", ".join(dc.name for dc in call.datacenters)
        raise HttpError(400, f"query parameter datacenter: no datacenter {name!r} "
                             f"(this server reads {known})")
    return found


def _each(call: Call, rows: Callable[[View], list[R]], limit: int | None = None
          ) -> tuple[list[tuple[str, R]], list[DatacenterRead], list[Unreachable]]:
    """``rows(view)`` of every asked datacenter (at most ``limit`` each), with the
    datacenter's name; which answered (at which revision) and which did not."""
    def read(dc: Datacenter, client: Client) -> tuple[int, list[R]]:
        view = read_view(client)
        return view.revision, rows(view)

    outcomes = each_datacenter(_asked(call), read, timeout=call.dc_timeout)
    items: list[tuple[str, R]] = []
    answered: list[DatacenterRead] = []
    for o in outcomes:
        if o.value is None:
            continue
        revision, got = o.value
        more = limit is not None and len(got) > limit
        items += [(o.datacenter, r) for r in (got[:limit] if more else got)]
        answered.append(DatacenterRead(datacenter=o.datacenter, revision=revision,
                                       more=more))
    return items, answered, unreachable(outcomes)


def _datacenters(call: Call) -> Response:
    return Response(200, DatacenterList(items=[dc.name for dc in call.datacenters],
                                        timeout=call.dc_timeout))


def _all_tasks(call: Call) -> Response:
    q = call.query

    def rows(view: View) -> list[TaskRow]:
        return [r for r in task_rows(view)
                if q.get("cluster", r.cluster) == r.cluster
                and q.get("service", r.service) == r.service
                and q.get("host", r.host) == r.host
                and q.get("state", r.state) == r.state]

    items, answered, gone = _each(call, rows, q.get("limit", DEFAULT_TASK_PAGE))
    return Response(200, DatacenterTaskList(
        items=[DatacenterTaskRow(datacenter=dc, **msgspec.structs.asdict(r))
               for dc, r in items], answered=answered, unreachable=gone))


def _all_hosts(call: Call) -> Response:
    items, answered, gone = _each(call, host_rows)
    return Response(200, DatacenterHostList(
        items=[DatacenterHostRow(datacenter=dc, **msgspec.structs.asdict(r))
               for dc, r in items], answered=answered, unreachable=gone))


def _all_services(call: Call) -> Response:
    cluster = call.query.get("cluster")

    def rows(view: View) -> list[ServiceSummary]:
        summaries = [service_summary(view, s) for s in
                     sorted(view.snapshot.services.values(), key=lambda s: s.name)]
        return [m for m in summaries if cluster is None or cluster in m.clusters]

    items, answered, gone = _each(call, rows)
    return Response(200, DatacenterServiceList(
        items=[DatacenterServiceSummary(datacenter=dc, **msgspec.structs.asdict(r))
               for dc, r in items], answered=answered, unreachable=gone))


# -- changes --------------------------------------------------------------------------------
_streams = threading.BoundedSemaphore(MAX_STREAMS)


def _event(revision: int) -> bytes:
    return b"event: change\ndata: " + json.dumps({"revision": revision}).encode() + b"\n\n"


def _changes(call: Call) -> Response:
    if not _streams.acquire(blocking=False):
        raise HttpError(503, f"{MAX_STREAMS} change streams are open already; try again "
                             "later")
    try:
        backend = call.client.backend
        prefix = call.client.keys.prefix
        revision = backend.current_revision(prefix)
    except BaseException:
        _streams.release()
        raise
    deadline = time.monotonic() + call.query.get("timeout", 300.0)

    def events() -> Iterator[bytes]:
        nonlocal revision
        try:
            # the first event carries the revision the client should read at
            yield b"retry: 2000\n\n" + _event(revision)
            while (left := deadline - time.monotonic()) > 0:
                got = wait_for_change(backend, prefix, revision, min(left, HEARTBEAT))
                if got is None:
                    yield b": keep-alive\n\n"
                    continue
                revision = got
                yield _event(revision)
        finally:
            _streams.release()

    return Response(200, Stream(events(), content_type="text/event-stream"),
                    {"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


_SERVICE = {"name": "the service's name"}
_HOST = {"name": "the host's name"}
_LIMIT = QueryParam("limit", {"type": "integer", "minimum": 1, "maximum": MAX_TASK_PAGE,
                              "default": DEFAULT_TASK_PAGE}, "tasks per page",
                    between(1, MAX_TASK_PAGE))
_NEXT = QueryParam("next_token", {"type": "string"},
                   "the next_token of the previous page (absent: the first page)")
_DC = QueryParam("datacenter", {"type": "string"},
                 "read only this datacenter (one of GET /v1/datacenters)")
_DC_MEANINGS = {"400": "A bad query parameter, or a datacenter this server does not read.",
                "404": "This server reads no datacenters (started without --datacenters)."}
_CHANGES_OK = {
    "description": "A text/event-stream: first `retry: 2000` and a `change` event with "
                   "the store's current revision, then a `change` event "
                   "(`data: {\"revision\": N}`) after each change under the store's "
                   "prefix, and a `: keep-alive` comment every 15 s while nothing changes. "
                   "Read what you show again on each event. The stream ends after "
                   "`timeout` seconds; an EventSource reconnects by itself.",
    "content": {"text/event-stream": {"schema": {
        "description": "One event of the stream.",
        "type": "object",
        "properties": {
            "event": {"const": "change"},
            "data": {"type": "string", "contentMediaType": "application/json",
                     "contentSchema": {"type": "object", "required": ["revision"],
                                       "properties": {"revision": {
                                           "type": "integer", "minimum": 0}}}},
            "retry": {"type": "integer"}}}}}}


ROUTES = (
    Route("GET", "/services", _services, "listServices", "List services",
          "Every service with its desired count, what runs of it (placed on a live host; "
          "healthy) and what its scheduler last said, read at one revision.",
          ok_schema="ServiceList", errors=("400",), tag="cluster",
          query=(QueryParam("cluster", {"type": "string"}, "only this cluster's"),)),
    Route("GET", "/services/{name}", _service, "getService", "Describe a service",
          "The stored service, its summary and its tasks.",
          ok_schema="ServiceDetail", errors=("400", "404"), tag="cluster",
          path_docs=_SERVICE),
    Route("PUT", "/services/{name}/scale", _scale, "scaleService", "Scale a service",
          "Sets the service's desired count (within its min and max and the store's "
          "limit), compared on the service's revision so a concurrent change is never "
          "overwritten. The scheduler then places or stops tasks.",
          ok_schema="ScaleResult", errors=("400", "404", "409", "413"), body=ScaleRequest,
          tag="cluster", path_docs=_SERVICE),
    Route("DELETE", "/services/{name}", _delete_service, "deleteService", "Delete a service",
          "Removes the service from the store and from the clusters that list it; the "
          "scheduler stops its tasks.",
          ok_schema="ServiceRemoved", errors=("400", "404", "409"), tag="cluster",
          path_docs=_SERVICE),
    Route("GET", "/tasks", _tasks, "listTasks", "List tasks",
          "Issued tasks in id order, a page at a time, each with its host, whether it is "
          "healthy and its state as its agent reported it; filtered by the given "
          "parameters.",
          ok_schema="TaskPage", errors=("400",), tag="cluster",
          query=(QueryParam("cluster", {"type": "string"}, "only this cluster's"),
                 QueryParam("service", {"type": "string"}, "only this service's"),
                 QueryParam("host", {"type": "string"}, "only those issued to this host"),
                 QueryParam("state", {"type": "string"},
                            "only those in this state (as sked tasks shows it: healthy, "
                            "pending, rejected, unassigned, host down …)"),
                 _LIMIT, _NEXT)),
    Route("GET", "/tasks/{id}", _task, "getTask", "Describe a task",
          "The task's row, its stored record and its last health report.",
          ok_schema="TaskDetail", errors=("400", "404"), tag="cluster",
          path_docs={"id": "the task's id"}),
    Route("GET", "/tasks/{id}/logs", _task_logs, "getTaskLogs", "A task's output",
          "Fetched from the agent of the task's host (`sked logs`), with the token that "
          "agent publishes in the store; with follow=true, on as it is written until the "
          "task stops or leaves its host.",
          errors=("400", "404"), tag="cluster", path_docs={"id": "the task's id"},
          meanings={"503": "The task's host serves no output now (its agent is down, "
                           "older, or runs without an output server), or the store is "
                           "unavailable."},
          ok_response={
              "description": "The container's output, raw bytes as it wrote them, "
                             "streamed with chunked transfer encoding; cut short (no final "
                             "chunk) if fetching from the host fails midway.",
              "content": {"text/plain": {"schema": {"type": "string"}}}},
          query=(QueryParam("container", {"type": "string"},
                            "the container (required when the task has several)"),
                 QueryParam("stream", {"type": "string", "enum": ["out", "err"],
                                       "default": "out"},
                            "standard output or standard error", one_of(("out", "err"))),
                 QueryParam("offset", {"type": "integer", "minimum": 0, "default": 0},
                            "bytes to skip", non_negative),
                 QueryParam("follow", {"type": "boolean", "default": False},
                            "keep the response open and send new output", boolean))),
    Route("GET", "/hosts", _hosts, "listHosts", "List hosts",
          "Live hosts (their agent holds a host record) and hosts known only by their "
          "settings, with what schedulers have allocated on each.",
          ok_schema="HostList", tag="cluster"),
    Route("GET", "/hosts/{name}", _host, "getHost", "Describe a host",
          "The host's summary and the tasks issued to it.",
          ok_schema="HostDetail", errors=("400", "404"), tag="cluster", path_docs=_HOST),
    Route("PUT", "/hosts/{name}/drain", _drain, "drainHost", "Drain or undrain a host",
          "Draining: schedulers place nothing new on the host and move its tasks away. "
          "Stored in the host's settings, so it holds across agent restarts.",
          ok_schema="HostConfig", errors=("400", "404", "409", "413"), body=DrainRequest,
          tag="cluster", path_docs=_HOST),
    Route("GET", "/datacenters", _datacenters, "listDatacenters", "List datacenters",
          "The datacenters this server reads for /v1/all-datacenters/… (sked serve "
          "--datacenters: those of its configuration context), by name, and how long each "
          "has to answer. Empty when it reads none.",
          ok_schema="DatacenterList", tag="cluster"),
    Route("GET", "/all-datacenters/tasks", _all_tasks, "listTasksOfAllDatacenters",
          "List tasks of every datacenter",
          "The rows of GET /v1/tasks of every datacenter at once, each marked with its "
          "datacenter, filtered by the given parameters; at most `limit` per datacenter "
          "(`answered[].more` says a datacenter had more). A datacenter that fails or "
          "does not answer within the server's timeout is left out and listed in "
          "`unreachable` with why: the answer is 200 all the same.",
          ok_schema="DatacenterTaskList", errors=("400", "404"), tag="cluster",
          meanings=_DC_MEANINGS,
          query=(_DC, QueryParam("cluster", {"type": "string"}, "only this cluster's"),
                 QueryParam("service", {"type": "string"}, "only this service's"),
                 QueryParam("host", {"type": "string"}, "only those issued to this host"),
                 QueryParam("state", {"type": "string"}, "only those in this state"),
                 _LIMIT)),
    Route("GET", "/all-datacenters/hosts", _all_hosts, "listHostsOfAllDatacenters",
          "List hosts of every datacenter",
          "The rows of GET /v1/hosts of every datacenter at once, each marked with its "
          "datacenter; the datacenters that did not answer in time are in `unreachable`.",
          ok_schema="DatacenterHostList", errors=("400", "404"), tag="cluster",
          meanings=_DC_MEANINGS, query=(_DC,)),
    Route("GET", "/all-datacenters/services", _all_services,
          "listServicesOfAllDatacenters", "List services of every datacenter",
          "The services of GET /v1/services of every datacenter at once, each marked with "
          "its datacenter; the datacenters that did not answer in time are in "
          "`unreachable`.",
          ok_schema="DatacenterServiceList", errors=("400", "404"), tag="cluster",
          meanings=_DC_MEANINGS,
          query=(_DC, QueryParam("cluster", {"type": "string"}, "only this cluster's"))),
    Route("GET", "/changes", _changes, "watchChanges", "Follow changes",
          "Server-sent events: one event per change of anything under the store's "
          "prefix (coalesced), so a page or a program reads again only when something "
          "changed. At most 64 streams are open at once (503 beyond).",
          errors=("400",), tag="cluster", ok_response=_CHANGES_OK,
          query=(QueryParam("timeout", {"type": "number", "minimum": 0,
                                        "maximum": MAX_STREAM_SECONDS, "default": 300},
                            "seconds until the stream ends",
                            seconds(MAX_STREAM_SECONDS)),)),
)
"""The routes, in the document's order."""
