"""Extension points: filters and scorers, and the placer that runs them.

In the spirit of the Kubernetes scheduling framework, each extension point is a tiny
interface with a name and one method:

- a :class:`Filter` answers whether a task may go on a host: ``None`` when feasible, else
  a short reason ("not enough memory"). Reasons are counted per filter, so an
  unschedulable task says which filter refused it on how many hosts;
- a :class:`Scorer` ranks feasible hosts: higher is better. A placer sums its scorers'
  scores, each times its weight; ties go to the host name, so plans are deterministic.

Placement state lives in :class:`~skedlib.scheduling.snapshot.HostState` objects that the
placer updates as it places, so later decisions in one plan see earlier ones.
"""

from __future__ import annotations

import abc
import bisect
import heapq
import math
import time
import weakref
from collections import Counter, defaultdict
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from typing import Literal, TypeVar

import msgspec

from skedlib.constraints import Constraint, parse_constraint
from skedlib.models import (
    CapacityRejection,
    Cluster,
    Resources,
    Service,
    Task,
    TaskDefinition,
)
from skedlib.runtime import Backoff
from skedlib.scheduling._sorted import SortedKeys
from skedlib.scheduling.snapshot import (
    HostState,
    ShareIndex,
    Snapshot,
    host_share,
    least_loaded,
    load_key,
    value_of,
)

_K = TypeVar("_K", tuple[int, float, str], tuple[float, str])

__all__ = [
    "CAPACITY_BACKOFF",
    "BestFit",
    "ConstraintsFilter",
    "DistinctHostFilter",
    "Filter",
    "HostPool",
    "LeastLoaded",
    "NotDraining",
    "NotRejectedBefore",
    "Placement",
    "Placer",
    "PortsFree",
    "ResourcesFit",
    "Scorer",
    "ServiceHosts",
    "SpreadAttribute",
    "TaskRequest",
    "Unschedulable",
    "capacity_rejection_holds",
    "capacity_retry_at",
    "stock_filters",
]


class ServiceHosts(Counter[str]):
    """Host → how many tasks of one service it holds: a :class:`~collections.Counter`
    that tells its watchers of every change made by item assignment or deletion
    (``c[host] += 1``, ``del c[host]``), so a scorer's index follows it without rescanning.
    """

    def __init__(self, hosts: Iterable[str] = (), /) -> None:
        """Count ``hosts`` (one entry per task)."""
        self._watchers: list[Callable[[str, int], None]] = []
        super().__init__(hosts)

    def watch(self, callback: Callable[[str, int], None]) -> None:
        """Call ``callback(host, delta)`` after each change of a host's count."""
        self._watchers.append(callback)

    def __setitem__(self, key: str, value: int) -> None:
        watchers = self._watchers
        if not watchers:  # (binpack's counts: nobody follows them)
            dict.__setitem__(self, key, value)
            return
        delta = value - self.get(key, 0)
        dict.__setitem__(self, key, value)  # (Counter's own: super() costs a lookup)
        if delta:
            for w in watchers:
                w(key, delta)

    def __delitem__(self, key: object) -> None:
        delta = -self.get(key, 0)  # type: ignore[call-overload]
        super().__delitem__(key)
        if delta and isinstance(key, str):
            for w in self._watchers:
                w(key, delta)


class TaskRequest(msgspec.Struct, kw_only=True):
    """One task to place, with what the filters and scorers need to know.

    Build one with :meth:`for_task`, which works out ``demand`` from the task definition
    and parses the service's constraints; the constructor takes keywords only and needs
    at least ``task`` and ``demand``. A :class:`Filter` or :class:`Scorer` reads it; a
    :class:`Placer` places it.

    Attributes:
        task: The task to place (its ``host`` is ignored: that is what is chosen).
        demand: What one task reserves on its host (memory, CPU units, disk).
        service: The task's service, if any (filters read its constraints from here).
        constraints: The service's constraints, parsed.
        service_hosts: How many tasks of the same service each host holds.
        task_id: ``task.id``, when the builder has it at hand (a placer then does not
            format it again); empty: worked out from ``task``.

    Example:
        ```python
        task = Task(cluster=cluster, task_definition=td, service=service.name, instance=0)
        request = TaskRequest.for_task(task, service)
        choice = Placer(stock_filters(), [BestFit()]).place(request, pool)
        ```
    """

    task: Task
    demand: Resources
    service: Service | None = None
    constraints: tuple[Constraint, ...] = ()
    service_hosts: Counter[str] = msgspec.field(default_factory=ServiceHosts)
    """How many tasks of the same service each host holds (kept up to date by the placer)."""
    task_id: str = ""
    """``task.id`` when given (the placer formats it otherwise)."""

    @classmethod
    def for_task(cls, task: Task, service: Service | None,
                 service_hosts: Counter[str] | None = None) -> TaskRequest:
        """Build the request for ``task``: its demand from its task definition, the
        constraints of ``service``.

        Args:
            task: The task to place.
            service: Its service, or None for a task of no service (no constraints).
            service_hosts: Tasks of the service per host, shared by the requests of one
                plan so each sees where the earlier ones went (default: a new, empty one).

        Returns:
            The request.

        Raises:
            ValidationError: A constraint of the service does not parse.
        """
        td = task.task_definition
        return cls(task=task, demand=Resources(memory=td.total_memory(),
                                               cpu_units=td.total_cpu_units(),
                                               disk=td.total_disk()),
                   service=service,
                   constraints=tuple(parse_constraint(c) for c in
                                     (service.constraints if service else [])),
                   service_hosts=service_hosts if service_hosts is not None
                   else ServiceHosts())


class Filter(abc.ABC):
    """Feasibility: may ``request`` go on ``host``? ``None`` if so, else the reason."""

    name: str = ""
    monotonic: bool = False
    """True when a host this filter refused stays refused, while a plan is built, for
    every request with the same demand, port and constraints (placing only ever takes
    resources away); the placer then skips such hosts without asking again."""
    local: bool = False
    """True when its answer for a host changes only when that host changes, for
    requests of one service with the same task definition, demand, port, constraints and
    no rejections (what a run of a service's identical tasks is): a placer may then
    place such tasks in a run (see :attr:`Scorer.sticky`). Monotonic filters need not
    set it."""

    @abc.abstractmethod
    def filter(self, request: TaskRequest, host: HostState) -> str | None:
        """``None`` when feasible; else a short reason."""

    def needed(self, request: TaskRequest) -> bool:
        """False when this filter passes every host for ``request`` and for every
        request of the same service with the same task definition, port and
        constraints and no rejections (a run, see :attr:`Scorer.sticky`): a placer then
        leaves it out of the run. Default: True."""
        return True


class Scorer(abc.ABC):
    """Ranking of feasible hosts: higher is better. Scores should lie in [0, 1]."""

    name: str = ""
    weight: float = 1.0
    walk: Literal["tightest", "loosest"] | None = None
    """Set when this scorer's best hosts are those with the least (``tightest``) or most
    (``loosest``) free memory; a placer whose first scorer has it looks there first."""
    sticky: bool = False
    """True when a host's score depends only on the request and that host, and never
    drops when another task of the same request is placed on it. When every scorer is
    sticky (at a non-negative weight), the first has the ``tightest`` walk and every
    filter is monotonic or :attr:`Filter.local`, the host a walk chose for one task is
    also the choice for the next identical one while it still passes the filters: the
    placer places such a run there without walking again (the same placements)."""

    @abc.abstractmethod
    def score(self, request: TaskRequest, host: HostState) -> float:
        """How good ``host`` is for ``request``."""

    def strata(self, request: TaskRequest, pool: HostPool, others: Sequence[Scorer]
               ) -> Iterable[Iterator[HostState] | float] | None:
        """An index walk, for a scorer whose best hosts :attr:`walk` cannot name: groups
        of hosts, each ordered best first for this scorer together with ``others`` (the
        scorers after it in the placer). A placer whose first scorer returns groups
        scores the first feasible host of each group and takes the best of those; a
        number between groups is a bound: no host after it scores more, so the placer
        stops there when the best host it found scores more. None (the default, or when
        ``others`` rank in a way the walk does not know): no such walk. The groups may
        come lazily (a generator): those after a bound that stops the placer are never
        made."""
        return None

    def _first(self, request: TaskRequest, pool: HostPool, others: Sequence[Scorer]
               ) -> tuple[HostState, float, float | None] | None:
        """The first host of :meth:`strata`'s walk, its score by this scorer and
        ``others`` (what :meth:`Placer._score` gives it) and the bound after its group
        (None: none follows), without making the walk; None: walk instead. What a
        placer tries first (the stock walks' usual choice is that host)."""
        return None


