"""Validation of desired state, and the safe defaults Sked says validation applies.

Each ``check_*`` function takes an object and a label for messages
(``services[2] "web"``; unprintable characters in it are escaped) and returns the object
with defaults filled in, or raises :class:`~skedlib.errors.ValidationError` naming the
object and the field. Defaults:

- task definition: ``grace_period`` 60s, ``max_attempts`` 10;
- check: ``interval`` 10s, ``timeout`` 5s (never longer than the interval);
- service: ``update.deadline`` 10m (``max`` 0 stays 0: it means "whatever ``desired`` is",
  so scaling needs no new ``max``).

A container's ``executor`` blob is checked with the config Struct its executor declares
(the ``skedlib_executor_configs`` hook, through the plugin registry); the blob of a type
no installed plugin declares passes unchecked.
"""

from __future__ import annotations

import msgspec

from skedlib.codecs import convert_blob_data
from skedlib.constraints import parse_constraint
from skedlib.durations import MINUTE, SECOND, parse_duration
from skedlib.errors import ValidationError, one_line
from skedlib.keys import validate_name
from skedlib.models import Check, Cluster, Container, Service, TaskDefinition
from skedlib.plugins import Registry, get_registry

__all__ = [
    "DEFAULT_CHECK_INTERVAL",
    "DEFAULT_CHECK_TIMEOUT",
    "DEFAULT_GRACE_PERIOD",
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_ATTEMPTS",
    "Limits",
    "check_cluster",
    "check_service",
    "check_task_definition",
]

DEFAULT_GRACE_PERIOD = 60 * SECOND
DEFAULT_MAX_ATTEMPTS = 10
DEFAULT_CHECK_INTERVAL = "10s"
DEFAULT_CHECK_TIMEOUT = "5s"
DEFAULT_ROLLOUT_DEADLINE = 10 * MINUTE


