"""Admission: can this host ever run a task as issued? Accept it, or say why not.

A task is rejected at once (never started) when a container needs an executor this host
does not have (not installed, failed to start, not enabled, or not allowed by the host
policy), when its executor refuses it (:meth:`~skedlib.executors.Executor.admit`: a bad
blob, or the host policy: a command, an image, a docker option, a user), when its
demand exceeds what is left of the host's memory, CPU units or disk (disk only when the
host offers some), when its fixed port (or a port its bash containers reserve) is held
by another of this agent's tasks, or when the health provider refuses its checks. Every
container is judged before any starts, so a refused task leaves nothing half-started.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from skedlib.agent.ports import PortAllocator
from skedlib.executors.base import Executor, TaskRejected
from skedlib.executors.policy import HostPolicy
from skedlib.health.provider import HealthProvider
from skedlib.models import Resources, Task

__all__ = ["Admission", "Refusal", "accounted", "demand"]

_MIB = 1 << 20


def demand(task: Task) -> Resources:
    """What the task takes from the host while it runs."""
    td = task.task_definition
    return Resources(memory=td.total_memory(), cpu_units=td.total_cpu_units(),
                     disk=td.total_disk())


def accounted(demands: Mapping[str, Resources], usage: Mapping[str, int]) -> Resources:
    """What the host's tasks hold, for admission: per task its demand, with memory the
    larger of its demand and what it uses now (``usage``: bytes per task id, from its
    cgroups), so a task using more than it declared (declared 0, or a host that cannot
    contain it) takes that room from the next one."""
    total = Resources()
    for task_id, held in demands.items():
        used = usage.get(task_id, 0) // _MIB
        total = total + Resources(memory=max(held.memory, used), cpu_units=held.cpu_units,
                                  disk=held.disk)
    return total


@dataclass(frozen=True)
class Refusal:
    """Why a host will not run a task; ``capacity`` when only room is missing (memory,
    CPU, disk, a busy fixed port), so the rejection may expire."""

    reason: str
    capacity: bool = False


@dataclass
class Admission:
    """What the host offers, and the judgement of one task against it."""

    host: str
    total: Resources
    executors: Mapping[str, Executor]
    """The executors enabled and running on this host."""
    unavailable: Mapping[str, str]
    """Installed executors that failed to start, and why."""
    installed: Sequence[str]
    ports: PortAllocator
    health: HealthProvider
    policy: HostPolicy
    """The host policy: executors, and what each executor's :meth:`Executor.admit` asks."""

    def reason(self, task_id: str, task: Task, allocated: Resources) -> str | None:
        """Why this host cannot run ``task`` as issued, or None. ``allocated`` is what
        the host's other tasks hold."""
        refusal = self.judge(task_id, task, allocated)
        return refusal.reason if refusal else None

    def judge(self, task_id: str, task: Task, allocated: Resources) -> Refusal | None:
        """Why this host cannot run ``task`` as issued (and whether only room is
        missing), or None. ``allocated`` is what the host's other tasks hold."""
        td = task.task_definition
        if not td.containers:
            return Refusal("the task definition has no containers")
        for c in td.containers:
            try:
                self.policy.check_executor(c.type)
            except TaskRejected as exc:
                return Refusal(f"container {c.name}: {exc}")
            if c.type not in self.executors:
                return Refusal(self._missing_executor(c.name, c.type))
        for c in td.containers:  # the policy and the blobs, before anything starts
            for i, check in enumerate(c.checks or []):
                if check.script:
                    try:
                        self.policy.check_script(check.script, f"checks[{i}]: script")
                    except TaskRejected as exc:
                        return Refusal(f"container {c.name}: {exc}")
            try:
                self.executors[c.type].admit(task, c)
            except TaskRejected as exc:
                return Refusal(str(exc))
            except Exception as exc:  # a plugin's bug must not take the agent down
                return Refusal(f"container {c.name}: executor {c.type!r} cannot judge it: "
                               f"{exc}")
        need = demand(task)
        free = self.total - allocated
        for what, unit in (("memory", "MiB of memory"), ("cpu_units", "CPU units"),
                           ("disk", "MiB of disk")):
            wanted, left = getattr(need, what), getattr(free, what)
            if wanted > left and (what != "disk" or self.total.disk):
                return Refusal(f"needs {wanted} {unit} but only {max(left, 0)} of "
                               f"{getattr(self.total, what)} are free on host {self.host}",
                               capacity=True)
        port = task.port or td.port
        for wanted in ([port] if port else []) + td.executor_ports():
            owner = self.ports.owner(wanted)
            if owner is not None and owner != task_id:
                return Refusal(f"port {wanted} is already used by task {owner} on host "
                               f"{self.host}", capacity=True)
        try:
            self.health.validate(task, port or (1 if td.provide_port else 0))
        except TaskRejected as exc:
            return Refusal(str(exc))
        return None

    def _missing_executor(self, container: str, kind: str) -> str:
        if kind in self.unavailable:
            return f"container {container}: {self.unavailable[kind]}"
        if kind not in self.installed:
            return (f"container {container}: no executor named {kind!r} is installed on "
                    f"host {self.host} (installed: {', '.join(self.installed) or 'none'})")
        return (f"container {container}: executor {kind!r} is not enabled on host "
                f"{self.host} (enabled: {', '.join(sorted(self.executors)) or 'none'})")