class ResourcesFit(Filter):
    """The host has the memory, CPU and disk the task needs."""

    name = "resources"
    monotonic = True

    def filter(self, request: TaskRequest, host: HostState) -> str | None:
        # host.free, without building a Resources for every host looked at
        total, used, need = host.total, host.allocated, request.demand
        if need.memory > total.memory - used.memory:
            return "not enough memory"
        if need.cpu_units > total.cpu_units - used.cpu_units:
            return "not enough cpu"
        if need.disk > total.disk - used.disk and total.disk:
            return "not enough disk"
        return None


class PortsFree(Filter):
    """A fixed port the task needs is free on the host."""

    name = "ports"
    monotonic = True

    def __init__(self) -> None:
        self._last: tuple[object, list[int]] = (None, [])

    def _ports(self, request: TaskRequest) -> list[int]:
        definition = request.task.task_definition
        last, ports = self._last
        if last is not definition:  # a plan asks about one definition many times
            ports = ([definition.port] if definition.port else []) + \
                definition.executor_ports()
            self._last = (definition, ports)
        return ports

    def needed(self, request: TaskRequest) -> bool:
        return bool(self._ports(request))

    def filter(self, request: TaskRequest, host: HostState) -> str | None:
        ports = self._ports(request)
        if ports:
            used = host.ports
            for port in ports:
                if port in used:
                    return f"port {port} in use"
        return None


class NotDraining(Filter):
    """The host is not being drained."""

    name = "draining"
    monotonic = True

    def filter(self, request: TaskRequest, host: HostState) -> str | None:
        return "host is draining" if host.draining else None


CAPACITY_BACKOFF = Backoff(initial=10.0, maximum=300.0)
"""How long a host that rejected a task for want of room is avoided for it: 10 s after
the first such rejection, doubling to 5 minutes."""


def capacity_retry_at(rejection: CapacityRejection,
                      backoff: Backoff = CAPACITY_BACKOFF) -> float:
    """When (seconds since the epoch) a capacity rejection expires by its backoff."""
    return rejection.at + backoff.delay(max(rejection.count, 1))


def capacity_rejection_holds(rejection: CapacityRejection, now: float, free: Resources,
                             backoff: Backoff = CAPACITY_BACKOFF) -> bool:
    """Whether ``rejection`` still keeps the task off its host at ``now``, the host's
    record showing ``free`` resources: until its backoff passes, or until the host has
    more of some resource free than when it rejected the task (its capacity grew, or
    another task left it)."""
    if now >= capacity_retry_at(rejection, backoff):
        return False
    was = rejection.free
    return not (free.memory > was.memory or free.cpu_units > was.cpu_units
                or free.disk > was.disk)


class NotRejectedBefore(Filter):
    """The host has not rejected this task for good, nor for want of room lately (see
    :func:`capacity_rejection_holds`)."""

    name = "rejected"
    local = True  # a run's tasks carry no rejections: it refuses no host for them

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock

    def needed(self, request: TaskRequest) -> bool:
        task = request.task
        return bool(task.rejected_hosts or task.capacity_rejections)

    def filter(self, request: TaskRequest, host: HostState) -> str | None:
        task = request.task
        if host.name in task.rejected_hosts:
            return "host rejected this task"
        for r in task.capacity_rejections:
            if r.host == host.name and capacity_rejection_holds(
                    r, self.clock(), host.host.total - host.host.allocated):
                return "host lacked room for this task lately"
        return None


class ConstraintsFilter(Filter):
    """The service's attribute constraints hold on the host."""

    name = "constraints"
    monotonic = True

    def needed(self, request: TaskRequest) -> bool:
        # spread and distinct_host pass every host here (DistinctHostFilter checks the
        # latter)
        return any(not (c.spread or c.distinct_host) for c in request.constraints)

    def filter(self, request: TaskRequest, host: HostState) -> str | None:
        for c in request.constraints:
            if not c.matches(host.name, host.attributes):
                return f"constraint {c.text!r}"
        return None


class DistinctHostFilter(Filter):
    """With ``distinct_host``, at most one task of the service per host."""

    name = "distinct_host"
    local = True  # only the host a task of the service went to changes its answer

    def __init__(self) -> None:
        self._last: tuple[object, bool] = ((), False)

    def needed(self, request: TaskRequest) -> bool:
        return any(c.distinct_host for c in request.constraints)

    def filter(self, request: TaskRequest, host: HostState) -> str | None:
        constraints = request.constraints
        if not constraints:
            return None
        last, distinct = self._last
        if last is not constraints:  # a plan asks about one service's many times
            distinct = any(c.distinct_host for c in constraints)
            self._last = (constraints, distinct)
        if distinct and request.service_hosts[host.name]:
            return "distinct_host: already runs a task of the service"
        return None


class BestFit(Scorer):
    """Prefer the host left with the least free memory and CPU after placement."""

    name = "best_fit"
    walk = "tightest"
    sticky = True  # less free after placing only raises the score

    def score(self, request: TaskRequest, host: HostState) -> float:
        total, used, need = host.total, host.allocated, request.demand  # not host.free
        mem = (total.memory - used.memory - need.memory) / total.memory \
            if total.memory else 0.0
        cpu = (total.cpu_units - used.cpu_units - need.cpu_units) / total.cpu_units \
            if total.cpu_units else 0.0
        return 1.0 - (mem + cpu) / 2


class LeastLoaded(Scorer):
    """Prefer the host with the most free resources, and the fewest tasks."""

    name = "least_loaded"
    walk = "loosest"

    def score(self, request: TaskRequest, host: HostState) -> float:
        return least_loaded(host)


