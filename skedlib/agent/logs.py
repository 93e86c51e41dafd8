"""Task output off its host: the agent's side of :mod:`skedlib.logserver`, and the client.

The executors write a task's output under the agent's log directory, one directory per
task: ``<task_id>/<container>.out.log`` and ``.err.log`` (the process and bash executors)
or ``<task_id>/<container>.log`` (docker, both streams). The agent serves them with the
job workers' server (:class:`~skedlib.logserver.LogServer`, collection ``tasks``):
``GET /v1/tasks/<task_id>/logs?container=&stream=out|err&offset=&follow=``, on loopback
unless told otherwise, to requests bearing its token (``STATE_DIR/log-token``, 0600).

It publishes where and with which token at ``<prefix>logs/agents/<host>``
(:class:`LogEndpoint`), a record of its own rather than a field of the host record: the
host record is shown to whoever lists hosts, the token must not be.

:func:`task_logs` is the client: it finds the task's host in the store, then that host's
endpoint, and fetches (and with ``follow`` keeps fetching) the output.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import msgspec

from skedlib.errors import NotFound
from skedlib.keys import KeyTable, KeyTemplate, Name
from skedlib.logserver import LogSource, LogsUnavailable, fetch_log
from skedlib.models import Task, TaskHealth
from skedlib.runtime import Store

__all__ = ["STREAMS", "LogEndpoint", "LogEndpointKey", "LogEndpointKeyspace",
           "task_log_source", "task_logs"]

STREAMS = ("out", "err")
"""The streams a task's output is kept in (docker keeps both in one)."""
_FINISHED = ("exited", "stopped", "rejected")


class LogEndpoint(msgspec.Struct, kw_only=True):
    """Where a host's agent serves task output, and the token it wants."""

    host: str
    url: str
    token: str


class LogEndpointKey(msgspec.Struct, frozen=True, tag=True):
    """The output server of the agent of ``host``."""

    host: str


class LogEndpointKeyspace(KeyTable[LogEndpointKey]):
    """The key of each agent's :class:`LogEndpoint` under a keyspace's prefix.

    >>> from skedlib.keys import Keyspace
    >>> LogEndpointKeyspace(Keyspace()).log_endpoint("h1")
    'sked/logs/agents/h1'
    """

    schema = "skedlib's log endpoint key schema"

    log_endpoint = KeyTemplate("logs/agents/{host}", LogEndpointKey, host=Name("host name"))
    log_endpoints = log_endpoint.prefix()


def task_log_source(log_dir: Path, containers: Callable[[str], Sequence[str] | None],
                    running: Callable[[str], bool]) -> LogSource:
    """The ``tasks`` collection of an agent whose executors write under ``log_dir``.

    ``containers(task_id)``: the task's container names (None when the agent does not
    know the task any more: its files are looked for as they are)."""

    def parts(task_id: str, query: Mapping[str, str]) -> Sequence[str] | str:
        stream = query.get("stream", "out")
        if stream not in STREAMS:
            return f"stream must be one of {', '.join(STREAMS)}, got {stream[:20]!r}"
        container = query.get("container", "")
        if not container:
            names = containers(task_id)
            if names is None:
                task_dir = log_dir / task_id
                names = sorted({p.name.split(".")[0] for p in task_dir.glob("*.log")}) \
                    if task_dir.is_dir() else []
            if len(names) > 1:
                return (f"task {task_id} has containers {', '.join(names)}: name one "
                        "(container=NAME)")
            if not names:
                return f"task {task_id} has no container output on this host"
            container = names[0]
        if (log_dir / task_id / f"{container}.log").is_file():
            return [task_id, f"{container}.log"]  # docker: both streams in one
        return [task_id, f"{container}.{stream}.log"]

    return LogSource("task", log_dir, parts, running)


def task_logs(store: Store, task_id: str, *, container: str = "", stream: str = "out",
              follow: bool = False, offset: int = 0, http_timeout: float = 10.0
              ) -> Iterator[bytes]:
    """The output of task ``task_id`` (its only container, or ``container``), fetched
    from the agent of its host; with ``follow``, on as it is written, until the task
    stops or leaves the host.

    Raises :class:`~skedlib.errors.NotFound` for an unknown task and
    :class:`~skedlib.logserver.LogsUnavailable` when its host cannot serve the output."""
    task = _task(store, task_id)
    first = _fetch(store, task, container, stream, follow, offset, http_timeout)
    return _follow(store, task, container, stream, first, offset, http_timeout) if follow \
        else first


def _task(store: Store, task_id: str) -> Task:
    kv = store.get(store.keys.task(task_id))
    if kv is None:
        raise NotFound(f"task {task_id} not found")
    task = msgspec.json.decode(kv.value, type=Task)
    if not task.host:
        raise LogsUnavailable(f"task {task_id} has no output: it is not placed on a host")
    return task


def _fetch(store: Store, task: Task, container: str, stream: str, follow: bool,
           offset: int, http_timeout: float) -> Iterator[bytes]:
    kv = store.get(LogEndpointKeyspace(store.keys).log_endpoint(task.host))
    if kv is None:
        raise LogsUnavailable(f"the agent of host {task.host} serves no task output (an "
                              "older agent, or one started without an output server)")
    endpoint = msgspec.json.decode(kv.value, type=LogEndpoint)
    query = {"stream": stream} | ({"container": container} if container else {})
    return fetch_log(endpoint.url, "tasks", task.id, endpoint.token, offset=offset,
                     follow=follow, query=query, timeout=http_timeout,
                     where=f"host {task.host} ({endpoint.url})", what=f"task {task.id}")


def _follow(store: Store, task: Task, container: str, stream: str,
            first: Iterator[bytes], offset: int, http_timeout: float) -> Iterator[bytes]:
    received, current = offset, first
    while True:
        for chunk in current:
            received += len(chunk)
            yield chunk
        kv = store.get(store.keys.task(task.id))
        if kv is None or msgspec.json.decode(kv.value, type=Task).host != task.host:
            return  # gone, or moved: its output here ends
        health = store.get(store.keys.task_health(task.id))
        if health is not None and \
                msgspec.json.decode(health.value, type=TaskHealth).state in _FINISHED:
            # one more read after the end drains what was written last
            yield from _fetch(store, task, container, stream, False, received, http_timeout)
            return
        time.sleep(0.2)  # the server ends a poll only after a while without output
        current = _fetch(store, task, container, stream, True, received, http_timeout)
