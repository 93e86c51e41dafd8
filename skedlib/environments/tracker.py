"""The deployment tracker: a deployment's status derived from the store, never left
dangling.

:func:`observe` reads what a deployment's outcome depends on (the environment's service,
the scheduler's status record and rollout history for it, its tasks, their health, the
live hosts) at one store revision; :func:`evaluate` turns that into the deployment's
status:

- ``failed`` when a host rejected the deployed task (its agent could not run it: the
  reason is the task's ``reject_reason``), when the scheduler reports an error for the
  deployed version, when a rollout to it failed, when the service was changed or deleted
  behind the environment's back, or when the deployment's deadline passed (every host not
  yet running the version healthy is listed with why);
- ``completed`` when the scheduler reports the service ``ok`` on the deployed version (a
  healthy task on every eligible host) and the tasks confirm it: none of another version
  is left on a live host, and every one of the deployed version is healthy;
- ``in_progress`` otherwise.

The status record counts once the scheduler wrote it after the deployment (its
``revision`` is at least the deployment record's), or ``settle`` seconds after the
deployment started, for a deployment that changed nothing the status shows.
"""

from __future__ import annotations

import bisect
import os.path
from collections.abc import Iterator, Sequence

import msgspec

from skedlib.codecs import decode
from skedlib.environments.models import Deployment, EnvironmentHealth, FailedHost
from skedlib.keys import Keyspace
from skedlib.models import RolloutHistory, Service, ServiceStatus, Task, TaskHealth
from skedlib.runtime import RETRY, Group, Retry, Store, retry_on_conflict, write_groups
from skedlib.scheduling import is_task_healthy
from skedlib.store.base import Compare, KeyValue, ListResult

__all__ = ["SETTLE", "Observed", "environment_health", "evaluate", "observe", "observe_all"]

SETTLE = 3.0
"""Seconds after which an unchanged ``ok`` status counts for a deployment."""


class Observed(msgspec.Struct, kw_only=True):
    """What a deployment's status is derived from, read from the store at one revision."""

    service: Service | None = None
    status: ServiceStatus | None = None
    rollouts: RolloutHistory | None = None
    tasks: list[Task] = msgspec.field(default_factory=list)
    """Every issued task of the environment's service in its cluster."""
    health: dict[str, TaskHealth] = msgspec.field(default_factory=dict)
    hosts: set[str] = msgspec.field(default_factory=set)
    """Names of the live hosts."""
    deployment_revision: int = 0
    """The store revision at which the deployment record was created."""
    revision: int = 0
    """The store revision everything above was read at."""


def observe(store: Store, cluster: str, service: str,
            deployment_revision: int = 0) -> Observed:
    """Read what :func:`evaluate` needs for ``service`` in ``cluster``, at one revision
    (see :func:`observe_all`)."""
    return observe_all(store, [(cluster, service, deployment_revision)])[0]


def observe_all(store: Store, wanted: Sequence[tuple[str, str, int]]) -> list[Observed]:
    """:func:`observe` for each ``(cluster, service, deployment_revision)`` of ``wanted``,
    all from one consistent read.

    Everything but the services lives under ``state/`` (the scheduler's status and
    rollouts, the tasks, their health, the live hosts), so that prefix is listed once —
    not the whole keyspace, which also holds every task definition and job record. The
    services (``config/services/<name>``) are read just before the listing, and one
    compare-only transaction after it checks that none of them changed in between: then
    each was, at the listing's revision, what was read. When one did change, it is all
    read again.
    """
    if not wanted:
        return []
    keys = store.keys
    state = os.path.commonpath([keys.tasks, keys.health, keys.agents,
                                keys.service_statuses, keys.rollouts]) + "/"  # state/

    def attempt() -> list[Observed] | Retry:
        services = {name: store.get(keys.service(name)) for _, name, _ in wanted}
        listed = store.list(state)
        unchanged = [Group((Compare(keys.service(name), kv.revision if kv else 0),))
                     for name, kv in services.items()]
        if not write_groups(store.backend, unchanged).succeeded:
            return RETRY
        view = _Listing(listed, keys)
        return [view.observed(cluster, name, services[name], revision)
                for cluster, name, revision in wanted]

    return retry_on_conflict(attempt, what="the environments' services")


class _Listing:
    """One listing of ``state/``, with its keys sorted to find a prefix's range."""

    def __init__(self, listed: ListResult, keys: Keyspace) -> None:
        self.keys = keys
        self.revision = listed.revision
        self.by_key = {kv.key: kv for kv in listed.items}
        self.sorted = sorted(self.by_key)
        self.hosts = {kv.key[len(keys.agents):] for kv in self.under(keys.agents)}

    def under(self, prefix: str) -> Iterator[KeyValue]:
        i = bisect.bisect_left(self.sorted, prefix)
        while i < len(self.sorted) and self.sorted[i].startswith(prefix):
            yield self.by_key[self.sorted[i]]
            i += 1

    def get(self, key: str, type_: type[msgspec.Struct]) -> object:
        kv = self.by_key.get(key)
        return decode(kv.value, type_, where=kv.key) if kv else None

    def observed(self, cluster: str, service: str, service_kv: KeyValue | None,
                 deployment_revision: int) -> Observed:
        keys = self.keys
        svc = decode(service_kv.value, Service, where=service_kv.key) if service_kv else None
        status = self.get(keys.service_status(cluster, service), ServiceStatus)
        rollouts = self.get(keys.rollout(cluster, service), RolloutHistory)
        id_prefix = f"{cluster}-{service}-"
        tasks = [t for t in (decode(kv.value, Task, where=kv.key)
                             for kv in self.under(keys.tasks + id_prefix))
                 if t.service == service and t.cluster.name == cluster]
        ids = {t.id for t in tasks}
        health = {h.task_id: h for h in (decode(kv.value, TaskHealth, where=kv.key)
                                         for kv in self.under(keys.health + id_prefix))
                  if h.task_id in ids}
        assert status is None or isinstance(status, ServiceStatus)
        assert rollouts is None or isinstance(rollouts, RolloutHistory)
        return Observed(service=svc, status=status, rollouts=rollouts, tasks=tasks,
                        health=health, hosts=set(self.hosts),
                        deployment_revision=deployment_revision, revision=self.revision)