class SpreadAttribute(Scorer):
    """Prefer hosts whose value of ``attribute`` holds the fewest tasks of the service
    (``attribute=""``: spread over hosts).

    Its walk (:meth:`strata`): hosts grouped by how many tasks of the service their
    value (or, without an attribute, the host itself) holds, fewest first, and within a
    group ordered by the :class:`LeastLoaded` score, then by name. So the first feasible
    host of each group is that group's best for ``[SpreadAttribute, LeastLoaded]`` at
    any positive weights (with other scorers after it there is no walk: the placer
    samples), and a placer finds the best host in O(groups · log n) instead of scoring
    every host. The load order is the pool's (:meth:`HostPool.least_loaded`), which a
    pool of a snapshot borrows from the snapshot, kept there across plans; what is the
    service's own (the hosts holding its tasks, the tasks per value) follows the
    request's counts incrementally when they are a :class:`ServiceHosts` (what
    :meth:`TaskRequest.for_task` and the service scheduler use); with a plain
    ``Counter`` it is rebuilt for every choice.
    """

    name = "spread"

    def __init__(self, attribute: str = "", hosts: Sequence[HostState] = ()) -> None:
        self.attribute = attribute
        self._hosts = hosts  # read only by score() without a following index
        self._value_of_: dict[str, str] | None = None
        self._index: _SpreadIndex | None = None
        self._stock = type(self).strata is SpreadAttribute.strata and \
            type(self).score is SpreadAttribute.score
        """Whether this is the stock walk and score (a subclass that changes either gets
        no shortcut: :meth:`_first`)."""
        self._others: tuple[Sequence[Scorer] | None, bool, float, tuple[float, ...]] = \
            (None, False, 0.0, ())
        """The scorers after this one last asked about, whether the walk fits them, the
        most they add to a score, and their weights (then)."""

    @property
    def _value_of(self) -> dict[str, str]:
        if self._value_of_ is None:
            self._value_of_ = {h.name: h.attributes.get(self.attribute, "")
                               for h in self._hosts}
        return self._value_of_

    def score(self, request: TaskRequest, host: HostState) -> float:
        if not self.attribute:
            return 1.0 / (1 + request.service_hosts.get(host.name, 0))
        value = host.attributes.get(self.attribute, "")
        index = self._index
        if index is not None and index.follows(request.service_hosts):
            count = index.value_count.get(value, 0)
        else:
            value_of = self._value_of
            count = sum(n for name, n in request.service_hosts.items()
                        if value_of.get(name) == value)
        return 1.0 / (1 + count)

    def strata(self, request: TaskRequest, pool: HostPool, others: Sequence[Scorer]
               ) -> Iterable[Iterator[HostState] | float] | None:
        walk = self._walk(request, pool, others)
        if walk is None:
            return None  # groups ordered by load would not be best first for these
        index, most, weights = walk
        if self.attribute:
            return index.by_value(self.weight, weights)
        return index.by_count(self.weight, most)

    def _first(self, request: TaskRequest, pool: HostPool, others: Sequence[Scorer]
               ) -> tuple[HostState, float, float | None] | None:
        walk = self._walk(request, pool, others) if self._stock else None
        if walk is None:
            return None
        index, most, weights = walk
        return index.first(pool, self.weight, most, weights)

    def _walk(self, request: TaskRequest, pool: HostPool, others: Sequence[Scorer]
              ) -> tuple[_SpreadIndex, float, tuple[float, ...]] | None:
        """The index to walk for ``request`` (made when the pool or the counts are not
        the last ones), the most ``others`` add to a score and their weights; None when
        the walk does not fit ``others``."""
        last = self._others
        # a placer asks with the same scorers every time (the same sequence), their
        # weights unchanged: checked without building a key or a strict zip (a
        # quarter of a microsecond), as this runs per choice
        same = others is last[0]
        if same:
            weights = last[3]
            if len(others) != len(weights):
                same = False
            else:
                for i, s in enumerate(others):
                    if s.weight != weights[i]:
                        same = False
                        break
        if not same:
            weights = tuple(s.weight for s in others)
            fits = all(type(s) is LeastLoaded and s.weight > 0 for s in others)
            # a LeastLoaded score is at most 2: a host of a group with ``count`` tasks
            # scores at most weight / (1 + count) + 2 * their weights (a bound that lets
            # the placer stop after the first group when its host beats it)
            last = self._others = (others, fits, 2 * sum(weights) + 1e-9, weights)
        _, fits, most, weights = last
        if not fits or self.weight <= 0:
            return None
        index = self._index
        # (index.follows(), inline: this runs per choice)
        if index is None or index._pool() is not pool or not index.active or \
                not index.tracked or request.service_hosts is not index._counts():
            if index is not None:
                index.active = False
            index = self._index = _SpreadIndex(self.attribute, pool, request.service_hosts)
        return index, most, weights


def _score_at(count: int, load: float, weight: float, weights: Sequence[float]) -> float:
    """What :meth:`Placer._score` gives a host whose value (or itself) holds ``count``
    tasks of the service and whose load key is ``load`` (``-least_loaded``), for
    ``[SpreadAttribute(weight), *LeastLoaded(w) for w in weights]``: the same sum, in the
    same order, so the same float."""
    total: float = 0
    total += weight * (1.0 / (1 + count))
    for w in weights:
        total += w * -load
    return total


_SKIPS = 64
"""Hosts holding the service that one walk of the hosts without it may pass over before
the index keeps its own list of those (see :class:`_SpreadIndex`)."""


