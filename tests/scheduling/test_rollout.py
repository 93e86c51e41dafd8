"""Rolling updates and draining in ServiceScheduler, simulated in-process.

Each step plans, applies the plan to the snapshot (as the daemon's cache does), then lets
"agents" report health for what was placed; the invariants are checked after every
step, not only at the end: never fewer than ``min`` healthy tasks, never more than
``max`` issued on live hosts.
"""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skedlib_reference import BinpackScheduler

from skedlib.models import (
    Cluster,
    Container,
    Host,
    HostConfig,
    Resources,
    RolloutHistory,
    Service,
    TaskDefinition,
    TaskHealth,
    UpdateStrategy,
)
from skedlib.scheduling import Snapshot

S = 1_000_000_000  # a second in nanoseconds


class Sim:
    """A snapshot driven by the scheduler, a clock, and agents that report health."""

    def __init__(self, service: Service, hosts: int = 4, bad_versions: set[int] = frozenset(),
                 ) -> None:
        self.now = 1000.0
        self.bad = bad_versions
        self.scheduler = BinpackScheduler()
        self.scheduler.clock = lambda: self.now  # type: ignore[method-assign]
        self.cluster = Cluster(name="c", services=[service.name])
        tds = [TaskDefinition(name="web", version=v, memory=100, cpu_units=10,
                              containers=[Container(name="x", type="process")])
               for v in (1, 2, 3)]
        self.snap = Snapshot(1, clusters=[self.cluster], services=[service],
                             task_definitions=tds,
                             hosts=[Host(name=f"h{i}", total=Resources(memory=10_000,
                                                                        cpu_units=10_000))
                                    for i in range(hosts)])
        self.service = service
        self.history: RolloutHistory | None = None
        self.seen_min_healthy = 10**9
        self.seen_max_total = 0

    def set(self, **changes: object) -> None:
        self.service = msgspec.structs.replace(self.service, **changes)  # type: ignore[arg-type]
        self.snap.services[self.service.name] = self.service

    def healthy(self) -> int:
        return sum(1 for t in self.live() if self.snap.is_healthy(t.id))

    def live(self) -> list:  # type: ignore[type-arg]
        return [t for t in self.snap.service_tasks("c", self.service.name)
                if not t.rejected and t.host in self.snap.hosts]

    def step(self, dt: float = 1.0) -> None:
        result = self.scheduler.plan(self.snap, self.cluster, self.service)
        self.snap.apply(result.plan.place, result.plan.stop)
        for tid in result.plan.stop:
            self.snap.health.pop(tid, None)
        for t in result.plan.place:  # a moved task restarts: unhealthy for now
            self.snap.health[t.id] = TaskHealth(task_id=t.id, host=t.host, healthy=False,
                                                since=self.now)
        if result.rollout is not None:
            rollouts = list(self.history.rollouts) if self.history else []
            if rollouts and rollouts[-1].started_at == result.rollout.started_at:
                rollouts[-1] = result.rollout
            else:
                rollouts.append(result.rollout)
            self.history = RolloutHistory(cluster="c", service=self.service.name,
                                          rollouts=rollouts)
            self.snap.rollouts[("c", self.service.name)] = self.history
        self.check()
        self.now += dt
        for t in self.live():  # tasks started last step pass their checks now
            h = self.snap.health.get(t.id)
            good = t.task_definition.version not in self.bad
            if h is None or h.healthy != good or (not good and not h.message):
                self.snap.health[t.id] = TaskHealth(task_id=t.id, host=t.host, healthy=good,
                                                    since=self.now,
                                                    message="" if good else "check failed")

    def check(self) -> None:
        live = self.live()
        healthy = self.healthy()
        self.seen_min_healthy = min(self.seen_min_healthy, healthy)
        self.seen_max_total = max(self.seen_max_total, len(live))
        assert len(live) <= max(self.service.max, self.service.desired), live
        assert len({t.id for t in live}) == len(live)

    def versions(self) -> list[int]:
        return sorted(t.task_definition.version for t in self.live())

    def run_until(self, cond: object, steps: int = 200, dt: float = 1.0) -> None:
        assert callable(cond)
        for _ in range(steps):
            if cond():
                return
            self.step(dt)
        raise AssertionError(f"not reached in {steps} steps: versions {self.versions()}, "
                             f"rollout {self.history.current if self.history else None}")


def _service(desired: int, min_: int = 0, max_: int = 0, parallel: int = 1,
             min_healthy_s: int = 0, deadline_s: int = 600,
             auto_revert: bool = False) -> Service:
    return Service(name="web", task_name="web", task_version=1, desired=desired, min=min_,
                   max=max_, update=UpdateStrategy(max_parallel=parallel,
                                                   min_healthy_time=min_healthy_s * S,
                                                   deadline=deadline_s * S,
                                                   auto_revert=auto_revert))


def _steady(sim: Sim) -> None:
    sim.run_until(lambda: sim.healthy() == sim.service.desired and
                  sim.versions() == [sim.service.task_version] * sim.service.desired)


