"""A consistent snapshot of the store, shaped for planning.

:func:`read_snapshot` lists the whole keyspace once, so everything in a
:class:`Snapshot` was true at one store revision: desired state, issued tasks, host
records and health. Host capacity is computed from the *issued* state (what schedulers
have placed), not from the agents' reports, which lag behind.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Callable, Container, Iterable, Mapping
from typing import TypeVar

from skedlib.codecs import decode_record
from skedlib.errors import ValidationError
from skedlib.keys import (
    AgentKey,
    ClusterKey,
    HealthKey,
    HostAllocKey,
    HostConfigKey,
    Key,
    Keyspace,
    RolloutKey,
    ServiceKey,
    TaskDefinitionKey,
    TaskKey,
)
from skedlib.models import (
    Cluster,
    Host,
    HostConfig,
    Resources,
    RolloutHistory,
    Service,
    Task,
    TaskDefinition,
    TaskHealth,
    TaskId,
)
from skedlib.runtime.store import Store
from skedlib.scheduling._sorted import SortedKeys
from skedlib.store.base import KeyValue

__all__ = ["HostState", "ShareIndex", "Snapshot", "demand_of", "host_share", "is_task_healthy",
           "least_loaded", "load_key", "read_snapshot", "value_of"]

_by_instance = operator.attrgetter("instance")

_T = TypeVar("_T")


def demand_of(td: TaskDefinition) -> Resources:
    """The resources one task of ``td`` reserves on its host."""
    return Resources(memory=td.total_memory(), cpu_units=td.total_cpu_units(),
                     disk=td.total_disk())


def is_task_healthy(task: Task, health: TaskHealth | None, live_hosts: Container[str]
                    ) -> bool:
    """The one health rule: ``task`` is healthy on its current host.

    True when the agent reports it healthy (``health``, its ``state/health/`` record) *for
    the host the task is issued to now* (a record written for another host is left over
    from before the task moved; one with no host predates host-stamped records), the task
    was not rejected, and that host is live (in ``live_hosts``: a record of a host that is
    gone is stale). Every scheduler, status and view counts health with this rule, through
    :meth:`Snapshot.is_healthy` where it has a snapshot.
    """
    return bool(health is not None and health.healthy and health.host in ("", task.host)
                and not task.rejected and task.host in live_hosts)


class HostState:
    """One live host as a planner sees it: capacity, what is placed on it, attributes.

    Mutable: planners call :meth:`assign` / :meth:`release` as they build a plan, so
    later decisions in the same plan see earlier ones.
    """

    __slots__ = ("_shared_ports", "address", "allocated", "attributes", "draining", "host",
                 "name", "ports", "tasks", "total")

    def __init__(self, host: Host, config: HostConfig | None = None) -> None:
        self.host = host
        """The host record this state was built from."""
        self.name = host.name
        self.address = host.address
        self.total = host.total
        self.allocated = Resources()
        self.attributes = dict(host.attributes)
        self.draining = host.draining
        if config is not None:
            self.attributes.update(config.attributes)
            self.draining = self.draining or config.draining
        self.ports: set[int] = set(host.ports)
        self.tasks: set[str] = set()
        self._shared_ports = False
        """True when :attr:`ports` may be shared with a copy (:meth:`copy`): it is
        copied before :meth:`assign` or :meth:`release` changes it."""

    def copy(self) -> HostState:
        """A copy, for planning without touching the snapshot: independent through
        :meth:`assign` and :meth:`release`. Its :attr:`ports` set is shared with this host
        until either of them assigns or releases, so change ports only through those."""
        twin = HostState.__new__(HostState)
        twin.host = self.host
        twin.name, twin.address, twin.total = self.name, self.address, self.total
        twin.allocated, twin.draining = self.allocated, self.draining
        twin.attributes = self.attributes  # not changed by planning
        twin.ports = self.ports  # shared until either changes it (most tasks use none)
        twin._shared_ports = self._shared_ports = True
        twin.tasks = set(self.tasks)
        return twin

    def _own_ports(self) -> set[int]:
        """:attr:`ports`, no longer shared with a copy: to change."""
        if self._shared_ports:
            self.ports = set(self.ports)
            self._shared_ports = False
        return self.ports

    @property
    def free(self) -> Resources:
        """Total minus allocated."""
        return self.total - self.allocated

    def assign(self, task_id: str, demand: Resources, port: int = 0,
               reserved: Iterable[int] = ()) -> None:
        """Count a task as placed here; ``reserved``: the host ports its executors
        reserve beyond ``port`` (:meth:`TaskDefinition.executor_ports`)."""
        self.allocated = self.allocated + demand
        self.tasks.add(task_id)
        if port or reserved:
            ports = self._own_ports()
            if port:
                ports.add(port)
            ports.update(reserved)

    def release(self, task_id: str, demand: Resources, port: int = 0,
                reserved: Iterable[int] = ()) -> None:
        """Count a task as gone from here."""
        if task_id in self.tasks:
            self.tasks.discard(task_id)
            self.allocated = self.allocated - demand
            ports = self._own_ports()
            ports.discard(port)
            ports.difference_update(reserved)

    def __repr__(self) -> str:
        return (f"HostState({self.name!r}, free={self.free}, tasks={len(self.tasks)}, "
                f"draining={self.draining})")


def host_share(host: HostState) -> float:
    """The host's free share: free memory over total plus free CPU over total (what
    :class:`~skedlib.scheduling.BestFit` and :class:`~skedlib.scheduling.LeastLoaded`
    rank by; a :class:`~skedlib.scheduling.HostPool` keeps hosts ordered by it)."""
    total, used = host.total, host.allocated  # not host.free: no Resources to build
    return (((total.memory - used.memory) / total.memory if total.memory else 0.0)
            + ((total.cpu_units - used.cpu_units) / total.cpu_units
               if total.cpu_units else 0.0))


def least_loaded(host: HostState) -> float:
    """The :class:`~skedlib.scheduling.LeastLoaded` score of ``host``: half its free share
    plus one over one more than its tasks. It depends on the host alone, so an index can
    keep hosts ordered by it (:meth:`ShareIndex.loads`)."""
    total, used = host.total, host.allocated  # not host.free: no Resources to build
    mem = (total.memory - used.memory) / total.memory if total.memory else 0.0
    cpu = (total.cpu_units - used.cpu_units) / total.cpu_units if total.cpu_units else 0.0
    return (mem + cpu) / 2 + 1.0 / (1 + len(host.tasks))


def value_of(host: HostState, attribute: str) -> str:
    """The host's value of ``attribute`` as the load orders file it (``""`` without the
    attribute; every host under ``""`` for ``attribute=""``)."""
    return host.attributes.get(attribute, "") if attribute else ""


def load_key(host: HostState) -> tuple[float, str]:
    """``host``'s key in a load order: least loaded first, then by name."""
    return (-least_loaded(host), host.name)


