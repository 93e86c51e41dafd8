"""skedlib's checks as Consul checks: the service definition registered with a Consul agent.

Sked's check shape is Consul's, so the mapping is direct: a
:class:`~skedlib.models.Check` with ``http`` becomes an HTTP check, ``tcp`` a TCP check,
``script`` a script check (run by the Consul agent with ``sh -c``; exit 0 passing, 1
warning, else critical) and ``ttl`` a TTL check that must be reported passing within the
TTL (``PUT /v1/agent/check/pass/<CheckID>``).

- **CheckIDs.** Each check gets the CheckID ``<task id>:<container>:<check id or name or
  index>`` (:func:`check_id`; a repeated one gets ``-2``, ``-3``…), so two tasks on one
  agent never collide; its Consul ``Name`` is the check's name as the skedlib agent knows
  it (``name``, else ``id``, else ``<container>.checks[<i>]``).
- **As written** (:func:`check_definitions`, what
  :class:`~skedlib_consul.agent_client.ConsulAgentClient` registers): every
  ``$PROVIDED_PORT`` (or ``${PROVIDED_PORT}``) in ``http``, ``tcp`` and ``script`` is
  replaced by the task's port; ``interval`` defaults to ``10s``; ``timeout`` is passed
  when given; Consul refuses what it cannot parse.
- **As resolved** (:func:`resolved_check_definitions`, what the health provider
  registers): the checks as :func:`skedlib.resolve_checks` resolved them for
  the local provider (validated, port substituted, default interval and timeout),
  durations in milliseconds; script checks get ``PROVIDED_PORT``, ``SKED_TASK_ID`` and
  ``SKED_HOST`` exported first, as the local provider runs them.

A task becomes a Consul service (:func:`service_definition`): ID the task id, Name the
service, Port the task's port, Tags the definition's tags, Checks its containers' checks.
"""

from __future__ import annotations

import shlex
from typing import Any, Literal

from skedlib import Check, ResolvedCheck, Task, ValidationError, check_env, substitute_port

__all__ = [
    "DEFAULT_INTERVAL",
    "LIVENESS_SUFFIX",
    "assign_check_ids",
    "check_definitions",
    "check_id",
    "consul_status",
    "go_duration",
    "resolved_check_definitions",
    "service_definition",
]

#: the interval of a check that names none (Consul needs one for http, tcp and script)
DEFAULT_INTERVAL = "10s"
#: a registration's liveness check has the CheckID ``<task id>`` + this (a task's own
#: checks have two more ``:``-separated parts, so the two never collide; see
#: :mod:`skedlib_consul.catalog`)
LIVENESS_SUFFIX = ":skedlib-agent"

Status = Literal["passing", "warning", "critical"]
_STATUSES: dict[str, Status] = {
    "passing": "passing", "warning": "warning", "critical": "critical"}
_FIELDS = {"http": "HTTP", "tcp": "TCP", "script": "Script"}


def consul_status(raw: object) -> Status:
    """A check's ``Status`` as Consul reports it, as skedlib's (anything unknown: critical)."""
    return _STATUSES.get(str(raw), "critical")


def check_id(task: Task, container: str, index: int, check: Check, seen: set[str]) -> str:
    """The CheckID of the ``index``-th check of ``container``; ``seen`` holds the CheckIDs
    already given to the task's earlier checks (a repeated one gets a ``-2`` suffix…)."""
    suffix = check.id or check.name or str(index)
    cid = f"{task.id}:{container}:{suffix}"
    n = 2
    while cid in seen:
        cid = f"{task.id}:{container}:{suffix}-{n}"
        n += 1
    seen.add(cid)
    return cid


def assign_check_ids(task: Task) -> list[str]:
    """The CheckIDs of every check of the task, container by container, in order."""
    seen: set[str] = set()
    return [check_id(task, c.name, i, check, seen)
            for c in task.task_definition.containers for i, check in enumerate(c.checks)]


def check_definitions(task: Task, *, port: int | None = None) -> list[dict[str, Any]]:
    """The Consul check definitions (``/v1/agent/service/register`` ``Checks``) of a task.

    ``$PROVIDED_PORT`` is replaced by ``port`` (default: ``task.port``). Raises
    :class:`~skedlib.errors.ValidationError` for a check that is not exactly one of
    http, tcp, script and ttl.
    """
    port = task.port if port is None else port
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for container in task.task_definition.containers:
        for i, check in enumerate(container.checks):
            out.append(_definition(task, port, container.name, i, check, seen))
    return out


def _definition(task: Task, port: int, container: str, index: int, check: Check,
                seen: set[str]) -> dict[str, Any]:
    where = f"task {task.id}, container {container!r}, check {check.id or check.name or index}"
    kinds = [k for k in ("http", "tcp", "script", "ttl") if getattr(check, k)]
    if len(kinds) != 1:
        raise ValidationError(f"{where}: a check needs exactly one of http, tcp, script, "
                              f"ttl (has {', '.join(kinds) or 'none'})")
    d: dict[str, Any] = {"CheckID": check_id(task, container, index, check, seen),
                         "Name": check.name or check.id or f"{container}.checks[{index}]"}
    kind = kinds[0]
    if kind == "ttl":
        d["TTL"] = check.ttl
        return d
    d[_FIELDS[kind]] = substitute_port(getattr(check, kind), port)
    d["Interval"] = check.interval or DEFAULT_INTERVAL
    if check.timeout:
        d["Timeout"] = check.timeout
    return d


def go_duration(seconds: float) -> str:
    """``seconds`` as a Go duration Consul parses, in whole milliseconds (at least 1)."""
    return f"{max(1, round(seconds * 1000))}ms"


def resolved_check_definitions(task: Task, port: int, host: str,
                               resolved: list[ResolvedCheck],
                               ids: list[str]) -> list[dict[str, Any]]:
    """The Consul check definitions of checks already resolved, with their CheckIDs.

    ``resolved`` and ``ids`` are parallel (:func:`skedlib.resolve_checks`,
    :func:`assign_check_ids`); script checks get the environment the local provider
    gives them (``host`` is the skedlib agent's host name).
    """
    env = check_env(task, port, host)
    exports = "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    out: list[dict[str, Any]] = []
    for check, cid in zip(resolved, ids, strict=True):
        d: dict[str, Any] = {"CheckID": cid, "Name": check.name}
        if check.kind == "ttl":
            d["TTL"] = go_duration(check.ttl)
        else:
            target = check.target
            if check.kind == "script":
                target = f"{exports}; {target}"
            d[_FIELDS[check.kind]] = target
            d["Interval"] = go_duration(check.interval)
            d["Timeout"] = go_duration(check.timeout)
        out.append(d)
    return out


def service_definition(task: Task, port: int, checks: list[dict[str, Any]], *,
                       name: str | None = None, address: str | None = None
                       ) -> dict[str, Any]:
    """The ``/v1/agent/service/register`` payload of a task with its check definitions.

    ``name`` is the Consul service name (default: ``task.service``); ``address`` the
    address Consul advertises (default, when omitted: the agent's node address).
    """
    payload: dict[str, Any] = {
        "ID": task.id,
        "Name": name or task.service,
        "Tags": list(task.task_definition.tags),
        "Port": port,
        "Checks": checks,
    }
    if address:
        payload["Address"] = address
    return payload
