"""The typed model: clusters, services, task definitions, hosts and tasks.

Every object is a :class:`msgspec.Struct` whose JSON field names are those of Sked's
readme, so tasks written by other implementations of the same key schema decode here and
tasks written here decode there. Rules for stored shapes:

- a new field always gets a default, and a stored field never changes type, so older and
  newer processes can share one store;
- unknown fields are ignored when decoding (never ``forbid_unknown_fields``);
- durations are integer nanoseconds (``grace_period``), except in health checks, where
  they are Go-style strings (``"10s"``) as Consul takes them and as Sked stores them.

Units: ``memory`` and ``disk_use`` are MiB; ``cpu_units`` are 1/1024 of a core.
Defaults that Sked says validation applies (grace period 60s, check interval 10s …)
are applied by :mod:`skedlib.validation`, not by decoding.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from skedlib.durations import MAX_DURATION

__all__ = [
    "DEFAULT_SCHEDULER",
    "DEFAULT_SCHEDULER_ALIASES",
    "EXTERNAL_SCHEDULER",
    "BashExecutor",
    "CapacityRejection",
    "Check",
    "CheckStatus",
    "Cluster",
    "Container",
    "Duration",
    "Host",
    "HostConfig",
    "Manifest",
    "ProcessExecutor",
    "Resources",
    "Rollout",
    "RolloutHistory",
    "RolloutState",
    "Service",
    "ServiceState",
    "ServiceStatus",
    "Task",
    "TaskDefinition",
    "TaskHealth",
    "TaskId",
    "UpdateStrategy",
    "format_task_id",
    "scheduler_name",
    "shell_script",
]

DEFAULT_SCHEDULER = "binpack"
"""The scheduler a service gets when it names none (or names ``default``)."""
DEFAULT_SCHEDULER_ALIASES = frozenset({"", "default"})
"""Scheduler names that mean :data:`DEFAULT_SCHEDULER`: ``default`` is what Sked's
manifests and Sked's JSON write, and an empty name is what Go writes for an unset one."""
EXTERNAL_SCHEDULER = "external"
"""The scheduler name of a service placed by something outside the scheduler daemon (a
script, a scheduler in another language writing ``state/hosts/<host>/<task_id>``): the
daemon leaves its tasks alone and its status says "placed externally"."""


def scheduler_name(name: str) -> str:
    """The scheduler plugin a service's ``scheduler`` field names: :data:`DEFAULT_SCHEDULER`
    for ``default`` and for an empty name, else the name as written."""
    return DEFAULT_SCHEDULER if name in DEFAULT_SCHEDULER_ALIASES else name

Duration = Annotated[int, msgspec.Meta(le=MAX_DURATION, extra={"duration": True},
                                       description="nanoseconds; manifests may write '60s'")]
"""Integer nanoseconds; YAML manifests may also write Go-style strings like ``"1m30s"``."""


class Cluster(msgspec.Struct, kw_only=True):
    """A logical grouping of services, optionally restricted to some hosts."""

    name: str
    datacenter: str = ""
    services: list[str] = msgspec.field(default_factory=list)
    hosts: list[str] | None = None
    """Host names the cluster may use; ``None`` means every host of the cluster."""


class UpdateStrategy(msgspec.Struct, kw_only=True):
    """How a service replaces its tasks when its ``task_version`` changes."""

    max_parallel: int = 1
    """At most this many replacements in flight at once."""
    min_healthy_time: Duration = 0
    """Nanoseconds a new task's checks must pass before it counts as healthy."""
    deadline: Duration = 0
    """Nanoseconds after which an unfinished rollout is failed (0: validation's default)."""
    auto_revert: bool = False
    """Return to the last good version when a rollout fails."""


