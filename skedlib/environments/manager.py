"""Environments and deployments over a backend: every write one compare-and-swap
transaction, every read of a deployment's status derived from the store.

An environment is materialised as desired state the scheduler daemon already runs: a
:class:`~skedlib.models.Service` named after the environment, with scheduler ``daemon``,
listed in the environment's cluster. Only a deployment writes that service, in one
transaction that also checks the environment's revision and deployment token, stores the
deployment record and gives the environment a new token — so a retried request can never
deploy twice, and a failed transaction changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import hmac
import secrets
import time
from collections.abc import Callable, Sequence

import msgspec

from skedlib.codecs import decode, encode
from skedlib.durations import SECOND
from skedlib.environments.keys import EnvironmentKeyspace
from skedlib.environments.models import (
    HISTORY_LIMIT,
    Deleted,
    Deployment,
    DeploymentPage,
    Environment,
    EnvironmentCreate,
    EnvironmentPage,
    EnvironmentUpdate,
    EnvironmentView,
)
from skedlib.environments.tracker import (
    SETTLE,
    Observed,
    environment_health,
    evaluate,
    observe,
    observe_all,
)
from skedlib.errors import ConflictError, NotFound, ValidationError
from skedlib.keys import validate_name
from skedlib.models import Cluster, Service, UpdateStrategy
from skedlib.runtime import RETRY, Retry, Store, retry_on_conflict
from skedlib.store.base import Backend, Compare, Delete, KeyValue, Op, Put
from skedlib.validation import check_service

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_DEADLINE", "MAX_PAGE_SIZE", "Environments"]

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_DEADLINE = 7 * 86400.0
"""The longest ``deployment_deadline`` accepted (a week), in seconds."""


def _label(name: str) -> str:
    return f'environment "{name}"'


def _new_token() -> str:
    return secrets.token_hex(16)


def _page_token(last: str) -> str:
    return base64.urlsafe_b64encode(last.encode()).decode().rstrip("=")


def _page_after(token: str) -> str:
    """The key segment a ``next_token`` continues after; ValidationError if it is not one
    this API handed out."""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        return validate_name(text)
    except (binascii.Error, ValueError, ValidationError):
        raise ValidationError("query parameter next_token: not a token from an earlier "
                              "page") from None


def _check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValidationError(f"query parameter limit: must be 1..{MAX_PAGE_SIZE}, got {limit}")
    return limit


def _daemon_service(spec: Environment) -> Service:
    """The ``daemon`` service an environment runs as, for ``spec``'s task definition."""
    return Service(name=spec.name, task_name=spec.task_name, task_version=spec.task_version,
                   scheduler="daemon", desired=0, min=0, constraints=list(spec.constraints),
                   update=UpdateStrategy(max_parallel=spec.max_parallel, deadline=max(
                       1, round(spec.deployment_deadline * SECOND))))


def _rollback_spec(label: str, env: Environment, history: list[Deployment]
                   ) -> tuple[Environment, str]:
    """``env`` with the task definition, constraints, max_parallel and deadline of its
    latest earlier completed deployment (``history`` oldest first), and that one's id."""
    prior = [d for d in history if d.status == "completed" and d.id != env.current_deployment]
    if not prior:
        raise ConflictError(f"{label}: field rollback: there is no earlier completed "
                            "deployment to roll back to")
    target = prior[-1]
    return msgspec.structs.replace(
        env, task_name=target.task_name, task_version=target.task_version,
        constraints=list(target.constraints), max_parallel=target.max_parallel,
        deployment_deadline=target.deadline), target.id


