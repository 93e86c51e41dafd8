"""Typed access to skedlib's objects in a backend, and ``apply``.

:class:`Client` pairs a :class:`~skedlib.store.base.Backend` with a
:class:`~skedlib.keys.Keyspace` and reads and writes the model's objects, decoding
every stored value with the codecs (a bad stored value is a ValidationError naming its
key). :meth:`Client.apply` is all-or-nothing: it validates the whole manifest against
itself and the store before writing, then writes everything in one transaction whose
compares make a concurrent writer's change visible as a retry, never a lost update.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, TypeVar

import msgspec

from skedlib.codecs import (
    ManifestDocument,
    decode,
    decode_listing,
    decode_record,
    encode,
    object_label,
)
from skedlib.errors import (
    ConflictError,
    NotFound,
    ValidationError,
    one_line,
)
from skedlib.keys import Keyspace, validate_name
from skedlib.models import (
    Cluster,
    Host,
    HostConfig,
    Manifest,
    Rollout,
    RolloutHistory,
    Service,
    ServiceStatus,
    Task,
    TaskDefinition,
    TaskHealth,
)
from skedlib.plugins import default_backend_url
from skedlib.runtime import (
    RETRY,
    Group,
    Retry,
    Store,
    retry_on_conflict,
    wait_for_change,
    write_groups,
)
from skedlib.scheduling import is_task_healthy
from skedlib.store.base import Backend, Compare, Delete, KeyValue, Op, Put
from skedlib.validation import (
    DEFAULT_LIMITS,
    Limits,
    check_cluster,
    check_service,
    check_task_definition,
)

__all__ = [
    "ApplyResult",
    "Client",
    "Convergence",
    "ScaleResult",
    "ServiceProgress",
    "default_backend_url",
]

T = TypeVar("T")

_RETRIES = 8
_SCALE_RETRIES = 3


class ApplyResult(msgspec.Struct, frozen=True):
    """What ``apply`` did, object by object (``"services/web"``)."""

    created: tuple[str, ...] = ()
    configured: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    revision: int = 0


class ScaleResult(msgspec.Struct, frozen=True):
    """What :meth:`Client.scale` did: the service as stored now, and its former
    ``desired``; ``revision`` is the write's (0 when nothing changed)."""

    service: Service
    previous: int
    revision: int = 0


ProgressState = Literal["waiting", "converged", "failed"]


class ServiceProgress(msgspec.Struct, frozen=True, kw_only=True):
    """How far one applied service is in one cluster (see :class:`Convergence`).

    ``cluster`` is ``""`` for a service no cluster lists (nothing to wait for).
    ``healthy``/``desired`` count tasks of ``task_version`` as the scheduler last reported
    them; ``message`` says why it is not converged yet, or why it failed.
    """

    cluster: str
    service: str
    task_version: int
    state: ProgressState
    desired: int = 0
    healthy: int = 0
    status: str = ""
    """The scheduler's state for the pair (``ok``, ``progressing`` …), ``""`` if none."""
    rollout: str = ""
    """The state of the rollout to ``task_version`` (``running`` …), ``""`` if none."""
    message: str = ""