class _SpreadIndex:
    """What one :class:`SpreadAttribute` adds to one pool's load order for one
    service's counts.

    Without an attribute: the hosts holding tasks of the service, as a sorted list of
    ``(count on the host, -least loaded score, name)``; the hosts without are the pool's
    own load order, passing over those that hold some (when that passes over too many,
    :attr:`zeros` keeps them instead, an O(n) list made once). With an attribute: the
    count of each value; the pool keeps each value's hosts in load order, and the values
    with the same count are merged when walked (a few values, such as zones, is the
    expected case: O(values) per choice).
    """

    def __init__(self, attribute: str, pool: HostPool, counts: Counter[str]) -> None:
        self.attribute = attribute
        # held weakly: the pool and the counts hold this index (its watchers), and a
        # cycle would leave a whole plan (its copies of hosts) to the garbage collector
        self._pool, self._counts = weakref.ref(pool), weakref.ref(counts)
        self.active = True
        self.tracked = isinstance(counts, ServiceHosts)
        self.hosts = len(pool)  # (a pool's hosts stay the same: only their load changes)
        by_name = pool.by_name
        self.key: dict[str, float] = {}
        """Host holding the service → the load in its key in :attr:`by_host` (a float,
        not a tuple: the garbage collector follows no float)."""
        self.by_host: list[tuple[int, float, str]] = []
        self.zeros: list[tuple[float, str]] | None = None
        self.zero_key: dict[str, tuple[float, str]] = {}
        self.want_zeros = False
        self.value_count: dict[str, int] = defaultdict(int)
        self.value_of: dict[str, str] = {}
        """With an attribute: host → its value, for the hosts that changed or whose
        count changed (a host's attributes do not change while a plan is made)."""
        self.heads: list[tuple[int, float, str, str]] = []
        """With an attribute: ``(count, *load key of its best host, value)`` of each
        value with hosts, sorted (:meth:`by_value`; flat: a tuple in a tuple costs two
        more comparisons for each)."""
        self.head_of: dict[str, tuple[int, float, str, str]] = {}
        self.dirty: set[str] | None = None
        """Values whose entry in :attr:`heads` may be out of date (None: every one)."""
        self.moved: HostState | None = None
        """Without an attribute: the host the pool moved last."""
        if not attribute:
            for name, n in counts.items():
                if n and name in by_name:
                    load = self.key[name] = -least_loaded(by_name[name])
                    self.by_host.append((n, load, name))
            self.by_host.sort()
        else:
            for name, n in counts.items():
                if name in by_name:
                    self.value_count[by_name[name].attributes.get(attribute, "")] += n
        if self.tracked:
            pool.watch(self._host_moved)
            counts.watch(self._count_changed)  # type: ignore[attr-defined]

    @property
    def pool(self) -> HostPool:
        """The pool this index follows."""
        pool = self._pool()
        if pool is None:  # (never while placing: the caller holds the pool)
            raise ReferenceError("the pool of this spread index is gone")
        return pool

    @property
    def counts(self) -> Counter[str]:
        """The counts of the service's tasks per host this index follows."""
        counts = self._counts()
        if counts is None:  # (never while placing: the request holds them)
            raise ReferenceError("the counts of this spread index are gone")
        return counts

    def follows(self, counts: Counter[str]) -> bool:
        """True when this index is kept up to date with ``counts``."""
        return self.active and self.tracked and counts is self._counts()

    def _host_moved(self, host: HostState) -> None:
        if not self.active:
            return
        if self.attribute:  # the pool moves the host in its load order
            # (the count of the host's value changes next: its value is at hand then)
            value = self.value_of[host.name] = host.attributes.get(self.attribute, "")
            if self.dirty is not None:
                self.dirty.add(value)
            return
        self.moved = host  # (its count changes next: the host is at hand then)
        name = host.name
        old = self.key.get(name)
        if old is not None:
            new = self.key[name] = -least_loaded(host)
            counts = self._counts()  # (not the property: this runs per placement)
            n = counts.get(name, 0) if counts is not None else 0
            _replace(self.by_host, (n, old, name), (n, new, name))
        elif self.zeros is not None and name in self.zero_key:
            key = load_key(host)
            _replace(self.zeros, self.zero_key[name], key)
            self.zero_key[name] = key

    def _count_changed(self, name: str, delta: int) -> None:
        if not self.active:
            return
        if self.attribute:
            value = self.value_of.get(name)
            if value is None:
                host = self.pool.by_name.get(name)
                if host is None:
                    return
                value = self.value_of[name] = host.attributes.get(self.attribute, "")
            self.value_count[value] += delta
            if self.dirty is not None:
                self.dirty.add(value)
            return
        host = self.moved
        if host is None or host.name != name:
            host = self.pool.by_name.get(name)
            if host is None:
                return
        counts = self._counts()  # (not the property: this runs per placement)
        n = counts.get(name, 0) if counts is not None else 0
        load = self.key.pop(name, None)
        if load is not None and not n:
            self.pool._unhold(name)  # the walk of the hosts without tasks needs it
        if load is not None:
            _remove(self.by_host, (n - delta, load, name))
        elif self.zeros is not None:
            load = self.zero_key.pop(name)[0]
            _remove(self.zeros, (load, name))
        if load is None:
            load = -least_loaded(host)
        if n:
            self.key[name] = load
            bisect.insort(self.by_host, (n, load, name))
        elif self.zeros is not None:
            key = self.zero_key[name] = (load, name)
            bisect.insort(self.zeros, key)

    def _without(self) -> Iterator[HostState]:
        """The hosts holding no task of the service, in load order."""
        pool = self.pool
        own, base = pool._own, pool._base
        for _, name in self._without_keys():
            yield own.get(name) or base[name]

    def _first_without(self) -> tuple[float, str] | None:
        """The first of :meth:`_without_keys` (without a generator: once per choice)."""
        if self.want_zeros and self.zeros is None:
            self._keep_zeros()
        zeros = self.zeros
        if zeros is not None:
            return zeros[0] if zeros else None
        holding = self.key
        for passed, key in enumerate(self._held_out(), 1):
            if key[1] not in holding:
                return key
            if passed == _SKIPS:  # (as _without_keys)
                self.want_zeros = True
        return None

    def _held_out(self) -> Iterable[tuple[float, str]]:
        """The pool's load order, every key in but those of the hosts holding tasks of
        the service that the pool holds out (a walk passes over those anyway)."""
        pool = self._pool()  # (not the property: this runs per choice)
        if pool is None:
            return ()
        parts = pool._ready_loads(self.key).parts.get("") or pool._loads("")
        part = parts.get("")
        return () if part is None else part

    def _without_keys(self) -> Iterator[tuple[float, str]]:
        """:meth:`_without`'s hosts' load keys."""
        if self.zeros is not None:
            yield from self.zeros
            return
        holding, passed = self.key, 0
        # every key in first but those of the hosts it holds (passed over anyway)
        for key in self._held_out():
            if key[1] in holding:
                passed += 1
                if passed == _SKIPS:  # the next walks: a list of their own
                    self.want_zeros = True
                continue
            yield key

    def _keep_zeros(self) -> None:
        holding = self.key
        self.zeros = [k for k in self.pool.load_keys("", "") if k[1] not in holding]
        self.zero_key = {k[1]: k for k in self.zeros}

    def by_count(self, weight: float, most: float) -> Iterator[Iterator[HostState] | float]:
        """Without an attribute: the groups of hosts by their count of the service's
        tasks, fewest first, each best host first, and before each group after the first
        the most a host of it scores (``weight / (1 + count) + most``); made as they are
        asked for."""
        if self.want_zeros and self.zeros is None:
            self._keep_zeros()
        first = True
        if self.hosts > len(self.key):  # some host holds none
            yield self._without()
            first = False
        keys = self.by_host
        i = 0
        while i < len(keys):
            count = keys[i][0]
            if not first:
                yield weight / (1 + count) + most
            first = False
            yield self._holding(i, count)
            i = bisect.bisect_left(keys, (count, math.inf, ""), i)

    def _holding(self, start: int, count: int) -> Iterator[HostState]:
        """The hosts holding ``count`` tasks of the service, from :attr:`by_host`'s
        ``start`` on."""
        keys, by_name = self.by_host, self.pool.by_name
        for k in range(start, len(keys)):
            key = keys[k]
            if key[0] != count:
                return
            yield by_name[key[2]]

    def by_value(self, weight: float, weights: Sequence[float]
                 ) -> Iterator[Iterator[HostState] | float]:
        """With an attribute: the values grouped by their count of the service's tasks,
        fewest first, each group's hosts merged in load order, and before each group
        after the first the most a host of it or of a later group scores: ``weight / (1
        + count)`` plus ``weights`` times the best :class:`LeastLoaded` score there (the
        head of a value's load order has its value's best). The values' heads are kept
        sorted by count and load, and moved only for the values that changed."""
        pool = self.pool
        parts = self._ready_heads(pool)
        heads = self.heads
        n = len(heads)
        i = 0
        while i < n:
            head = heads[i]
            c = head[0]
            j = i + 1
            if j < n and heads[j][0] == c:  # (a group of one value is the usual end)
                j = bisect.bisect_left(heads, (c + 1,), j)
            if i:
                yield self._value_bound(i, weight, weights)
            yield self._merged(head[2], i, j, parts, pool)
            i = j

    def _ready_heads(self, pool: HostPool) -> Mapping[str, SortedKeys[tuple[float, str]]]:
        """The pool's load order of each value, every key in (a key put in before the
        order is built goes in with it), with :attr:`heads` brought up to date."""
        parts = pool._ready_loads().parts.get(self.attribute) or pool._loads(self.attribute)
        self._refresh(parts)
        return parts

    def _value_bound(self, i: int, weight: float, weights: Sequence[float]) -> float:
        """The most a host of the values of :attr:`heads` ``[i:]`` scores (a bound a
        little above it)."""
        heads = self.heads
        head = heads[i]
        c = head[0]
        # the best load from here on: the heads are sorted by count, then load, so it is
        # the best of the first head of each count (a round of placements over the values
        # leaves two counts: one step instead of a pass over every value)
        load = head[1]
        last = heads[-1][0]
        k, ck = i, c
        while ck != last:
            k = bisect.bisect_left(heads, (ck + 1,), k + 1)
            first = heads[k]
            ck = first[0]
            if first[1] < load:
                load = first[1]
        if len(weights) == 1:  # (_score_at() inline, as in first())
            return weight * (1.0 / (1 + c)) + weights[0] * -load + 1e-9
        return _score_at(c, load, weight, weights) + 1e-9

    def first(self, pool: HostPool, weight: float, most: float, weights: Sequence[float]
              ) -> tuple[HostState, float, float | None] | None:
        """The first host of the walk (:meth:`by_value` or :meth:`by_count`), its score
        for ``[SpreadAttribute, *LeastLoaded]`` at ``weight`` and ``weights`` (from its
        key: the same sum :meth:`Placer._score` makes), and the bound that follows its
        group (None: no group follows), without making the walk: a placer whose choice
        that host is (it passes the filters and scores above the bound, the usual case)
        needs no more. None: no such shortcut here (walk instead). ``pool``: the one
        this index follows."""
        if self.attribute:
            # (_ready_heads() and, for one LeastLoaded, _score_at() inline: once per choice)
            attribute = self.attribute
            self._refresh(pool._ready_loads().parts.get(attribute) or pool._loads(attribute))
            heads = self.heads
            if not heads:
                return None
            n = len(heads)
            c, load, name, _ = heads[0]
            j = 1
            if n > 1 and heads[1][0] == c:  # (as in by_value)
                j = bisect.bisect_left(heads, (c + 1,), 1)
            score = weight * (1.0 / (1 + c)) + weights[0] * -load if len(weights) == 1 \
                else _score_at(c, load, weight, weights)
            return (pool._own.get(name) or pool._base[name], score,
                    self._value_bound(j, weight, weights) if j < n else None)
        if self.hosts <= len(self.key):
            return None  # every host holds some: the walk starts with those
        key = self._first_without()
        if key is None:
            return None
        keys = self.by_host
        name = key[1]
        return (pool._own.get(name) or pool._base[name], _score_at(0, key[0], weight, weights),
                weight / (1 + keys[0][0]) + most if keys else None)

    def _refresh(self, parts: Mapping[str, SortedKeys[tuple[float, str]]]) -> None:
        """Bring :attr:`heads` up to date with ``parts`` and the counts."""
        dirty, heads, head_of = self.dirty, self.heads, self.head_of
        count = self.value_count
        if dirty is None:
            head_of.clear()
            for value, part in parts.items():
                first = part.head()
                if first is not None:
                    head_of[value] = (count.get(value, 0), *first, value)
            heads[:] = sorted(head_of.values())
            self.dirty = set()
            return
        for value in dirty:
            old = head_of.pop(value, None)
            if old is not None:  # most often the first: the value a walk chose
                del heads[0 if heads[0] is old else bisect.bisect_left(heads, old)]
            keys = parts.get(value)
            first = None if keys is None else keys.head()
            if first is not None:
                new = head_of[value] = (count.get(value, 0), first[0], first[1], value)
                bisect.insort(heads, new)
        dirty.clear()

    def _merged(self, first: str, start: int, end: int,
                parts: Mapping[str, SortedKeys[tuple[float, str]]], pool: HostPool
                ) -> Iterator[HostState]:
        """The hosts of the values of :attr:`heads` ``[start:end]`` in load order:
        ``first`` (the host of the smallest key) without merging (most walks stop
        there), then the rest merged."""
        own, base = pool._own, pool._base
        yield own.get(first) or base[first]
        keys = []  # (a loop: a comprehension would make ``parts`` a cell at every call)
        for head in self.heads[start:end]:
            keys.append(parts[head[3]])
        for key in keys[0] if len(keys) == 1 else heapq.merge(*keys):
            name = key[1]
            if name != first:  # (an order holds one key per host)
                yield own.get(name) or base[name]