@settings(max_examples=60, deadline=None)
@given(desired=st.integers(1, 8), data=st.data())
def test_rolling_update_keeps_min_and_max_and_finishes(desired: int,
                                                       data: st.DataObject) -> None:
    min_ = data.draw(st.integers(0, desired - 1), label="min")
    max_ = data.draw(st.integers(desired, desired + 3), label="max")
    parallel = data.draw(st.integers(1, 4), label="max_parallel")
    sim = Sim(_service(desired, min_, max_, parallel, min_healthy_s=2))
    _steady(sim)
    sim.seen_min_healthy = 10**9
    sim.set(task_version=2)
    sim.run_until(lambda: sim.history is not None and sim.history.current is not None
                  and sim.history.current.state == "succeeded")
    assert sim.versions() == [2] * desired
    assert sim.seen_min_healthy >= min_
    assert sim.seen_max_total <= max_
    current = sim.history.current  # type: ignore[union-attr]
    assert (current.from_version, current.to_version, current.updated) == (1, 2, desired)


def test_max_parallel_bounds_the_replacements_in_flight() -> None:
    sim = Sim(_service(6, min_=2, max_=9, parallel=2, min_healthy_s=5))
    _steady(sim)
    sim.set(task_version=2)
    for _ in range(12):
        sim.step()
        in_flight = [t for t in sim.live() if t.task_definition.version == 2 and not (
            sim.snap.is_healthy(t.id)
            and sim.now - sim.snap.health[t.id].since >= 5)]
        assert len(in_flight) <= 2 + 0  # never more than max_parallel uncounted new tasks


def test_a_bad_build_halts_keeps_min_and_is_reported() -> None:
    sim = Sim(_service(4, min_=3, max_=5, parallel=1, deadline_s=30), bad_versions={2})
    _steady(sim)
    sim.seen_min_healthy = 10**9
    sim.set(task_version=2)
    sim.run_until(lambda: sim.history and sim.history.current.state == "failed",
                  steps=100)
    current = sim.history.current  # type: ignore[union-attr]
    assert "deadline of 30s passed with 0/4 tasks of version 2 healthy: check failed" \
        in current.message
    for _ in range(10):
        sim.step()
    assert sim.healthy() >= 3 and sim.seen_min_healthy >= 3
    assert all(v == 1 for v in sim.versions()), "unhealthy new tasks are stopped"
    assert sim.history.current.state == "failed"  # type: ignore[union-attr]


def test_no_surge_and_min_equal_desired_reports_why_it_cannot_progress() -> None:
    sim = Sim(_service(3, min_=3, max_=3))
    _steady(sim)
    sim.set(task_version=2)
    sim.step()
    current = sim.history.current  # type: ignore[union-attr]
    assert current.state == "running" and "leave no room" in current.message
    assert sim.versions() == [1, 1, 1]


def test_draining_moves_tasks_off_respecting_min() -> None:
    sim = Sim(_service(4, min_=3, parallel=4), hosts=2)
    _steady(sim)
    busy = sim.live()[0].host
    sim.snap.host_configs[busy] = HostConfig(name=busy, draining=True)
    sim.snap.put_host_config(busy, sim.snap.host_configs[busy])
    sim.seen_min_healthy = 10**9
    sim.run_until(lambda: all(t.host != busy for t in sim.live()) and sim.healthy() == 4)
    assert sim.seen_min_healthy >= 3
    assert len(sim.live()) == 4


@pytest.mark.parametrize("auto_revert", [True, False])
def test_failed_rollout_records_state_for_the_daemon(auto_revert: bool) -> None:
    sim = Sim(_service(2, min_=1, deadline_s=10, auto_revert=auto_revert),
              bad_versions={3})
    _steady(sim)
    sim.set(task_version=3)
    sim.run_until(lambda: sim.history and sim.history.current.state == "failed")
    # the plan only reports; reverting the service is the daemon's job (tested there)
    assert sim.service.task_version == 3
    sim.set(task_version=1)  # what auto_revert writes
    _steady(sim)
    assert sim.versions() == [1, 1]


def test_a_reverted_version_applied_again_is_a_new_attempt() -> None:
    sim = Sim(_service(2, min_=1, deadline_s=10, auto_revert=True), bad_versions={2})
    _steady(sim)
    sim.set(task_version=2)
    sim.run_until(lambda: sim.history and sim.history.current.state == "failed")
    reverted = msgspec.structs.replace(sim.history.current, reverted_to=1)  # the daemon's
    sim.history = RolloutHistory(cluster="c", service="web",
                                 rollouts=[*sim.history.rollouts[:-1], reverted])
    sim.snap.rollouts[("c", "web")] = sim.history
    sim.set(task_version=1)
    _steady(sim)
    sim.bad = set()  # fixed under the same version number, applied again
    sim.set(task_version=2)
    sim.run_until(lambda: sim.history.current.state == "succeeded")
    # (the revert needed no rollout: the failed version's tasks had all been stopped)
    assert [(r.from_version, r.to_version, r.state) for r in sim.history.rollouts] == [
        (1, 2, "failed"), (1, 2, "succeeded")]
