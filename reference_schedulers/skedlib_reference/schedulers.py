"""``binpack``, ``spread`` and ``daemon``: three scheduling styles on the public SDK.

- ``binpack`` (the default): best fit — each task goes to the feasible host that is left
  with the least free memory and CPU, so hosts fill up one after another and whole hosts
  stay free for large tasks.
- ``spread``: least loaded — each task goes to the host with the most free resources and
  the fewest tasks; with ``spread_attribute`` set on the service's constraints as
  ``spread:<attribute>``, tasks are spread evenly over that attribute's values first.
- ``daemon``: one task on every eligible host of the cluster (``desired`` is ignored);
  a host that joins gets its task, a host that leaves loses it.
"""

from __future__ import annotations

from collections.abc import Sequence

from skedlib.models import Cluster, Service, Task
from skedlib.scheduling import (
    BestFit,
    Filter,
    HostState,
    LeastLoaded,
    Scorer,
    ServiceScheduler,
    Snapshot,
    SpreadAttribute,
    TaskRequest,
    parse_constraint,
    stock_filters,
)
from skedlib.scheduling.scheduler import Scheduler, SchedulingResult

__all__ = ["BinpackScheduler", "DaemonScheduler", "SpreadScheduler"]


class BinpackScheduler(ServiceScheduler):
    """Best fit: fill the fullest host that still fits."""

    name = "binpack"

    def scorers(self, snapshot: Snapshot, service: Service,
                hosts: Sequence[HostState]) -> list[Scorer]:
        return [BestFit()]


class SpreadScheduler(ServiceScheduler):
    """Least loaded, and even over an attribute when the service asks (``spread:zone``)."""

    name = "spread"

    def filters(self, snapshot: Snapshot, hosts: Sequence[HostState]) -> list[Filter]:
        return stock_filters()

    def scorers(self, snapshot: Snapshot, service: Service,
                hosts: Sequence[HostState]) -> list[Scorer]:
        attribute = next((c.spread for c in map(parse_constraint, service.constraints)
                          if c.spread), "")
        spread = SpreadAttribute(attribute, hosts)
        spread.weight = 10.0  # evenness first, then load
        return [spread, LeastLoaded()]


class DaemonScheduler(Scheduler):
    """One task of the service on every eligible host; instance numbers follow host order
    of arrival, and a task is pinned to its host for life."""

    name = "daemon"

    def plan(self, snapshot: Snapshot, cluster: Cluster, service: Service) -> SchedulingResult:
        result = SchedulingResult()
        td = snapshot.task_definitions.get((service.task_name, service.task_version))
        if td is None:
            result.unschedulable[f"{cluster.name}-{service.name}-{service.task_version}-0"] = (
                f"task definition {service.task_name!r} version {service.task_version} "
                "does not exist")
            return result
        hosts = {h.name: h for h in snapshot.cluster_hosts(cluster)}
        filters = [f for f in stock_filters() if f.name != "distinct_host"]
        placed: dict[str, Task] = {}
        used_instances: set[int] = set()
        for t in snapshot.service_tasks(cluster.name, service.name):
            keep = (t.task_definition.version == service.task_version and t.host in hosts
                    and not t.rejected and t.host not in placed)
            if keep:
                placed[t.host] = t
                used_instances.add(t.instance)
            else:
                result.plan.stop.append(t.id)
        next_instance = 0
        for name in sorted(hosts):
            if name in placed:
                continue
            while next_instance in used_instances:
                next_instance += 1
            task = Task(cluster=cluster, task_definition=td, service=service.name,
                        instance=next_instance, port=td.port, host=name, scheduled=True)
            request = TaskRequest.for_task(task, service)
            reason = next((r for f in filters if (r := f.filter(request, hosts[name]))), None)
            if reason is not None:
                continue  # not eligible: a daemon runs only where it fits
            used_instances.add(next_instance)
            hosts[name].assign(task.id, request.demand, task.port)
            result.plan.place.append(task)
        return result
