"""The discrete-event simulator: a trace, virtual hosts and a real scheduler in virtual time.

Events (arrivals, departures, host failures and recoveries, drains, retries the
scheduler asked for, metric samples) are kept in a heap ordered by virtual time, then by
the order they were queued, so a run is deterministic. Each one changes the desired or
actual state in a ``memory://`` store — written with the store's transactions and fed
to a :class:`~skedlib.scheduling.SnapshotCache` by hand, as a watch would — and the
services it affects are planned the way the scheduler daemon does: the registered
Scheduler plugin's ``plan`` on the cached snapshot, :func:`~skedlib.scheduling.validate_plan`
(refused parts are dropped and planned again), :func:`~skedlib.scheduling.commit_plan`,
the commit written through to the cache. No process runs: the simulator plays the agents
(a placed task is reported healthy at once) and the operator (services come and go).

A service departs ``duration`` seconds after the last of its tasks was first placed: its
tasks are stopped as the daemon stops those of a service that is no longer wanted. A
host that fails leaves the store (its tasks are then on a host that is gone, and their
services re-place them); one that recovers comes back empty.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from skedlib.codecs import encode
from skedlib.keys import Keyspace
from skedlib.models import (
    Cluster,
    Container,
    Host,
    HostConfig,
    Resources,
    Service,
    TaskDefinition,
    TaskHealth,
)
from skedlib.plugins import Registry, get_registry
from skedlib.runtime import Store
from skedlib.scheduling import (
    Plan,
    Scheduler,
    ServiceScheduler,
    Snapshot,
    SnapshotCache,
    commit_plan,
    validate_plan,
)
from skedlib.sim.trace import Batch, TraceRecord
from skedlib.store.base import Delete, Op, Put, WatchEvent

__all__ = ["CLUSTER", "EPOCH", "SimEvent", "SimStats", "Simulator"]

CLUSTER = "sim"
"""The name of the one cluster the simulator plans (task ids start with it)."""
EPOCH = 1_700_000_000.0
"""Virtual time 0 as seconds since the epoch (what the scheduler's clock reads)."""

EventKind = Literal["arrive", "depart", "fail", "recover", "drain", "undrain", "retry",
                    "sample"]


class SimEvent:
    """One event of a run, as :meth:`Simulator.step` hands it back."""

    __slots__ = ("host", "kind", "service", "t")

    def __init__(self, t: float, kind: EventKind, service: str = "", host: str = "") -> None:
        self.t = t
        self.kind = kind
        self.service = service
        """The simulator's name of the service (``s0000042``), for service events."""
        self.host = host

    def __repr__(self) -> str:
        return f"SimEvent({self.t:g}, {self.kind}, {self.service or self.host})"


@dataclass
class _Svc:
    name: str
    batch: Batch
    demand: Resources
    service: Service
    placed_at: dict[int, float] = field(default_factory=dict)
    """Instance → virtual time of its first placement."""
    departing: bool = False
    gone: bool = False


@dataclass
class SimStats:
    """What one run measured (raw; :mod:`skedlib.sim.report` summarises it)."""

    scheduler: str
    hosts: int
    host: Resources
    tasks: int = 0
    samples: list[dict[str, float]] = field(default_factory=list)
    """Every sample: t, memory and cpu utilisation, hosts used, lower bound, fragmentation,
    pending tasks."""
    pending_times: list[float] = field(default_factory=list)
    """Per placed task: virtual seconds from arrival to its first placement."""
    plan_seconds: list[float] = field(default_factory=list)
    """Wall-clock seconds of every ``plan`` call."""
    placed: int = 0
    moves: int = 0
    """Tasks placed again on another host (their host failed or drained)."""
    refused: int = 0
    """Placements validate_plan refused (planned again)."""
    conflicts: int = 0
    unschedulable: int = 0
    """Tasks never placed by the end of the run."""
    wall_seconds: float = 0.0
    end: float = 0.0
    """Virtual time of the last event."""


class Simulator:
    """One scheduler against one trace on ``hosts`` identical hosts of ``host``.

    >>> sim = Simulator(trace, hosts=100, host=Resources(memory=16384, cpu_units=8192),
    ...                 scheduler="binpack")                        # doctest: +SKIP
    >>> stats = sim.run()                                           # doctest: +SKIP
    """

    def __init__(self, trace: Sequence[TraceRecord], *, hosts: int, host: Resources,
                 scheduler: str | Scheduler, registry: Registry | None = None,
                 samples: int = 200, attributes: Callable[[int], dict[str, str]] | None = None,
                 on_progress: Callable[[int, int], None] | None = None) -> None:
        if hosts < 1:
            raise ValueError("hosts must be at least 1")
        self.registry = registry or get_registry()
        if isinstance(scheduler, str):
            self.scheduler_name = scheduler
            self.scheduler: Scheduler = self.registry.scheduler_factory(scheduler)()
        else:
            self.scheduler_name = scheduler.name or type(scheduler).__name__
            self.scheduler = scheduler
        if isinstance(self.scheduler, ServiceScheduler):
            # an instance attribute: the plugin's class is not touched
            self.scheduler.clock = self._clock
        self.now = 0.0
        self.store = Store.open("memory://")
        self.keys: Keyspace = self.store.keys
        self.cache = SnapshotCache(self.store)
        self.cache.refresh()
        self.cluster = Cluster(name=CLUSTER)
        """The cluster lists no services: the simulator plans them itself, and every task
        record embeds its cluster (a list of thousands of names would be copied into
        each)."""
        width = max(5, len(str(hosts - 1)))
        self.host_names = [f"h{i:0{width}d}" for i in range(hosts)]
        self._attributes = attributes
        self.stats = SimStats(scheduler=self.scheduler_name, hosts=hosts, host=host)
        self.host_total = host
        self._heap: list[tuple[float, int, EventKind, object]] = []
        self._seq = 0
        self._svcs: dict[str, _Svc] = {}
        self._pending: dict[str, None] = {}
        """Services with tasks not placed, in arrival order."""
        self._on_progress = on_progress
        self._arrivals = 0
        self._total_tasks = sum(r.count for r in trace if isinstance(r, Batch))
        self.stats.tasks = self._total_tasks
        self._write([Put(self.keys.cluster(CLUSTER), encode(self.cluster))])
        self._write([Put(self.keys.agent(n), encode(self._host(i)))
                     for i, n in enumerate(self.host_names)])
        horizon = 0.0
        for n, rec in enumerate(trace):
            if isinstance(rec, Batch):
                name = f"s{n:07d}"
                self._push(rec.t, "arrive", (name, rec))
            else:
                self._push(rec.t, rec.event, self.host_names[rec.host % hosts])
            horizon = max(horizon, rec.t)
        self.horizon = horizon
        if samples > 0:
            for k in range(samples + 1):
                self._push(horizon * k / samples, "sample", None)

    # -- plumbing -----------------------------------------------------------------------
    def _clock(self) -> float:
        return EPOCH + self.now

    def _host(self, i: int) -> Host:
        attrs = self._attributes(i) if self._attributes else {}
        return Host(name=self.host_names[i], total=self.host_total, attributes=attrs,
                    address="127.0.0.1", executors=["process"])

    def _push(self, t: float, kind: EventKind, payload: object) -> None:
        heapq.heappush(self._heap, (t, self._seq, kind, payload))
        self._seq += 1

    def _write(self, ops: Sequence[Op]) -> None:
        """Write ``ops`` in one transaction and feed them to the cache as a watch would."""
        if not ops:
            return
        res = self.store.txn([], ops)
        self.cache.apply([WatchEvent("put", op.key, op.value, res.revision)
                          if isinstance(op, Put) else
                          WatchEvent("delete", op.key, b"", res.revision) for op in ops])

    # -- running ------------------------------------------------------------------------
    def run(self) -> SimStats:
        """Run every event; the statistics of the run."""
        t0 = time.perf_counter()
        while self.step() is not None:
            pass
        self.finish(time.perf_counter() - t0)
        return self.stats

    def finish(self, wall: float) -> None:
        """Count what was never placed; called by :meth:`run` (call it after stepping
        by hand)."""
        self.stats.unschedulable = sum(s.batch.count - len(s.placed_at)
                                       for s in self._svcs.values())
        self.stats.wall_seconds = wall
        self.stats.end = self.now

    def peek(self) -> float | None:
        """Virtual time of the next event (None when there is none left)."""
        return self._heap[0][0] if self._heap else None

    def step(self) -> SimEvent | None:
        """Process the next event (None when there is none left)."""
        if not self._heap:
            return None
        t, _, kind, payload = heapq.heappop(self._heap)
        self.now = t
        if kind == "arrive":
            assert isinstance(payload, tuple)
            name, batch = payload
            self._arrive(name, batch)
            return SimEvent(t, kind, service=name)
        if kind == "depart":
            assert isinstance(payload, str)
            self._depart(payload)
            return SimEvent(t, kind, service=payload)
        if kind == "retry":
            assert isinstance(payload, str)
            svc = self._svcs.get(payload)
            if svc is not None and not svc.gone:
                self._plan([payload])
            return SimEvent(t, kind, service=payload)
        if kind == "sample":
            self._sample()
            return SimEvent(t, kind)
        assert isinstance(payload, str)
        self._host_event(kind, payload)
        return SimEvent(t, kind, host=payload)

    def _arrive(self, name: str, batch: Batch) -> None:
        td = TaskDefinition(name=name, version=1, memory=batch.memory, cpu_units=batch.cpu,
                            containers=[Container(name="main", type="process",
                                                  executor={"argv": ["true"]})])
        service = Service(name=name, task_name=name, task_version=1, desired=batch.count,
                          scheduler=self.scheduler_name,
                          constraints=list(batch.constraints),
                          labels={"trace": batch.service[:63]} if batch.service else {})
        self._write([Put(self.keys.task_definition(name, 1), encode(td)),
                     Put(self.keys.service(name), encode(service))])
        self._svcs[name] = _Svc(name, batch, Resources(memory=batch.memory,
                                                       cpu_units=batch.cpu), service)
        self._plan([name])
        self._arrivals += batch.count
        if self._on_progress is not None:
            self._on_progress(self._arrivals, self._total_tasks)

    def _depart(self, name: str) -> None:
        svc = self._svcs[name]
        svc.gone = True
        self._pending.pop(name, None)
        self._write([Delete(self.keys.service(name)),
                     Delete(self.keys.task_definition(name, 1))])
        with self.cache.view() as snap:
            tasks = snap.service_tasks(CLUSTER, name)
            freed = {t.host for t in tasks if t.host in snap.hosts}
            plan = Plan(stop=[t.id for t in tasks])
            res = commit_plan(self.store, snap, plan)
            self.cache.record(plan, res)
        self._retry_pending(freed)

    def _host_event(self, kind: EventKind, host: str) -> None:
        with self.cache.view() as snap:
            known = host in snap.hosts
            affected = sorted({t.service for t in snap.tasks_on(host)})
        if kind == "fail":
            if known:
                self._write([Delete(self.keys.agent(host))])
                self._plan([s for s in affected if not self._svcs[s].gone])
            return
        if kind == "recover":
            if not known:
                i = self.host_names.index(host)
                self._write([Put(self.keys.agent(host), encode(self._host(i)))])
                self._retry_pending({host})
            return
        draining = kind == "drain"
        self._write([Put(self.keys.host_config(host),
                         encode(HostConfig(name=host, draining=draining)))])
        if draining:
            self._plan([s for s in affected if not self._svcs[s].gone])
        else:
            self._retry_pending({host})

    def _retry_pending(self, freed: set[str]) -> None:
        """Plan again the waiting services that some host in ``freed`` now has room for
        (a service no freed host fits would find no room: its plan is skipped)."""
        for name in list(self._pending):
            need = self._svcs[name].demand
            with self.cache.view() as snap:
                room = any((h := snap.hosts.get(n)) is not None and not h.draining
                           and h.free.fits(need) for n in freed)
            if room:
                self._plan([name])

    # -- planning -----------------------------------------------------------------------
    def _plan(self, names: Sequence[str]) -> None:
        """Plan each service, in order, as a daemon worker does."""
        for name in names:
            svc = self._svcs[name]
            for _ in range(3):  # refused or conflicting parts are planned again at once
                if not self._plan_once(svc):
                    break

    def _plan_once(self, svc: _Svc) -> bool:
        """One plan → validate → commit; True when part of it must be planned again."""
        stats = self.stats
        with self.cache.view() as snap:
            t0 = time.perf_counter()
            result = self.scheduler.plan(snap, self.cluster, svc.service)
            stats.plan_seconds.append(time.perf_counter() - t0)
            plan = result.plan
            problems = validate_plan(snap, plan)
            if problems:
                bad = {p.task_id for p in problems}
                stats.refused += len(bad)
                plan = plan.without(bad)
                if validate_plan(snap, plan):
                    plan = Plan()
            if not plan:
                self._note_pending(svc, self._live(snap, svc))
                return bool(problems)
            before = {tid: snap.tasks[tid].host for tid in plan.place_ids()
                      if tid in snap.tasks}
            res = commit_plan(self.store, snap, plan)
            self.cache.record(plan, res)
            stats.conflicts += len(res.conflicts)
            committed = set(res.committed)
            health: list[Op] = []
            for task in plan.place:
                if task.id not in committed:
                    continue
                stats.placed += 1
                old = before.get(task.id)
                if old and old != task.host:
                    stats.moves += 1
                if task.instance not in svc.placed_at:
                    svc.placed_at[task.instance] = self.now
                    stats.pending_times.append(self.now - svc.batch.t)
                # the simulator plays the agent: the task is healthy at once
                health.append(Put(self.keys.task_health(task.id), encode(TaskHealth(
                    task_id=task.id, host=task.host, state="healthy", healthy=True,
                    since=self._clock(), updated_at=self._clock()))))
            live = self._live(snap, svc)
        self._write(health)
        self._note_pending(svc, live)
        if result.retry_after is not None and not result.unschedulable:
            self._push(self.now + result.retry_after, "retry", svc.name)
        return bool(problems or res.conflicts)

    @staticmethod
    def _live(snap: Snapshot, svc: _Svc) -> int:
        """Tasks of the service on a live host (lost ones are waiting again)."""
        return sum(1 for t in snap.service_tasks(CLUSTER, svc.name)
                   if not t.rejected and t.host in snap.hosts)

    def _note_pending(self, svc: _Svc, live: int) -> None:
        """Keep the service in the waiting list while some of its tasks are not
        running; once each was placed, its departure is due ``duration`` later."""
        if live < svc.batch.count:
            self._pending[svc.name] = None
        else:
            self._pending.pop(svc.name, None)
        if len(svc.placed_at) == svc.batch.count and not svc.departing:
            svc.departing = True
            self._push(self.now + svc.batch.duration, "depart", svc.name)

    # -- measuring ----------------------------------------------------------------------
    def _sample(self) -> None:
        total = self.host_total
        small = self._typical
        with self.cache.view() as snap:
            mem = cpu = 0
            used = 0
            free_mem = stranded = 0
            for h in snap.hosts.values():
                a = h.allocated
                mem += a.memory
                cpu += a.cpu_units
                if h.tasks:
                    used += 1
                fm, fc = h.total.memory - a.memory, h.total.cpu_units - a.cpu_units
                free_mem += fm
                if fm < small.memory or fc < small.cpu_units:
                    stranded += fm
            live = len(snap.hosts)
            pending = sum(self._svcs[n].batch.count - self._live(snap, self._svcs[n])
                          for n in self._pending)
        cap_mem, cap_cpu = total.memory * live, total.cpu_units * live
        bound = max(-(-mem // total.memory) if total.memory else 0,
                    -(-cpu // total.cpu_units) if total.cpu_units else 0)
        self.stats.samples.append({
            "t": round(self.now, 3),
            "memory": round(mem / cap_mem, 4) if cap_mem else 0.0,
            "cpu": round(cpu / cap_cpu, 4) if cap_cpu else 0.0,
            "hosts_used": used, "lower_bound": bound, "live_hosts": live,
            "fragmentation": round(stranded / free_mem, 4) if free_mem else 0.0,
            "pending": pending})

    @property
    def _typical(self) -> Resources:
        """The median demand of the tasks that arrived so far: free room smaller than it
        counts as stranded (fragmentation)."""
        if not self._svcs:
            return Resources()
        mems = sorted(s.demand.memory for s in self._svcs.values())
        cpus = sorted(s.demand.cpu_units for s in self._svcs.values())
        return Resources(memory=mems[len(mems) // 2], cpu_units=cpus[len(cpus) // 2])

    def placements(self) -> dict[str, str]:
        """Task id → host of every issued task, as the store holds them now."""
        with self.cache.view() as snap:
            return {t.id: t.host for t in snap.tasks.values()}