def _remove(keys: list[_K], key: _K) -> None:
    """Take ``key`` out of the sorted list ``keys``."""
    i = bisect.bisect_left(keys, key)
    if i < len(keys) and keys[i] == key:
        del keys[i]


def _replace(keys: list[_K], old: _K, new: _K) -> None:
    """Move ``old`` to ``new`` in the sorted list ``keys``."""
    i = bisect.bisect_left(keys, old)
    if i < len(keys) and keys[i] == old:
        del keys[i]
    bisect.insort(keys, new)


class Placement(msgspec.Struct, frozen=True):
    """A host chosen for a task."""

    host: str
    score: float
    refused: dict[str, int] = msgspec.field(default_factory=dict)
    """How many hosts each filter refused, when the placer looked at every host (an
    index walk or a sample stops at the first hosts that fit: then empty)."""

    def why(self, hosts: int) -> str:
        """One line: the score, and what the filters refused among ``hosts`` hosts."""
        text = f"score {self.score:.3g}"
        if self.refused:
            text += f"; {hosts - sum(self.refused.values())}/{hosts} hosts fit; " + "; ".join(
                f"{reason} on {n}" for reason, n in
                sorted(self.refused.items(), key=lambda kv: -kv[1]))
        return text


class Unschedulable(msgspec.Struct, frozen=True):
    """No host fits: how many hosts each reason refused."""

    reasons: dict[str, int]
    hosts_considered: int

    def __str__(self) -> str:
        if not self.hosts_considered:
            return "no live hosts"
        parts = [f"{reason} on {n} host{'s' if n != 1 else ''}"
                 for reason, n in sorted(self.reasons.items(), key=lambda kv: -kv[1])]
        return f"0/{self.hosts_considered} hosts fit: " + "; ".join(parts)


class _HostView(Mapping[str, HostState]):
    """Host name → the pool's state of it: the pool's own copy once the plan changed the
    host, else the snapshot's (read, never changed)."""

    __slots__ = ("base", "own")

    def __init__(self, base: Mapping[str, HostState], own: dict[str, HostState]) -> None:
        self.base, self.own = base, own

    def __getitem__(self, name: str) -> HostState:
        host = self.own.get(name)
        return host if host is not None else self.base[name]

    def get(self, name: str, default: HostState | None = None  # type: ignore[override]
            ) -> HostState | None:
        """The state of host ``name`` (``default`` when the pool has no such host)."""
        host = self.own.get(name)
        return host if host is not None else self.base.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self.own or name in self.base

    def __iter__(self) -> Iterator[str]:
        return iter(self.base) if self.base else iter(self.own)

    def __len__(self) -> int:
        return len(self.base) if self.base else len(self.own)


class _Front:
    """How far walks of :meth:`HostPool.tightest` with one set of refused hosts got:
    every host whose key lies between the walk's bound and ``key`` is in ``refused`` or
    in ``below`` (met and not refused, or moved there by the plan since)."""

    __slots__ = ("below", "key", "refused")

    def __init__(self, refused: set[str], key: tuple[float, str]) -> None:
        self.refused = refused
        self.key = key
        self.below: set[str] = set()


