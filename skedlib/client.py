"""Typed access to skedlib's objects in a backend, and ``apply``.

:class:`Client` pairs a :class:`~skedlib.store.base.Backend` with a
:class:`~skedlib.keys.Keyspace` and reads and writes the model's objects, decoding
every stored value with the codecs (a bad stored value is a ValidationError naming its
key). :meth:`Client.apply` is all-or-nothing: it validates the whole manifest against
itself and the store before writing, then writes everything in one transaction whose
compares make a concurrent writer's change visible as a retry, never a lost update.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import msgspec

from skedlib.codecs import ManifestDocument, decode, encode
from skedlib.errors import ConflictError, NotFound, ValidationError
from skedlib.keys import Keyspace, validate_name
from skedlib.models import (
    Cluster,
    Host,
    HostConfig,
    Manifest,
    Service,
    Task,
    TaskDefinition,
    TaskHealth,
)
from skedlib.plugins import open_backend
from skedlib.store.base import Backend, Compare, Delete, KeyValue, Op, Put
from skedlib.validation import check_cluster, check_service, check_task_definition

__all__ = ["ApplyResult", "Client", "default_backend_url"]

T = TypeVar("T")

_RETRIES = 8


def default_backend_url() -> str:
    """``$SKED_BACKEND``, else the embedded store in ``$XDG_DATA_HOME/skedlib/sked.db``
    (``~/.local/share/skedlib/sked.db``)."""
    url = os.environ.get("SKED_BACKEND")
    if url:
        return url
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite://{Path(data) / 'skedlib' / 'sked.db'}"


class ApplyResult(msgspec.Struct, frozen=True):
    """What ``apply`` did, object by object (``"services/web"``)."""

    created: tuple[str, ...] = ()
    configured: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    revision: int = 0


class Client:
    """Typed reads and writes of clusters, services, task definitions, hosts and tasks."""

    def __init__(self, backend: Backend, keyspace: Keyspace | None = None) -> None:
        self.backend = backend
        self.keys = keyspace or Keyspace()

    @classmethod
    def open(cls, url: str | None = None, prefix: str | None = None) -> Client:
        """Open the backend at ``url`` (default: :func:`default_backend_url`)."""
        keyspace = Keyspace(prefix) if prefix is not None else None
        return cls(open_backend(url or default_backend_url()), keyspace)

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
        return [decode(kv.value, type_, where=kv.key) for kv in self.backend.list(prefix).items]

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

    # -- apply ----------------------------------------------------------------------------
    def apply(self, doc: ManifestDocument | Manifest) -> ApplyResult:
        """Validate and write a manifest, all or nothing. Retries lost races; raises
        :class:`ValidationError` (nothing written) or :class:`ConflictError`."""
        if isinstance(doc, Manifest):
            doc = ManifestDocument(doc, "<manifest>")
        for _ in range(_RETRIES):
            compares, ops, result = self._plan_apply(doc)
            if not ops:
                return result
            revision = self._commit_pairs(compares, ops)
            if revision:
                return msgspec.structs.replace(result, revision=revision)
        raise ConflictError(f"{doc.source}: the store kept changing under apply; try again")

    def _commit_pairs(self, compares: Sequence[Compare], ops: Sequence[Op]) -> int:
        """One transaction if it fits, else chunks each carrying its own keys' compares."""
        limit = self.backend.max_txn_ops
        if limit is None or len(compares) + len(ops) <= limit:
            res = self.backend.txn(compares, ops)
            return res.revision if res.succeeded else 0
        by_key = {c.key: c for c in compares}
        revision = 0
        step = max(1, limit // 2)
        for i in range(0, len(ops), step):
            chunk = list(ops[i:i + step])
            res = self.backend.txn([by_key[op.key] for op in chunk if op.key in by_key], chunk)
            if not res.succeeded:
                return 0
            revision = res.revision
        return revision

    def _plan_apply(self, doc: ManifestDocument) -> tuple[list[Compare], list[Op], ApplyResult]:
        src, m = doc.source, doc.manifest
        tds = [check_task_definition(td, f'{src}: task_definitions[{i}] "{td.name}"')
               for i, td in enumerate(m.task_definitions)]
        services = [check_service(s, f'{src}: services[{i}] "{s.name}"')
                    for i, s in enumerate(m.services)]
        clusters = [check_cluster(c, f'{src}: clusters[{i}] "{c.name}"')
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
                old_obj = decode(old.value, type(obj), where=key)
                if old_obj == obj:
                    unchanged.append(label)
                    continue
                if isinstance(obj, TaskDefinition):
                    raise ValidationError(
                        f'{src}: task definition "{obj.name}" version {obj.version} already '
                        "exists with different content; versions are immutable, so give the "
                        "changed definition a new version")
                configured.append(label)
            compares.append(Compare(key, old.revision if old else 0))
            ops.append(Put(key, encode(obj)))
        result = ApplyResult(tuple(created), tuple(configured), tuple(unchanged), doc.warnings)
        return compares, ops, result

    # -- delete ---------------------------------------------------------------------------
    def delete(self, kind: str, name: str) -> None:
        """Delete one object of desired state.

        ``kind`` is ``cluster``, ``service``, ``task_definition`` (``name`` or
        ``name:version``) or ``host``. A service is also removed from the clusters that
        list it; a task definition still used by a service is refused.
        """
        for _ in range(_RETRIES):
            compares, ops = self._plan_delete(kind, name)
            if self.backend.txn(compares, ops).succeeded:
                return
        raise ConflictError(f"delete {kind} {name}: the store kept changing; try again")

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
                    for s in (decode(kv.value, Service, where=k) for k, kv in stored.items()
                              if k.startswith(self.keys.services))}
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
                    cluster = decode(kv.value, Cluster, where=k)
                    if name in cluster.services:
                        cluster.services = [s for s in cluster.services if s != name]
                        compares.append(Compare(k, kv.revision))
                        ops.append(Put(k, encode(cluster)))
        return compares, ops

    def put_host_config(self, config: HostConfig) -> None:
        """Write a host's operator-side settings (drain, attributes)."""
        validate_name(config.name, "host name")
        self.backend.put(self.keys.host_config(config.name), encode(config))


def _no_duplicates(src: str, section: str, names: list[str]) -> None:
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n in seen:
            raise ValidationError(f"{src}: {section}[{i}]: {n} appears twice in the manifest")
        seen.add(n)
