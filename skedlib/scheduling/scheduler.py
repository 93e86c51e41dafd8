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
- tasks of other versions are replaced by a rolling update within ``min``, ``max`` and
  the service's ``update`` strategy, and instances ≥ desired are stopped;
- tasks on draining hosts move elsewhere, as ``min`` allows.
"""

from __future__ import annotations

import abc
import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import overload

import msgspec

from skedlib.constraints import parse_constraint
from skedlib.models import Cluster, Rollout, Service, Task, format_task_id
from skedlib.scheduling.framework import (
    Filter,
    HostPool,
    Placement,
    Placer,
    Scorer,
    ServiceHosts,
    TaskRequest,
    capacity_retry_at,
    stock_filters,
)
from skedlib.scheduling.plan import Plan
from skedlib.scheduling.snapshot import HostState, Snapshot, demand_of

__all__ = ["MAX_REPORTED", "Scheduler", "SchedulingResult", "ServiceScheduler",
           "without_definition"]

MAX_REPORTED = 1000
"""A plan stops trying to place after this many failures in a row (the hosts are full:
the rest would fail too), and reports at most this many unschedulable tasks, however
large ``desired`` is."""


def without_definition(cluster: Cluster, service: Service) -> dict[str, str]:
    """Why a service's tasks cannot be placed when its task definition does not exist:
    task id → reason, for its first instances (at most :data:`MAX_REPORTED`)."""
    version = service.task_version
    reason = f"task definition {service.task_name!r} version {version} does not exist"
    return {format_task_id(cluster.name, service.name, version, i): reason
            for i in range(min(service.desired, MAX_REPORTED))}


class SchedulingResult(msgspec.Struct, kw_only=True):
    """A plan, and for each task that could not be placed, why.

    ``rollout``: the service's current rollout as this plan leaves it, when a version
    change is being (or was just) carried out; the daemon stores it in the service's
    rollout history. ``retry_after``: plan again after this many seconds even if nothing
    changes (a new task's ``min_healthy_time`` or a rollout's deadline runs out).
    """

    plan: Plan = msgspec.field(default_factory=Plan)
    unschedulable: dict[str, str] = msgspec.field(default_factory=dict)
    placed: dict[str, str] = msgspec.field(default_factory=dict)
    """Why each placed task went to its host (its score among the hosts that fit): the
    ``placed`` event's message."""
    rollout: Rollout | None = None
    retry_after: float | None = None

    @property
    def message(self) -> str:
        """One line summarising why tasks could not be placed ("" when all were)."""
        if not self.unschedulable:
            return ""
        reasons = Counter(self.unschedulable.values())
        reason, _ = reasons.most_common(1)[0]
        return f"{len(self.unschedulable)} task(s) unschedulable: {reason}" + (
            f" (and {len(reasons) - 1} other reason(s))" if len(reasons) > 1 else "")

    def wake_in(self, seconds: float) -> None:
        """Ask to be planned again within ``seconds``."""
        seconds = max(seconds, 0.05)
        if self.retry_after is None or seconds < self.retry_after:
            self.retry_after = seconds


class Scheduler(abc.ABC):
    """Plans one service of one cluster from a snapshot."""

    name: str = ""

    @abc.abstractmethod
    def plan(self, snapshot: Snapshot, cluster: Cluster, service: Service) -> SchedulingResult:
        """What to place and stop so the service converges. Must not write anything."""


