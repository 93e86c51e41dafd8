"""The ``daemon`` reference scheduler's rolling update, simulated in-process.

Each step plans, applies the plan to the snapshot (as the daemon's cache does), checks
the invariants, then lets "agents" report health for what was placed (a task placed in
one step is healthy from the next on, unless its version is bad). The invariants hold
after every step: at most one task per host, at most ``max_parallel`` hosts whose task of
the new version is not healthy, never fewer than ``min`` healthy tasks.
"""

from __future__ import annotations

import msgspec
import pytest
from skedlib_reference import DaemonScheduler

from skedlib.models import (
    Cluster,
    Container,
    Host,
    Resources,
    Service,
    Task,
    TaskDefinition,
    TaskHealth,
    UpdateStrategy,
)
from skedlib.scheduling import Snapshot, validate_plan


class Sim:
    """A snapshot driven by the daemon scheduler and agents that report health."""

    def __init__(self, hosts: int = 5, parallel: int = 1, min_: int = 0,
                 bad: frozenset[int] = frozenset()) -> None:
        self.bad = bad
        self.scheduler = DaemonScheduler()
        self.cluster = Cluster(name="c", services=["agentd"])
        self.service = Service(name="agentd", task_name="d", task_version=1, desired=0,
                               min=min_, scheduler="daemon",
                               update=UpdateStrategy(max_parallel=parallel))
        tds = [TaskDefinition(name="d", version=v, memory=100, cpu_units=10,
                              containers=[Container(name="x", type="process")])
               for v in (1, 2, 3)]
        self.snap = Snapshot(1, clusters=[self.cluster], services=[self.service],
                             task_definitions=tds,
                             hosts=[self.host(f"h{i}") for i in range(hosts)])
        self.seen_min_healthy = 10**9
        self.seen_max_in_flight = 0
        self.last_unschedulable: dict[str, str] = {}

    @staticmethod
    def host(name: str, **attributes: str) -> Host:
        return Host(name=name, total=Resources(memory=1000, cpu_units=1000),
                    attributes=attributes)

    def set(self, **changes: object) -> None:
        self.service = msgspec.structs.replace(self.service, **changes)  # type: ignore[arg-type]
        self.snap.services[self.service.name] = self.service

    def tasks(self) -> list[Task]:
        return self.snap.service_tasks("c", "agentd")

    def healthy(self) -> list[Task]:
        return [t for t in self.tasks() if self.snap.is_healthy(t.id) and not t.rejected]

    def versions(self) -> dict[str, int]:
        return {t.host: t.task_definition.version for t in self.tasks()}

    def step(self) -> None:
        result = self.scheduler.plan(self.snap, self.cluster, self.service)
        assert validate_plan(self.snap, result.plan) == []
        self.last_unschedulable = result.unschedulable
        self.snap.apply(result.plan.place, result.plan.stop)
        for tid in result.plan.stop:
            self.snap.health.pop(tid, None)
        self.check()
        for t in self.tasks():  # placed last step: reports now
            if t.id not in self.snap.health and not t.rejected:
                good = t.task_definition.version not in self.bad
                self.snap.health[t.id] = TaskHealth(task_id=t.id, host=t.host, healthy=good,
                                                    message="" if good else "check failed")

    def check(self) -> None:
        hosts = [t.host for t in self.tasks()]
        assert len(hosts) == len(set(hosts)), f"two tasks on one host: {sorted(hosts)}"
        v = self.service.task_version
        in_flight = [t for t in self.tasks()
                     if t.task_definition.version == v and not self.snap.is_healthy(t.id)]
        self.seen_max_in_flight = max(self.seen_max_in_flight, len(in_flight))
        self.seen_min_healthy = min(self.seen_min_healthy, len(self.healthy()))

    def run_until(self, cond: object, steps: int = 50) -> None:
        assert callable(cond)
        for _ in range(steps):
            if cond():
                return
            self.step()
        raise AssertionError(f"not reached in {steps} steps: {self.versions()}")

    def all_on(self, version: int) -> bool:
        return (len(self.healthy()) == len(self.snap.hosts) and
                set(self.versions().values()) == {version})