class Client:
    """Typed reads and writes of clusters, services, task definitions, hosts and tasks."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @property
    def backend(self) -> Backend:
        """The store's backend."""
        return self.store.backend

    @property
    def keys(self) -> Keyspace:
        """The store's keyspace."""
        return self.store.keys

    @classmethod
    def open(cls, url: str | None = None, prefix: str | None = None) -> Client:
        """Open the backend at ``url`` (default: :func:`default_backend_url`)."""
        return cls(Store.open(url or default_backend_url(), prefix))

    def close(self) -> None:
        """Close the backend."""
        self.backend.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reads ----------------------------------------------------------------------------
    def _get(self, key: str, type_: type[T]) -> T | None:
        kv = self.backend.get(key)
        return decode(kv.value, type_, where=kv.key) if kv else None

    def _list(self, prefix: str, type_: type[T]) -> list[T]:
        # decode or quarantine: a bad record is skipped with one warning, never fatal
        return decode_listing(self.backend.list(prefix).items, type_, self.keys)

    def cluster(self, name: str) -> Cluster | None:
        """One cluster, or None."""
        return self._get(self.keys.cluster(name), Cluster)

    def clusters(self) -> list[Cluster]:
        """Every cluster, by name."""
        return self._list(self.keys.clusters, Cluster)

    def service(self, name: str) -> Service | None:
        """One service, or None."""
        return self._get(self.keys.service(name), Service)

    def services(self) -> list[Service]:
        """Every service, by name."""
        return self._list(self.keys.services, Service)

    def task_definition(self, name: str, version: int) -> TaskDefinition | None:
        """One version of a task definition, or None."""
        return self._get(self.keys.task_definition(name, version), TaskDefinition)

    def task_definitions(self, name: str | None = None) -> list[TaskDefinition]:
        """Every task definition (or every version of ``name``), by name then version."""
        prefix = self.keys.task_definition_versions(name) if name else self.keys.task_definitions
        return sorted(self._list(prefix, TaskDefinition), key=lambda t: (t.name, t.version))

    def host_configs(self) -> list[HostConfig]:
        """Operator-side host settings."""
        return self._list(self.keys.host_configs, HostConfig)

    def hosts(self) -> list[Host]:
        """Live host records published by agents."""
        return self._list(self.keys.agents, Host)

    def tasks(self) -> list[Task]:
        """Every issued task."""
        return self._list(self.keys.tasks, Task)

    def host_tasks(self, host: str) -> list[Task]:
        """The tasks issued to ``host``."""
        return self._list(self.keys.host_tasks(host), Task)

    def health(self) -> dict[str, TaskHealth]:
        """Every task's actual state, by task id."""
        return {h.task_id: h for h in self._list(self.keys.health, TaskHealth)}

    def host(self, name: str) -> Host | None:
        """A host's live record (published by its agent), or None."""
        return self._get(self.keys.agent(name), Host)

    def host_config(self, name: str) -> HostConfig | None:
        """A host's operator-side settings, or None."""
        return self._get(self.keys.host_config(name), HostConfig)

    def service_status(self, cluster: str, service: str) -> ServiceStatus | None:
        """What the scheduler last reported of ``service`` in ``cluster``, or None."""
        return self._get(self.keys.service_status(cluster, service), ServiceStatus)

    def rollout_history(self, cluster: str, service: str) -> RolloutHistory | None:
        """The rollouts of ``service`` in ``cluster`` (oldest first), or None."""
        return self._get(self.keys.rollout(cluster, service), RolloutHistory)

    def clusters_of(self, service: str) -> list[str]:
        """Names of the clusters that list ``service``, sorted."""
        return sorted(c.name for c in self.clusters() if service in c.services)

    def limits(self) -> Limits:
        """The store's bounds of desired state: ``<prefix>config/limits`` (JSON of
        :class:`~skedlib.validation.Limits`), else the defaults."""
        kv = self.backend.get(self.limits_key)
        return decode(kv.value, Limits, where=kv.key) if kv else DEFAULT_LIMITS

    @property
    def limits_key(self) -> str:
        """Where the store's :class:`~skedlib.validation.Limits` are kept."""
        return f"{self.keys.prefix}config/limits"

    # -- apply ----------------------------------------------------------------------------
    def apply(self, doc: ManifestDocument | Manifest) -> ApplyResult:
        """Validate and write a manifest, all or nothing. Retries lost races; raises
        :class:`ValidationError` (nothing written) or :class:`ConflictError`."""
        if isinstance(doc, Manifest):
            doc = ManifestDocument(doc, "<manifest>")
        document = doc

        def attempt() -> ApplyResult | Retry:
            compares, ops, result, before = self._plan_apply(document)
            if not ops:
                return result
            revision = self._commit_pairs(compares, ops, before)
            return msgspec.structs.replace(result, revision=revision) if revision else RETRY

        return retry_on_conflict(attempt, what=f"{doc.source}: the stored objects",
                                 attempts=_RETRIES)

    def _commit_pairs(self, compares: Sequence[Compare], ops: Sequence[Op],
                      before: Mapping[str, bytes | None] | None = None) -> int:
        """Write ``ops`` if every compare holds; the revision written, or 0 (nothing
        written). One transaction when it fits the backend's limit; above it, chunks
        (each op with its own key's compare) undone when a later chunk loses its race
        (see :func:`~skedlib.runtime.write_groups`), and the caller plans again.
        ``before`` holds the values the plan read (None: absent), for the undo."""
        by_key = {c.key: c for c in compares}
        groups = [Group((by_key[op.key],) if op.key in by_key else (), (op,)) for op in ops]
        written = {op.key for op in ops}
        groups += [Group((c,)) for c in compares if c.key not in written]
        result = write_groups(self.backend, groups, on_conflict="undo", before=before)
        return result.revision if result.succeeded else 0

    def _plan_apply(self, doc: ManifestDocument
                    ) -> tuple[list[Compare], list[Op], ApplyResult, dict[str, bytes | None]]:
        src, m = doc.source, doc.manifest
        limits = self.limits()
        tds = [check_task_definition(td, f"{src}: {object_label('task_definitions', i, td.name)}",
                                     limits=limits)
               for i, td in enumerate(m.task_definitions)]
        services = [check_service(s, f"{src}: {object_label('services', i, s.name)}", limits)
                    for i, s in enumerate(m.services)]
        clusters = [check_cluster(c, f"{src}: {object_label('clusters', i, c.name)}")
                    for i, c in enumerate(m.clusters)]
        _no_duplicates(src, "task_definitions", [f"{t.name} version {t.version}" for t in tds])
        _no_duplicates(src, "services", [s.name for s in services])
        _no_duplicates(src, "clusters", [c.name for c in clusters])

        stored: dict[str, KeyValue] = {kv.key: kv for kv in
                                       self.backend.list(self.keys.config).items}
        td_keys = {self.keys.task_definition(t.name, t.version) for t in tds} | {
            k for k in stored if k.startswith(self.keys.task_definitions)}
        service_names = {s.name for s in services} | {
            k[len(self.keys.services):] for k in stored if k.startswith(self.keys.services)}
        for i, s in enumerate(services):
            if self.keys.task_definition(s.task_name, s.task_version) not in td_keys:
                raise ValidationError(
                    f'{src}: services[{i}] "{s.name}": field task_version: task definition '
                    f'"{s.task_name}" version {s.task_version} does not exist (not in this '
                    "manifest nor in the store)")
        for i, c in enumerate(clusters):
            for j, name in enumerate(c.services):
                if name not in service_names:
                    raise ValidationError(
                        f'{src}: clusters[{i}] "{c.name}": field services[{j}]: service '
                        f'"{name}" does not exist (not in this manifest nor in the store)')

        compares: list[Compare] = []
        ops: list[Op] = []
        created: list[str] = []
        configured: list[str] = []
        unchanged: list[str] = []
        objects: list[tuple[str, str, msgspec.Struct]] = (
            [(self.keys.task_definition(t.name, t.version),
              f"task_definitions/{t.name}:{t.version}", t) for t in tds]
            + [(self.keys.service(s.name), f"services/{s.name}", s) for s in services]
            + [(self.keys.cluster(c.name), f"clusters/{c.name}", c) for c in clusters])
        for key, label, obj in objects:
            old = stored.get(key)
            if old is None:
                created.append(label)
            else:
                # an invalid stored record (sked doctor lists it) is replaced: applying
                # the object again is one way to repair it
                old_obj = decode_record(old, type(obj), self.keys.parse(key))
                if old_obj == obj:
                    unchanged.append(label)
                    continue
                if isinstance(obj, TaskDefinition) and old_obj is not None:
                    where = object_label("task_definitions", tds.index(obj), obj.name)
                    raise ValidationError(
                        f"{src}: {where}: field version: version {obj.version} of "
                        f'"{one_line(obj.name)}" already exists with different content; '
                        "versions are immutable, so give the changed definition a new version")
                configured.append(label)
            compares.append(Compare(key, old.revision if old else 0))
            ops.append(Put(key, encode(obj)))
        result = ApplyResult(tuple(created), tuple(configured), tuple(unchanged), doc.warnings)
        before = {c.key: stored[c.key].value if c.key in stored else None for c in compares}
        return compares, ops, result, before

    # -- delete ---------------------------------------------------------------------------
    def delete(self, kind: str, name: str) -> None:
        """Delete one object of desired state.

        ``kind`` is ``cluster``, ``service``, ``task_definition`` (``name`` or
        ``name:version``) or ``host``. A service is also removed from the clusters that
        list it; a task definition still used by a service is refused.
        """
        def attempt() -> Retry | None:
            compares, ops = self._plan_delete(kind, name)
            return None if self.backend.txn(compares, ops).succeeded else RETRY

        retry_on_conflict(attempt, what=f"delete {kind} {name}: the stored objects",
                          attempts=_RETRIES)

    def _plan_delete(self, kind: str, name: str) -> tuple[list[Compare], list[Op]]:
        stored = {kv.key: kv for kv in self.backend.list(self.keys.config).items}
        if kind == "task_definition":
            base, _, version = name.partition(":")
            validate_name(base, "task definition name")
            keys = [k for k in stored if k.startswith(self.keys.task_definition_versions(base))
                    and (not version or k.endswith("/" + version))]
            if not keys:
                raise NotFound(f"task definition {name!r} not found")
            used = {self.keys.task_definition(s.task_name, s.task_version): s.name
                    for s in decode_listing([kv for k, kv in stored.items()
                                             if k.startswith(self.keys.services)],
                                            Service, self.keys)}
            for k in keys:
                if k in used:
                    raise ConflictError(f"task definition {name!r} is used by service "
                                        f"{used[k]!r}; change or delete the service first")
            return ([Compare(k, stored[k].revision) for k in keys], [Delete(k) for k in keys])
        builders = {"cluster": self.keys.cluster, "service": self.keys.service,
                    "host": self.keys.host_config}
        if kind not in builders:
            raise ValidationError(f"cannot delete a {kind!r}: expected one of cluster, "
                                  "service, task_definition, host")
        key = builders[kind](name)
        if key not in stored:
            raise NotFound(f"{kind} {name!r} not found")
        compares = [Compare(key, stored[key].revision)]
        ops: list[Op] = [Delete(key)]
        if kind == "service":
            for k, kv in stored.items():
                if k.startswith(self.keys.clusters):
                    cluster = decode_record(kv, Cluster)  # an invalid one: skipped
                    if cluster is not None and name in cluster.services:
                        cluster.services = [s for s in cluster.services if s != name]
                        compares.append(Compare(k, kv.revision))
                        ops.append(Put(k, encode(cluster)))
        return compares, ops

    def put_host_config(self, config: HostConfig) -> None:
        """Write a host's operator-side settings (drain, attributes)."""
        validate_name(config.name, "host name")
        self.backend.put(self.keys.host_config(config.name), encode(config))

    # -- operations -----------------------------------------------------------------------
    def set_draining(self, host: str, draining: bool = True) -> HostConfig:
        """Set (or clear) ``draining`` in ``host``'s settings; returns them as stored.

        The settings are created when missing (clearing needs none), keeping any existing
        attributes. Schedulers then move the host's tasks elsewhere, respecting each
        service's ``min``. Raises :class:`NotFound` (nothing written) when neither a live
        record nor settings exist for ``host``, :class:`ConflictError` when the settings
        kept changing under the write.
        """
        key = self.keys.host_config(host)

        def attempt() -> HostConfig | Retry:
            kv = self.backend.get(key)
            if kv is None and self.backend.get(self.keys.agent(host)) is None:
                raise NotFound(f'host "{host}": unknown host: no agent has registered it '
                               f"and it has no settings ({key})")
            config = decode(kv.value, HostConfig, where=key) if kv else HostConfig(name=host)
            if config.draining == draining:
                return config
            config = msgspec.structs.replace(config, draining=draining)
            compare = Compare(key, kv.revision if kv else 0)
            if self.backend.txn([compare], [Put(key, encode(config))]).succeeded:
                return config
            return RETRY

        return retry_on_conflict(attempt, what=f'host "{host}": field draining: the '
                                 "host's settings", attempts=_RETRIES)

    def scale(self, service: str, desired: int) -> ScaleResult:
        """Set ``service``'s ``desired`` to ``desired``, within its ``min`` and ``max``.

        Written with a compare on the service's revision, so a concurrent change of the
        service is never overwritten: the bounds are checked again on the fresh value and
        the write retried a few times, then :class:`ConflictError`. Raises
        :class:`NotFound` for an unknown service and :class:`ValidationError` for a
        count outside ``0 ≤ min ≤ desired ≤ max`` (``max`` 0: no upper bound); nothing is
        written then.
        """
        key = self.keys.service(service)

        def attempt() -> ScaleResult | Retry:
            kv = self.backend.get(key)
            if kv is None:
                raise NotFound(f"service {service!r} not found")
            current = decode(kv.value, Service, where=key)
            _check_scale(current, desired)
            limit = self.limits().desired
            if desired > limit:
                raise ValidationError(f'service "{service}": field desired: {desired} is '
                                      f"above the limit {limit}")
            if current.desired == desired:
                return ScaleResult(current, current.desired)
            new = msgspec.structs.replace(current, desired=desired)
            res = self.backend.txn([Compare(key, kv.revision)], [Put(key, encode(new))])
            return ScaleResult(new, current.desired, res.revision) if res.succeeded else RETRY

        return retry_on_conflict(attempt, what=f'service "{service}": field desired: the '
                                 "service", attempts=_SCALE_RETRIES)

    # -- waiting --------------------------------------------------------------------------
    def convergence(self, services: Sequence[Service], settle: float = 5.0) -> Convergence:
        """A :class:`Convergence` for ``services`` (the services of a manifest): create it
        *before* applying, call :meth:`Convergence.applied` right after."""
        return Convergence(self, services, settle)

    def wait_converged(self, convergence: Convergence, timeout: float,
                       on_progress: Callable[[list[ServiceProgress]], None] | None = None,
                       poll: float = 0.5) -> list[ServiceProgress]:
        """Check ``convergence`` whenever a service status changes (and every ``poll``
        seconds) until every service converged, one failed, or ``timeout`` seconds
        passed; returns the last progress (a ``waiting`` entry means it timed out).
        ``on_progress`` is called with every check's result."""
        deadline = time.monotonic() + timeout

        def check() -> tuple[list[ServiceProgress], bool]:
            progress = convergence.check()
            if on_progress is not None:
                on_progress(progress)
            return progress, _settled(progress)

        self.await_changes(self.keys.service_statuses, deadline, check, poll)
        return convergence.last or []

    def await_changes(self, prefix: str, deadline: float,
                      check: Callable[[], tuple[object, bool]], poll: float = 0.5) -> None:
        """Call ``check`` now, then after every change under ``prefix`` and every ``poll``
        seconds, until it says done (its second value) or ``deadline``
        (``time.monotonic()``) passes. Changes are followed from the revision read before
        the first check, so none made while it runs is missed; a failing or compacted
        watch falls back to polling."""
        revision = self.backend.current_revision(prefix)
        if check()[1]:
            return
        while (remaining := deadline - time.monotonic()) > 0:
            seen = wait_for_change(self.backend, prefix, revision, min(poll, remaining))
            revision = seen if seen is not None else revision
            if check()[1]:
                return