class ServiceScheduler(Scheduler):
    """Count-based reconciliation with a :class:`Placer`; subclasses pick scorers.

    Besides placing missing tasks it carries out, within the service's bounds:

    - **rolling updates**: when ``task_version`` changes, tasks of other versions are
      replaced with at most ``update.max_parallel`` new tasks in flight (placed, not yet
      healthy for ``update.min_healthy_time``), never fewer than ``min`` healthy tasks and
      never more than ``max`` issued; an old task is stopped once a new one counts, or
      earlier to make room when ``max`` allows no surge. The rollout fails when
      ``update.deadline`` passes first: it halts (no more replacements; new tasks that are
      not healthy are stopped) and is reported with the reason;
    - **draining**: tasks on draining hosts move to other hosts, as many at a time as
      ``min`` healthy tasks and ``update.max_parallel`` allow.
    """

    clock: Callable[[], float] = staticmethod(time.time)
    """Seconds since the epoch (replaceable in tests)."""

    min_sample: int = 100
    sample_share: float = 0.05
    """When the first scorer has no walk, each task is placed on the best of at most
    ``max(min_sample, sample_share * hosts)`` feasible hosts (see :class:`Placer`)."""

    def filters(self, snapshot: Snapshot, hosts: Sequence[HostState]) -> list[Filter]:
        """Feasibility filters (default: the stock ones)."""
        return stock_filters()

    @abc.abstractmethod
    def scorers(self, snapshot: Snapshot, service: Service,
                hosts: Sequence[HostState]) -> list[Scorer]:
        """How to rank feasible hosts."""

    def plan(self, snapshot: Snapshot, cluster: Cluster, service: Service) -> SchedulingResult:
        return _Reconcile(self, snapshot, cluster, service).run()


class _PoolHosts(Sequence[HostState]):
    """The hosts of a pool as :meth:`ServiceScheduler.filters` and ``scorers`` see them:
    listed only when read (most filters and scorers never do, and listing costs O(n)
    per service)."""

    def __init__(self, pool: HostPool) -> None:
        self.pool = pool

    def __len__(self) -> int:
        return len(self.pool)

    @overload
    def __getitem__(self, i: int) -> HostState: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[HostState]: ...

    def __getitem__(self, i: int | slice) -> HostState | Sequence[HostState]:
        return self.pool.hosts[i]

    def __iter__(self) -> Iterator[HostState]:
        return iter(self.pool.hosts)


