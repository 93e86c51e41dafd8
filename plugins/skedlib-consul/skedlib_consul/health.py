"""Task health through the host's Consul agent: register, check, read back, deregister.

An agent that uses this provider lets Consul run a task's checks instead of checking
locally: the task becomes a Consul service on the Consul agent of the host it runs on,
with its containers' checks, and its health is read back from that agent. Public
surface::

    provider = ConsulHealthProvider("http://127.0.0.1:8500", token=None, timeout=5.0,
                                    host="node-1")
    provider.register(task)            # service ID = task.id, Name = task.service,
                                       # Port = task.port, Tags = the definition's tags,
                                       # Checks = every container's checks
    provider.health(task.id)           # -> skedlib.models.TaskHealth
    provider.pass_ttl(task.id)         # report a TTL check passing (also warn/fail_ttl)
    provider.deregister(task.id)       # idempotent; removes the checks too
    provider.check_ids(task)           # the Consul CheckIDs register() uses
    provider.registered()              # ids of the services registered on the agent

``agent_url`` is ``http://HOST:PORT``, ``https://HOST:PORT`` or a ``consul://HOST:PORT``
URL with the backend's options (``token``, ``timeout``, ``scheme``, ``ca``, ``cert``,
``key``); the token defaults to ``$CONSUL_HTTP_TOKEN``. :func:`from_context` builds a
provider from an agent's context (``options["consul.agent"]``, ``options["consul.token"]``,
else ``$CONSUL_HTTP_ADDR``, else ``http://127.0.0.1:8500``).

Check mapping (seed 001's check shape is Consul's): a :class:`~skedlib.models.Check`
with ``http`` becomes an HTTP check, ``tcp`` a TCP check, ``script`` a script check
(run by the Consul agent with ``sh -c``; exit 0 passing, 1 warning, else critical) and
``ttl`` a TTL check that :meth:`ConsulHealthProvider.pass_ttl` must report within the
TTL. ``interval`` defaults to ``10s``; ``timeout`` is passed when given. Every
``$PROVIDED_PORT`` (or ``${PROVIDED_PORT}``) in ``http``, ``tcp`` and ``script`` is
replaced by ``task.port``. Each check gets the CheckID ``<task id>:<container>:<check
id or name or index>``, so two tasks on one agent never collide.

A task is healthy when every check passes (a task without checks is healthy, as Consul
considers a service without checks). Errors: :class:`~skedlib.errors.BackendUnavailable`
when the agent cannot be reached in time or refuses the token,
:class:`~skedlib.errors.ValidationError` for a check Consul cannot run or refuses,
:class:`~skedlib.errors.NotFound` for the health of a task that is not registered.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any, Literal

import consul.base

from skedlib.errors import BackendUnavailable, NotFound, ValidationError
from skedlib.models import Check, CheckStatus, Task, TaskHealth
from skedlib_consul.backend import (
    DEFAULT_TIMEOUT,
    ConsulOptions,
    _ApiContext,
    _body_text,
    _raise_for_status,
    _Transport,
    consul_errors,
    parse_url,
    redact_url,
)

__all__ = ["DEFAULT_AGENT", "ConsulHealthProvider", "check_definitions", "from_context"]

DEFAULT_AGENT = "http://127.0.0.1:8500"
DEFAULT_INTERVAL = "10s"
_PORT_VARS = ("${PROVIDED_PORT}", "$PROVIDED_PORT")
_STATUSES: dict[str, Literal["passing", "warning", "critical"]] = {
    "passing": "passing", "warning": "warning", "critical": "critical"}


def _agent_options(agent_url: str, token: str | None, timeout: float | None) -> ConsulOptions:
    url = agent_url if "://" in agent_url else f"http://{agent_url}"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "consul":
        opts = parse_url(url)
        if len(opts.endpoints) != 1:
            raise BackendUnavailable(f"{redact_url(url)}: name exactly one Consul agent")
    elif parts.scheme in ("http", "https"):
        if parts.path not in ("", "/") or parts.query:
            raise BackendUnavailable(f"{redact_url(url)}: expected http(s)://host:port")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 8500)
        except ValueError:
            raise BackendUnavailable(f"{redact_url(url)}: bad port") from None
        if not parts.hostname:
            raise BackendUnavailable(f"{redact_url(url)}: no host")
        opts = ConsulOptions(endpoints=((parts.hostname, port),),
                             token=os.environ.get("CONSUL_HTTP_TOKEN") or None,
                             scheme="https" if parts.scheme == "https" else "http")
    else:
        raise BackendUnavailable(f"{redact_url(url)}: a Consul agent address is "
                                 "http://host:port, https://host:port or consul://host:port")
    if token is not None or timeout is not None:
        opts = ConsulOptions(endpoints=opts.endpoints, dc=opts.dc,
                             token=token if token is not None else opts.token,
                             timeout=timeout if timeout is not None else opts.timeout,
                             scheme=opts.scheme, ca=opts.ca, cert=opts.cert, key=opts.key)
    return opts


def _substitute(text: str, port: int) -> str:
    for var in _PORT_VARS:
        text = text.replace(var, str(port))
    return text


def check_definitions(task: Task) -> list[dict[str, Any]]:
    """The Consul check definitions (``/v1/agent/service/register`` ``Checks``) of a task.

    Raises :class:`~skedlib.errors.ValidationError` for a check that is not exactly one
    of http, tcp, script and ttl.
    """
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for container in task.task_definition.containers:
        for i, check in enumerate(container.checks):
            out.append(_definition(task, container.name, i, check, seen))
    return out


def _definition(task: Task, container: str, index: int, check: Check,
                seen: set[str]) -> dict[str, Any]:
    where = f"task {task.id}, container {container!r}, check {check.id or check.name or index}"
    kinds = [k for k in ("http", "tcp", "script", "ttl") if getattr(check, k)]
    if len(kinds) != 1:
        raise ValidationError(f"{where}: a check needs exactly one of http, tcp, script, "
                              f"ttl (has {', '.join(kinds) or 'none'})")
    suffix = check.id or check.name or str(index)
    check_id = f"{task.id}:{container}:{suffix}"
    n = 2
    while check_id in seen:
        check_id = f"{task.id}:{container}:{suffix}-{n}"
        n += 1
    seen.add(check_id)
    d: dict[str, Any] = {"CheckID": check_id,
                         "Name": check.name or check.id or f"{container} check {index}"}
    kind = kinds[0]
    if kind == "ttl":
        d["TTL"] = check.ttl
        return d
    value = _substitute(getattr(check, kind), task.port)
    d[{"http": "HTTP", "tcp": "TCP", "script": "Script"}[kind]] = value
    d["Interval"] = check.interval or DEFAULT_INTERVAL
    if check.timeout:
        d["Timeout"] = check.timeout
    return d


class ConsulHealthProvider:
    """Registers tasks as services with their checks on one Consul agent; reads health back.

    ``agent_url`` names the Consul agent of the host the tasks run on (services and
    checks are local to an agent). ``host`` is written into :class:`TaskHealth`.
    """

    def __init__(self, agent_url: str = DEFAULT_AGENT, *, token: str | None = None,
                 timeout: float | None = None, host: str = "") -> None:
        self.options = _agent_options(agent_url, token, timeout)
        self.url = redact_url(agent_url)
        self.host = host
        self._http = _Transport(self.options, f"consul agent {self.url}")
        self._agent = consul.base.Consul.Agent(_ApiContext(self._http, None))
        self._ttl_checks: dict[str, list[str]] = {}

    def __repr__(self) -> str:
        return f"<ConsulHealthProvider {self.url}>"

    @property
    def _label(self) -> str:
        return f"consul agent {self.url}"

    def _errors(self, what: str) -> contextlib.AbstractContextManager[None]:
        return consul_errors(self._label, what, token=bool(self.options.token))

    # -- registration -----------------------------------------------------------------------
    def check_ids(self, task: Task) -> list[str]:
        """The CheckIDs :meth:`register` gives the task's checks, in order."""
        return [str(d["CheckID"]) for d in check_definitions(task)]

    def register(self, task: Task, *, name: str | None = None,
                 address: str | None = None) -> str:
        """Register ``task`` (ID ``task.id``) with its checks; returns the service ID.

        ``name`` is the Consul service name (default: ``task.service``); ``address``
        the address Consul advertises (default: the agent's node address).
        Registering again replaces the registration.
        """
        payload: dict[str, Any] = {
            "ID": task.id,
            "Name": name or task.service,
            "Tags": list(task.task_definition.tags),
            "Port": task.port,
            "Checks": check_definitions(task),
        }
        if address:
            payload["Address"] = address
        what = f"register task {task.id}"
        resp = self._http.request("PUT", "/v1/agent/service/register",
                                  data=json.dumps(payload), what=what)
        if resp.status_code == 400:
            raise ValidationError(f"{self._label}: {what}: Consul refused it: "
                                  f"{_body_text(resp)}")
        _raise_for_status(self._label, what, resp, token=bool(self.options.token))
        self._ttl_checks[task.id] = [str(d["CheckID"]) for d in payload["Checks"] if "TTL" in d]
        return task.id

    def deregister(self, task_id: str) -> None:
        """Remove the task's service and its checks from the agent. Idempotent."""
        with self._errors(f"deregister task {task_id}"):
            self._agent.service.deregister(task_id)
        self._ttl_checks.pop(task_id, None)

    def registered(self) -> list[str]:
        """The IDs of every service registered on the agent (``consul`` itself excluded)."""
        with self._errors("list services"):
            services: Mapping[str, Any] = self._agent.services() or {}
        return sorted(sid for sid in services if sid != "consul")

    # -- health -------------------------------------------------------------------------------
    def health(self, task_id: str) -> TaskHealth:
        """The task's checks as the agent last ran them; NotFound when not registered."""
        with self._errors(f"health of task {task_id}"):
            services: Mapping[str, Any] = self._agent.services() or {}
            if task_id not in services:
                raise NotFound(f"{self._label}: task {task_id} is not registered")
            checks: Mapping[str, Any] = self._agent.checks() or {}
        now = time.time()
        statuses = [
            CheckStatus(name=str(c.get("Name") or cid),
                        status=_STATUSES.get(str(c.get("Status")), "critical"),
                        output=str(c.get("Output") or ""), updated_at=now)
            for cid, c in sorted(checks.items()) if c.get("ServiceID") == task_id]
        healthy = all(s.status == "passing" for s in statuses)
        return TaskHealth(task_id=task_id, host=self.host,
                          state="healthy" if healthy else "unhealthy", healthy=healthy,
                          checks=statuses, updated_at=now)

    def _ttl_check_id(self, task_id: str, check: str | None) -> str:
        if check and check.startswith(f"{task_id}:"):
            return check
        with self._errors(f"checks of task {task_id}"):
            checks: Mapping[str, Any] = self._agent.checks() or {}
        mine = {cid: c for cid, c in checks.items() if c.get("ServiceID") == task_id}
        if check:
            found = [cid for cid, c in mine.items()
                     if cid.endswith(f":{check}") or c.get("Name") == check]
        else:
            # Consul 0.8 does not report a check's type: use what register() recorded,
            # else the task's only check
            ttl = [cid for cid in self._ttl_checks.get(task_id, ()) if cid in mine]
            found = ttl or (list(mine) if len(mine) == 1 else [])
            if not found and mine:
                raise ValidationError(f"{self._label}: task {task_id} has several checks "
                                      f"({', '.join(sorted(mine))}): name the TTL check")
        if not found:
            raise NotFound(f"{self._label}: task {task_id} has no TTL check "
                           f"{check or ''}".rstrip())
        if len(found) > 1:
            raise ValidationError(f"{self._label}: task {task_id} has several TTL checks "
                                  f"({', '.join(sorted(found))}): name one")
        return found[0]

    def set_ttl(self, task_id: str, status: Literal["passing", "warning", "critical"],
                check: str | None = None, note: str = "") -> None:
        """Report a TTL check of the task (``check``: its id, name or CheckID; optional
        when the task has one TTL check)."""
        check_id = self._ttl_check_id(task_id, check)
        call = {"passing": self._agent.check.ttl_pass, "warning": self._agent.check.ttl_warn,
                "critical": self._agent.check.ttl_fail}[status]
        with self._errors(f"report TTL check {check_id}"):
            try:
                call(check_id, note or None)
            except consul.base.ConsulException as exc:
                if "does not have associated TTL" in str(exc) or "Unknown check" in str(exc):
                    raise ValidationError(f"{self._label}: {check_id} is not a TTL check "
                                          f"of a registered task: {exc}") from exc
                raise

    def pass_ttl(self, task_id: str, check: str | None = None, note: str = "") -> None:
        """Report a TTL check of the task passing."""
        self.set_ttl(task_id, "passing", check, note)

    def warn_ttl(self, task_id: str, check: str | None = None, note: str = "") -> None:
        """Report a TTL check of the task as warning."""
        self.set_ttl(task_id, "warning", check, note)

    def fail_ttl(self, task_id: str, check: str | None = None, note: str = "") -> None:
        """Report a TTL check of the task failing."""
        self.set_ttl(task_id, "critical", check, note)

    def close(self) -> None:
        """Release the HTTP connections. Idempotent."""
        self._http.close()

    def __enter__(self) -> ConsulHealthProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def from_context(context: Any = None, *, agent_url: str | None = None,
                 token: str | None = None) -> ConsulHealthProvider:
    """A provider for a skedlib agent's ``context`` (anything with ``host`` and ``options``).

    The Consul agent is ``agent_url``, else ``context.options["consul.agent"]``, else
    ``$CONSUL_HTTP_ADDR``, else ``http://127.0.0.1:8500``; the token ``token``, else
    ``context.options["consul.token"]``, else ``$CONSUL_HTTP_TOKEN``.
    """
    options: Mapping[str, str] = getattr(context, "options", None) or {}
    url = (agent_url or options.get("consul.agent") or os.environ.get("CONSUL_HTTP_ADDR")
           or DEFAULT_AGENT)
    return ConsulHealthProvider(url, token=token or options.get("consul.token"),
                                timeout=float(options.get("consul.timeout", DEFAULT_TIMEOUT)),
                                host=str(getattr(context, "host", "") or ""))
