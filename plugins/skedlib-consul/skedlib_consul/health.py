"""Task health through the host's Consul agent: register, check, read back, deregister.

An agent that uses this provider lets Consul run a task's checks instead of checking
locally: the task becomes a Consul service on the Consul agent of the host it runs on,
with its containers' checks, and its health is read back from that agent. Two layers:

- :class:`ConsulAgentHealthProvider` is the skedlib agent's health provider ``consul``
  (``skedlib-agent --health-provider consul``): it implements
  :class:`skedlib.agent.health.HealthProvider` (see the section below);
- :class:`ConsulHealthProvider` is the plain client it is built on, usable on its own::

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
client from anything with ``host`` and ``options`` (``options["consul.agent"]``,
``options["consul.token"]``, else ``$CONSUL_HTTP_ADDR``, else ``http://127.0.0.1:8500``).

Check mapping (seed 001's check shape is Consul's): a :class:`~skedlib.models.Check`
with ``http`` becomes an HTTP check, ``tcp`` a TCP check, ``script`` a script check
(run by the Consul agent with ``sh -c``; exit 0 passing, 1 warning, else critical) and
``ttl`` a TTL check that :meth:`ConsulHealthProvider.pass_ttl` must report within the
TTL. ``interval`` defaults to ``10s``; ``timeout`` is passed when given. Every
``$PROVIDED_PORT`` (or ``${PROVIDED_PORT}``) in ``http``, ``tcp`` and ``script`` is
replaced by the task's port. Each check gets the CheckID ``<task id>:<container>:<check
id or name or index>``, so two tasks on one agent never collide; its Consul ``Name`` is
the check's name as the agent knows it (``name``, else ``id``, else
``<container>.checks[<i>]``).

A task is healthy when every check passes (a task without checks is healthy, as Consul
considers a service without checks). Errors: :class:`~skedlib.errors.BackendUnavailable`
when the agent cannot be reached in time or refuses the token,
:class:`~skedlib.errors.ValidationError` for a check Consul cannot run or refuses,
:class:`~skedlib.errors.NotFound` for the health of a task that is not registered.

The agent's provider
--------------------

:class:`ConsulAgentHealthProvider` follows the contract of
:mod:`skedlib.agent.health`; every method returns at once, Consul is only talked to from
the provider's two threads (every call with a timeout):

- ``validate`` resolves the checks as the local provider does
  (:func:`skedlib.agent.checks.resolve_checks`: one kind, a usable target, parsable
  durations) and raises :class:`~skedlib.executors.base.TaskRejected`.
- ``watch(task, port)`` registers the task as a service (ID the task id, Name the
  service, Port ``port``, Tags the definition's tags) with its checks; intervals and
  timeouts are the resolved ones (Consul raises intervals below 1 s to 1 s), script
  checks get ``PROVIDED_PORT``, ``SKED_TASK_ID`` and ``SKED_HOST`` exported. A
  registration that fails (Consul unreachable) is retried with backoff; one Consul
  refuses (HTTP 400) makes the task ``unhealthy`` with Consul's reason. An earlier
  registration of the same task is removed first (Consul would otherwise keep an old
  TTL check's status).
- ``unwatch(task_id)`` deregisters the service (and its checks), retried until it
  succeeds or the task is watched again. ``close()`` leaves still-watched tasks
  registered (they keep running; the next agent adopts and registers them again) but
  finishes pending deregistrations (for a few seconds at most).
- Results are followed with a blocking query on ``/v1/health/node/<node>`` (the node
  name comes from ``/v1/agent/self``); when the statuses of our checks there change (or
  every 5 s) the provider reads ``/v1/agent/checks`` and ``/v1/agent/services`` (the
  agent's own, up-to-date view with outputs) and calls ``on_change`` when a status
  changed. A watched task whose service vanished from the agent (a restarted dev agent)
  is registered again.

States: a check has *no result* (``starting``) until Consul reports it non-critical or
with an output, or until it cannot not have run: one interval plus its timeout (plus
1 s) after registration (for a TTL check: its TTL plus 1 s, when Consul marks it "TTL
expired"). Consul does not report individual runs, only the current status, so
consecutive critical results are counted in time: a check seen critical since ``t``
(the first observation after its status turned critical) and still seen critical at
``t + (failure_threshold - 0.5) x interval`` counts as critical ``failure_threshold``
times in a row: Consul ran it at every interval in between, and a pass in between
would have been seen as a status change (a pass and a new failure both between two
observations can go unseen). The half interval is slack for Consul's run jitter;
the confirming observation is a fresh read of the agent, so while Consul cannot be
reached no check reaches the threshold (and no task is restarted for it). The
interval counted for a TTL check is a quarter of its TTL (between 0.25 s and 2 s), as
the local provider reads it. A threshold of 1 makes the first critical result count.

TTL checks: ``skedlib.agent.health.pass_ttl_check`` works as with the local provider.
The provider reads each TTL task's health record (``state/health/<task_id>``) every
quarter TTL (0.25 s to 2 s) and forwards reports newer than the last one it forwarded
(and not older than the TTL, and not written by the agent from the provider's own
results) to Consul's ``/v1/agent/check/pass|warn|fail/<CheckID>`` with the report's
output as the note. Consul then keeps the check passing for the TTL after the report
reached it (up to a quarter TTL later than the report itself). A task may also report
to Consul directly: ``PUT /v1/agent/check/pass/<task id>:<container>:<check>`` on its
host's Consul agent (or :meth:`ConsulHealthProvider.pass_ttl`).

Options (``HealthContext.options``, i.e. ``AgentConfig.health_options``, e.g.
``{"consul.url": "http://127.0.0.1:8500"}``; the ``consul.`` prefix is optional):
``url`` (also ``agent``) the Consul agent of this host, ``token``, ``timeout`` (seconds
per call, default 5); any other key is a :class:`~skedlib.errors.PluginError`. Without
``url`` the agent is the first endpoint of the agent's own ``consul://`` backend that is
on this host (a loopback address or one of the machine's own; with its token, timeout
and TLS settings), else ``$CONSUL_HTTP_ADDR``, else ``http://127.0.0.1:8500``: never a
server elsewhere, which would run the checks and place the service on its own node
(see :func:`agent_options`).
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import json
import logging
import math
import os
import shlex
import socket
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import consul.base
import msgspec

from skedlib.agent.checks import ResolvedCheck, resolve_checks
from skedlib.agent.health import HealthContext, HealthProvider
from skedlib.codecs import decode
from skedlib.errors import BackendError, BackendUnavailable, NotFound, PluginError, ValidationError
from skedlib.models import Check, CheckStatus, Task, TaskHealth
from skedlib_consul.backend import (
    DEFAULT_TIMEOUT,
    ConsulBackend,
    ConsulOptions,
    _ApiContext,
    _body_text,
    _index_of,
    _raise_for_status,
    _Transport,
    consul_errors,
    parse_url,
    redact_url,
)

__all__ = [
    "DEFAULT_AGENT",
    "ConsulAgentHealthProvider",
    "ConsulHealthProvider",
    "agent_options",
    "check_definitions",
    "from_context",
    "on_this_host",
]

log = logging.getLogger(__name__)

DEFAULT_AGENT = "http://127.0.0.1:8500"
DEFAULT_INTERVAL = "10s"
_PORT_VARS = ("${PROVIDED_PORT}", "$PROVIDED_PORT")
_STATUSES: dict[str, Literal["passing", "warning", "critical"]] = {
    "passing": "passing", "warning": "warning", "critical": "critical"}

#: Consul runs no check more often than once a second
CONSUL_MIN_INTERVAL = 1.0
#: how long a blocking query on the node's health waits before the agent is read anyway
FOLLOW_WAIT = 5.0
#: slack, after the longest time a check can take to run first, before "no result" ends
FIRST_RESULT_SLACK = 1.0
_RETRY_INITIAL = 0.5
_RETRY_MAX = 10.0
_PRODUCED_KEPT = 64


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


def _check_id(task: Task, container: str, index: int, check: Check, seen: set[str]) -> str:
    suffix = check.id or check.name or str(index)
    check_id = f"{task.id}:{container}:{suffix}"
    n = 2
    while check_id in seen:
        check_id = f"{task.id}:{container}:{suffix}-{n}"
        n += 1
    seen.add(check_id)
    return check_id


def _definition(task: Task, port: int, container: str, index: int, check: Check,
                seen: set[str]) -> dict[str, Any]:
    where = f"task {task.id}, container {container!r}, check {check.id or check.name or index}"
    kinds = [k for k in ("http", "tcp", "script", "ttl") if getattr(check, k)]
    if len(kinds) != 1:
        raise ValidationError(f"{where}: a check needs exactly one of http, tcp, script, "
                              f"ttl (has {', '.join(kinds) or 'none'})")
    d: dict[str, Any] = {"CheckID": _check_id(task, container, index, check, seen),
                         "Name": check.name or check.id or f"{container}.checks[{index}]"}
    kind = kinds[0]
    if kind == "ttl":
        d["TTL"] = check.ttl
        return d
    value = _substitute(getattr(check, kind), port)
    d[{"http": "HTTP", "tcp": "TCP", "script": "Script"}[kind]] = value
    d["Interval"] = check.interval or DEFAULT_INTERVAL
    if check.timeout:
        d["Timeout"] = check.timeout
    return d


def _service_payload(task: Task, port: int, checks: list[dict[str, Any]], *,
                     name: str | None = None, address: str | None = None) -> dict[str, Any]:
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


class ConsulHealthProvider:
    """Registers tasks as services with their checks on one Consul agent; reads health back.

    ``agent_url`` names the Consul agent of the host the tasks run on (services and
    checks are local to an agent): a URL, or :class:`~skedlib_consul.backend.ConsulOptions`
    whose first endpoint is used. ``host`` is written into :class:`TaskHealth`. This is
    the plain client; the skedlib agent's provider is :class:`ConsulAgentHealthProvider`.
    """

    def __init__(self, agent_url: str | ConsulOptions = DEFAULT_AGENT, *,
                 token: str | None = None, timeout: float | None = None,
                 host: str = "") -> None:
        if isinstance(agent_url, ConsulOptions):
            o = agent_url
            self.options = ConsulOptions(
                endpoints=o.endpoints[:1], dc=None,
                token=token if token is not None else o.token,
                timeout=timeout if timeout is not None else o.timeout,
                scheme=o.scheme, ca=o.ca, cert=o.cert, key=o.key)
            self.url = self.options.base_url(0)
        else:
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
                 address: str | None = None, port: int | None = None) -> str:
        """Register ``task`` (ID ``task.id``) with its checks; returns the service ID.

        ``name`` is the Consul service name (default: ``task.service``); ``address``
        the address Consul advertises (default: the agent's node address); ``port`` the
        service's port and ``$PROVIDED_PORT`` (default: ``task.port``). Registering
        again replaces the registration.
        """
        port = task.port if port is None else port
        payload = _service_payload(task, port, check_definitions(task, port=port), name=name,
                                   address=address)
        self.register_payload(payload)
        return task.id

    def register_payload(self, payload: Mapping[str, Any]) -> None:
        """``PUT /v1/agent/service/register`` with ``payload`` as it is.

        Raises :class:`~skedlib.errors.ValidationError` when Consul refuses it (HTTP 400),
        :class:`~skedlib.errors.BackendUnavailable` when it cannot be reached.
        """
        task_id = str(payload["ID"])
        what = f"register task {task_id}"
        resp = self._http.request("PUT", "/v1/agent/service/register",
                                  data=json.dumps(payload), what=what)
        if resp.status_code == 400:
            raise ValidationError(f"{self._label}: {what}: Consul refused it: "
                                  f"{_body_text(resp)}")
        _raise_for_status(self._label, what, resp, token=bool(self.options.token))
        self._ttl_checks[task_id] = [str(d["CheckID"]) for d in payload.get("Checks", ())
                                     if "TTL" in d]

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

    # -- reading the agent ----------------------------------------------------------------------
    def node_name(self) -> str:
        """The name of the agent's node (``/v1/agent/self`` ``Config.NodeName``)."""
        with self._errors("read the agent's node name"):
            me: Mapping[str, Any] = self._agent.self()
            name = str((me.get("Config") or {}).get("NodeName") or
                       (me.get("Member") or {}).get("Name") or "")
        if not name:
            raise BackendError(f"{self._label}: /v1/agent/self names no node")
        return name

    def local_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The agent's services and checks (``/v1/agent/services``, ``/v1/agent/checks``)."""
        with self._errors("read the agent's services and checks"):
            services = dict(self._agent.services() or {})
            checks = dict(self._agent.checks() or {})
        return services, checks

    def wait_node(self, node: str, index: int, wait: float) -> tuple[int, list[Any]]:
        """A blocking query on ``/v1/health/node/<node>``: (index, checks).

        Returns when the node's health changed past ``index`` or after about ``wait``
        seconds (at once when ``index`` is 0); the call's timeout is the agent's timeout
        plus the wait.
        """
        what = f"follow the health of node {node}"
        params: list[tuple[str, Any]] = []
        hold = 0.0
        if index > 0:
            params = [("index", index), ("wait", f"{max(1, int(wait * 1000))}ms")]
            hold = wait * 17 / 16  # Consul adds up to wait/16 of jitter
        resp = self._http.request("GET", f"/v1/health/node/{node}", params=params, hold=hold,
                                  what=what)
        _raise_for_status(self._label, what, resp, token=bool(self.options.token))
        try:
            body = resp.json() or []
        except ValueError as exc:
            raise BackendError(f"{self._label}: {what}: unexpected answer from Consul: "
                               f"{_body_text(resp)}") from exc
        if not isinstance(body, list):
            raise BackendError(f"{self._label}: {what}: unexpected answer from Consul: "
                               f"{_body_text(resp)}")
        return _index_of(resp, self._label, what), body

    # -- health -------------------------------------------------------------------------------
    def health(self, task_id: str) -> TaskHealth:
        """The task's checks as the agent last ran them; NotFound when not registered.

        ``state`` is ``healthy`` when every check passes, else ``unhealthy`` (this client
        keeps no history; the agent's provider counts consecutive results).
        """
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
    """A plain client for anything with ``host`` and ``options`` (e.g. a HealthContext).

    The Consul agent is ``agent_url``, else ``context.options["consul.agent"]``, else
    ``$CONSUL_HTTP_ADDR``, else ``http://127.0.0.1:8500``; the token ``token``, else
    ``context.options["consul.token"]``, else ``$CONSUL_HTTP_TOKEN``. The skedlib agent
    uses :class:`ConsulAgentHealthProvider` instead (see :func:`agent_options`).
    """
    options: Mapping[str, str] = getattr(context, "options", None) or {}
    url = (agent_url or options.get("consul.agent") or os.environ.get("CONSUL_HTTP_ADDR")
           or DEFAULT_AGENT)
    return ConsulHealthProvider(url, token=token or options.get("consul.token"),
                                timeout=float(options.get("consul.timeout", DEFAULT_TIMEOUT)),
                                host=str(getattr(context, "host", "") or ""))


# -- the agent's provider ---------------------------------------------------------------------
_OPTION_NAMES = {"url": "url", "agent": "url", "token": "token", "timeout": "timeout"}


def on_this_host(host: str) -> bool:
    """True when ``host`` is an address of this machine: ``localhost``, this machine's
    host name, a loopback address, or an IP address a socket can bind here (no DNS)."""
    if host.lower() in ("localhost", "localhost.localdomain", socket.gethostname().lower()):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # another name: finding out would need DNS, which has no timeout
    if ip.is_loopback:
        return True
    if ip.is_unspecified:
        return False
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((host, 0))  # fails (EADDRNOTAVAIL) for an address of another machine
    except OSError:
        return False
    return True


def agent_options(ctx: HealthContext) -> ConsulOptions:
    """Where :class:`ConsulAgentHealthProvider` finds the Consul agent of this host.

    Services and checks belong to the Consul agent they are registered with (it runs the
    checks, and the catalog places the service on its node), so this must be the agent
    on the host where the tasks run. From ``ctx.options`` (``consul.url`` or ``url``, also
    ``consul.agent``; ``consul.token``; ``consul.timeout``), else the first endpoint of
    ``ctx.backend`` that is on this host (:func:`on_this_host`) when it is a Consul
    backend (with its token, timeout and TLS files), else ``$CONSUL_HTTP_ADDR``, else
    ``http://127.0.0.1:8500`` (with a Consul backend's token and timeout). A Consul
    backend's servers elsewhere are never used: a service registered there would run its
    checks, and be advertised, on that server's node. Raises
    :class:`~skedlib.errors.PluginError` for an unknown option or a bad value.
    """
    given: dict[str, str] = {}
    for key, value in ctx.options.items():
        bare = key[len("consul."):] if key.startswith("consul.") else key
        if bare not in _OPTION_NAMES:
            raise PluginError(f"health provider consul: unknown option {key!r} (known: "
                              "consul.url, consul.token, consul.timeout)")
        given[_OPTION_NAMES[bare]] = value
    timeout: float | None = None
    if "timeout" in given:
        try:
            timeout = float(given["timeout"])
        except ValueError:
            timeout = -1.0
        if not 0 < timeout <= 3600:
            raise PluginError(f"health provider consul: timeout must be a number of seconds "
                              f"between 0 and 3600, not {given['timeout']!r}")
    token = given.get("token") or None
    try:
        if given.get("url"):
            return _agent_options(given["url"], token, timeout)
        if isinstance(ctx.backend, ConsulBackend):
            o = ctx.backend.options
            local = [ep for ep in o.endpoints if on_this_host(ep[0])]
            if local:
                return ConsulOptions(endpoints=(local[0],), dc=None,
                                     token=token if token is not None else o.token,
                                     timeout=timeout if timeout is not None else o.timeout,
                                     scheme=o.scheme, ca=o.ca, cert=o.cert, key=o.key)
            if token is None:
                token = o.token
            if timeout is None:
                timeout = o.timeout
            log.info("consul health provider: no endpoint of the backend %s is on this host; "
                     "using the Consul agent at %s (set consul.url to choose another)",
                     ctx.backend.url, os.environ.get("CONSUL_HTTP_ADDR") or DEFAULT_AGENT)
        return _agent_options(os.environ.get("CONSUL_HTTP_ADDR") or DEFAULT_AGENT, token,
                              timeout)
    except BackendUnavailable as exc:
        raise PluginError(f"health provider consul: {exc}") from exc


def _go_duration(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


@dataclass(eq=False)
class _Check:
    """One check of a watched task, as the provider follows it."""

    resolved: ResolvedCheck
    check_id: str
    every: float
    """Seconds between two runs by Consul (what one consecutive result is worth)."""
    first_by: float
    """Seconds after registration by which Consul has surely run the check once."""
    status: CheckStatus
    has_result: bool = False
    critical_since: float | None = None
    """Monotonic time of the first observation of the current critical streak."""
    last_seen: float = 0.0
    """Monotonic time of the latest observation of the check."""
    produced: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=_PRODUCED_KEPT))
    """``updated_at`` of the statuses this provider reported (ttl: not to forward back)."""
    forwarded_at: float = 0.0
    """``updated_at`` of the last report forwarded to Consul (ttl)."""

    def set_status(self, status: Literal["passing", "warning", "critical"],
                   output: str) -> None:
        now = time.time()
        if self.produced and now <= self.produced[-1]:
            now = math.nextafter(self.produced[-1], math.inf)
        self.status = CheckStatus(name=self.resolved.name, status=status, output=output,
                                  updated_at=now)
        self.produced.append(now)