class _Reconcile:
    """One planning pass of a :class:`ServiceScheduler` for one service."""

    def __init__(self, scheduler: ServiceScheduler, snapshot: Snapshot, cluster: Cluster,
                 service: Service) -> None:
        self.scheduler = scheduler
        self.snap = snapshot
        self.cluster = cluster
        self.service = service
        self.now = scheduler.clock()
        self.result = SchedulingResult()
        self.desired = service.desired
        self.max_total = max(service.max or service.desired, service.desired)
        self.min_healthy = min(service.min, service.desired)
        self.parallel = max(1, service.update.max_parallel)
        self.min_healthy_time = service.update.min_healthy_time / 1e9
        self.deadline = service.update.deadline / 1e9 or 600.0

    # -- what each task is --------------------------------------------------------------
    def live(self, t: Task) -> bool:
        return not t.rejected and t.host in self.snap.hosts

    def healthy(self, t: Task) -> bool:
        return self.snap.is_healthy(t.id)

    def counted(self, t: Task) -> bool:
        """Healthy for at least min_healthy_time (else asks to be woken when it is)."""
        if not self.healthy(t):
            return False
        left = self.snap.health[t.id].since + self.min_healthy_time - self.now
        if left > 0:
            self.result.wake_in(left)
            return False
        return True

    def draining(self, t: Task) -> bool:
        return self.live(t) and self.snap.hosts[t.host].draining

    # -- the pass -----------------------------------------------------------------------
    def run(self) -> SchedulingResult:
        snap, cluster, service, result = self.snap, self.cluster, self.service, self.result
        version = service.task_version
        td = snap.task_definitions.get((service.task_name, version))
        if td is None:
            result.unschedulable = without_definition(cluster, service)
            return result
        self.td = td
        self.pool = HostPool.of(snap, cluster)
        hosts = _PoolHosts(self.pool)
        self.placer = Placer(self.scheduler.filters(snap, hosts),
                             self.scheduler.scorers(snap, service, hosts),
                             min_sample=self.scheduler.min_sample,
                             sample_share=self.scheduler.sample_share)
        self.constraints = tuple(parse_constraint(c) for c in service.constraints)
        self.demand = demand_of(td)

        new: dict[int, Task] = {}
        old: list[Task] = []
        tasks = snap.service_tasks(cluster.name, service.name)
        self.service_hosts: Counter[str] = ServiceHosts(t.host for t in tasks if self.live(t))
        for t in tasks:
            if t.task_definition.version == version and t.instance < self.desired:
                new[t.instance] = t
            elif t.task_definition.version == version or not self.live(t):
                self.stop(t)  # scaled down, or an old task that is not running anywhere
            else:
                old.append(t)

        history = snap.rollouts.get((cluster.name, service.name))
        current = history.current if history else None
        rollout = self.rollout_of(current, old, new)
        new_live = [t for t in new.values() if self.live(t)]
        self.in_flight = sum(1 for t in new_live if not self.counted(t))
        counted = len(new_live) - self.in_flight
        self.healthy_n = sum(1 for t in [*old, *new_live] if self.healthy(t))
        self.total = len(old) + len(new_live)

        if rollout is not None and rollout.state == "failed":
            # halted: keep what is healthy, stop the new tasks that are not
            for t in new.values():
                if not self.healthy(t):
                    self.stop(t)
            result.rollout = self.progress(rollout, new, old)
            return result

        rolling = rollout is not None and rollout.state == "running"
        # old tasks no longer needed (a new one counts in their stead)
        self.stop_old(old, len(old) - max(0, self.desired - counted))
        # counted, not listed: desired may be large, and a plan holds only what it places
        n_missing = self.desired - len(new_live)
        if rolling:
            want = min(n_missing, max(0, self.parallel - self.in_flight))
            short = want - max(0, self.max_total - self.total)
            if short > 0:  # max leaves no room: stop old tasks first, as min allows
                self.stop_old(old, short)
            budget = min(want, max(0, self.max_total - self.total))
        else:
            budget = n_missing
        failures = 0
        for instance, task_id in itertools.islice(self.missing(new), budget):
            if self.place(instance, new.get(instance), task_id):
                failures = 0
                continue
            failures += 1
            if failures >= MAX_REPORTED:  # the hosts are full: the rest would fail too
                self.result.wake_in(5.0)
                break
        if n_missing > budget:
            self.result.wake_in(5.0)  # waiting for room or for new tasks to count
        if not rolling:
            self.migrate(new_live)
        if rollout is not None:
            result.rollout = self.progress(rollout, new, old)
        return result

    def missing(self, new: dict[int, Task]) -> Iterator[tuple[int, str]]:
        """Instances below desired without a live task of the current version, lazily,
        in order, each with its task's id. An instance whose task key holds an invalid
        record is reported as unschedulable instead: its key is occupied, so a create
        could never commit."""
        cluster, service, version = self.cluster.name, self.service.name, self.td.version
        for i in range(self.desired):
            t = new.get(i)
            if t is not None and self.live(t):
                continue
            task_id = format_task_id(cluster, service, version, i)
            why = self.snap.invalid_tasks.get(task_id)
            if why is not None:
                self.result.unschedulable[task_id] = (
                    f"its key holds an invalid record ({why}); remove it (sked doctor)")
                continue
            yield i, task_id

    def rollout_of(self, current: Rollout | None, old: list[Task], new: dict[int, Task]
                   ) -> Rollout | None:
        """The rollout this pass works on: the current one, a new one when the version
        changed, or None (no version change in progress)."""
        version = self.service.task_version
        if current is not None and current.to_version == version:
            if current.state == "running":
                if self.now - current.started_at > self.deadline:
                    return self.fail(current, new)
                return current
            if current.state == "failed" and not current.reverted_to:
                return current  # halted until the version changes
            if current.state == "succeeded":
                return None  # old tasks seen again (a host came back): just replace them
            # failed, reverted, and now applied again: a new attempt
        if not old:
            return None
        versions = Counter(t.task_definition.version for t in old)
        return Rollout(from_version=versions.most_common(1)[0][0], to_version=version,
                       started_at=self.now, desired=self.desired)

    def fail(self, rollout: Rollout, new: dict[int, Task]) -> Rollout:
        counted = sum(1 for t in new.values() if self.counted(t))
        why = next((h.message for t in new.values()
                    if (h := self.snap.health.get(t.id)) and not h.healthy and h.message),
                   "")
        rejected = next((t.reject_reason for t in new.values() if t.rejected), "")
        reason = why or rejected or "new tasks did not become healthy"
        message = (f"deadline of {self.deadline:g}s passed with {counted}/{self.desired} "
                   f"tasks of version {rollout.to_version} healthy: {reason}")
        return msgspec.structs.replace(rollout, state="failed", finished_at=self.now,
                                       message=message)

    def progress(self, rollout: Rollout, new: dict[int, Task], old: list[Task]) -> Rollout:
        stopped = set(self.result.plan.stop)
        updated = sum(1 for t in new.values() if t.id not in stopped and self.counted(t))
        remaining = sum(1 for t in old if t.id not in stopped)
        state = rollout.state
        finished = rollout.finished_at
        message = rollout.message
        if state == "running":
            if updated == self.desired and remaining == 0:
                state, finished, message = "succeeded", self.now, ""
            else:
                self.result.wake_in(rollout.started_at + self.deadline - self.now)
                if self.min_healthy >= self.desired and self.max_total <= self.desired \
                        and remaining:
                    message = (f"cannot replace a task: min ({self.min_healthy}) healthy and "
                               f"max ({self.max_total}) tasks leave no room; raise max or "
                               "lower min")
        return msgspec.structs.replace(rollout, state=state, finished_at=finished,
                                       updated=updated, old=remaining, message=message,
                                       desired=self.desired)

    # -- actions ------------------------------------------------------------------------
    def stop(self, t: Task) -> None:
        if t.id in self.result.plan.stop:
            return
        self.result.plan.stop.append(t.id)
        if self.live(t) and t.host in self.pool.by_name:
            self.pool.release(t.host, t.id, demand_of(t.task_definition), t.port,
                              t.task_definition.executor_ports())
            self.service_hosts[t.host] -= 1

    def stop_old(self, old: list[Task], n: int) -> None:
        """Stop up to ``n`` old tasks (unhealthy first, then on draining hosts, then the
        highest instances) without going below ``min`` healthy tasks."""
        order = sorted((t for t in old if t.id not in self.result.plan.stop),
                       key=lambda t: (self.healthy(t), not self.draining(t), -t.instance))
        for t in order[:max(0, n)]:
            healthy = self.healthy(t)
            if healthy and self.healthy_n - 1 < self.min_healthy:
                break
            self.stop(t)
            self.total -= 1
            self.healthy_n -= healthy

    def place(self, instance: int, old: Task | None, task_id: str = "") -> bool:
        """Place a task of ``instance`` (``task_id``: its id, when the caller has it);
        ``old``: the task it replaces."""
        task = Task(cluster=self.cluster, task_definition=self.td, service=self.service.name,
                    instance=instance, port=self.td.port, scheduled=True,
                    rejected_hosts=list(old.rejected_hosts) if old else [],
                    capacity_rejections=list(old.capacity_rejections) if old else [])
        task_id = task_id or task.id  # formatted once per placement
        if old is not None and old.host in self.pool.by_name and not old.rejected:
            self.pool.release(old.host, old.id, demand_of(old.task_definition), old.port,
                              old.task_definition.executor_ports())
        request = TaskRequest(task=task, demand=self.demand, service=self.service,
                              constraints=self.constraints, service_hosts=self.service_hosts,
                              task_id=task_id)
        choice = self.scheduler_place(request)
        if isinstance(choice, Placement):
            task.host = choice.host
            self.result.placed[task_id] = choice.why(len(self.pool))
            self.result.plan.place.append(task)
            self.total += 0 if old is not None and self.live(old) else 1
            self.in_flight += 1
            return True
        self.result.unschedulable[task_id] = str(choice)
        # look again when the next capacity rejection expires (those expired already
        # did not keep the task off their host: no reason to hurry back)
        pending = [at for r in task.capacity_rejections
                   if (at := capacity_retry_at(r)) > self.now]
        if pending:
            self.result.wake_in(min(pending) - self.now)
        return False

    def scheduler_place(self, request: TaskRequest) -> Placement | object:
        return self.placer.place(request, self.pool)

    def migrate(self, new_live: list[Task]) -> None:
        """Move tasks off draining hosts, as min healthy and max_parallel allow."""
        for t in sorted((t for t in new_live if self.draining(t)), key=lambda t: t.instance):
            if self.in_flight >= self.parallel:
                self.result.wake_in(2.0)
                return
            healthy = self.healthy(t)
            if healthy and self.healthy_n - 1 < self.min_healthy:
                self.result.wake_in(2.0)
                return
            if self.place(t.instance, t):
                self.healthy_n -= healthy