def _healthy(seen: Observed, t: Task) -> bool:
    return is_task_healthy(t, seen.health.get(t.id), seen.hosts)


def _why_not(seen: Observed, t: Task) -> str:
    h = seen.health.get(t.id)
    if h is None:
        return f"task {t.id} has not started yet"
    return f"task {t.id} is {h.state}" + (f": {h.message}" if h.message else "")


def evaluate(dep: Deployment, seen: Observed, now: float, settle: float = SETTLE
             ) -> Deployment:
    """``dep`` with its status, progress and failed hosts as ``seen`` shows them at
    ``now``. A deployment that already completed or failed is returned unchanged."""
    if dep.status in ("completed", "failed"):
        return dep
    v = dep.task_version
    new = [t for t in seen.tasks if t.task_definition.version == v]
    old = [t for t in seen.tasks if t.task_definition.version != v and not t.rejected
           and t.host in seen.hosts]
    rejected = [t for t in new if t.rejected and t.host in seen.hosts]
    healthy = [t for t in new if _healthy(seen, t)]
    status = seen.status
    status_current = (status is not None and status.task_version == v
                      and status.revision >= seen.deployment_revision > 0)
    settled = now - dep.started_at >= settle
    hosts = status.desired if status is not None and status.task_version == v else \
        len({t.host for t in new + old if t.host in seen.hosts})
    progress = msgspec.structs.replace(dep, status="in_progress", hosts=hosts,
                                       updated_hosts=len(healthy))

    def fail(message: str, failed: list[FailedHost]) -> Deployment:
        return msgspec.structs.replace(progress, status="failed", message=message,
                                       failed_hosts=failed, ended_at=now)

    svc = seen.service
    if svc is None:
        return fail(f"service {dep.environment!r} was deleted", [])
    if (svc.task_name, svc.task_version) != (dep.task_name, v):
        return fail(f"service {dep.environment!r} was changed to task definition "
                    f"{svc.task_name!r} version {svc.task_version} outside this deployment",
                    [])
    if rejected:
        failed = [FailedHost(host=t.host, reason=t.reject_reason or "rejected the task")
                  for t in sorted(rejected, key=lambda t: t.host)]
        return fail(f"{len(failed)} host(s) rejected task definition {dep.task_name!r} "
                    f"version {v}: {failed[0].host}: {failed[0].reason}", failed)
    if status_current and status is not None and status.state == "error":
        return fail(f"the scheduler reports an error: {status.message}", [])
    history = seen.rollouts.rollouts if seen.rollouts else []
    for r in history:
        if r.to_version == v and r.state == "failed" and r.started_at >= dep.started_at - 1:
            return fail(f"the rollout to version {v} failed: {r.message}", [])
    if (status is not None and status.task_version == v and status.state == "ok"
            and (status_current or settled) and not old
            and len(healthy) == len([t for t in new if t.host in seen.hosts])
            and len(healthy) == status.desired):
        return msgspec.structs.replace(progress, status="completed", message="",
                                       failed_hosts=[], ended_at=now)
    if now >= dep.started_at + dep.deadline:
        failed = [FailedHost(host=t.host, reason=_why_not(seen, t))
                  for t in new if t.host in seen.hosts and not _healthy(seen, t)]
        failed += [FailedHost(host=t.host, reason=f"still runs version "
                                                  f"{t.task_definition.version}")
                   for t in old]
        why = "" if status is None else f" (scheduler: {status.state}" + (
            f": {status.message})" if status.message else ")")
        if status is None or status.task_version != v:
            why = " (the scheduler has not taken the deployment up: is one running?)"
        return fail(f"deadline of {dep.deadline:g}s passed with {len(healthy)}/{hosts} "
                    f"host(s) running version {v} healthy{why}",
                    sorted(failed, key=lambda f: f.host))
    if status is None or status.task_version != v:
        message = "waiting for the scheduler to take the deployment up"
    elif old:
        message = f"{len(healthy)}/{hosts} host(s) updated, {len(old)} still on other versions"
    else:
        message = f"{len(healthy)}/{hosts} host(s) healthy"
    return msgspec.structs.replace(progress, message=message)


def environment_health(seen: Observed) -> EnvironmentHealth:
    """``healthy`` when the scheduler reports the service ``ok`` and every task on a live
    host runs healthy (none rejected); else ``unhealthy``."""
    live = [t for t in seen.tasks if t.host in seen.hosts]
    if seen.status is None or seen.status.state != "ok":
        return "unhealthy"
    if any(t.rejected or not _healthy(seen, t) for t in live):
        return "unhealthy"
    return "healthy"