class Limits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Upper bounds of desired state, enforced at apply, scale and in the API.

    Store-wide: a store may hold its own under ``<prefix>config/limits`` (JSON of this
    Struct; unset fields keep their defaults), read by every writer, so every client of
    the store enforces the same bounds (a per-client option would let one client write
    what the others refuse). Memory and disk are MiB, CPU is 1/1024-core units.
    """

    desired: int = 100_000
    """Most tasks of one service (``desired`` and ``max``)."""
    version: int = 1_000_000_000
    """Highest task definition version (and a service's ``task_version``)."""
    memory: int = 16 * 1024 * 1024
    """Most memory of one task or container (MiB; 16 TiB)."""
    cpu_units: int = 1024 * 1024
    """Most CPU of one task or container (1024 cores)."""
    disk: int = 1024 * 1024 * 1024
    """Most disk of one container (MiB; 1 PiB)."""


DEFAULT_LIMITS = Limits()


def _at_most(value: int, limit: int, label: str, field: str) -> None:
    if value > limit:
        raise ValidationError(f"{label}: field {field}: {value} is above the limit "
                              f"{limit}")


def _name(value: str, label: str, field: str, what: str, *, allow_dash: bool = True) -> None:
    try:
        validate_name(value, what, allow_dash=allow_dash)
    except ValidationError as exc:
        raise ValidationError(f"{label}: field {field}: {exc}") from None


def check_cluster(cluster: Cluster, label: str) -> Cluster:
    """Names of the cluster, its datacenter, its services and hosts are valid."""
    label = one_line(label)
    _name(cluster.name, label, "name", "cluster name", allow_dash=False)
    if cluster.datacenter:
        _name(cluster.datacenter, label, "datacenter", "datacenter name")
    for i, svc in enumerate(cluster.services):
        _name(svc, label, f"services[{i}]", "service name")
    if len(set(cluster.services)) != len(cluster.services):
        raise ValidationError(f"{label}: field services: lists a service twice")
    for i, host in enumerate(cluster.hosts or []):
        _name(host, label, f"hosts[{i}]", "host name")
    return cluster


def check_service(service: Service, label: str, limits: Limits = DEFAULT_LIMITS) -> Service:
    """Names (and label keys and values) valid; 0 ≤ min ≤ desired ≤ max ≤
    ``limits.desired``; update strategy sane. Fills defaults."""
    label = one_line(label)
    _at_most(service.desired, limits.desired, label, "desired")
    _at_most(service.max, limits.desired, label, "max")
    _at_most(service.task_version, limits.version, label, "task_version")
    _name(service.name, label, "name", "service name")
    _name(service.task_name, label, "task_name", "task definition name")
    if service.scheduler:  # empty: the default scheduler (models.scheduler_name)
        _name(service.scheduler, label, "scheduler", "scheduler name")
    if service.task_version < 0:
        raise ValidationError(f"{label}: field task_version: must be ≥ 0")
    maximum = service.max or service.desired
    if not 0 <= service.min <= service.desired <= maximum:
        raise ValidationError(
            f"{label}: fields min/desired/max: need 0 ≤ min ≤ desired ≤ max, got "
            f"min={service.min} desired={service.desired} max={maximum}")
    if service.max_attempts < 0:
        raise ValidationError(f"{label}: field max_attempts: must be ≥ 0")
    for key, value in service.labels.items():
        _name(key, label, "labels", "label key")
        _name(value, label, f"labels.{key}", "label value")
    update = service.update
    if update.max_parallel < 1:
        raise ValidationError(f"{label}: field update.max_parallel: must be ≥ 1")
    if update.min_healthy_time < 0 or update.deadline < 0:
        raise ValidationError(f"{label}: field update: durations must be ≥ 0")
    for i, constraint in enumerate(service.constraints):
        try:
            parse_constraint(constraint)
        except ValidationError as exc:
            raise ValidationError(f"{label}: field constraints[{i}]: {exc}") from None
    update = msgspec.structs.replace(update, deadline=update.deadline
                                     or DEFAULT_ROLLOUT_DEADLINE)
    return msgspec.structs.replace(service, update=update)


def _check_check(check: Check, label: str, field: str) -> Check:
    kinds = [k for k in ("http", "tcp", "script", "ttl", "docker") if getattr(check, k)]
    if len(kinds) != 1:
        raise ValidationError(f"{label}: field {field}: a check needs exactly one of http, "
                              f"tcp, script, ttl, docker (got {', '.join(kinds) or 'none'})")
    if check.http and not check.http.startswith(("http://", "https://")):
        raise ValidationError(f"{label}: field {field}.http: {check.http!r} is not an "
                              "http:// or https:// URL")
    if check.tcp and ":" not in check.tcp:
        raise ValidationError(f"{label}: field {field}.tcp: {check.tcp!r} is not host:port")
    values = {}
    for name in ("interval", "timeout", "ttl", "start_period"):
        raw = getattr(check, name)
        try:
            values[name] = parse_duration(raw) if raw else 0
        except ValidationError as exc:
            raise ValidationError(f"{label}: field {field}.{name}: {exc}") from None
    interval = check.interval or DEFAULT_CHECK_INTERVAL
    timeout = check.timeout or (DEFAULT_CHECK_TIMEOUT if parse_duration(interval)
                                >= parse_duration(DEFAULT_CHECK_TIMEOUT) else interval)
    if values["interval"] and not check.ttl and values["interval"] < SECOND // 10:
        raise ValidationError(f"{label}: field {field}.interval: shorter than 100ms")
    return msgspec.structs.replace(check, interval=interval, timeout=timeout)


def _check_container(c: Container, label: str, field: str, registry: Registry,
                     limits: Limits) -> Container:
    _name(c.name, label, f"{field}.name", "container name")
    _at_most(c.memory, limits.memory, label, f"{field}.memory")
    _at_most(c.cpu_units, limits.cpu_units, label, f"{field}.cpu_units")
    _at_most(c.disk_use, limits.disk, label, f"{field}.disk_use")
    _name(c.type, label, f"{field}.type", "executor type")
    for what in ("memory", "cpu_units", "disk_use"):
        if getattr(c, what) < 0:
            raise ValidationError(f"{label}: field {field}.{what}: must be ≥ 0")
    config_type = registry.executor_config(c.type)
    if config_type is not None:
        try:
            convert_blob_data(c.executor, config_type)
        except msgspec.ValidationError as exc:
            text = str(exc).replace(" - at `$", f" - at `{field}.executor").replace("`$", "`")
            raise ValidationError(f"{label}: field {field}.executor: {c.type} executor: "
                                  f"{text}") from None
    checks = [_check_check(chk, label, f"{field}.checks[{i}]")
              for i, chk in enumerate(c.checks)]
    return msgspec.structs.replace(c, checks=checks)


def check_task_definition(td: TaskDefinition, label: str, *,
                          registry: Registry | None = None,
                          limits: Limits = DEFAULT_LIMITS) -> TaskDefinition:
    """Names, ports, resources, containers and checks valid; each container's executor
    blob decodes as the config Struct ``registry`` (default: the process-wide one) has
    for its type. Fills defaults."""
    label = one_line(label)
    _name(td.name, label, "name", "task definition name")
    if td.version < 0:
        raise ValidationError(f"{label}: field version: must be ≥ 0")
    _at_most(td.version, limits.version, label, "version")
    _at_most(td.memory, limits.memory, label, "memory")
    _at_most(td.cpu_units, limits.cpu_units, label, "cpu_units")
    if not 0 <= td.port <= 65535:
        raise ValidationError(f"{label}: field port: must be 0..65535")
    if td.port and td.provide_port:
        raise ValidationError(f"{label}: fields port/provide_port: set a fixed port or ask "
                              "for a provided one, not both")
    for what in ("memory", "cpu_units", "grace_period", "max_attempts",
                 "stop_after_disconnect"):
        if getattr(td, what) < 0:
            raise ValidationError(f"{label}: field {what}: must be ≥ 0")
    if not td.containers:
        raise ValidationError(f"{label}: field containers: a task definition needs at "
                              "least one container")
    names = [c.name for c in td.containers]
    if len(set(names)) != len(names):
        raise ValidationError(f"{label}: field containers: container names must be unique")
    registry = registry or get_registry()
    containers = [_check_container(c, label, f"containers[{i}]", registry, limits)
                  for i, c in enumerate(td.containers)]
    return msgspec.structs.replace(
        td, containers=containers, grace_period=td.grace_period or DEFAULT_GRACE_PERIOD,
        max_attempts=td.max_attempts or DEFAULT_MAX_ATTEMPTS)