@dataclass(eq=False)
class _Entry:
    """A watched task."""

    task: Task
    port: int
    generation: int
    payload: dict[str, Any]
    checks: list[_Check]
    registered: bool = False
    registered_at: float = 0.0
    """Monotonic time the current registration was confirmed by Consul."""
    refused: str = ""
    """Why Consul refused the registration (the task is then unhealthy)."""
    retry: float = _RETRY_INITIAL
    next_ttl_poll: float = 0.0
    notified: tuple[Any, ...] = ()


class ConsulAgentHealthProvider(HealthProvider):
    """The ``consul`` health provider: Consul's agent on this host runs the checks.

    See the module docstring for what is registered, how results are followed, how
    consecutive critical results are counted, and how TTL checks are passed. Two daemon
    threads talk to Consul (each through its own connection pool): one registers,
    deregisters, forwards TTL reports and confirms thresholds; one follows the node's
    health with blocking queries. ``options`` overrides where the Consul agent is
    (default: :func:`agent_options` of ``ctx``).
    """

    name = "consul"

    def __init__(self, ctx: HealthContext, *, options: ConsulOptions | None = None) -> None:
        self.ctx = ctx
        self.options = options or agent_options(ctx)
        self.url = self.options.base_url(0)
        self._sync_client = ConsulHealthProvider(self.options, host=ctx.host)
        self._follow_client = ConsulHealthProvider(self.options, host=ctx.host)
        self._tasks: dict[str, _Entry] = {}
        self._dirty: dict[str, float] = {}
        """Task ids whose registration must be brought in line, with when (monotonic)."""
        self._absent: set[str] = set()
        """Task ids known not to be registered (deregistered by us since)."""
        self._retries: dict[str, float] = {}
        self._generation = 0
        self._cond = threading.Condition()
        self._refresh_lock = threading.Lock()
        self._last_refresh = 0.0
        self._last_refresh_try = 0.0
        self._warned: dict[str, str] = {}
        self._closed = False
        self._close_by = 0.0
        self._sync_thread = threading.Thread(target=self._sync_loop, name="consul-health-sync",
                                             daemon=True)
        self._follow_thread = threading.Thread(target=self._follow_loop,
                                               name="consul-health-follow", daemon=True)
        self._sync_thread.start()
        self._follow_thread.start()

    def __repr__(self) -> str:
        return f"<ConsulAgentHealthProvider {self.url}>"

    # -- the interface ----------------------------------------------------------------------
    def validate(self, task: Task, port: int) -> None:
        """Resolve every check (as the local provider); raises TaskRejected."""
        self._resolve(task, port)

    def _resolve(self, task: Task, port: int) -> tuple[list[ResolvedCheck], list[str]]:
        resolved = resolve_checks(task, port)
        seen: set[str] = set()
        ids = [_check_id(task, c.name, i, check, seen)
               for c in task.task_definition.containers for i, check in enumerate(c.checks)]
        return resolved, ids

    def _definitions(self, task: Task, port: int, resolved: list[ResolvedCheck],
                     ids: list[str]) -> list[dict[str, Any]]:
        env = {"SKED_TASK_ID": task.id, "SKED_HOST": self.ctx.host}
        if port:
            env["PROVIDED_PORT"] = str(port)
        exports = "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
        out: list[dict[str, Any]] = []
        for check, check_id in zip(resolved, ids, strict=True):
            d: dict[str, Any] = {"CheckID": check_id, "Name": check.name}
            if check.kind == "ttl":
                d["TTL"] = _go_duration(check.ttl)
            else:
                target = check.target
                if check.kind == "script":
                    target = f"{exports}; {target}"
                d[{"http": "HTTP", "tcp": "TCP", "script": "Script"}[check.kind]] = target
                d["Interval"] = _go_duration(check.interval)
                d["Timeout"] = _go_duration(check.timeout)
            out.append(d)
        return out

    def watch(self, task: Task, port: int) -> None:
        """Register ``task`` with Consul soon (replacing an earlier watch of it)."""
        resolved, ids = self._resolve(task, port)
        payload = _service_payload(task, port, self._definitions(task, port, resolved, ids))
        checks = []
        for r, check_id in zip(resolved, ids, strict=True):
            if r.kind == "ttl":
                every, first_by = r.interval, r.ttl + FIRST_RESULT_SLACK
            else:
                every = max(r.interval, CONSUL_MIN_INTERVAL)
                first_by = every + r.timeout + FIRST_RESULT_SLACK
            c = _Check(resolved=r, check_id=check_id, every=every, first_by=first_by,
                       status=CheckStatus(name=r.name, status="critical", output=""))
            c.set_status("critical", "registering with Consul")
            c.forwarded_at = time.time() - r.ttl  # a report within the ttl before counts
            checks.append(c)
        with self._cond:
            self._generation += 1
            entry = _Entry(task=task, port=port, generation=self._generation,
                           payload=payload, checks=checks)
            entry.notified = self._fingerprint(entry)
            self._tasks[task.id] = entry
            self._dirty[task.id] = time.monotonic()
            self._cond.notify_all()

    def unwatch(self, task_id: str) -> None:
        """Stop following ``task_id`` and deregister it from Consul soon. Idempotent."""
        with self._cond:
            self._tasks.pop(task_id, None)
            if task_id not in self._absent:
                self._dirty[task_id] = time.monotonic()
                self._cond.notify_all()

    def health(self, task_id: str) -> TaskHealth | None:
        """The latest results and the provider's state (see the module docstring)."""
        with self._cond:
            entry = self._tasks.get(task_id)
            if entry is None:
                return None
            state = self._state(entry)
            checks = [msgspec.structs.replace(c.status) for c in entry.checks]
        return TaskHealth(task_id=task_id, host=self.ctx.host, state=state,
                          healthy=state == "healthy", checks=checks, updated_at=time.time())

    def close(self) -> None:
        """Stop both threads; pending deregistrations get a few seconds to finish first."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._close_by = time.monotonic() + min(2 * self.options.timeout, 10.0)
            self._cond.notify_all()
        self._sync_thread.join(timeout=max(0.0, self._close_by - time.monotonic()) + 1.0)
        self._follow_thread.join(timeout=0.5)
        self._sync_client.close()
        self._follow_client.close()

    # -- states -----------------------------------------------------------------------------
    def _reached(self, c: _Check) -> bool:
        if not c.has_result or c.status.status != "critical" or c.critical_since is None:
            return False
        threshold = self.ctx.failure_threshold
        if threshold <= 1:
            return True
        return c.last_seen >= c.critical_since + (threshold - 0.5) * c.every

    def _state(self, entry: _Entry) -> Literal["starting", "healthy", "running", "unhealthy"]:
        if not entry.checks:
            return "healthy"
        if entry.refused or any(self._reached(c) for c in entry.checks):
            return "unhealthy"
        if any(not c.has_result for c in entry.checks):
            return "starting"
        if any(c.status.status == "critical" for c in entry.checks):
            return "running"
        return "healthy"

    def _fingerprint(self, entry: _Entry) -> tuple[Any, ...]:
        return (entry.registered, entry.refused,
                tuple((c.status.status if c.has_result else None, self._reached(c))
                      for c in entry.checks))

    def _changed(self) -> list[str]:
        """Task ids whose fingerprint moved since the last notification (lock held)."""
        out = []
        for task_id, entry in self._tasks.items():
            fp = self._fingerprint(entry)
            if fp != entry.notified:
                entry.notified = fp
                out.append(task_id)
        return out

    def _notify(self, task_ids: list[str]) -> None:
        for task_id in task_ids:
            try:
                self.ctx.on_change(task_id)
            except Exception:
                log.exception("health change callback failed for %s", task_id)

    def _warn(self, topic: str, message: str) -> None:
        if self._warned.get(topic) != message:
            self._warned[topic] = message
            log.warning("%s", message)

    def _ok(self, topic: str) -> None:
        if self._warned.pop(topic, None) is not None:
            log.info("consul health provider: %s works again", topic)

    # -- reading Consul's results ---------------------------------------------------------
    def _refresh(self, client: ConsulHealthProvider) -> bool:
        """Read the agent's services and checks, apply them, notify changes."""
        with self._refresh_lock:
            t = time.monotonic()
            with self._cond:
                self._last_refresh_try = t
            try:
                services, checks = client.local_state()
            except BackendError as exc:
                self._warn("read", f"consul health provider: cannot read checks from "
                                   f"{self.url}: {exc}")
                return False
            self._ok("read")
            with self._cond:
                self._last_refresh = t
                for task_id, entry in self._tasks.items():
                    if not entry.registered or entry.registered_at > t:
                        continue
                    if task_id not in services:
                        log.warning("consul health provider: %s vanished from the Consul "
                                    "agent %s; registering it again", task_id, self.url)
                        self._reset(entry)
                        self._dirty[task_id] = time.monotonic()
                        continue
                    self._apply(entry, checks, t)
                changed = self._changed()
                self._cond.notify_all()
        self._notify(changed)
        return True

    def _reset(self, entry: _Entry) -> None:
        entry.registered = False
        for c in entry.checks:
            c.has_result, c.critical_since, c.last_seen = False, None, 0.0
            c.set_status("critical", "registering with Consul")

    def _apply(self, entry: _Entry, checks: Mapping[str, Any], t: float) -> None:
        for c in entry.checks:
            info = checks.get(c.check_id)
            if not isinstance(info, Mapping):
                continue
            status = _STATUSES.get(str(info.get("Status")), "critical")
            output = str(info.get("Output") or "")
            if not c.has_result:
                ran = (status != "critical" or output != ""
                       or t >= entry.registered_at + c.first_by)
                if not ran:
                    continue
                c.has_result = True
                c.critical_since = t if status == "critical" else None
                c.last_seen = t
                c.set_status(status, output or f"{status} (Consul gave no output)")
                continue
            if status == "critical" and c.status.status != "critical":
                c.critical_since = t
            elif status != "critical":
                c.critical_since = None
            c.last_seen = max(c.last_seen, t)
            if not output and status == "critical":
                output = c.status.output if c.status.status == "critical" else \
                    "critical (Consul gave no output)"
            if (status, output) != (c.status.status, c.status.output):
                c.set_status(status, output)

    def _deadline(self) -> float | None:
        """The next time a fresh read of the agent would decide something (lock held)."""
        best: float | None = None
        threshold = self.ctx.failure_threshold
        for entry in self._tasks.values():
            if not entry.registered:
                continue
            for c in entry.checks:
                if not c.has_result:
                    due = entry.registered_at + c.first_by
                elif (c.status.status == "critical" and c.critical_since is not None
                      and threshold > 1 and not self._reached(c)):
                    due = c.critical_since + (threshold - 0.5) * c.every
                else:
                    continue
                if due > self._last_refresh:
                    best = due if best is None else min(best, due)
        return best

    # -- the sync thread --------------------------------------------------------------------
    def _next_job(self, now: float) -> tuple[tuple[Any, ...] | None, float | None]:
        """The next job due, or None and how long to wait (lock held)."""
        wait: float | None = None

        def later(at: float) -> None:
            nonlocal wait
            wait = at - now if wait is None else min(wait, at - now)

        for task_id, due in list(self._dirty.items()):
            entry = self._tasks.get(task_id)
            if self._closed and entry is not None:
                continue  # still watched: left registered
            if due > now:
                later(due)
                continue
            if entry is None:
                return ("deregister", task_id), None
            if entry.registered:
                del self._dirty[task_id]
                continue
            return ("register", task_id, entry.generation, entry.payload), None
        if self._closed:
            return None, wait
        deadline = self._deadline()
        if deadline is not None:
            at = max(deadline, self._last_refresh_try + 1.0) if \
                self._last_refresh_try > self._last_refresh else deadline
            if at <= now:
                return ("refresh",), None
            later(at)
        for task_id, entry in self._tasks.items():
            if not entry.registered or not any(c.resolved.kind == "ttl" for c in entry.checks):
                continue
            if entry.next_ttl_poll <= now:
                return ("ttl", task_id, entry.generation), None
            later(entry.next_ttl_poll)
        return None, wait

    def _sync_loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    if self._closed and now >= self._close_by:
                        return
                    job, wait = self._next_job(now)
                    if job is not None:
                        break
                    if self._closed:
                        if wait is None:
                            return
                        wait = min(wait, self._close_by - now)
                    self._cond.wait(wait)
            try:
                self._run_job(job)
            except Exception:  # a job never takes the thread down
                log.exception("consul health provider: %s failed", job[0])
                with self._cond:
                    self._cond.wait(1.0)

    def _run_job(self, job: tuple[Any, ...]) -> None:
        kind = job[0]
        if kind == "register":
            self._register(job[1], job[2], job[3])
        elif kind == "deregister":
            self._deregister(job[1])
        elif kind == "refresh":
            self._refresh(self._sync_client)
        elif kind == "ttl":
            self._forward_ttl(job[1], job[2])

    def _backoff(self, task_id: str) -> float:
        delay = self._retries.get(task_id, _RETRY_INITIAL)
        self._retries[task_id] = min(delay * 2, _RETRY_MAX)
        return delay

    def _register(self, task_id: str, generation: int, payload: dict[str, Any]) -> None:
        client = self._sync_client
        try:
            with self._cond:
                known_absent = task_id in self._absent
            if not known_absent:  # a re-registered TTL check would keep its old status
                client.deregister(task_id)
            client.register_payload(payload)
        except ValidationError as exc:
            with self._cond:
                entry = self._tasks.get(task_id)
                if entry is None or entry.generation != generation:
                    return
                self._absent.discard(task_id)
                self._dirty.pop(task_id, None)
                self._retries.pop(task_id, None)
                entry.refused = f"Consul refused the registration: {exc}"
                for c in entry.checks:
                    c.has_result = True
                    c.set_status("critical", entry.refused)
                changed = self._changed()
            log.warning("consul health provider: %s", entry.refused)
            self._notify(changed)
            return
        except BackendError as exc:
            with self._cond:
                self._absent.discard(task_id)
                entry = self._tasks.get(task_id)
                if entry is None or entry.generation != generation:
                    return
                delay = self._backoff(task_id)
                self._dirty[task_id] = time.monotonic() + delay
                for c in entry.checks:
                    c.set_status("critical", f"not registered with Consul yet: {exc}")
            self._warn(f"register:{task_id}", f"consul health provider: cannot register "
                                              f"{task_id} (retrying in {delay:.1f}s): {exc}")
            return
        self._warned.pop(f"register:{task_id}", None)
        with self._cond:
            self._absent.discard(task_id)
            self._retries.pop(task_id, None)
            entry = self._tasks.get(task_id)
            if entry is None or entry.generation != generation:
                return  # unwatched or watched again meanwhile: the dirty mark stays
            self._dirty.pop(task_id, None)
            entry.registered, entry.registered_at = True, time.monotonic()
            entry.next_ttl_poll = entry.registered_at
            for c in entry.checks:
                c.set_status("critical", "registered with Consul; not checked yet")
            self._cond.notify_all()
        log.debug("consul health provider: registered %s on %s", task_id, self.url)
        self._refresh(self._sync_client)

    def _deregister(self, task_id: str) -> None:
        try:
            self._sync_client.deregister(task_id)
        except BackendError as exc:
            with self._cond:
                if task_id in self._tasks:
                    return
                delay = self._backoff(task_id)
                self._dirty[task_id] = time.monotonic() + delay
            self._warn(f"deregister:{task_id}", f"consul health provider: cannot deregister "
                                                f"{task_id} (retrying in {delay:.1f}s): {exc}")
            return
        self._warned.pop(f"deregister:{task_id}", None)
        with self._cond:
            self._retries.pop(task_id, None)
            if task_id not in self._tasks:
                self._dirty.pop(task_id, None)
                self._absent.add(task_id)
        log.debug("consul health provider: deregistered %s from %s", task_id, self.url)

    def _forward_ttl(self, task_id: str, generation: int) -> None:
        """Forward reports of the task's ttl checks from its health record to Consul."""
        with self._cond:
            entry = self._tasks.get(task_id)
            if entry is None or entry.generation != generation:
                return
            ttl_checks = [c for c in entry.checks if c.resolved.kind == "ttl"]
            entry.next_ttl_poll = time.monotonic() + min(c.resolved.interval
                                                         for c in ttl_checks)
        reports: dict[str, CheckStatus] = {}
        try:
            kv = self.ctx.backend.get(self.ctx.keyspace.task_health(task_id))
            if kv is not None:
                record = decode(kv.value, TaskHealth, where=kv.key)
                reports = {c.name: c for c in record.checks}
        except (BackendError, ValidationError) as exc:
            log.debug("ttl checks of %s: cannot read the health record: %s", task_id, exc)
            return
        todo: list[tuple[_Check, CheckStatus]] = []
        now = time.time()
        with self._cond:
            if self._tasks.get(task_id) is not entry:
                return
            for c in ttl_checks:
                r = reports.get(c.resolved.name)
                if (r is None or r.updated_at <= c.forwarded_at or r.updated_at in c.produced
                        or (r.status != "critical" and now - r.updated_at > c.resolved.ttl)):
                    continue
                todo.append((c, r))
        forwarded = False
        for c, r in todo:
            try:
                self._sync_client.set_ttl(task_id, r.status, c.check_id, note=r.output)
            except (BackendError, ValidationError) as exc:
                self._warn(f"ttl:{task_id}", f"consul health provider: cannot report ttl "
                                             f"check {c.check_id} to Consul: {exc}")
                continue
            self._warned.pop(f"ttl:{task_id}", None)
            with self._cond:
                c.forwarded_at = max(c.forwarded_at, r.updated_at)
            forwarded = True
        if forwarded:
            self._refresh(self._sync_client)

    # -- the follow thread ------------------------------------------------------------------
    def _follow_loop(self) -> None:
        client = self._follow_client
        node: str | None = None
        index = 0
        pause = _RETRY_INITIAL
        last_sig: Any = None
        last_read = 0.0
        while True:
            with self._cond:
                while not self._closed and not any(e.registered for e in self._tasks.values()):
                    self._cond.wait()
                if self._closed:
                    return
                ours = {c.check_id for e in self._tasks.values() for c in e.checks}
            try:
                if node is None:
                    node = client.node_name()
                new_index, body = client.wait_node(node, index, FOLLOW_WAIT)
            except BackendError as exc:
                if self._closed:
                    return
                self._warn("follow", f"consul health provider: cannot follow the health of "
                                     f"the Consul agent {self.url} (retrying): {exc}")
                node, index = None, 0
                with self._cond:
                    self._cond.wait(pause)
                pause = min(pause * 2, _RETRY_MAX)
                continue
            except Exception:
                log.exception("consul health provider: following %s failed", self.url)
                with self._cond:
                    self._cond.wait(_RETRY_MAX)
                continue
            if self._closed:
                return
            self._ok("follow")
            pause = _RETRY_INITIAL
            index = new_index if new_index >= index else 0  # an index that went back: reset
            sig = sorted((str(c.get("CheckID")), str(c.get("Status"))) for c in body
                         if isinstance(c, Mapping) and c.get("CheckID") in ours)
            if sig != last_sig or time.monotonic() - last_read >= FOLLOW_WAIT:
                last_sig, last_read = sig, time.monotonic()
                try:
                    self._refresh(client)
                except Exception:
                    log.exception("consul health provider: reading %s failed", self.url)