class HostPool:
    """The hosts a plan may use, kept sorted by free share as tasks are placed.

    A host's free share is its free memory over its total plus its free CPU over its
    total (:func:`~skedlib.scheduling.snapshot.host_share`): exactly what
    :class:`BestFit` and :class:`LeastLoaded` rank by. The sort lets a placer whose first
    scorer declares a :attr:`Scorer.walk` look at the best hosts first, so placing a task
    costs O(log n) plus the hosts it actually looks at, not O(n). The pool also keeps
    the hosts in load order per value of an attribute once asked (:meth:`least_loaded`,
    the walk of :class:`SpreadAttribute`).

    ``HostPool(hosts)`` places on the given :class:`HostState` objects (pass copies to
    keep the originals). :meth:`of` is a copy-on-write view of a snapshot: it costs
    nothing to build and copies a host only when the plan changes it. It borrows the
    snapshot's :meth:`~skedlib.scheduling.Snapshot.share_index` and moves the keys of the
    hosts it changes in place; the snapshot puts them back before it next uses or
    changes the index (another pool borrowing it, a task applied). A pool whose loan was
    taken back that way goes on with a private index (sorted once, O(n log n)), so two
    pools of one snapshot stay correct, only slower.
    """

    def __init__(self, hosts: Iterable[HostState]) -> None:
        own = {h.name: h for h in hosts}
        self._init(own, own, ShareIndex(own.values()), leased=False)

    @classmethod
    def of(cls, snapshot: Snapshot, cluster: Cluster) -> HostPool:
        """A copy-on-write pool of the live hosts ``cluster`` may use (its ``hosts``
        filter, else every live host of ``snapshot``): placing on it leaves the snapshot
        as it is. Plan with one pool of a snapshot at a time, and do not change the
        snapshot while it is used (a :class:`~skedlib.scheduling.SnapshotCache` view
        holds it still)."""
        pool = cls.__new__(cls)
        if cluster.hosts is None:
            base: Mapping[str, HostState] = snapshot.hosts
            pool._init(base, {}, snapshot.share_index(), leased=True)
        else:
            base = {n: snapshot.hosts[n] for n in cluster.hosts if n in snapshot.hosts}
            pool._init(base, {}, ShareIndex(base.values()), leased=False)
        return pool

    def _init(self, base: Mapping[str, HostState], own: dict[str, HostState],
              index: ShareIndex, leased: bool) -> None:
        self._base, self._own = base, own
        self._index = index
        self._leased = leased
        self._returned = False
        self._out: set[str] = set()
        """Hosts changed by this plan whose share keys are out of the index: put back
        before the next walk by share (a run of placements on one host moves its keys
        once; a plan that walks by load only never puts them back)."""
        self._out_loads: set[str] = set()
        """The same for the load orders (:meth:`least_loaded`)."""
        self._fresh: set[str] = set()
        """Hosts of :attr:`_out_loads` changed since the last walk that passed over
        some (the others were left out because it passes over them)."""
        self._keys_in: dict[str, tuple[float, str] | None] = {}
        """Hosts this plan changed → the load key :meth:`_ready_loads` put in for them
        (what they hold until they change again and go in :attr:`_out_loads`)."""
        self._held_for: object = None  # what that walk passed over
        if leased:
            index.lend(self._give_back)
        self._max_memory, self._max_cpu = index.max_memory, index.max_cpu
        self.by_name: Mapping[str, HostState] = own if base is own else _HostView(base, own)
        """Host name → its state in this plan."""
        self._hosts: list[HostState] | None = None
        self._position: dict[str, int] | None = None
        self._watchers: list[Callable[[HostState], None]] = []
        self.changes = 0
        """How many times :meth:`assign` or :meth:`release` changed a host."""
        self._fronts: dict[int, _Front] = {}
        """id(refused set) → how far walks with that set got (:meth:`tightest`)."""

    def _give_back(self) -> None:
        """Put the borrowed index as the snapshot has it (the snapshot calls this)."""
        index, out, out_loads, base = self._index, self._out, self._out_loads, self._base
        loads = bool(index.parts)
        keys = self._keys_in
        for name, host in self._own.items():
            # left in: applying this plan gives the snapshot's host the same keys
            index.hand_over(base[name], None if name in out else host_share(host),
                            keys.get(name) or load_key(host)
                            if loads and name not in out_loads else None)
        self._out, self._out_loads, self._fresh = set(), set(), set()
        self._keys_in = {}
        self._leased = False
        self._returned = True

    def _ready(self) -> ShareIndex:
        """The index to walk by share, every share key in: the borrowed one, or a
        private one once it was taken back."""
        own = self._own
        moved = [(host_share(own[name]), name) for name in self._out]
        for front in self._fronts.values():  # moved into a stretch walks now skip
            front.below.update(key[1] for key in moved if key < front.key)
        if self._returned:
            self._index = ShareIndex(self.by_name.values())
            self._returned = False
            self._out.clear()
            self._out_loads.clear()
            self._fresh.clear()
            self._keys_in.clear()
        elif moved:
            self._index.keys  # noqa: B018 (reading the order moves the changed hosts)
            self._out.clear()
        return self._index

    def _settled(self) -> ShareIndex:
        """The index as it is (share keys of the hosts this plan changed may be out: a
        walk by load does not need them), a private one first if the loan was taken
        back."""
        if self._returned:
            return self._ready()
        return self._index

    def _ready_loads(self, passed: Container[str] = ()) -> ShareIndex:
        """The index to walk by load, every load key in but those of the hosts in
        ``passed`` (that the walk passes over anyway) when this plan changed them."""
        index = self._index if not self._returned else self._ready()  # (_settled())
        out = self._out_loads
        if out:
            own = self._own
            keys = self._keys_in
            if passed and passed is self._held_for:
                for name in self._fresh:  # the others are held out for this walker
                    if name not in passed:
                        keys[name] = index.add_loads(own[name])
                        out.discard(name)
            elif not passed:
                for name in out:
                    keys[name] = index.add_loads(own[name])
                out.clear()
            else:
                for name in list(out):
                    if name not in passed:
                        keys[name] = index.add_loads(own[name])
                        out.discard(name)
        self._fresh.clear()
        self._held_for = passed if out else None
        return index

    def _unhold(self, name: str) -> None:
        """``name`` left what the last walk passed over: its keys go in at the next."""
        if name in self._out_loads:
            self._fresh.add(name)

    @property
    def hosts(self) -> list[HostState]:
        """Every host of the pool, in the snapshot's (or the given) order; built at the
        first use (an O(n) walk that placing along an index never needs)."""
        if self._hosts is None:
            view = self.by_name
            self._hosts = [view[n] for n in view]
        return self._hosts

    def watch(self, callback: Callable[[HostState], None]) -> None:
        """Call ``callback(host)`` after each :meth:`assign` or :meth:`release`, so an
        index kept by a scorer follows the hosts' load."""
        self._watchers.append(callback)

    def __len__(self) -> int:
        return len(self.by_name)

    def tightest(self, demand: Resources, refused: set[str] | None = None
                 ) -> Iterator[HostState]:
        """Hosts with room for ``demand`` (memory, CPU, disk), least free share first.

        ``refused``: hosts the caller found cannot take this demand for the rest of the
        plan; the walk adds the hosts without room to it, and the caller adds those its
        filters refuse. The pool then remembers how far walks with that set got and which
        hosts they met that were not refused, and the next walk goes on from there:
        placing the tasks of one service costs the hosts it looks at once, not once per
        task. The hosts met before, and those the plan moved back below that point, are
        walked again in order, so the hosts yielded are exactly those a full walk would
        yield that are not in ``refused``.
        """
        need_mem, need_cpu, need_disk = demand.memory, demand.cpu_units, demand.disk
        bound = (need_mem / self._max_memory + need_cpu / self._max_cpu - 1e-9, "")
        own, base = self._own, self._base
        keys = self._ready().keys
        known = self._fronts.get(id(refused)) if refused is not None else None
        if refused is None:
            refused = set()
            front = _Front(refused, bound)  # one walk: nothing to remember
        elif known is not None and known.refused is refused:
            front = known
        else:
            front = self._fronts[id(refused)] = _Front(refused, bound)
        start = max(bound, front.key)
        stream: Iterator[tuple[float, str]] = keys.from_(start)
        if front.below:
            back = []
            for name in list(front.below):
                key = (host_share(own.get(name) or base[name]), name)
                if name in refused or key >= start or key < bound:
                    front.below.discard(name)  # the stream has it, or no walk needs it
                else:
                    back.append(key)
            if back:
                back.sort()
                stream = heapq.merge(back, stream)
        for key in stream:
            name = key[1]
            if name not in refused:
                host = own.get(name) or base[name]
                # ResourcesFit's test, inline: most hosts a walk meets lack room in one
                # dimension, and skipping them here costs a fraction of the filters
                total, used = host.total, host.allocated
                if need_mem > total.memory - used.memory \
                        or need_cpu > total.cpu_units - used.cpu_units \
                        or (need_disk > total.disk - used.disk and total.disk):
                    refused.add(name)  # hosts only fill up while a plan places
                else:
                    yield host  # (a caller that stops here leaves the front before it)
                    if name not in refused:
                        front.below.add(name)  # behind the front from now on
            if key > front.key:
                front.key = key

    def loosest(self) -> Iterator[HostState]:
        """Every host, most free share first."""
        keys = self._ready().keys
        own, base = self._own, self._base
        for _, name in keys.descending():
            yield own.get(name) or base[name]

    def _loads(self, attribute: str) -> dict[str, SortedKeys[tuple[float, str]]]:
        """The load orders by ``attribute``, built at the first use; the keys of the
        hosts in :attr:`_out_loads` stay out of them."""
        index = self._settled()
        parts = index.parts.get(attribute)
        if parts is not None:
            return parts
        own, out = self._own, self._out_loads
        if not self._leased:  # built from this plan's hosts
            parts = index.loads(attribute, self.by_name.values())
            for name in out:
                parts[value_of(own[name], attribute)].discard(load_key(own[name]))
            return parts
        # built from the snapshot's hosts: the hosts this plan changed move to its keys
        parts = index.loads(attribute, self._base.values())
        base = self._base
        for name, host in own.items():
            parts[value_of(base[name], attribute)].discard(load_key(base[name]))
            if name not in out:
                parts.setdefault(value_of(host, attribute), SortedKeys()).add(load_key(host))
        return parts

    def values(self, attribute: str) -> list[str]:
        """The values ``attribute`` takes on the pool's hosts (``""`` for a host
        without it), in no particular order."""
        parts = self._loads(attribute)
        self._ready_loads()  # a value whose only hosts changed must count
        return [v for v, keys in parts.items() if len(keys)]

    def least_loaded(self, attribute: str = "", value: str = "") -> Iterator[HostState]:
        """The hosts (those whose ``attribute`` is ``value``, when given), the best for
        :class:`LeastLoaded` first, ties by name; O(log n) to start, from an index the
        snapshot keeps across plans."""
        part = self._loads(attribute).get(value if attribute else "")
        if part is None:
            return
        own, base = self._own, self._base
        self._ready_loads()  # (a walk runs lazily: changed hosts' keys go in)
        for _, name in part:
            yield own.get(name) or base[name]

    def load_keys(self, attribute: str, value: str) -> Iterator[tuple[float, str]]:
        """:meth:`least_loaded`'s :func:`~skedlib.scheduling.snapshot.load_key` s."""
        part = self._loads(attribute).get(value if attribute else "")
        if part is not None:
            self._ready_loads()
            yield from part

    def _mine(self, name: str) -> HostState:
        """The pool's own state of host ``name`` (copied from the snapshot first), its
        keys taken out of the index until the next walk puts them back."""
        if self._returned:
            self._ready()
        host = self._own.get(name)
        if host is None:
            host = self._own[name] = self._base[name].copy()
            if self._hosts is not None:
                if self._position is None:
                    self._position = {h.name: i for i, h in enumerate(self._hosts)}
                self._hosts[self._position[name]] = host
        index = self._index
        if name not in self._out:  # its share key moves when the order is next read
            index.moving(host, host)
            self._out.add(name)
        if name not in self._out_loads and index.parts:
            index.remove_loads(host, self._keys_in.pop(name, None))
            self._out_loads.add(name)
        self._fresh.add(name)
        return host

    def _moved(self, host: HostState) -> None:
        self.changes += 1
        for w in self._watchers:
            w(host)

    def assign(self, name: str, task_id: str, demand: Resources, port: int = 0,
               reserved: Iterable[int] = ()) -> None:
        """Count a task as placed on host ``name`` (see :meth:`HostState.assign`)."""
        host = self._mine(name)
        host.assign(task_id, demand, port, reserved)
        self._moved(host)

    def release(self, name: str, task_id: str, demand: Resources, port: int = 0,
                reserved: Iterable[int] = ()) -> None:
        """Count a task as gone from host ``name``."""
        host = self._mine(name)
        host.release(task_id, demand, port, reserved)
        self._moved(host)


