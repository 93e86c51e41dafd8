"""skedlib's registrations in Consul's catalog: recognisable, alive, and following the issued state.

Every service the agent's provider registers is skedlib's own, and says so:

- **the mark.** Its ``Tags`` hold ``skedlib-host=<host>`` (:func:`host_tag`): the skedlib
  host the task was issued to. The service ID is the task id. Consul 0.8 has no service
  ``Meta`` (it came in 1.0), so the mark is a tag; consumers that select by tag
  (``?tag=``, DNS ``<tag>.<name>.service``, fabio's ``urlprefix-``) are not affected by
  one more tag;
- **the liveness check.** A TTL check ``<task id>:skedlib-agent`` (:func:`liveness_check`)
  that the skedlib agent passes every third of its TTL while it watches the task. When the
  skedlib agent dies (or stops watching without deregistering) the check, and with it the
  entry in ``/v1/health/service/<name>?passing`` and in DNS, turns critical within the
  TTL, even though the Consul agent and its ``serfHealth`` stay up;
- **the naming** (:func:`naming`): ``service`` (Name = the service, Tags = the
  definition's tags) or ``original`` (Name ``<cluster>-<service>``, Tags = the
  definition's tags + the cluster + the service, Address = the host's address).

Two sweeps keep the catalog in line with the issued state (``state/hosts/<host>/``):

- :func:`stale_local` (each skedlib agent, on start and every ``clean_interval``): the
  registrations on its own Consul agent marked with its host whose task is neither issued
  to the host nor watched are deregistered through the agent API. Only a node's own
  Consul agent can remove its services for good: a catalog deregistration of a service
  the node's (live) Consul agent still holds is undone by its anti-entropy sync;
- :class:`CatalogCleaner` (one elected skedlib agent, through :class:`skedlib.Lock`):
  entries on nodes whose Consul agent is down (``serfHealth`` not passing) and whose task
  is no longer issued to the marked host are removed with ``PUT /v1/catalog/deregister``:
  no live agent would re-add them, and no skedlib agent there can remove them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from skedlib import Backend, BackendError, Keyspace, LeaseExpired, Lock, Task
from skedlib_consul.agent_client import ConsulAgentClient
from skedlib_consul.checks import LIVENESS_SUFFIX, go_duration, service_definition

__all__ = [
    "HOST_TAG",
    "LIVENESS_SUFFIX",
    "CatalogCleaner",
    "Naming",
    "RegistrationSettings",
    "host_tag",
    "issued_pairs",
    "liveness_check",
    "liveness_check_id",
    "naming",
    "owner",
    "registration",
    "stale_local",
]

log = logging.getLogger(__name__)

#: the tag prefix that marks a registration as skedlib's, followed by the host name
HOST_TAG = "skedlib-host="

Naming = Literal["service", "original"]


@dataclass(frozen=True)
class RegistrationSettings:
    """How the provider registers tasks and keeps the catalog clean (``consul.*`` options)."""

    naming: Naming = "service"
    """``service``: Name = the service; ``original``: Name ``<cluster>-<service>`` with the
    cluster and service as tags and the host's address."""
    liveness_ttl: float = 15.0
    """TTL of each registration's liveness check; passed every third of it."""
    clean_interval: float = 10.0
    """How often stale registrations are looked for (the local sweep, the catalog one)."""
    catalog_cleaner: bool = True
    """Stand for election as the catalog cleaner of dead nodes."""
    address: str = ""
    """Address to advertise with the ``original`` naming (default: the host record's)."""


def host_tag(host: str) -> str:
    """The tag that marks a registration as skedlib's, made for ``host``."""
    return f"{HOST_TAG}{host}"


def owner(tags: Iterable[Any] | None) -> str | None:
    """The skedlib host a registration was made for, from its tags; None: not skedlib's."""
    for tag in tags or ():
        if isinstance(tag, str) and tag.startswith(HOST_TAG):
            return tag[len(HOST_TAG):]
    return None


def liveness_check_id(task_id: str) -> str:
    """The CheckID of a registration's liveness check."""
    return f"{task_id}{LIVENESS_SUFFIX}"


def liveness_check(task_id: str, host: str, ttl: float) -> dict[str, Any]:
    """The liveness TTL check of a registration (passing when registered)."""
    return {"CheckID": liveness_check_id(task_id), "Name": f"skedlib agent {host}",
            "TTL": go_duration(ttl), "Status": "passing",
            "Notes": "passed by the skedlib agent while it runs the task"}


def naming(task: Task, style: Naming) -> tuple[str, list[str]]:
    """The service Name and Tags (the mark aside) of ``task`` under ``style``."""
    tags = list(task.task_definition.tags)
    if style == "original":
        extra = [t for t in (task.cluster.name, task.service) if t not in tags]
        return f"{task.cluster.name}-{task.service}", tags + list(dict.fromkeys(extra))
    return task.service, tags