class ShareIndex:
    """Every live host of a snapshot ordered by ``(host_share, name)`` (:attr:`keys`),
    and, once asked for, by load per value of an attribute (:meth:`loads`), kept up to
    date by the snapshot as tasks and hosts come and go, so that a plan starts from them
    instead of sorting the hosts again (see :meth:`Snapshot.share_index`).

    The share order is put right when it is read (:attr:`keys`): the hosts changed since
    move then, once each however often they changed, so plans that walk by load only
    (spread) never move share keys. The load orders are put right before each plan
    (:meth:`flush`), which walks them."""

    __slots__ = ("_in", "_lent", "_moving", "_out", "_shares", "_to", "max_cpu",
                 "max_memory", "parts")

    def __init__(self, hosts: Iterable[HostState]) -> None:
        hosts = list(hosts)
        self._shares: SortedKeys[tuple[float, str]] = SortedKeys(
            (host_share(h), h.name) for h in hosts)
        self._moving: dict[str, float | None] = {}
        """Host changed since :attr:`keys` was last read → the share in the key
        :attr:`_shares` holds for it (None: none)."""
        self._to: dict[str, HostState | None] = {}
        """Host of :attr:`_moving` → the state whose key it should hold (None: none, the
        host left). (Two dicts, not one of pairs: a pair per change would hold a host
        state, and keep the garbage collector busy.)"""
        self.max_memory = max((h.total.memory for h in hosts), default=0) or 1
        """The largest host memory (never lowered when a host leaves: a bound that is
        too low only makes a walk look at a few more hosts)."""
        self.max_cpu = max((h.total.cpu_units for h in hosts), default=0) or 1
        self.parts: dict[str, dict[str, SortedKeys[tuple[float, str]]]] = {}
        """Attribute → value → the :func:`load_key` of each host with that value (``""``
        → ``""`` → every host): the load orders built so far (:meth:`loads`)."""
        self._lent: Callable[[], None] | None = None
        self._out: dict[str, HostState] = {}
        """Hosts whose load keys are out, to put in before the index is next walked
        (:meth:`flush`): a host that changes many times between plans moves once."""
        self._in: dict[str, tuple[float, str]] = {}
        """Hosts of :attr:`_out` whose load key a plan left in (:meth:`hand_over`) → that
        key, filed by the attributes of the host in :attr:`_out`. :meth:`flush` moves it
        only when it differs from the host's."""

    @property
    def keys(self) -> SortedKeys[tuple[float, str]]:
        """The ``(host_share, name)`` of every host, sorted (the hosts changed since the
        last read move now)."""
        moving = self._moving
        if moving:
            shares, to = self._shares, self._to
            for name, was in moving.items():
                host = to[name]
                old = None if was is None else (was, name)
                new = None if host is None else (host_share(host), name)
                if old != new:
                    if old is not None:
                        shares.discard(old)
                    if new is not None:
                        shares.add(new)
            moving.clear()
            to.clear()
        return self._shares

    def moves(self, name: str, share: float | None, host: HostState | None) -> None:
        """Count host ``name``'s share key as to move at the next read of :attr:`keys`:
        ``share`` is the share in the key the index holds for it unless it already counts
        as moving (None: none); ``host`` is the state whose key it should hold then
        (None: none)."""
        if name not in self._moving:
            self._moving[name] = share
        self._to[name] = host

    def moving(self, host: HostState, to: HostState | None) -> None:
        """:meth:`moves` for ``host`` as it is now (its share is the key the index
        holds for it, worked out only when it does not count as moving already) to
        ``to``."""
        name = host.name
        if name not in self._moving:
            self._moving[name] = host_share(host)
        self._to[name] = to

    def loads(self, attribute: str, hosts: Iterable[HostState]
              ) -> dict[str, SortedKeys[tuple[float, str]]]:
        """Value of ``attribute`` → its hosts in load order (``attribute=""``: one value,
        ``""``, holding every host), built from ``hosts`` (the hosts this index orders)
        at the first call and then kept up to date with :attr:`keys`. The walk of
        :class:`~skedlib.scheduling.SpreadAttribute`."""
        parts = self.parts.get(attribute)
        if parts is None:
            self.flush()
            grouped: dict[str, list[tuple[float, str]]] = defaultdict(list)
            for h in hosts:
                grouped[value_of(h, attribute)].append(load_key(h))
            parts = self.parts[attribute] = {v: SortedKeys(k) for v, k in grouped.items()}
        return parts

    def lend(self, give_back: Callable[[], None]) -> None:
        """Lend the index to a plan that moves the keys of the hosts it changes;
        ``give_back()`` puts them back (with :meth:`hand_over`), and is called before the
        index is next used or changed (:meth:`settle`)."""
        self.settle()
        self.flush()
        self._lent = give_back

    def defer(self, host: HostState) -> None:
        """Count ``host``, whose load keys are out, as to be put in at the next
        :meth:`flush` (after :meth:`drop` with ``stays``)."""
        self._out[host.name] = host

    def hand_over(self, host: HostState, share: float | None,
                  load: tuple[float, str] | None) -> None:
        """Take back from a plan the index was lent to ``host`` (the snapshot's state),
        whose keys the plan left with ``share`` (when it does not count as moving) and
        ``load`` (None: out; filed by the host's attributes, which planning does not
        change): they are put right later, with no move when the snapshot's host has the
        same keys by then (the plan was applied)."""
        name = host.name
        self._out[name] = host
        if load is not None:
            self._in[name] = load
        self.moves(name, share, host)

    def flush(self) -> None:
        """Put in the load keys of the hosts changed since the last walk."""
        if self._out:
            left = self._in
            for name, host in self._out.items():
                old = left.pop(name, None) if left else None
                if old is None:
                    self.add_loads(host)
                elif self.parts:
                    key = load_key(host)
                    if old != key:
                        self._remove_load(old, host.attributes)
                        self.add_loads(host, key)
            self._out.clear()

    def _forget(self, host: HostState) -> None:
        """Take out the load key a plan left in for ``host``, if any."""
        old = self._in.pop(host.name, None)
        if old is not None:
            self._remove_load(old, host.attributes)

    def settle(self) -> None:
        """Take the index back from the plan it is lent to, if any."""
        give_back, self._lent = self._lent, None
        if give_back is not None:
            give_back()

    def remove_loads(self, host: HostState, key: tuple[float, str] | None = None) -> None:
        """Take ``host``'s keys out of the load orders only (``key``: its key there,
        when the caller knows it; else a host at the head of its order, what a walk by
        load chose, is taken out without working its key out)."""
        if not self.parts:
            return
        if key is None:
            name, attributes = host.name, host.attributes
            for attribute, parts in self.parts.items():
                part = parts.get(attributes.get(attribute, "") if attribute else "")
                if part is not None and not part.discard_head(name):
                    key = key or load_key(host)
                    part.discard(key)
            return
        self._remove_load(key, host.attributes)

    def _remove_load(self, key: tuple[float, str], attributes: Mapping[str, str]) -> None:
        for attribute, parts in self.parts.items():
            part = parts.get(attributes.get(attribute, "") if attribute else "")
            if part is not None:
                part.discard(key)

    def add_loads(self, host: HostState, key: tuple[float, str] | None = None
                  ) -> tuple[float, str] | None:
        """Put ``host``'s keys in the load orders only (``key``: its key there, when the
        caller worked it out); returns its key there (None: no load order yet)."""
        if not self.parts:
            return None
        if key is None:
            key = (-least_loaded(host), host.name)  # (load_key() inline: per placement)
        attributes = host.attributes
        for attribute, parts in self.parts.items():
            value = attributes.get(attribute, "") if attribute else ""  # value_of()
            try:
                parts[value].add(key)
            except KeyError:  # the first host with this value
                parts[value] = SortedKeys([key])
        return key

    def drop(self, host: HostState, stays: bool = False) -> None:
        """Before ``host`` changes or leaves; ``stays``: the same state is put back
        (:meth:`defer`, :meth:`put`) after its change, so its share key moves to the
        changed state's and a load key a plan left in for it may stay until the next
        :meth:`flush`."""
        self.settle()
        name = host.name
        self.moving(host, host if stays else None)
        if self._out.pop(name, None) is None:
            self.remove_loads(host)
        elif not stays:
            self._forget(host)

    def put(self, host: HostState) -> None:
        """After ``host`` changed or came (its keys go in at the next :meth:`flush`)."""
        self.settle()
        self.defer(host)
        self.moves(host.name, None, host)
        self.max_memory = max(self.max_memory, host.total.memory)
        self.max_cpu = max(self.max_cpu, host.total.cpu_units)