class Service(msgspec.Struct, kw_only=True):
    """The configuration for running a task definition: how many, where, how to update."""

    name: str
    task_name: str
    task_version: int
    scheduler: str = DEFAULT_SCHEDULER
    desired: int = 1
    min: int = 0
    max: int = 0
    """The most tasks the scheduler may issue; 0 means ``desired``."""
    max_attempts: int = 0
    """Failed starts on one host before the agent rejects a task; 0: the task definition's."""
    constraints: list[str] = msgspec.field(default_factory=list)
    """Host constraints, e.g. ``"attribute:zone in [a, b]"`` or ``"distinct_host"``."""
    update: UpdateStrategy = msgspec.field(default_factory=UpdateStrategy)
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    """Labels for people and tools (``team: web``); ``sked get services -l team=web``
    selects by them. Keys and values are names (see :func:`skedlib.keys.validate_name`)."""


class Check(msgspec.Struct, kw_only=True):
    """A health check in Consul's shape; ``$PROVIDED_PORT`` is substituted when placed."""

    id: str = ""
    name: str = ""
    http: str = ""
    tcp: str = ""
    script: str = ""
    interval: str = ""
    timeout: str = ""
    ttl: str = ""
    docker: str = ""
    """A command run inside a ``docker`` container of the task (``docker exec``; Sked's
    ``docker`` check, Consul's ``docker_container_id`` + ``args``): passing when it exits 0."""
    start_period: str = ""
    """How long a task may take to start serving (Docker's ``start_period``): critical
    results before the check first passes, within this long after the task started, do
    not count toward the agent's failure threshold. Empty: they count at once."""


class Container(msgspec.Struct, kw_only=True):
    """One executable unit of a task; ``executor`` is decoded by the executor named in ``type``."""

    name: str
    type: str
    executor: dict[str, Any] = msgspec.field(default_factory=dict)
    setup: list[str] | None = None
    teardown: list[str] | None = None
    """Shell commands run, in order, after the container has stopped (Sked's
    ``teardown``); a failing one is logged, the next still runs."""
    checks: list[Check] = msgspec.field(default_factory=list)
    memory: int = 0
    cpu_units: int = 0
    disk_use: int = 0
    essential: bool = True
    """When an essential container exits, the whole task is failed."""


class TaskDefinition(msgspec.Struct, kw_only=True):
    """A versioned collection of containers and checks; immutable once stored."""

    name: str
    version: int
    provide_port: bool = False
    port: int = 0
    tags: list[str] = msgspec.field(default_factory=list)
    memory: int = 0
    cpu_units: int = 0
    containers: list[Container] = msgspec.field(default_factory=list)
    grace_period: Duration = 0
    """Nanoseconds between SIGTERM and SIGKILL when stopping (validation's default: 60s)."""
    max_attempts: int = 0
    """Failed starts on one host before the agent rejects the task (validation's default: 10)."""
    priority: int = 0
    """Higher is more important: under memory pressure the lowest priority is given up first."""
    stop_after_disconnect: Duration = 0
    """Nanoseconds: an agent that could not renew its host lease for this long stops the
    task itself (self-fencing), and starts it again once the store answers and the task
    is still issued to it; 0: the agent's ``--stop-after-disconnect``, else never. At most
    the agent's lease TTL for at-most-once across a partition (docs/operations.md)."""

    def container_limits(self, container: Container) -> Resources:
        """What ``container`` is held to while it runs (its cgroup, its docker limits):
        its own ``memory`` and ``cpu_units``, or, for a figure it leaves at 0, the task
        definition's when it is the only container (a task-level figure cannot be split
        between several)."""
        only = len(self.containers) <= 1
        return Resources(memory=container.memory or (self.memory if only else 0),
                         cpu_units=container.cpu_units or (self.cpu_units if only else 0))

    def total_memory(self) -> int:
        """MiB the task reserves: its own figure, or the sum of its containers'."""
        return self.memory or sum(c.memory for c in self.containers)

    def total_cpu_units(self) -> int:
        """CPU units the task reserves: its own figure, or the sum of its containers'."""
        return self.cpu_units or sum(c.cpu_units for c in self.containers)

    def total_disk(self) -> int:
        """MiB of disk the task's containers declare."""
        return sum(c.disk_use for c in self.containers)

    def executor_ports(self) -> list[int]:
        """Host ports the task's executors reserve beyond its own port: the ``ports`` of
        its ``bash`` containers (Sked's ``ReservedPorts``). Schedulers treat them like a
        fixed port: two tasks reserving one port never share a host."""
        found: set[int] = set()
        for c in self.containers:
            raw = c.executor.get("ports") if c.type == "bash" else None
            if isinstance(raw, list):
                found.update(p for p in raw
                             if isinstance(p, int) and not isinstance(p, bool) and p > 0)
        return sorted(found)