def registration(task: Task, port: int, checks: list[dict[str, Any]], *, host: str,
                 settings: RegistrationSettings, address: str = "") -> dict[str, Any]:
    """The ``/v1/agent/service/register`` payload the provider sends for ``task``: its
    checks, the liveness check, the mark, named as ``settings.naming`` says."""
    name, tags = naming(task, settings.naming)
    payload = service_definition(
        task, port, [*checks, liveness_check(task.id, host, settings.liveness_ttl)],
        name=name, address=address if settings.naming == "original" else None)
    payload["Tags"] = [*tags, host_tag(host)]
    return payload


def stale_local(services: Mapping[str, Any], host: str, keep: Iterable[str]) -> list[str]:
    """IDs of the registrations on a Consul agent (``/v1/agent/services``) marked with
    ``host`` whose task is not in ``keep`` (issued to the host, or watched)."""
    kept = set(keep)
    out = []
    for sid, svc in services.items():
        if not isinstance(svc, Mapping) or sid in kept:
            continue
        if owner(svc.get("Tags")) == host:
            out.append(sid)
    return sorted(out)


def issued_pairs(backend: Backend, keys: Keyspace) -> set[tuple[str, str]]:
    """Every (host, task id) of the issued state (``state/hosts/``)."""
    prefix = keys.all_host_tasks
    out: set[tuple[str, str]] = set()
    for kv in backend.list(prefix).items:
        host, _, task_id = kv.key[len(prefix):].partition("/")
        if host and task_id and "/" not in task_id:
            out.add((host, task_id))
    return out


class CatalogCleaner:
    """Removes dead nodes' skedlib entries whose task left them, once elected.

    Every skedlib agent using the provider runs one; the one holding the lock
    ``<prefix>plugins/consul/catalog-cleaner`` (a :class:`skedlib.Lock`, lease TTL
    twice ``interval``, at least the backend's shortest) sweeps every ``interval``: for each
    catalog service with a skedlib mark, it reads ``/v1/health/service/<name>`` and
    deregisters (``PUT /v1/catalog/deregister``) each entry whose node's ``serfHealth``
    is not passing and whose task id is not issued to the marked host. Entries on nodes
    whose Consul agent is up are left to that node's skedlib agent (see the module).
    """

    def __init__(self, backend: Backend, keys: Keyspace, client: ConsulAgentClient, *,
                 holder: str, interval: float) -> None:
        self.backend = backend
        self.keys = keys
        self.client = client
        self.holder = holder
        self.interval = interval
        self.key = f"{keys.prefix}plugins/consul/catalog-cleaner"
        self.removed = 0
        """Entries removed from the catalog so far (by this cleaner)."""
        self._lock: Lock | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="consul-catalog-cleaner",
                                        daemon=True)

    def start(self) -> CatalogCleaner:
        """Start the background thread."""
        self._thread.start()
        return self

    @property
    def elected(self) -> bool:
        """True while this cleaner holds the lock."""
        return self._lock is not None and self._lock.held

    def close(self) -> None:
        """Stop sweeping and give the lock up."""
        self._stop.set()
        self._thread.join(timeout=self.client.options.timeout + 1.0)
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if self._elect():
                    self.sweep()
            except (BackendError, LeaseExpired) as exc:
                log.warning("consul catalog cleaner %s: %s", self.holder, exc)
            except Exception:  # the thread must outlive one bad sweep
                log.exception("consul catalog cleaner %s failed", self.holder)

    def _elect(self) -> bool:
        if self.elected:
            return True
        if self._lock is not None:  # lost: let another take over first
            self._lock.release()
            self._lock = None
        if self.backend.get(self.key) is not None:
            return False
        lock = Lock(self.backend, self.key, ttl=max(2 * self.interval, 1.0),
                    holder=self.holder)
        if not lock.try_acquire():
            return False
        self._lock = lock
        log.info("consul catalog cleaner: %s is elected", self.holder)
        return True

    def sweep(self) -> int:
        """One pass over the catalog (see the class); returns the entries removed."""
        ours = sorted(n for n, tags in self.client.catalog_services().items()
                      if owner(tags) is not None)
        if not ours:
            return 0
        issued = issued_pairs(self.backend, self.keys)
        removed = 0
        for name in ours:
            for entry in self.client.service_health(name):
                try:
                    node = str(entry["Node"]["Node"])
                    service = entry["Service"]
                    sid, host = str(service["ID"]), owner(service.get("Tags"))
                    serf = [c for c in entry.get("Checks") or []
                            if c.get("CheckID") == "serfHealth"]
                except (KeyError, TypeError, AttributeError):
                    continue
                if host is None or (host, sid) in issued:
                    continue
                if serf and serf[0].get("Status") == "passing":
                    continue  # a live Consul agent would sync it back: its host's job
                if not self.elected:
                    return removed
                self.client.catalog_deregister(node, sid)
                removed += 1
                self.removed += 1
                log.info("consul catalog cleaner: removed %s (service %s) from node %s, "
                         "whose Consul agent is down: the task is not issued to %s",
                         sid, name, node, host)
        return removed