def _check_scale(service: Service, desired: int) -> None:
    label = f'service "{service.name}": field desired'
    if desired < 0:
        raise ValidationError(f"{label}: must be ≥ 0, got {desired}")
    if desired < service.min:
        raise ValidationError(f"{label}: {desired} is below the service's min "
                              f"({service.min})")
    if service.max and desired > service.max:
        raise ValidationError(f"{label}: {desired} is above the service's max "
                              f"({service.max}); raise max in the manifest first")


def _settled(progress: Sequence[ServiceProgress]) -> bool:
    return (any(p.state == "failed" for p in progress)
            or all(p.state == "converged" for p in progress))


def _rollout_id(r: Rollout) -> tuple[int, int, float]:
    return (r.from_version, r.to_version, r.started_at)


class Convergence:
    """Judges whether the services of one apply converged, pair by pair.

    A ``(cluster, service)`` pair converged when its :class:`ServiceStatus` is ``ok`` for
    the applied ``task_version`` and was computed from a store revision at least that of
    the pair's last configuration change (the later of the service's and the cluster's
    key revisions, read by :meth:`applied`), and the rollout to that version, if one is
    recorded, ``succeeded``. It failed when that rollout ``failed``, or when the status
    is ``error`` for the applied version.

    Schedulers rewrite a status only when it changes, so a change that moves no task
    (``min``, ``update`` …) leaves an older status in place. Such a status counts once
    ``settle`` seconds passed since :meth:`applied` (time for a scheduler to rewrite it):
    an ``error`` then fails; an ``ok`` converges if the issued tasks confirm it (exactly
    ``desired`` tasks, all of the applied version, on live hosts and healthy).

    Rollouts recorded before the apply are ignored when the apply changed the service's
    ``task_version`` (a failed rollout to the same version, before a revert, is stale).
    """

    def __init__(self, client: Client, services: Sequence[Service], settle: float = 5.0
                 ) -> None:
        self.client = client
        self.services = list(services)
        self.settle = settle
        self.last: list[ServiceProgress] | None = None
        self._thresholds: dict[tuple[str, str], int] = {}
        self._applied_at = time.monotonic()
        names = {s.name for s in self.services}
        # listings, not gets: a bad name is left for apply to report with its file
        stored = {old.name: old for old in client.services()}
        self._changed = {s.name for s in self.services
                         if (old := stored.get(s.name)) is None
                         or old.task_version != s.task_version}
        self._baseline: dict[tuple[str, str], set[tuple[int, int, float]]] = {}
        for history in decode_listing(client.backend.list(client.keys.rollouts).items,
                                      RolloutHistory, client.keys):
            if history.service in names:
                self._baseline[(history.cluster, history.service)] = {
                    _rollout_id(r) for r in history.rollouts}

    def applied(self) -> None:
        """Call right after the apply: reads the revisions a status must have reached."""
        self._applied_at = time.monotonic()
        keys = self.client.keys
        config = {kv.key: kv for kv in self.client.backend.list(keys.config).items}
        for s in self.services:
            service_kv = config.get(keys.service(s.name))
            for kv in config.values():
                if not kv.key.startswith(keys.clusters):
                    continue
                cluster = decode_record(kv, Cluster)  # an invalid one: skipped
                if cluster is not None and s.name in cluster.services:
                    self._thresholds[(cluster.name, s.name)] = max(
                        kv.revision, service_kv.revision if service_kv else 0)

    def check(self) -> list[ServiceProgress]:
        """The progress of every pair, by service then cluster."""
        out: list[ServiceProgress] = []
        clusters = self.client.clusters()
        for s in self.services:
            names = sorted(c.name for c in clusters if s.name in c.services)
            if not names:
                out.append(ServiceProgress(cluster="", service=s.name,
                                           task_version=s.task_version, state="converged",
                                           message="not in any cluster: nothing to run"))
            out.extend(self._pair(c, s) for c in names)
        self.last = out
        return out

    def _rollout(self, cluster: str, service: Service) -> Rollout | None:
        history = self.client.rollout_history(cluster, service.name)
        if history is None:
            return None
        stale = (self._baseline.get((cluster, service.name), set())
                 if service.name in self._changed else set())
        for r in reversed(history.rollouts):
            if r.to_version == service.task_version and _rollout_id(r) not in stale:
                return r
        return None

    def _pair(self, cluster: str, s: Service) -> ServiceProgress:
        v = s.task_version
        st = self.client.service_status(cluster, s.name)
        ro = self._rollout(cluster, s)
        base = ServiceProgress(cluster=cluster, service=s.name, task_version=v,
                               state="waiting", status=st.state if st else "",
                               rollout=ro.state if ro else "")
        if ro is not None and ro.state == "failed":
            msg = f"rollout v{ro.from_version} → v{ro.to_version} failed"
            msg += f": {ro.message}" if ro.message else ""
            if ro.reverted_to:
                msg += f"; reverted to v{ro.reverted_to}"
            return msgspec.structs.replace(base, state="failed", message=msg,
                                           desired=ro.desired, healthy=ro.updated)
        threshold = self._thresholds.get((cluster, s.name), 0)
        if st is None:
            return msgspec.structs.replace(
                base, desired=ro.desired if ro else s.desired, healthy=ro.updated if ro else 0,
                message="no status yet: is a scheduler running?")
        current = st.revision >= threshold
        if st.task_version != v:
            return msgspec.structs.replace(
                base, desired=ro.desired if ro else s.desired, healthy=ro.updated if ro else 0,
                message=f"the scheduler has not taken up v{v} yet (status is for "
                        f"v{st.task_version}{': ' + st.message if st.message else ''})")
        counts = msgspec.structs.replace(base, desired=st.desired, healthy=st.healthy)
        if ro is not None and ro.state == "running":  # count the new version's tasks only
            counts = msgspec.structs.replace(base, desired=ro.desired, healthy=ro.updated)
        settled = time.monotonic() - self._applied_at >= self.settle
        if st.state == "error" and (current or (settled and st.scheduler == s.scheduler)):
            return msgspec.structs.replace(counts, state="failed",
                                           message=f"error: {st.message or 'scheduler error'}")
        if st.state != "ok":
            return msgspec.structs.replace(
                counts, message=f"{st.state}: {st.message}" if st.message else st.state)
        if ro is not None and ro.state != "succeeded":
            return msgspec.structs.replace(
                counts, message=f"rollout v{ro.from_version} → v{ro.to_version} {ro.state} "
                                f"({ro.updated}/{ro.desired} updated, {ro.old} old)")
        if current:
            return msgspec.structs.replace(counts, state="converged", message="ok")
        if settled and st.desired == s.desired and self._tasks_confirm(cluster, s):
            return msgspec.structs.replace(
                counts, state="converged",
                message="ok (status unchanged by the apply; the tasks confirm it)")
        return msgspec.structs.replace(
            counts, message=f"waiting for the scheduler to report on revision {threshold} "
                            f"(status is from revision {st.revision})")

    def _tasks_confirm(self, cluster: str, s: Service) -> bool:
        keys, backend = self.client.keys, self.client.backend
        tasks = [t for t in self.client._list(f"{keys.tasks}{cluster}-{s.name}-", Task)
                 if t.service == s.name and t.cluster.name == cluster]
        if len(tasks) != s.desired:
            return False
        for t in tasks:
            if t.rejected or t.task_definition.version != s.task_version or not t.host:
                return False
            if backend.get(keys.agent(t.host)) is None:
                return False
            h = self.client._get(keys.task_health(t.id), TaskHealth)
            if not is_task_healthy(t, h, {t.host}):  # its host is live: checked above
                return False
        return True


def _no_duplicates(src: str, section: str, names: list[str]) -> None:
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n in seen:
            raise ValidationError(f"{src}: {section}[{i}]: {n} appears twice in the manifest")
        seen.add(n)