def format_task_id(cluster: str, service: str, version: int, instance: int) -> str:
    """``<cluster>-<service>-<version>-<instance>``: the one spelling of a task id."""
    return f"{cluster}-{service}-{version}-{instance}"


class TaskId(msgspec.Struct, frozen=True, order=True):
    """The parts of a task id ``<cluster>-<service>-<version>-<instance>``.

    Cluster names may not contain ``-`` (validation refuses them), which keeps the id
    parseable however many dashes the service name has.
    """

    cluster: str
    service: str
    version: int
    instance: int

    def __str__(self) -> str:
        return format_task_id(self.cluster, self.service, self.version, self.instance)

    @classmethod
    def parse(cls, text: str) -> TaskId:
        """Split a task id into its parts; raises :class:`ValueError` if it is not one.

        Version and instance are decimal integers without leading zeros, so an id has
        exactly one spelling: ``str(TaskId.parse(text)) == text``.
        """
        cluster, sep, rest = text.partition("-")
        head, _, instance = rest.rpartition("-")
        service, _, version = head.rpartition("-")
        if not (sep and cluster and service and _canonical_int(version)
                and _canonical_int(instance)):
            raise ValueError(f"not a task id: {text!r}")
        return cls(cluster, service, int(version), int(instance))


def _canonical_int(text: str) -> bool:
    """``text`` is a non-negative decimal integer in ASCII, without leading zeros."""
    return text.isascii() and text.isdigit() and (text == "0" or not text.startswith("0"))


class CapacityRejection(msgspec.Struct, kw_only=True):
    """A host turned a task down for want of room: retried there once this expires."""

    host: str
    reason: str = ""
    at: float = 0.0
    """When the host last rejected the task (seconds since the epoch)."""
    count: int = 1
    """How many times in a row the host rejected it for want of room (the backoff grows)."""
    free: Resources = msgspec.field(default_factory=lambda: Resources())
    """What the host had free (as its agent saw it) when it rejected the task."""


class Task(msgspec.Struct, kw_only=True):
    """A task definition placed on a host for a cluster and service: the issued state."""

    cluster: Cluster
    task_definition: TaskDefinition
    service: str
    instance: int
    port: int = 0
    host: str = ""
    scheduled: bool = False
    rejected: bool = False
    reject_reason: str = ""
    rejected_hosts: list[str] = msgspec.field(default_factory=list)
    """Hosts that rejected this task for good (policy, executor, blob, attempts used up);
    schedulers avoid them for it."""
    capacity_rejections: list[CapacityRejection] = msgspec.field(default_factory=list)
    """Hosts that rejected this task for want of room (memory, CPU, disk, a busy fixed
    port): schedulers avoid them only until the rejection expires (a backoff, or the
    host's free resources grow)."""

    def reserved_ports(self) -> list[int]:
        """Every host port the task holds: its port and its executors' reserved ports."""
        ports = set(self.task_definition.executor_ports())
        if self.port:
            ports.add(self.port)
        return sorted(ports)

    @property
    def task_id(self) -> TaskId:
        """The parsed id of this task."""
        return TaskId(self.cluster.name, self.service, self.task_definition.version,
                      self.instance)

    @property
    def id(self) -> str:
        """``<cluster>-<service>-<version>-<instance>``."""
        # str(self.task_id), without building the TaskId (read for every task, often)
        return format_task_id(self.cluster.name, self.service, self.task_definition.version,
                        self.instance)