class Environments:
    """Create, read, update, delete and deploy environments stored in ``store``.

    Errors are :class:`~skedlib.errors.SkedError` subclasses with one-line messages
    naming the environment and the field: :class:`ValidationError` (bad input, nothing
    written), :class:`NotFound`, :class:`ConflictError` (a duplicate, a stale deployment
    token, or state that forbids the request), or a backend error.
    """

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time,
                 settle: float = SETTLE) -> None:
        self.store = store
        self.keys = store.keys
        self.env_keys = EnvironmentKeyspace(store.keys)
        self.clock = clock
        self.settle = settle

    @property
    def backend(self) -> Backend:
        """The store's backend."""
        return self.store.backend

    # -- reading ------------------------------------------------------------------------
    def _env(self, name: str) -> tuple[KeyValue, Environment]:
        key = self.env_keys.environment(name)
        kv = self.backend.get(key)
        if kv is None:
            raise NotFound(f"{_label(name)} not found")
        return kv, decode(kv.value, Environment, where=kv.key)

    def _current(self, env: Environment) -> KeyValue | None:
        """The record of the environment's current deployment (None: there is none)."""
        if not env.current_deployment:
            return None
        return self.backend.get(self.env_keys.deployment(env.name, env.current_deployment))

    def _observe(self, deployed: Sequence[tuple[Environment, KeyValue | None]]
                 ) -> dict[str, tuple[KeyValue | None, Observed]]:
        """Each environment's current deployment record with what its status is derived
        from, all observed in one read (see
        :func:`~skedlib.environments.tracker.observe_all`)."""
        seen = observe_all(self.store, [(env.cluster, env.name,
                                         dep_kv.create_revision if dep_kv else 0)
                                        for env, dep_kv in deployed])
        return {env.name: (dep_kv, obs)
                for (env, dep_kv), obs in zip(deployed, seen, strict=True)}

    def _track(self, env: Environment, dep_kv: KeyValue, dep: Deployment,
               seen: Observed | None = None) -> Deployment:
        """The deployment's status now; a change to completed or failed is stored (with a
        compare on the record, so concurrent trackers agree on one outcome)."""
        if dep.status in ("completed", "failed") or dep.id != env.current_deployment:
            return dep
        seen = seen or observe(self.store, env.cluster, env.name, dep_kv.create_revision)
        now = evaluate(dep, seen, self.clock(), self.settle)
        if now.status == dep.status:
            return now
        res = self.backend.txn([Compare(dep_kv.key, dep_kv.revision)],
                               [Put(dep_kv.key, encode(now))])
        if res.succeeded:
            return now
        kv = self.backend.get(dep_kv.key)  # another tracker (or a deployment) wrote it
        return decode(kv.value, Deployment, where=kv.key) if kv else now

    def _view(self, kv: KeyValue, env: Environment,
              observed: dict[str, tuple[KeyValue | None, Observed]] | None = None
              ) -> EnvironmentView:
        view = EnvironmentView(**msgspec.structs.asdict(env), revision=kv.revision)
        if not env.current_deployment:
            return view
        if observed is None:
            observed = self._observe([(env, self._current(env))])
        dep_kv, seen = observed[env.name]
        if dep_kv is not None:
            dep = decode(dep_kv.value, Deployment, where=dep_kv.key)
            view.deployment_status = self._track(env, dep_kv, dep, seen).status
        view.health = environment_health(seen)
        return view

    def get(self, name: str) -> EnvironmentView:
        """One environment, with its health and current deployment's status."""
        kv, env = self._env(name)
        return self._view(kv, env)

    def list(self, cluster: str | None = None, limit: int = DEFAULT_PAGE_SIZE,
             next_token: str = "") -> EnvironmentPage:
        """A page of environments by name (of one cluster, when given)."""
        _check_limit(limit)
        if cluster is not None:
            try:
                validate_name(cluster, "cluster name", allow_dash=False)
            except ValidationError as exc:
                raise ValidationError(f"query parameter cluster: {exc}") from None
        after = _page_after(next_token) if next_token else None
        found: list[tuple[KeyValue, Environment]] = []
        for kv in self.backend.list(self.env_keys.environments).items:
            env = decode(kv.value, Environment, where=kv.key)
            if (cluster is None or env.cluster == cluster) and \
                    (after is None or env.name > after):
                found.append((kv, env))
        found.sort(key=lambda p: p[1].name)
        page = found[:limit]
        observed = self._observe([(env, self._current(env)) for _, env in page
                                  if env.current_deployment])
        return EnvironmentPage(items=[self._view(kv, env, observed) for kv, env in page],
                               next_token=_page_token(page[-1][1].name)
                               if len(found) > limit else "")

    def deployment(self, name: str, deployment_id: str) -> Deployment:
        """One deployment of an environment, its status brought up to date."""
        _, env = self._env(name)
        kv = self.backend.get(self.env_keys.deployment(name, deployment_id))
        if kv is None:
            raise NotFound(f'deployment "{deployment_id}" of {_label(name)} not found')
        return self._track(env, kv, decode(kv.value, Deployment, where=kv.key))

    def deployments(self, name: str, limit: int = DEFAULT_PAGE_SIZE, next_token: str = ""
                    ) -> DeploymentPage:
        """A page of an environment's deployments, newest first."""
        _check_limit(limit)
        _, env = self._env(name)
        before = _page_after(next_token) if next_token else None
        items = [kv for kv in self.backend.list(self.env_keys.environment_deployments(name)).items
                 if before is None or kv.key.rsplit("/", 1)[1] < before]
        items.sort(key=lambda kv: kv.key, reverse=True)
        out = [self._track(env, kv, decode(kv.value, Deployment, where=kv.key))
               for kv in items[:limit]]
        return DeploymentPage(items=out, next_token=_page_token(out[-1].id)
                              if len(items) > limit else "")

    def track_all(self) -> int:
        """Bring every environment's in-progress deployment up to date (storing those
        that completed or failed), all observed in one read; returns how many were in
        progress."""
        in_progress: builtins.list[tuple[Environment, KeyValue, Deployment]] = []
        for kv in self.backend.list(self.env_keys.environments).items:
            env = decode(kv.value, Environment, where=kv.key)
            dep_kv = self._current(env)
            if dep_kv is None:
                continue
            dep = decode(dep_kv.value, Deployment, where=dep_kv.key)
            if dep.status in ("pending", "in_progress"):
                in_progress.append((env, dep_kv, dep))
        observed = self._observe([(env, dep_kv) for env, dep_kv, _ in in_progress])
        for env, dep_kv, dep in in_progress:
            self._track(env, dep_kv, dep, observed[env.name][1])
        return len(in_progress)

    # -- checks -------------------------------------------------------------------------
    def _check_spec(self, label: str, env: Environment) -> KeyValue:
        """Validate what would become the service; returns the task definition's record."""
        if not 0 < env.deployment_deadline <= MAX_DEADLINE:
            raise ValidationError(f"{label}: field deployment_deadline: must be > 0 and "
                                  f"≤ {MAX_DEADLINE:g} seconds, got {env.deployment_deadline}")
        check_service(_daemon_service(env), label)
        td = self.backend.get(self.keys.task_definition(env.task_name, env.task_version))
        if td is None:
            raise ValidationError(f'{label}: field task_version: task definition '
                                  f'"{env.task_name}" version {env.task_version} does not '
                                  "exist")
        return td

    # -- writing ------------------------------------------------------------------------
    def create(self, req: EnvironmentCreate) -> EnvironmentView:
        """Store a new environment (nothing runs until its first deployment)."""
        label = _label(req.name)
        for field, value, what, dash in (("name", req.name, "environment name", True),
                                         ("cluster", req.cluster, "cluster name", False),
                                         ("task_name", req.task_name, "task definition name",
                                          True)):
            try:
                validate_name(value, what, allow_dash=dash)
            except ValidationError as exc:
                raise ValidationError(f"{label}: field {field}: {exc}") from None

        def attempt() -> EnvironmentView | Retry:
            env_key = self.env_keys.environment(req.name)
            if self.backend.get(env_key) is not None:
                raise ConflictError(f"{label} already exists")
            now = self.clock()
            env = Environment(name=req.name, cluster=req.cluster, task_name=req.task_name,
                              task_version=req.task_version,
                              constraints=list(req.constraints),
                              max_parallel=req.max_parallel,
                              deployment_deadline=req.deployment_deadline,
                              deployment_token=_new_token(), created_at=now, updated_at=now)
            cluster_key = self.keys.cluster(req.cluster)
            cluster_kv = self.backend.get(cluster_key)
            if cluster_kv is None:
                raise ValidationError(f'{label}: field cluster: cluster "{req.cluster}" does '
                                      "not exist")
            td = self._check_spec(label, env)
            service_key = self.keys.service(req.name)
            if self.backend.get(service_key) is not None:
                raise ConflictError(f'{label}: field name: a service named "{req.name}" '
                                    "already exists; an environment runs as a service of "
                                    "its own name, so pick another name or delete the "
                                    "service")
            res = self.backend.txn(
                [Compare(env_key, 0), Compare(service_key, 0),
                 Compare(cluster_key, cluster_kv.revision), Compare(td.key, td.revision)],
                [Put(env_key, encode(env))])
            if res.succeeded:
                return EnvironmentView(**msgspec.structs.asdict(env), revision=res.revision)
            return RETRY

        return retry_on_conflict(attempt, what=f"{label}: the store")

    def update(self, name: str, req: EnvironmentUpdate) -> EnvironmentView:
        """Change an environment's task definition, constraints, max_parallel or deadline;
        takes effect with the next deployment."""
        label = _label(name)

        def attempt() -> EnvironmentView | Retry:
            kv, env = self._env(name)
            changes = {f: v for f in req.__struct_fields__
                       if (v := getattr(req, f)) is not None}
            new = msgspec.structs.replace(env, **changes)
            if new == env:
                return self._view(kv, env)
            td = self._check_spec(label, new)
            new.updated_at = self.clock()
            res = self.backend.txn([Compare(kv.key, kv.revision), Compare(td.key, td.revision)],
                                   [Put(kv.key, encode(new))])
            if res.succeeded:
                return self._view(KeyValue(kv.key, b"", res.revision, kv.create_revision), new)
            return RETRY

        return retry_on_conflict(attempt, what=f"{label}: the environment")

    def delete(self, name: str, keep_tasks: bool = False) -> Deleted:
        """Delete an environment and its deployment records; unless ``keep_tasks``, also
        its service (removed from its cluster), so the scheduler stops its tasks. With
        ``keep_tasks`` the service stays: the tasks keep running as a plain daemon
        service, no longer managed by an environment."""
        label = _label(name)

        def attempt() -> Deleted | Retry:
            kv, env = self._env(name)
            compares = [Compare(kv.key, kv.revision)]
            ops: builtins.list[Op] = [Delete(kv.key)]
            ops += [Delete(d.key) for d in
                    self.backend.list(self.env_keys.environment_deployments(name)).items]
            deployed = bool(env.current_deployment)
            service_key = self.keys.service(name)
            service_kv = self.backend.get(service_key) if deployed else None
            if not keep_tasks and service_kv is not None:
                compares.append(Compare(service_key, service_kv.revision))
                ops.append(Delete(service_key))
                cluster_kv = self.backend.get(self.keys.cluster(env.cluster))
                if cluster_kv is not None:
                    cluster = decode(cluster_kv.value, Cluster, where=cluster_kv.key)
                    if name in cluster.services:
                        cluster.services = [s for s in cluster.services if s != name]
                        compares.append(Compare(cluster_kv.key, cluster_kv.revision))
                        ops.append(Put(cluster_kv.key, encode(cluster)))
            if self.backend.txn(compares, ops).succeeded:
                if service_kv is None:
                    message = f"{label} deleted (nothing was running)"
                elif keep_tasks:
                    message = (f'{label} deleted; its tasks keep running under service '
                               f'"{name}" in cluster "{env.cluster}", now a plain daemon '
                               f"service (sked delete service {name} stops them)")
                else:
                    message = (f'{label} deleted; service "{name}" removed from cluster '
                               f'"{env.cluster}": the scheduler stops its tasks')
                return Deleted(name=name, kept_tasks=keep_tasks and service_kv is not None,
                               message=message)
            return RETRY

        return retry_on_conflict(attempt, what=f"{label}: the store")

    def deploy(self, name: str, token: str, rollback: bool = False) -> Deployment:
        """Deploy the environment's task definition (or, with ``rollback``, the previous
        completed deployment's) on every eligible host of its cluster.

        One transaction checks that the environment is unchanged and ``token`` is its
        current ``deployment_token``, writes the service, the deployment record (status
        ``in_progress``) and the environment with a new token. A reused or stale token
        raises :class:`ConflictError` and changes nothing. An in-progress deployment it
        replaces is marked failed (superseded).
        """
        label = _label(name)

        def attempt() -> Deployment | Retry:
            kv, env = self._env(name)
            if not hmac.compare_digest(token.encode(), env.deployment_token.encode()):
                raise ConflictError(
                    f"{label}: field token: not the environment's current deployment token "
                    f"(already used, or never issued; the current deployment is "
                    f'"{env.current_deployment or "none"}"): nothing was deployed; read the '
                    "environment for its current deployment_token")
            listed = self.backend.list(self.env_keys.environment_deployments(name)).items
            history = sorted(((d, decode(d.value, Deployment, where=d.key)) for d in listed),
                             key=lambda p: p[1].id)
            spec, rollback_to = _rollback_spec(label, env, [d for _, d in history]) \
                if rollback else (env, "")
            cluster_kv = self.backend.get(self.keys.cluster(env.cluster))
            if cluster_kv is None:
                raise ConflictError(f'{label}: field cluster: cluster "{env.cluster}" no '
                                    "longer exists; nothing was deployed")
            td = self.backend.get(self.keys.task_definition(spec.task_name, spec.task_version))
            if td is None:
                raise ConflictError(f'{label}: field task_version: task definition '
                                    f'"{spec.task_name}" version {spec.task_version} does '
                                    "not exist (deleted since?); nothing was deployed")
            service_key = self.keys.service(name)
            service_kv = self.backend.get(service_key)
            if service_kv is not None and not env.current_deployment:
                raise ConflictError(f'{label}: a service named "{name}" was created by '
                                    "someone else since the environment was; delete it or "
                                    "the environment")
            previous = decode(service_kv.value, Service, where=service_kv.key) \
                if service_kv is not None else None
            service = check_service(_daemon_service(spec), label)
            now = self.clock()
            dep = Deployment(
                id=f"{env.deployment_count + 1:08d}", environment=name, cluster=env.cluster,
                task_name=spec.task_name, task_version=spec.task_version,
                constraints=list(spec.constraints), max_parallel=spec.max_parallel,
                status="in_progress", rollback_to=rollback_to,
                previous_version=previous.task_version if previous else None,
                message="waiting for the scheduler to take the deployment up",
                started_at=now, deadline=spec.deployment_deadline)
            dep_key = self.env_keys.deployment(name, dep.id)
            new_env = msgspec.structs.replace(
                spec, deployment_token=_new_token(), current_deployment=dep.id,
                deployment_count=env.deployment_count + 1, updated_at=now)
            compares = [Compare(kv.key, kv.revision), Compare(td.key, td.revision),
                        Compare(cluster_kv.key, cluster_kv.revision),
                        Compare(service_key, service_kv.revision if service_kv else 0),
                        Compare(dep_key, 0)]
            ops: builtins.list[Op] = [Put(service_key, encode(service)),
                                      Put(dep_key, encode(dep)),
                                      Put(kv.key, encode(new_env))]
            cluster = decode(cluster_kv.value, Cluster, where=cluster_kv.key)
            if name not in cluster.services:
                cluster.services = [*cluster.services, name]
                ops.append(Put(cluster_kv.key, encode(cluster)))
            for old_kv, old in history:
                if old.id == env.current_deployment and old.status in ("pending",
                                                                       "in_progress"):
                    done = msgspec.structs.replace(
                        old, status="failed", ended_at=now,
                        message=f"superseded by deployment {dep.id} before it completed")
                    compares.append(Compare(old_kv.key, old_kv.revision))
                    ops.append(Put(old_kv.key, encode(done)))
            for old_kv, _ in history[:max(0, len(history) - (HISTORY_LIMIT - 1))]:
                ops.append(Delete(old_kv.key))
            if self.backend.txn(compares, ops).succeeded:
                return dep
            return RETRY

        return retry_on_conflict(attempt, what=f"{label}: the store")