@pytest.mark.parametrize("parallel", [1, 2, 3])
def test_a_new_version_is_rolled_host_by_host(parallel: int) -> None:
    sim = Sim(hosts=5, parallel=parallel)
    sim.run_until(lambda: sim.all_on(1))
    sim.seen_max_in_flight, sim.seen_min_healthy = 0, 10**9
    sim.set(task_version=2)
    sim.step()
    assert sorted(sim.versions().values()).count(2) == parallel  # the first batch only
    sim.run_until(lambda: sim.all_on(2))
    assert sim.seen_max_in_flight == parallel
    assert sim.seen_min_healthy == 5 - parallel
    assert sorted(sim.versions()) == [f"h{i}" for i in range(5)]


def test_min_healthy_is_honoured() -> None:
    sim = Sim(hosts=5, parallel=3, min_=4)
    sim.run_until(lambda: sim.all_on(1))
    sim.seen_max_in_flight, sim.seen_min_healthy = 0, 10**9
    sim.set(task_version=2)
    sim.run_until(lambda: sim.all_on(2))
    assert sim.seen_min_healthy == 4 and sim.seen_max_in_flight == 1


def test_a_version_that_never_gets_healthy_halts_after_the_first_batch() -> None:
    sim = Sim(hosts=5, parallel=2, bad=frozenset({2}))
    sim.run_until(lambda: sim.all_on(1))
    sim.set(task_version=2)
    for _ in range(10):
        sim.step()
    assert sorted(sim.versions().values()) == [1, 1, 1, 2, 2]
    assert len(sim.healthy()) == 3
    sim.set(task_version=1)  # roll back: the broken hosts are replaced first, at once
    sim.run_until(lambda: sim.all_on(1), steps=3)


def test_hosts_that_join_during_a_rollout_get_the_new_version_at_once() -> None:
    sim = Sim(hosts=4, parallel=1)
    sim.run_until(lambda: sim.all_on(1))
    sim.set(task_version=2)
    sim.step()
    sim.snap.put_host(Sim.host("h9"))
    sim.step()
    assert sim.versions()["h9"] == 2
    sim.run_until(lambda: sim.all_on(2))


def test_a_host_that_leaves_loses_its_task_and_a_new_one_gets_one() -> None:
    sim = Sim(hosts=3)
    sim.run_until(lambda: sim.all_on(1))
    sim.snap.remove_host("h1")
    sim.snap.put_host(Sim.host("h7"))
    result = sim.scheduler.plan(sim.snap, sim.cluster, sim.service)
    assert [t.host for t in result.plan.place] == ["h7"]
    assert result.plan.stop == [t.id for t in sim.tasks() if t.host == "h1"]


def test_a_rejected_task_stays_and_is_not_placed_again() -> None:
    sim = Sim(hosts=2)
    sim.run_until(lambda: sim.all_on(1))
    (task,) = [t for t in sim.tasks() if t.host == "h0"]
    rejected = msgspec.structs.replace(task, rejected=True, reject_reason="port in use",
                                       rejected_hosts=["h0"])
    sim.snap.put_task(rejected, 2)
    sim.snap.health.pop(task.id)
    result = sim.scheduler.plan(sim.snap, sim.cluster, sim.service)
    assert result.plan.place == [] and result.plan.stop == []
    assert result.unschedulable == {task.id: "host h0 rejected it: port in use"}
    sim.set(task_version=2)  # a new version tries the host again
    sim.step()
    assert sim.versions()["h0"] == 2


def test_tasks_on_hosts_that_no_longer_satisfy_the_constraints_stop() -> None:
    sim = Sim(hosts=0)
    for name, zone in (("a1", "a"), ("b1", "b"), ("a2", "a")):
        sim.snap.put_host(Sim.host(name, zone=zone))
    sim.run_until(lambda: sim.all_on(1))
    sim.set(constraints=["attribute:zone == a"])
    sim.step()
    assert sorted(sim.versions()) == ["a1", "a2"]