class Resources(msgspec.Struct, kw_only=True):
    """Amounts of memory (MiB), CPU (1/1024 core units) and disk (MiB)."""

    memory: int = 0
    cpu_units: int = 0
    disk: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(memory=self.memory + other.memory,
                         cpu_units=self.cpu_units + other.cpu_units,
                         disk=self.disk + other.disk)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(memory=self.memory - other.memory,
                         cpu_units=self.cpu_units - other.cpu_units,
                         disk=self.disk - other.disk)

    def fits(self, demand: Resources) -> bool:
        """True when ``demand`` fits in these (free) resources."""
        return (demand.memory <= self.memory and demand.cpu_units <= self.cpu_units
                and demand.disk <= self.disk)


class HostConfig(msgspec.Struct, kw_only=True):
    """Operator-side settings of a host, under ``config/hosts/<name>``."""

    name: str
    attributes: dict[str, str] = msgspec.field(default_factory=dict)
    draining: bool = False


class Host(msgspec.Struct, kw_only=True):
    """A host's live record, published by its agent under ``state/agents/<name>`` on a lease."""

    name: str
    address: str = ""
    cluster: str = ""
    attributes: dict[str, str] = msgspec.field(default_factory=dict)
    total: Resources = msgspec.field(default_factory=Resources)
    allocated: Resources = msgspec.field(default_factory=Resources)
    observed: Resources = msgspec.field(default_factory=Resources)
    """What the host's processes use now, as the agent measures it."""
    used: Resources = msgspec.field(default_factory=Resources)
    """What the agent's tasks use now (memory: from their cgroups, summed); the agent
    admits against the larger of each task's demand and its use."""
    ports: list[int] = msgspec.field(default_factory=list)
    """Ports in use or reserved on the host."""
    executors: list[str] = msgspec.field(default_factory=list)
    draining: bool = False
    updated_at: float = 0.0


HealthState = Literal["pending", "starting", "running", "healthy", "unhealthy", "exited",
                      "stopped", "rejected"]


class CheckStatus(msgspec.Struct, kw_only=True):
    """The last result of one health check."""

    name: str
    status: Literal["passing", "warning", "critical"] = "critical"
    output: str = ""
    updated_at: float = 0.0


class TaskHealth(msgspec.Struct, kw_only=True):
    """A task's actual state, written by the agent under ``state/health/<task_id>``."""

    task_id: str
    host: str = ""
    state: HealthState = "pending"
    healthy: bool = False
    checks: list[CheckStatus] = msgspec.field(default_factory=list)
    attempts: int = 0
    message: str = ""
    since: float = 0.0
    """When ``healthy`` last changed (seconds since the epoch)."""
    limits: str = ""
    """How its containers' resources are contained on its host: ``cgroup2``, ``cgroup1``,
    ``none`` … (as the executors say; empty when none says)."""
    updated_at: float = 0.0


ServiceState = Literal["pending", "progressing", "ok", "unschedulable", "error", "stopping"]


class ServiceStatus(msgspec.Struct, kw_only=True):
    """What a scheduler made of one service in one cluster, under
    ``state/services/<cluster>/<service>``; rewritten only when it changes.

    ``state``: ``ok`` (every task placed and healthy), ``progressing`` (placed, not all
    healthy yet), ``unschedulable`` (some tasks fit no host: ``message`` says why),
    ``error`` (the scheduler is not installed or failed), ``stopping`` (the service or its
    cluster was deleted; its tasks are being stopped), ``pending`` (nothing decided yet).
    """

    cluster: str
    service: str
    scheduler: str = DEFAULT_SCHEDULER
    task_version: int = 0
    state: ServiceState = "pending"
    desired: int = 0
    """Tasks the scheduler wants to exist (placed or not)."""
    placed: int = 0
    """Tasks placed on a live host and not rejected."""
    healthy: int = 0
    """Placed tasks whose agent reports them healthy."""
    unschedulable: int = 0
    """Tasks that fit no host."""
    message: str = ""
    """One line saying what is wrong (``""`` when nothing is)."""
    reasons: list[str] = msgspec.field(default_factory=list)
    """Every distinct reason tasks are unschedulable, with how many (at most 10)."""
    revision: int = 0
    """The store revision of the snapshot this status describes."""
    updated_at: float = 0.0
    """When this record was written (seconds since the epoch)."""


