"""``binpack``, ``spread`` and ``daemon``: three scheduling styles on the public SDK.

- ``binpack`` (the default): best fit — each task goes to the feasible host that is left
  with the least free memory and CPU, so hosts fill up one after another and whole hosts
  stay free for large tasks.
- ``spread``: least loaded — each task goes to the host with the most free resources and
  the fewest tasks; with ``spread_attribute`` set on the service's constraints as
  ``spread:<attribute>``, tasks are spread evenly over that attribute's values first.
- ``daemon``: one task on every eligible host of the cluster (``desired`` is ignored);
  a host that joins gets its task, a host that leaves loses it; a new version replaces
  the tasks host by host, ``update.max_parallel`` at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

from skedlib import (
    BestFit,
    Cluster,
    Filter,
    HostPool,
    HostState,
    LeastLoaded,
    Scheduler,
    SchedulingResult,
    Scorer,
    Service,
    ServiceScheduler,
    Snapshot,
    SpreadAttribute,
    Task,
    TaskRequest,
    demand_of,
    parse_constraint,
    stock_filters,
)

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
    of arrival, and a task is pinned to its host for life.

    A host without a task (one that joined) gets one at once; the task of a host that
    left, or no longer satisfies the constraints, is stopped. When ``task_version``
    changes, hosts are replaced in place, unhealthy old tasks first: the old task is
    stopped and the new one placed on the same host in one plan, with at most
    ``update.max_parallel`` hosts whose new task is not healthy yet, and never fewer than
    ``min`` healthy tasks; the next hosts follow as new tasks become healthy (a version
    that never does halts there). A task its host rejected stays issued, as the record
    that this host cannot run this version (reported unschedulable), rather than being
    placed there again and again.
    """

    name = "daemon"

    def plan(self, snapshot: Snapshot, cluster: Cluster, service: Service) -> SchedulingResult:
        result = SchedulingResult()
        version = service.task_version
        td = snapshot.task_definitions.get((service.task_name, version))
        if td is None:
            result.unschedulable[f"{cluster.name}-{service.name}-{version}-0"] = (
                f"task definition {service.task_name!r} version {version} does not exist")
            return result
        pool = HostPool.of(snapshot, cluster)  # copies only the hosts this plan changes
        hosts = pool.by_name
        filters = [f for f in stock_filters() if f.name != "distinct_host"]
        constraints = tuple(parse_constraint(c) for c in service.constraints)

        def healthy(t: Task) -> bool:
            return snapshot.is_healthy(t.id)

        def allowed(host: str) -> bool:
            attributes = hosts[host].attributes
            return all(c.matches(host, attributes) for c in constraints)

        current: dict[str, Task] = {}  # host → its task of the service's version
        old: dict[str, Task] = {}  # host → its task of another version, to replace
        for t in snapshot.service_tasks(cluster.name, service.name):
            if t.host not in hosts or t.host in (current if t.task_definition.version ==
                                                 version else old) or not allowed(t.host):
                result.plan.stop.append(t.id)  # host gone, a duplicate, or not eligible
            elif t.task_definition.version == version:
                current[t.host] = t
                if t.rejected:
                    result.unschedulable[t.id] = (f"host {t.host} rejected it: "
                                                  f"{t.reject_reason or 'no reason given'}")
            elif t.rejected:
                result.plan.stop.append(t.id)
            else:
                old[t.host] = t
        for name in [n for n in old if n in current]:
            result.plan.stop.append(old.pop(name).id)
        used_instances = {t.instance for t in current.values()}
        in_flight = sum(1 for t in current.values() if not healthy(t))
        healthy_n = sum(1 for t in [*current.values(), *old.values()] if healthy(t))
        budget = max(0, max(1, service.update.max_parallel) - in_flight)
        # hosts without a task first (not rolled: a joining host gets its task at once),
        # then the replacements, unhealthy old tasks first
        order = sorted((n for n in hosts if n not in current),
                       key=lambda n: (n in old, n in old and healthy(old[n]), n))
        for name in order:
            replacing = old.get(name)
            if replacing is not None:
                demand = demand_of(replacing.task_definition)
                pool.release(name, replacing.id, demand, replacing.port)
            instance = replacing.instance if replacing is not None and \
                replacing.instance not in used_instances else \
                next(i for i in range(len(used_instances) + 1) if i not in used_instances)
            task = Task(cluster=cluster, task_definition=td, service=service.name,
                        instance=instance, port=td.port, host=name, scheduled=True)
            request = TaskRequest.for_task(task, service)
            reason = next((r for f in filters if (r := f.filter(request, hosts[name]))), None)
            if reason is not None:  # not eligible: a daemon runs only where it fits
                if replacing is not None:
                    result.plan.stop.append(replacing.id)
                continue
            if replacing is not None:
                was_healthy = healthy(replacing)
                if budget <= 0 or (was_healthy and healthy_n - 1 < service.min):
                    continue  # wait for new tasks to become healthy
                budget -= 1
                healthy_n -= was_healthy
                result.plan.stop.append(replacing.id)
            used_instances.add(instance)
            pool.assign(name, task.id, request.demand, task.port)
            result.plan.place.append(task)
        return result
