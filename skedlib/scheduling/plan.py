"""Plans: what a scheduler wants changed, checked before it is committed.

A :class:`Plan` places tasks (new ones, or existing ones moved to another host) and stops
tasks. :func:`validate_plan` checks it against the :class:`Snapshot` it was made from:
every placed task lands on a live, non-draining host that is not in its
``rejected_hosts``, no host ends up with more memory, CPU or disk allocated than it has,
and no host port is used twice. A plan that validates cannot overcommit a host as seen in
its snapshot.
"""

from __future__ import annotations

import operator
from collections.abc import Collection

import msgspec

from skedlib.models import Resources, Task
from skedlib.scheduling.snapshot import Snapshot, demand_of

__all__ = ["Plan", "PlanProblem", "validate_plan"]


class Plan(msgspec.Struct, kw_only=True, dict=True):
    """Tasks to place (with ``host`` set) and task ids to stop."""

    place: list[Task] = msgspec.field(default_factory=list)
    stop: list[str] = msgspec.field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.place or self.stop)

    def place_ids(self) -> list[str]:
        """The ids of :attr:`place`, in its order, formatted once for the plan.

        Checking, committing, recording and reporting a plan each need every placed
        task's id, and :attr:`Task.id <skedlib.models.Task.id>` formats it again each
        time. The list is kept while :attr:`place` holds the same task objects in the
        same order; a task whose id fields are changed in place after this is called
        keeps its old id here (replace it, e.g. with ``msgspec.structs.replace``). The
        list is the plan's: read it, do not change it."""
        place = self.place
        kept: tuple[list[Task], list[str]] | None = self.__dict__.get("_place_ids")
        if kept is not None and len(kept[0]) == len(place) and \
                all(map(operator.is_, kept[0], place)):
            return kept[1]
        ids = [t.id for t in place]
        self.__dict__["_place_ids"] = (list(place), ids)
        return ids

    def by_id(self) -> dict[str, Task]:
        """The placed tasks by id (:meth:`place_ids`)."""
        return dict(zip(self.place_ids(), self.place, strict=True))

    def without(self, task_ids: Collection[str]) -> Plan:
        """This plan but for the placements and stops of ``task_ids`` (what a check
        refused)."""
        return Plan(place=[t for t, tid in zip(self.place, self.place_ids(), strict=True)
                           if tid not in task_ids],
                    stop=[tid for tid in self.stop if tid not in task_ids])


class PlanProblem(msgspec.Struct, frozen=True):
    """Why part of a plan is invalid."""

    task_id: str
    host: str
    reason: str


def validate_plan(snapshot: Snapshot, plan: Plan) -> list[PlanProblem]:
    """Every problem with ``plan`` against ``snapshot``; empty when it may be committed."""
    problems: list[PlanProblem] = []
    # Only the hosts the plan places on can be overcommitted or get a port twice, so only
    # their books are opened: the cost follows the plan, not the cluster.
    allocated: dict[str, Resources] = {}
    ports: dict[str, dict[int, set[str]]] = {}
    for name in {t.host for t in plan.place}:
        host = snapshot.hosts.get(name)
        if host is None:
            continue
        allocated[name] = host.allocated
        held: dict[int, set[str]] = {}
        for task in snapshot.tasks_on(name):
            if not task.rejected:
                tid = task.id
                for port in task.reserved_ports():
                    held.setdefault(port, set()).add(tid)
        ports[name] = held
    ids = plan.place_ids()
    leaving = set(plan.stop) | {tid for tid in ids if tid in snapshot.tasks}
    for task_id in leaving:
        old = snapshot.tasks.get(task_id)
        if old is None or old.rejected or old.host not in allocated:
            continue
        allocated[old.host] = allocated[old.host] - demand_of(old.task_definition)
        for port in old.reserved_ports():
            ports[old.host].get(port, set()).discard(task_id)
    seen: set[str] = set()
    # a task's demand and ports follow from its definition and port: worked out once
    # per pair (a plan places many tasks of one definition)
    charges: dict[tuple[int, int], tuple[Resources, list[int]]] = {}
    for task, tid in zip(plan.place, ids, strict=True):
        name = task.host
        if tid in seen:
            problems.append(PlanProblem(tid, name, "placed twice in one plan"))
            continue
        seen.add(tid)
        if tid in plan.stop:
            problems.append(PlanProblem(tid, name, "both placed and stopped"))
            continue
        host = snapshot.hosts.get(name)
        if host is None:
            problems.append(PlanProblem(tid, name, "no live host of that name"))
            continue
        if host.draining:
            problems.append(PlanProblem(tid, name, "host is draining"))
        if name in task.rejected_hosts:
            problems.append(PlanProblem(tid, name, "host rejected this task before"))
        charge = charges.get((id(task.task_definition), task.port))
        if charge is None:
            charge = charges[(id(task.task_definition), task.port)] = (
                demand_of(task.task_definition), task.reserved_ports())
        allocated[name] = allocated[name] + charge[0]
        for port in charge[1]:
            holders = ports[name].setdefault(port, set())
            if holders - {tid}:
                problems.append(PlanProblem(tid, name, f"port {port} already used by "
                                                       f"{', '.join(sorted(holders))}"))
            holders.add(tid)
    for name, alloc in allocated.items():
        total = snapshot.hosts[name].total
        if not total.fits(alloc):
            placed_here = [tid for t, tid in zip(plan.place, ids, strict=True)
                           if t.host == name]
            if placed_here:
                problems.append(PlanProblem(placed_here[-1], name,
                                            f"overcommits the host: {alloc} of {total}"))
    return problems