RolloutState = Literal["running", "succeeded", "failed"]


class Rollout(msgspec.Struct, kw_only=True):
    """One change of a service's ``task_version``, as the scheduler carried it out.

    ``running`` until every task runs the new version and has been healthy for the
    update strategy's ``min_healthy_time`` (``succeeded``), or until its ``deadline``
    passes first (``failed``: the rollout halts, ``message`` says why; with
    ``auto_revert`` the service is set back to ``from_version`` and ``reverted_to``
    records it).
    """

    from_version: int
    to_version: int
    state: RolloutState = "running"
    started_at: float = 0.0
    """When the scheduler first saw the new version (seconds since the epoch)."""
    finished_at: float = 0.0
    desired: int = 0
    updated: int = 0
    """Tasks of ``to_version`` that count as healthy (healthy for min_healthy_time)."""
    old: int = 0
    """Tasks of other versions still issued."""
    message: str = ""
    reverted_to: int = 0
    """The version ``auto_revert`` set the service back to (0: none)."""


class RolloutHistory(msgspec.Struct, kw_only=True):
    """``state/rollouts/<cluster>/<service>``: a service's rollouts, oldest first (the last
    is the current or most recent one); the scheduler keeps the last 20."""

    cluster: str
    service: str
    rollouts: list[Rollout] = msgspec.field(default_factory=list)

    @property
    def current(self) -> Rollout | None:
        """The most recent rollout, or None."""
        return self.rollouts[-1] if self.rollouts else None


class BashExecutor(msgspec.Struct, kw_only=True):
    """The ``bash`` executor's blob (as in Sked)."""

    start: str | list[str]
    """The start command; a list (Sked's older shape) runs its commands in order and
    stops at the first that fails (:attr:`start_command`)."""
    stop: str | list[str] = ""
    ports: list[Annotated[int, msgspec.Meta(ge=1, le=65535)]] = msgspec.field(
        default_factory=list)
    """Host ports the commands listen on (Sked's bash ``ports``): reserved for the task,
    so schedulers never put two tasks reserving one port on the same host."""
    env: list[str] = msgspec.field(default_factory=list)
    artifact: str = ""
    download_dir: str = ""
    user: str = ""
    """``USER[:GROUP]`` to run the commands as; only where the host policy lists it in
    ``users`` (empty: the host's ``--run-as`` user, else the agent's)."""

    @property
    def start_command(self) -> str:
        """``start`` as one shell script (see :func:`shell_script`)."""
        return shell_script(self.start)

    @property
    def stop_command(self) -> str:
        """``stop`` as one shell script (see :func:`shell_script`)."""
        return shell_script(self.stop)


def shell_script(commands: str | list[str]) -> str:
    """One shell script for a command or a list of commands: a list runs in order and
    stops at the first command that fails, as Sked ran its lists (``set -e``)."""
    if isinstance(commands, str):
        return commands
    if len(commands) <= 1:
        return commands[0] if commands else ""
    return "\n".join(["set -e", *commands])


class ProcessExecutor(msgspec.Struct, kw_only=True):
    """The ``process`` executor's blob: a supervised command."""

    argv: list[str]
    env: dict[str, str] = msgspec.field(default_factory=dict)
    cwd: str = ""
    user: str = ""
    """``USER[:GROUP]`` to run the command as; only where the host policy lists it in
    ``users`` (empty: the host's ``--run-as`` user, else the agent's)."""


class Manifest(msgspec.Struct, kw_only=True):
    """The contents of a YAML manifest for ``sked apply``."""

    clusters: list[Cluster] = msgspec.field(default_factory=list)
    services: list[Service] = msgspec.field(default_factory=list)
    task_definitions: list[TaskDefinition] = msgspec.field(default_factory=list)
