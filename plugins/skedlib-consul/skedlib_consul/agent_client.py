"""A client for the Consul agent API of one host: services, their checks, TTL reports.

:class:`ConsulAgentClient` registers a task as a Consul service with its checks on one
Consul agent (services and checks are local to the agent they are registered with: it
runs the checks and places the service on its node) and reads their results back. It is
synchronous, every call with the options' timeout, and usable on its own::

    client = ConsulAgentClient("http://127.0.0.1:8500", token=None, timeout=5.0,
                               host="node-1")
    client.register(task)            # service ID = task.id, Name = task.service,
                                     # Port = task.port, Tags = the definition's tags,
                                     # Checks = every container's checks
    client.health(task.id)           # -> skedlib.models.TaskHealth
    client.pass_ttl(task.id)         # report a TTL check passing (also warn/fail_ttl)
    client.deregister(task.id)       # idempotent; removes the checks too
    client.check_ids(task)           # the Consul CheckIDs register() uses
    client.registered()              # ids of the services registered on the agent

``agent_url`` is ``http://HOST:PORT``, ``https://HOST:PORT`` or a ``consul://HOST:PORT``
URL with the backend's options (``token``, ``timeout``, ``scheme``, ``ca``, ``cert``,
``key``); the token defaults to ``$CONSUL_HTTP_TOKEN``. :func:`from_context` builds a
client from anything with ``host`` and ``options`` (``options["consul.agent"]``,
``options["consul.token"]``, else ``$CONSUL_HTTP_ADDR``, else ``http://127.0.0.1:8500``).
The checks are mapped as :mod:`skedlib_consul.checks` says.

A task is healthy when every check passes (a task without checks is healthy, as Consul
considers a service without checks); this client keeps no history; the skedlib agent's
provider, :class:`skedlib_consul.provider.ConsulHealthProvider`, is built on it and
counts consecutive results. Errors: :class:`~skedlib.errors.BackendUnavailable` when the
agent cannot be reached in time or refuses the token,
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

from skedlib import BackendError, CheckStatus, NotFound, Task, TaskHealth, ValidationError
from skedlib_consul.checks import (
    LIVENESS_SUFFIX,
    check_definitions,
    consul_status,
    service_definition,
)
from skedlib_consul.client import (
    HttpClient,
    body_text,
    consul_errors,
    index_of,
    raise_for_status,
)
from skedlib_consul.options import (
    DEFAULT_AGENT,
    DEFAULT_TIMEOUT,
    ConsulOptions,
    agent_url_options,
    redact_url,
)

__all__ = ["ConsulAgentClient", "from_context"]


class ConsulAgentClient:
    """Registers tasks as services with their checks on one Consul agent; reads health back.

    ``agent_url`` names the Consul agent of the host the tasks run on (services and
    checks are local to an agent): a URL, or :class:`~skedlib_consul.options.ConsulOptions`
    whose first endpoint is used. ``host`` is written into :class:`TaskHealth`. This is
    the plain client; the skedlib agent's provider is
    :class:`~skedlib_consul.provider.ConsulHealthProvider`.
    """

    def __init__(self, agent_url: str | ConsulOptions = DEFAULT_AGENT, *,
                 token: str | None = None, timeout: float | None = None,
                 host: str = "") -> None:
        if isinstance(agent_url, ConsulOptions):
            self.options = agent_url.one_agent(0, token=token, timeout=timeout)
            self.url = self.options.base_url(0)
        else:
            self.options = agent_url_options(agent_url, token, timeout)
            self.url = redact_url(agent_url)
        self.host = host
        self._http = HttpClient(self.options, f"consul agent {self.url}")
        self._ttl_checks: dict[str, list[str]] = {}

    def __repr__(self) -> str:
        return f"<ConsulAgentClient {self.url}>"

    @property
    def _label(self) -> str:
        return f"consul agent {self.url}"

    def _errors(self, what: str) -> contextlib.AbstractContextManager[None]:
        return consul_errors(self._label, what)

    def _get(self, path: str, what: str) -> Any:
        """The JSON answer of ``GET path`` on the agent (None for HTTP 404)."""
        return self._http.call_json("GET", path, what=what)[1]

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
        payload = service_definition(task, port, check_definitions(task, port=port), name=name,
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
                                  f"{body_text(resp)}")
        raise_for_status(self._label, what, resp, token=bool(self.options.token))
        self._ttl_checks[task_id] = [str(d["CheckID"]) for d in payload.get("Checks", ())
                                     if "TTL" in d
                                     and not str(d["CheckID"]).endswith(LIVENESS_SUFFIX)]

    def deregister(self, task_id: str) -> None:
        """Remove the task's service and its checks from the agent. Idempotent."""
        what = f"deregister task {task_id}"
        # retry="unsent" returns a server error instead of retrying it: with ACLs enabled,
        # Consul 0.8 answers an unknown service with HTTP 500 "Unknown service", which
        # means there is nothing to remove (without ACLs it answers 200)
        resp = self._http.request("PUT", f"/v1/agent/service/deregister/{task_id}",
                                  retry="unsent", what=what)
        gone = resp.status_code == 404 or (resp.status_code == 500
                                           and "Unknown service" in resp.text)
        if not gone:
            raise_for_status(self._label, what, resp, token=bool(self.options.token))
        self._ttl_checks.pop(task_id, None)

    def registered(self) -> list[str]:
        """The IDs of every service registered on the agent (``consul`` itself excluded)."""
        services: Mapping[str, Any] = self._get("/v1/agent/services", "list services") or {}
        return sorted(sid for sid in services if sid != "consul")

    def services(self) -> dict[str, Any]:
        """The agent's services (``/v1/agent/services``), by service ID."""
        what = "list services"
        services = self._get("/v1/agent/services", what) or {}
        with self._errors(what):
            return dict(services)

    def pass_checks(self, check_ids: list[str], note: str = "") -> None:
        """Report each TTL check of ``check_ids`` passing (one call each, one connection)."""
        for check_id in check_ids:
            self._http.call("PUT", f"/v1/agent/check/pass/{check_id}",
                            params=[("note", note)] if note else None,
                            what=f"report TTL check {check_id}")

    # -- the catalog ----------------------------------------------------------------------------
    def catalog_services(self) -> dict[str, list[str]]:
        """Every service name in the catalog with the tags registered under it."""
        what = "list the catalog's services"
        body = self._get("/v1/catalog/services", what) or {}
        with self._errors(what):
            return {str(name): [str(t) for t in tags or ()] for name, tags in body.items()}

    def service_health(self, name: str) -> list[dict[str, Any]]:
        """``/v1/health/service/<name>``: every entry (Node, Service, Checks) of ``name``."""
        body = self._get("/v1/health/service/" + urllib.parse.quote(name, safe=""),
                         f"read the health of service {name}") or []
        return [e for e in body if isinstance(e, dict)]

    def catalog_deregister(self, node: str, service_id: str) -> None:
        """``PUT /v1/catalog/deregister``: remove a service from ``node`` in the catalog.

        Only lasting when the node's Consul agent no longer holds the service (its
        anti-entropy sync would register it again)."""
        self._http.call("PUT", "/v1/catalog/deregister",
                        data=json.dumps({"Node": node, "ServiceID": service_id}),
                        what=f"deregister {service_id} from node {node}")

    # -- reading the agent ----------------------------------------------------------------------
    def node_name(self) -> str:
        """The name of the agent's node (``/v1/agent/self`` ``Config.NodeName``)."""
        what = "read the agent's node name"
        me: Mapping[str, Any] = self._get("/v1/agent/self", what) or {}
        with self._errors(what):
            name = str((me.get("Config") or {}).get("NodeName") or
                       (me.get("Member") or {}).get("Name") or "")
        if not name:
            raise BackendError(f"{self._label}: /v1/agent/self names no node")
        return name

    def local_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The agent's services and checks (``/v1/agent/services``, ``/v1/agent/checks``)."""
        what = "read the agent's services and checks"
        services = self._get("/v1/agent/services", what) or {}
        checks = self._get("/v1/agent/checks", what) or {}
        with self._errors(what):
            return dict(services), dict(checks)

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
        raise_for_status(self._label, what, resp, token=bool(self.options.token))
        try:
            body = resp.json() or []
        except ValueError as exc:
            raise BackendError(f"{self._label}: {what}: unexpected answer from Consul: "
                               f"{body_text(resp)}") from exc
        if not isinstance(body, list):
            raise BackendError(f"{self._label}: {what}: unexpected answer from Consul: "
                               f"{body_text(resp)}")
        return index_of(resp, self._label, what), body

    # -- health -------------------------------------------------------------------------------
    def health(self, task_id: str) -> TaskHealth:
        """The task's checks as the agent last ran them; NotFound when not registered.

        ``state`` is ``healthy`` when every check passes, else ``unhealthy`` (this client
        keeps no history; the agent's provider counts consecutive results).
        """
        what = f"health of task {task_id}"
        services: Mapping[str, Any] = self._get("/v1/agent/services", what) or {}
        if task_id not in services:
            raise NotFound(f"{self._label}: task {task_id} is not registered")
        checks: Mapping[str, Any] = self._get("/v1/agent/checks", what) or {}
        now = time.time()
        with self._errors(what):
            statuses = [
                CheckStatus(name=str(c.get("Name") or cid),
                            status=consul_status(c.get("Status")),
                            output=str(c.get("Output") or ""), updated_at=now)
                for cid, c in sorted(checks.items()) if c.get("ServiceID") == task_id]
        healthy = all(s.status == "passing" for s in statuses)
        return TaskHealth(task_id=task_id, host=self.host,
                          state="healthy" if healthy else "unhealthy", healthy=healthy,
                          checks=statuses, updated_at=now)

    def _ttl_check_id(self, task_id: str, check: str | None) -> str:
        if check and check.startswith(f"{task_id}:"):
            return check
        checks: Mapping[str, Any] = self._get("/v1/agent/checks",
                                              f"checks of task {task_id}") or {}
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
        verb = {"passing": "pass", "warning": "warn", "critical": "fail"}[status]
        # a check that is not a TTL check (or went away since it was looked up above) is
        # an HTTP 500 from Consul, retried as any server error until the timeout
        self._http.call("PUT", f"/v1/agent/check/{verb}/{check_id}",
                        params=[("note", note)] if note else None,
                        what=f"report TTL check {check_id}")

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

    def __enter__(self) -> ConsulAgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def from_context(context: Any = None, *, agent_url: str | None = None,
                 token: str | None = None) -> ConsulAgentClient:
    """A plain client for anything with ``host`` and ``options`` (e.g. a HealthContext).

    The Consul agent is ``agent_url``, else ``context.options["consul.agent"]``, else
    ``$CONSUL_HTTP_ADDR``, else ``http://127.0.0.1:8500``; the token ``token``, else
    ``context.options["consul.token"]``, else ``$CONSUL_HTTP_TOKEN``. The skedlib agent
    uses :class:`~skedlib_consul.provider.ConsulHealthProvider` instead (see
    :func:`skedlib_consul.local_agent.agent_options`).
    """
    options: Mapping[str, str] = getattr(context, "options", None) or {}
    url = (agent_url or options.get("consul.agent") or os.environ.get("CONSUL_HTTP_ADDR")
           or DEFAULT_AGENT)
    return ConsulAgentClient(url, token=token or options.get("consul.token"),
                             timeout=float(options.get("consul.timeout", DEFAULT_TIMEOUT)),
                             host=str(getattr(context, "host", "") or ""))
