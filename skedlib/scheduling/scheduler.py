"""The Scheduler interface, and the service reconciler the reference schedulers share.

A scheduler turns a :class:`~skedlib.scheduling.snapshot.Snapshot` into a
:class:`~skedlib.scheduling.plan.Plan` for one service of one cluster. It is registered
by a plugin through the ``skedlib_schedulers`` hook as a no-argument factory, and named
by services in their ``scheduler`` field.

:class:`ServiceScheduler` does the bookkeeping every count-based scheduler needs, so a
subclass only chooses filters and scorers:

- instances ``0 … desired-1`` of the service's current version should exist;
- a task that is missing, rejected by its agent, or on a host that is gone is (re)placed
  — keeping its id — on a feasible host, avoiding the hosts that rejected it;
- tasks of other versions and instances ≥ desired are stopped.

(Rolling replacement honouring ``min``/``max``/``max_parallel`` is layered on top by the
rollout logic; this reconciler states the end result.)
"""

from __future__ import annotations

import abc
from collections import Counter
from collections.abc import Sequence

import msgspec

from skedlib.models import Cluster, Service, Task
from skedlib.scheduling.constraints import parse_constraint
from skedlib.scheduling.framework import (
    Filter,
    HostPool,
    Placement,
    Placer,
    Scorer,
    TaskRequest,
    stock_filters,
)
from skedlib.scheduling.plan import Plan
from skedlib.scheduling.snapshot import HostState, Snapshot, demand_of

__all__ = ["Scheduler", "SchedulingResult", "ServiceScheduler"]


class SchedulingResult(msgspec.Struct, kw_only=True):
    """A plan, and for each task that could not be placed, why."""

    plan: Plan = msgspec.field(default_factory=Plan)
    unschedulable: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def message(self) -> str:
        """One line summarising why tasks could not be placed ("" when all were)."""
        if not self.unschedulable:
            return ""
        reasons = Counter(self.unschedulable.values())
        reason, _ = reasons.most_common(1)[0]
        return f"{len(self.unschedulable)} task(s) unschedulable: {reason}" + (
            f" (and {len(reasons) - 1} other reason(s))" if len(reasons) > 1 else "")


class Scheduler(abc.ABC):
    """Plans one service of one cluster from a snapshot."""

    name: str = ""

    @abc.abstractmethod
    def plan(self, snapshot: Snapshot, cluster: Cluster, service: Service) -> SchedulingResult:
        """What to place and stop so the service converges. Must not write anything."""


class ServiceScheduler(Scheduler):
    """Count-based reconciliation with a :class:`Placer`; subclasses pick scorers."""

    def filters(self, snapshot: Snapshot, hosts: Sequence[HostState]) -> list[Filter]:
        """Feasibility filters (default: the stock ones)."""
        return stock_filters()

    @abc.abstractmethod
    def scorers(self, snapshot: Snapshot, service: Service,
                hosts: Sequence[HostState]) -> list[Scorer]:
        """How to rank feasible hosts."""

    def plan(self, snapshot: Snapshot, cluster: Cluster, service: Service) -> SchedulingResult:
        result = SchedulingResult()
        td = snapshot.task_definitions.get((service.task_name, service.task_version))
        tasks = snapshot.service_tasks(cluster.name, service.name)
        if td is None:
            reason = (f"task definition {service.task_name!r} version {service.task_version}"
                      " does not exist")
            result.unschedulable = {f"{cluster.name}-{service.name}-{service.task_version}-"
                                    f"{i}": reason for i in range(service.desired)}
            return result
        hosts = snapshot.cluster_hosts(cluster)
        pool = HostPool(hosts)
        current: dict[int, Task] = {}
        for t in tasks:
            if t.task_definition.version != service.task_version or \
                    t.instance >= service.desired:
                result.plan.stop.append(t.id)
                if t.host in pool.by_name:
                    pool.release(t.host, t.id, demand_of(t.task_definition), t.port)
            else:
                current[t.instance] = t
        placer = Placer(self.filters(snapshot, hosts), self.scorers(snapshot, service, hosts))
        service_hosts: Counter[str] = Counter(
            t.host for t in current.values() if not t.rejected and t.host in pool.by_name)
        constraints = tuple(parse_constraint(c) for c in service.constraints)
        demand = demand_of(td)
        for instance in range(service.desired):
            old = current.get(instance)
            if old is not None and not old.rejected and old.host in snapshot.hosts:
                continue  # running where it should
            task = Task(cluster=cluster, task_definition=td, service=service.name,
                        instance=instance, port=td.port, scheduled=True,
                        rejected_hosts=list(old.rejected_hosts) if old else [])
            request = TaskRequest(task=task, demand=demand, service=service,
                                  constraints=constraints, service_hosts=service_hosts)
            choice = placer.place(request, pool)
            if isinstance(choice, Placement):
                task.host = choice.host
                result.plan.place.append(task)
            else:
                result.unschedulable[task.id] = str(choice)
        return result