_GIVE_UP = 64
"""Refused hosts after which a placer stops looking in a later group of a walk."""


class Placer:
    """Runs filters then scorers over hosts and assigns the task to the best one.

    A host is feasible when every filter returns None; among the feasible hosts the one
    with the highest sum of ``weight * score`` wins, ties going to the smaller host name
    (plans are deterministic). :meth:`place` records the choice in the pool, so the next
    request of the same plan sees it. Nothing is raised for a task that fits nowhere:
    :meth:`place` returns an :class:`Unschedulable` saying why.

    Args:
        filters: Feasibility checks, asked in order (:func:`stock_filters` and your own).
        scorers: Rankings; the first one decides how the hosts are searched (below).
        sample: How many feasible hosts a walk scores (first scorer with a ``walk``).
        min_sample: The least number of hosts the bounded sample scores.
        sample_share: The share of the hosts the bounded sample scores, if larger.

    Example:
        ```python
        pool = HostPool.of(snapshot, cluster)   # copy-on-write: the snapshot stays as is
        placer = Placer(stock_filters(), [LeastLoaded()])
        choice = placer.place(TaskRequest.for_task(task, service), pool)
        if isinstance(choice, Placement):
            plan.place.append(msgspec.structs.replace(task, host=choice.host))
        else:
            print(f"{task.id}: {choice}")   # 0/3 hosts fit: not enough memory on 3 hosts
        ```

    How many hosts it looks at depends on its first scorer:

    - one with :meth:`Scorer.strata` (:class:`SpreadAttribute`): the first feasible host
      of each group of that walk is scored (once a host is found, a later group is given
      up after 64 refused hosts);
    - one that declares a :attr:`Scorer.walk`: the pool is walked in that order and the
      first ``sample`` feasible hosts are scored;
    - any other (a custom scorer without a walk): a bounded sample, as Kubernetes'
      ``percentageOfNodesToScore``: at most ``max(min_sample, sample_share * hosts)``
      feasible hosts are scored, taken in a rotating order (each choice starts where the
      last one stopped), so a plan costs O(sample) per task instead of O(hosts); the best
      of the sample wins, which may be worse than the best host (bench/scaling.py
      measures by how much; docs/performance.md).

    When the walk or sample finds no feasible host, every host is filtered, to find one
    or report why there is none.
    """

    def __init__(self, filters: Sequence[Filter], scorers: Sequence[Scorer],
                 sample: int = 4, min_sample: int = 100, sample_share: float = 0.05
                 ) -> None:
        self.filters = list(filters)
        self.scorers = list(scorers)
        self.sample = sample
        self.min_sample = min_sample
        self.sample_share = sample_share
        self._refused: dict[tuple[object, ...], set[str]] = {}
        self._last_refused: tuple[tuple[object, ...], set[str]] | None = None
        self._next = 0  # where the next sampled search starts
        self._last_ports: tuple[object, list[int]] = (None, [])
        first = self.scorers[0] if self.scorers else None
        self._walker: Scorer | None = first \
            if first is not None and type(first).strata is not Scorer.strata else None
        """The first scorer when it has a walk by :meth:`Scorer.strata`."""
        self._rest = tuple(self.scorers[1:])
        """The scorers after the first (what :meth:`Scorer.strata` is asked with)."""
        self._runs = (first is not None and first.walk == "tightest"
                      and self._walker is None
                      and all(s.sticky and s.weight >= 0 for s in self.scorers)
                      and all(f.monotonic or f.local for f in self.filters))
        """Whether identical requests may be placed in a run (:attr:`Scorer.sticky`)."""
        self._walked = False  # the last choice came from the tightest walk
        self._run: tuple[HostPool, int, TaskRequest, str] | None = None
        """The pool, its change count, the request and the host of the last placement
        a run may go on from."""
        self._needed_for: tuple[object, object, object, int, list[Filter]] | None = None
        """The definition, service, constraints and port of the last request, and the
        filters it needs (:meth:`_needed`)."""

    def _needed(self, request: TaskRequest) -> list[Filter]:
        """The filters that may refuse a host for ``request`` (:meth:`Filter.needed`),
        worked out once for a service's identical requests."""
        task = request.task
        if task.rejected_hosts or task.capacity_rejections:
            return self.filters
        last = self._needed_for
        definition, service, constraints = task.task_definition, request.service, \
            request.constraints
        if last is None or last[0] is not definition or last[1] is not service or \
                last[2] != constraints or last[3] != task.port:
            last = self._needed_for = (definition, service, constraints, task.port,
                                       [f for f in self.filters if f.needed(request)])
        return last[4]

    def _refusal(self, request: TaskRequest, host: HostState,
                 refused: set[str] | None = None) -> str | None:
        for f in self._needed(request):
            reason = f.filter(request, host)
            if reason is not None:
                if refused is not None and f.monotonic:
                    refused.add(host.name)
                return reason
        return None

    def _score(self, request: TaskRequest, host: HostState) -> float:
        scorers = self.scorers
        total: float = 0  # sum()'s result, added in the same order, without its generator
        for s in scorers:
            total += s.weight * s.score(request, host)
        return total

    def _refused_for(self, request: TaskRequest, pool: HostPool) -> set[str]:
        demand = request.demand
        key = (id(pool), demand.memory, demand.cpu_units, demand.disk,
               request.task.task_definition.port, request.constraints)
        last = self._last_refused
        if last is not None and last[0] == key:  # (no hash of the constraints)
            return last[1]
        refused = self._refused.setdefault(key, set())
        self._last_refused = (key, refused)
        return refused

    def choose(self, request: TaskRequest, pool: HostPool) -> Placement | Unschedulable:
        """The best feasible host for ``request``, or why there is none. Does not assign.

        Returns:
            A :class:`Placement` (the host and its score), or an :class:`Unschedulable`
            counting the hosts each reason refused.
        """
        self._walked = False
        walker = self._walker
        strata = None
        if walker is not None:
            shortcut = walker._first(request, pool, self._rest)
            if shortcut is not None:
                # the walk's first host, when it passes and beats every later group, is
                # what the walk below would choose
                host, score, bound = shortcut
                refused = self._refused_for(request, pool)
                if host.name not in refused and \
                        self._refusal(request, host, refused) is None and \
                        (bound is None or score > bound):
                    return Placement(host.name, score)
            strata = walker.strata(request, pool, self._rest)
        best: tuple[float, str] | None = None
        if strata is not None:
            refused = self._refused_for(request, pool)
            for group in strata:
                if isinstance(group, float):  # no host after it scores more
                    if best is not None and best[0] > group:
                        break
                    continue
                skipped = 0
                for host in group:
                    if host.name in refused or \
                            self._refusal(request, host, refused) is not None:
                        skipped += 1
                        # a later group refused wholesale (distinct_host) must not cost
                        # O(hosts) per task once some host was found
                        if best is not None and skipped >= _GIVE_UP:
                            break
                        continue
                    best = _better(best, self._score(request, host), host.name)
                    break  # the group's first feasible host is its best
        elif self.scorers and (first := self.scorers[0]).walk is not None:
            self._walked = first.walk == "tightest"
            refused = self._refused_for(request, pool)
            hosts = pool.tightest(request.demand, refused) if self._walked \
                else pool.loosest()
            looked = 0
            for host in hosts:
                if host.name in refused or \
                        self._refusal(request, host, refused) is not None:
                    continue
                best = _better(best, self._score(request, host), host.name)
                looked += 1
                if looked >= self.sample:
                    break
        elif len(pool) > (limit := max(self.min_sample,
                                       math.ceil(self.sample_share * len(pool)))):
            best = self._sampled(request, pool, limit)
        if best is not None:
            return Placement(best[1], best[0])
        reasons: Counter[str] = Counter()
        for host in pool.hosts:
            reason = self._refusal(request, host)
            if reason is not None:
                reasons[reason] += 1
                continue
            best = _better(best, self._score(request, host), host.name)
        if best is None:
            return Unschedulable(dict(reasons), len(pool))
        return Placement(best[1], best[0], dict(reasons))

    def _sampled(self, request: TaskRequest, pool: HostPool, limit: int
                 ) -> tuple[float, str] | None:
        """The best of up to ``limit`` feasible hosts, from where the last search
        stopped (hosts that are all refused cost one pass over the pool)."""
        hosts, n = pool.hosts, len(pool)
        refused = self._refused_for(request, pool)
        best: tuple[float, str] | None = None
        looked = 0
        start = self._next % n
        for k in range(n):
            host = hosts[(start + k) % n]
            if host.name in refused or self._refusal(request, host, refused) is not None:
                continue
            best = _better(best, self._score(request, host), host.name)
            looked += 1
            if looked >= limit:
                self._next = start + k + 1
                break
        else:
            self._next = start
        return best

    def _executor_ports(self, definition: TaskDefinition) -> list[int]:
        """``definition.executor_ports()``, remembered for the last definition asked
        about (a plan places many tasks of one definition)."""
        last, ports = self._last_ports
        if last is not definition:
            ports = definition.executor_ports()
            self._last_ports = (definition, ports)
        return ports

    def place(self, request: TaskRequest, pool: HostPool) -> Placement | Unschedulable:
        """Choose a host and record the task on it (and in ``request.service_hosts``).

        Args:
            request: The task to place.
            pool: The plan's hosts; the chosen one is charged the request's demand.

        Returns:
            A :class:`Placement`, or an :class:`Unschedulable` (nothing is recorded then);
            it does not raise for a task that fits nowhere.
        """
        # (no call when no run goes on: a placer without runs, such as spread's, never
        # has one)
        result = (self._go_on(request, pool) if self._run is not None else None) or \
            self.choose(request, pool)
        if isinstance(result, Placement):
            task = request.task
            pool.assign(result.host, request.task_id or task.id, request.demand, task.port,
                        self._executor_ports(task.task_definition))
            counts = request.service_hosts  # (+= 1 without Counter.__missing__'s call)
            counts[result.host] = counts.get(result.host, 0) + 1
            self._run = (pool, pool.changes, request, result.host) \
                if self._walked and self._runs and not task.rejected_hosts \
                and not task.capacity_rejections else None
        return result

    def _go_on(self, request: TaskRequest, pool: HostPool) -> Placement | None:
        """The host of the last placement, when ``request`` is identical to its request
        and that host still passes the filters: what a walk would choose again (see
        :attr:`Scorer.sticky`), without walking. None when no run goes on."""
        run = self._run
        if run is None:
            return None
        last_pool, changes, last, name = run
        task, was = request.task, last.task
        if last_pool is not pool or changes != pool.changes or \
                task.task_definition is not was.task_definition or \
                request.service is not last.service or \
                request.service_hosts is not last.service_hosts or \
                task.port != was.port or task.rejected_hosts or task.capacity_rejections \
                or request.demand != last.demand or request.constraints != last.constraints:
            return None
        host = pool.by_name[name]
        for f in self._needed(request):
            if f.filter(request, host) is not None:
                return None
        self._walked = True
        return Placement(name, self._score(request, host))


def _better(best: tuple[float, str] | None, score: float, name: str) -> tuple[float, str]:
    """Highest score wins; on a tie, the smallest host name (plans are deterministic)."""
    if best is None or score > best[0] or (score == best[0] and name < best[1]):
        return (score, name)
    return best


def stock_filters() -> list[Filter]:
    """The feasibility filters every reference scheduler uses."""
    return [NotDraining(), NotRejectedBefore(), ResourcesFit(), PortsFree(),
            ConstraintsFilter(), DistinctHostFilter()]