class Snapshot:
    """Everything a scheduler needs, read at one store revision.

    Change it through its methods (:meth:`put_task`, :meth:`put_host`, :meth:`apply` …),
    not by changing its :class:`HostState` objects: the methods keep its indexes.
    """

    def __init__(self, revision: int, *, clusters: Iterable[Cluster] = (),
                 services: Iterable[Service] = (),
                 task_definitions: Iterable[TaskDefinition] = (),
                 hosts: Iterable[Host] = (), host_configs: Iterable[HostConfig] = (),
                 tasks: Iterable[tuple[Task, int]] = (),
                 health: Iterable[TaskHealth] = (),
                 alloc_revisions: Mapping[str, int] | None = None,
                 rollouts: Iterable[RolloutHistory] = ()) -> None:
        self.revision = revision
        self.rollouts = {(r.cluster, r.service): r for r in rollouts}
        """``(cluster, service)`` → its rollout history (``state/rollouts/``)."""
        self.alloc_revisions: dict[str, int] | None = \
            None if alloc_revisions is None else dict(alloc_revisions)
        """Host → revision of its allocation marker (``state/alloc/<host>``), when the
        snapshot knows them (read from the whole keyspace, or kept by a
        :class:`~skedlib.scheduling.SnapshotCache`); None makes
        :func:`~skedlib.scheduling.commit_plan` read them."""
        self.clusters = {c.name: c for c in clusters}
        self.services = {s.name: s for s in services}
        self.task_definitions = {(t.name, t.version): t for t in task_definitions}
        configs = {c.name: c for c in host_configs}
        self.host_configs = configs
        self.hosts = {h.name: HostState(h, configs.get(h.name)) for h in hosts}
        self._shares: ShareIndex | None = None
        self._last_charge: tuple[object, Resources, list[int]] = (None, Resources(), [])
        self.tasks: dict[str, Task] = {}
        self.task_revisions: dict[str, int] = {}
        self._by_service: dict[tuple[str, str], dict[str, Task]] = defaultdict(dict)
        """(cluster, service) → its tasks by id (a dict, not a list: an agent's rewrite
        of one task record replaces it without a walk over the service's tasks)."""
        self._by_host: dict[str, dict[str, None]] = defaultdict(dict)
        """Host → the ids of the tasks issued to it (a dict of strings as a set: the
        garbage collector does not follow such a dict, and spread files a task on
        most hosts)."""
        for task, rev in tasks:
            self.put_task(task, rev)
        self.health = {h.task_id: h for h in health}
        self.invalid: dict[str, str] = {}
        """Full key → why: records readers skip (they do not decode, or their id does not
        match their key); see :meth:`put_invalid`."""
        self.invalid_tasks: dict[str, str] = {}
        """Task id → why, for task keys holding an invalid record: the key is occupied,
        so planners never place a task with that id (its create could never commit)."""

    def apply(self, place: Iterable[Task], stop: Iterable[str] = ()) -> None:
        """Record a committed plan in this snapshot, so planning can go on from it
        without reading the store again (placed tasks get revision 0 until re-read)."""
        for task_id in stop:
            self.remove_task(task_id)
        for task in place:
            self.put_task(task, 0)

    # -- single-record updates (what a watch delivers) --------------------------------
    def put_task(self, task: Task, revision: int, task_id: str = "") -> None:
        """Add or replace one issued task, written at ``revision`` (``task_id``:
        ``task.id``, when the caller has it at hand)."""
        task_id = task_id or task.id  # a property that formats the id: once
        if task_id in self.tasks:
            self.remove_task(task_id)
        state = self._record(task, task_id, revision)
        if state is not None:
            index = self._shares
            if index is not None:
                index.drop(state, stays=True)
            demand, reserved = self._charge(task.task_definition)
            state.assign(task_id, demand, task.port, reserved)
            if index is not None:
                index.defer(state)  # (put() without its settle and bounds: same host)

    def _record(self, task: Task, task_id: str, revision: int) -> HostState | None:
        """File a task that is not held yet; returns the live host to charge it to
        (None: no live host, or rejected)."""
        self.tasks[task_id] = task
        self.task_revisions[task_id] = revision
        self._by_service[(task.cluster.name, task.service)][task_id] = task
        if task.host:
            self._by_host[task.host][task_id] = None
        state = self.hosts.get(task.host)
        return None if state is None or task.rejected else state

    def _charge(self, td: TaskDefinition) -> tuple[Resources, list[int]]:
        """``demand_of(td)`` and ``td.executor_ports()``, remembered for the last
        definition (a committed plan applies many tasks of one definition)."""
        last = self._last_charge
        if last[0] is not td:
            last = self._last_charge = (td, demand_of(td), td.executor_ports())
        return last[1], last[2]

    def remove_task(self, task_id: str) -> None:
        """Forget one issued task (no-op when unknown)."""
        old = self.tasks.pop(task_id, None)
        if old is None:
            return
        self.task_revisions.pop(task_id, None)
        key = (old.cluster.name, old.service)
        of_service = self._by_service[key]
        del of_service[task_id]
        if not of_service:
            del self._by_service[key]
        on_host = self._by_host.get(old.host)
        if on_host is not None:
            on_host.pop(task_id, None)
            if not on_host:
                del self._by_host[old.host]
        state = self.hosts.get(old.host)
        if state is not None and not old.rejected:
            index = self._shares
            if index is not None:
                index.drop(state, stays=True)
            state.release(task_id, demand_of(old.task_definition), old.port,
                          old.task_definition.executor_ports())
            if index is not None:
                index.put(state)

    def put_invalid(self, key: str, parsed: Key | None, reason: str | None) -> None:
        """Mark ``key`` (``parsed``: its parsed form) as holding an invalid record
        (``reason``), or, with None, as no longer holding one. A task key counts as
        occupied-but-invalid."""
        task_id = parsed.task_id if isinstance(parsed, TaskKey) else None
        if reason is None:
            self.invalid.pop(key, None)
            if task_id is not None:
                self.invalid_tasks.pop(task_id, None)
            return
        self.invalid[key] = reason
        if task_id is not None:
            self.remove_task(task_id)  # whatever the key held before is gone
            self.invalid_tasks[task_id] = reason

    def invalid_count(self, cluster: str, service: str) -> int:
        """How many task keys of one service in one cluster hold invalid records."""
        n = 0
        for task_id in self.invalid_tasks:
            try:
                parsed = TaskId.parse(task_id)
            except ValueError:
                continue
            n += parsed.cluster == cluster and parsed.service == service
        return n

    def put_host(self, host: Host) -> None:
        """Add or replace one live host record; the tasks issued to it count again."""
        state = HostState(host, self.host_configs.get(host.name))
        for task_id in self._by_host.get(host.name, ()):
            task = self.tasks[task_id]
            if not task.rejected:
                state.assign(task_id, demand_of(task.task_definition), task.port,
                             task.task_definition.executor_ports())
        old = self.hosts.get(host.name)
        self.hosts[host.name] = state  # in place: the hosts keep their order
        if self._shares is not None:
            if old is not None:
                self._shares.drop(old)
            self._shares.put(state)

    def remove_host(self, name: str) -> None:
        """Forget one host (it left); its tasks stay, on a host that is gone."""
        state = self.hosts.pop(name, None)
        if state is not None and self._shares is not None:
            self._shares.drop(state)

    def share_index(self) -> ShareIndex:
        """The live hosts ordered by free share, built at the first call and then kept
        up to date by this snapshot's methods (what a
        :class:`~skedlib.scheduling.HostPool` of the whole snapshot starts from)."""
        if self._shares is None:
            self._shares = ShareIndex(self.hosts.values())
        self._shares.settle()
        self._shares.flush()
        return self._shares

    def put_host_config(self, name: str, config: HostConfig | None) -> None:
        """Set (or, with None, drop) the operator's configuration of one host."""
        if config is None:
            self.host_configs.pop(name, None)
        else:
            self.host_configs[name] = config
        state = self.hosts.get(name)
        if state is not None:
            self.put_host(state.host)

    def tasks_on(self, host: str) -> list[Task]:
        """Issued tasks whose host is ``host`` (rejected ones included)."""
        return [self.tasks[t] for t in sorted(self._by_host.get(host, ()))]

    def service_tasks(self, cluster: str, service: str) -> list[Task]:
        """Issued tasks of one service in one cluster, by instance."""
        return sorted(self._by_service.get((cluster, service), {}).values(),
                      key=_by_instance)

    def service_tasks_by_id(self, cluster: str, service: str) -> dict[str, Task]:
        """Issued tasks of one service in one cluster by task id (a new dict, in no
        particular order): what :meth:`service_tasks` gives, without formatting each
        task's id again."""
        return dict(self._by_service.get((cluster, service), {}))

    def cluster_hosts(self, cluster: Cluster) -> list[HostState]:
        """Copies of the live hosts the cluster may use (its ``hosts`` filter, else every
        live host), for a planner to update as it places (a
        :meth:`HostPool.of <skedlib.scheduling.HostPool.of>` copies only what it changes)."""
        return [h.copy() for h in self.live_hosts(cluster)]

    def live_hosts(self, cluster: Cluster) -> list[HostState]:
        """The live hosts the cluster may use, as this snapshot holds them: to read, not
        to change (:meth:`cluster_hosts` gives copies)."""
        hosts = self.hosts
        if cluster.hosts is None:
            return list(hosts.values())
        return [hosts[n] for n in cluster.hosts if n in hosts]

    def is_healthy(self, task_id: str) -> bool:
        """True when the issued task ``task_id`` is healthy on its current host, which is
        live (the rule of :func:`is_task_healthy`); False for a task the snapshot does
        not hold."""
        task = self.tasks.get(task_id)
        return task is not None and is_task_healthy(task, self.health.get(task_id),
                                                    self.hosts)

    @classmethod
    def from_items(cls, items: Iterable[KeyValue], revision: int, keys: Keyspace,
                   on_bad: Callable[[KeyValue, ValidationError], None] | None = None
                   ) -> Snapshot:
        """Build a snapshot from a listing of the whole keyspace (foreign keys are ignored).

        The listing must hold every key under the prefix: the hosts' allocation markers
        in it are what :func:`~skedlib.scheduling.commit_plan` guards placements with.

        A record that does not decode, or whose id does not match its key, is left out
        with one warning (:func:`skedlib.codecs.decode_record`), reported to ``on_bad``
        when given, and listed in :attr:`invalid`: one bad value written by hand cannot
        stop every scheduler, and its key is never planned onto.
        """
        ks = keys
        buckets: dict[type, list[tuple[KeyValue, Key]]] = defaultdict(list)
        invalid: dict[str, str] = {}
        parsed_keys: dict[str, Key] = {}

        def bad(kv: KeyValue, exc: ValidationError) -> None:
            invalid[kv.key] = str(exc)
            if on_bad is not None:
                on_bad(kv, exc)

        for kv in items:
            try:
                parsed = ks.parse(kv.key)
            except ValidationError:  # keys outside the schema are not ours
                continue
            buckets[type(parsed)].append((kv, parsed))
            parsed_keys[kv.key] = parsed

        def objs(kind: type, type_: type[_T]) -> list[tuple[_T, int]]:
            out = []
            for kv, parsed in buckets[kind]:
                obj = decode_record(kv, type_, parsed, on_bad=bad)
                if obj is not None:
                    out.append((obj, kv.revision))
            return out

        def values(kind: type, type_: type[_T]) -> list[_T]:
            return [obj for obj, _ in objs(kind, type_)]

        allocs = {kv.key[len(ks.host_allocs):]: kv.revision
                  for kv, _ in buckets[HostAllocKey]}
        snap = cls(
            revision,
            clusters=values(ClusterKey, Cluster), services=values(ServiceKey, Service),
            task_definitions=values(TaskDefinitionKey, TaskDefinition),
            hosts=values(AgentKey, Host), host_configs=values(HostConfigKey, HostConfig),
            tasks=objs(TaskKey, Task), health=values(HealthKey, TaskHealth),
            alloc_revisions=allocs, rollouts=values(RolloutKey, RolloutHistory))
        for key, reason in invalid.items():
            snap.put_invalid(key, parsed_keys.get(key), reason)
        return snap


def read_snapshot(store: Store) -> Snapshot:
    """Read the store's whole keyspace at one revision and build a :class:`Snapshot`."""
    listed = store.list(store.keys.prefix)
    return Snapshot.from_items(listed.items, listed.revision, store.keys)
