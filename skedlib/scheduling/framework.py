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
from collections import Counter
from collections.abc import Sequence

import msgspec

from skedlib.models import Resources, Service, Task
from skedlib.scheduling.constraints import Constraint, parse_constraint
from skedlib.scheduling.snapshot import HostState

__all__ = [
    "BestFit",
    "ConstraintsFilter",
    "DistinctHostFilter",
    "Filter",
    "LeastLoaded",
    "NotDraining",
    "NotRejectedBefore",
    "Placement",
    "Placer",
    "PortsFree",
    "ResourcesFit",
    "Scorer",
    "SpreadAttribute",
    "TaskRequest",
    "Unschedulable",
    "stock_filters",
]


class TaskRequest(msgspec.Struct, kw_only=True):
    """One task to place, with what the filters and scorers need to know."""

    task: Task
    demand: Resources
    service: Service | None = None
    constraints: tuple[Constraint, ...] = ()
    service_hosts: Counter[str] = msgspec.field(default_factory=Counter)
    """How many tasks of the same service each host holds (kept up to date by the placer)."""

    @classmethod
    def for_task(cls, task: Task, service: Service | None,
                 service_hosts: Counter[str] | None = None) -> TaskRequest:
        """Build a request; parses the service's constraints."""
        td = task.task_definition
        return cls(task=task, demand=Resources(memory=td.total_memory(),
                                               cpu_units=td.total_cpu_units(),
                                               disk=td.total_disk()),
                   service=service,
                   constraints=tuple(parse_constraint(c) for c in
                                     (service.constraints if service else [])),
                   service_hosts=service_hosts if service_hosts is not None else Counter())


class Filter(abc.ABC):
    """Feasibility: may ``request`` go on ``host``? ``None`` if so, else the reason."""

    name: str = ""

    @abc.abstractmethod
    def filter(self, request: TaskRequest, host: HostState) -> str | None:
        """``None`` when feasible; else a short reason."""


class Scorer(abc.ABC):
    """Ranking of feasible hosts: higher is better. Scores should lie in [0, 1]."""

    name: str = ""
    weight: float = 1.0

    @abc.abstractmethod
    def score(self, request: TaskRequest, host: HostState) -> float:
        """How good ``host`` is for ``request``."""


class ResourcesFit(Filter):
    """The host has the memory, CPU and disk the task needs."""

    name = "resources"

    def filter(self, request: TaskRequest, host: HostState) -> str | None:
        free, need = host.free, request.demand
        if need.memory > free.memory:
            return "not enough memory"
        if need.cpu_units > free.cpu_units:
            return "not enough cpu"
        if need.disk > free.disk and host.total.disk:
            return "not enough disk"
        return None


class PortsFree(Filter):
    """A fixed port the task needs is free on the host."""

    name = "ports"

    def filter(self, request: TaskRequest, host: HostState) -> str | None:
        port = request.task.task_definition.port
        return f"port {port} in use" if port and port in host.ports else None


class NotDraining(Filter):
    """The host is not being drained."""

    name = "draining"

    def filter(self, request: TaskRequest, host: HostState) -> str | None:
        return "host is draining" if host.draining else None


class NotRejectedBefore(Filter):
    """The host has not rejected this task before."""

    name = "rejected"

    def filter(self, request: TaskRequest, host: HostState) -> str | None:
        return "host rejected this task" if host.name in request.task.rejected_hosts else None


class ConstraintsFilter(Filter):
    """The service's attribute constraints hold on the host."""

    name = "constraints"

    def filter(self, request: TaskRequest, host: HostState) -> str | None:
        for c in request.constraints:
            if not c.matches(host.name, host.attributes):
                return f"constraint {c.text!r}"
        return None


class DistinctHostFilter(Filter):
    """With ``distinct_host``, at most one task of the service per host."""

    name = "distinct_host"

    def filter(self, request: TaskRequest, host: HostState) -> str | None:
        if any(c.distinct_host for c in request.constraints) and \
                request.service_hosts[host.name]:
            return "distinct_host: already runs a task of the service"
        return None


class BestFit(Scorer):
    """Prefer the host left with the least free memory and CPU after placement."""

    name = "best_fit"

    def score(self, request: TaskRequest, host: HostState) -> float:
        free, total, need = host.free, host.total, request.demand
        mem = (free.memory - need.memory) / total.memory if total.memory else 0.0
        cpu = (free.cpu_units - need.cpu_units) / total.cpu_units if total.cpu_units else 0.0
        return 1.0 - (mem + cpu) / 2


class LeastLoaded(Scorer):
    """Prefer the host with the most free resources, and the fewest tasks."""

    name = "least_loaded"

    def score(self, request: TaskRequest, host: HostState) -> float:
        free, total = host.free, host.total
        mem = free.memory / total.memory if total.memory else 0.0
        cpu = free.cpu_units / total.cpu_units if total.cpu_units else 0.0
        return (mem + cpu) / 2 + 1.0 / (1 + len(host.tasks))


class SpreadAttribute(Scorer):
    """Prefer hosts whose value of ``attribute`` holds the fewest tasks of the service
    (``attribute=""``: spread over hosts)."""

    name = "spread"

    def __init__(self, attribute: str = "", hosts: Sequence[HostState] = ()) -> None:
        self.attribute = attribute
        self._value_of = {h.name: h.attributes.get(attribute, "") for h in hosts}

    def score(self, request: TaskRequest, host: HostState) -> float:
        if not self.attribute:
            return 1.0 / (1 + request.service_hosts[host.name])
        value = host.attributes.get(self.attribute, "")
        count = sum(n for name, n in request.service_hosts.items()
                    if self._value_of.get(name) == value)
        return 1.0 / (1 + count)


class Placement(msgspec.Struct, frozen=True):
    """A host chosen for a task."""

    host: str
    score: float


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


class Placer:
    """Runs filters then scorers over hosts and assigns the task to the best one."""

    def __init__(self, filters: Sequence[Filter], scorers: Sequence[Scorer]) -> None:
        self.filters = list(filters)
        self.scorers = list(scorers)

    def choose(self, request: TaskRequest,
               hosts: Sequence[HostState]) -> Placement | Unschedulable:
        """The best feasible host for ``request``, or why there is none. Does not assign."""
        best: tuple[float, str] | None = None
        refused: Counter[str] = Counter()
        for host in hosts:
            reason = None
            for f in self.filters:
                reason = f.filter(request, host)
                if reason is not None:
                    break
            if reason is not None:
                refused[reason] += 1
                continue
            score = sum(s.weight * s.score(request, host) for s in self.scorers)
            # highest score wins; on a tie, the smallest host name (deterministic)
            if best is None or score > best[0] or (score == best[0] and host.name < best[1]):
                best = (score, host.name)
        if best is None:
            return Unschedulable(dict(refused), len(hosts))
        return Placement(best[1], best[0])

    def place(self, request: TaskRequest, hosts: Sequence[HostState],
              by_name: dict[str, HostState]) -> Placement | Unschedulable:
        """Choose a host and record the task on it (and in ``request.service_hosts``)."""
        result = self.choose(request, hosts)
        if isinstance(result, Placement):
            host = by_name[result.host]
            host.assign(request.task.id, request.demand, request.task.port)
            request.service_hosts[host.name] += 1
        return result


def stock_filters() -> list[Filter]:
    """The feasibility filters every reference scheduler uses."""
    return [NotDraining(), NotRejectedBefore(), ResourcesFit(), PortsFree(),
            ConstraintsFilter(), DistinctHostFilter()]
