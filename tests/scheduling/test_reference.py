"""The reference schedulers, loaded by name through the plugin registry."""

from __future__ import annotations

import math
import random

import pytest

from skedlib.models import Cluster, Container, Host, Resources, Service, TaskDefinition
from skedlib.plugins import get_registry
from skedlib.scheduling import Snapshot, validate_plan


def _scheduler(name: str):
    return get_registry().scheduler_factory(name)()


def _td(memory: int, cpu: int = 0) -> TaskDefinition:
    return TaskDefinition(name="web", version=1, memory=memory, cpu_units=cpu,
                          containers=[Container(name="c", type="process")])


def _snapshot(hosts: list[Host], td: TaskDefinition, service: Service) -> Snapshot:
    return Snapshot(1, clusters=[Cluster(name="c", services=[service.name])],
                    services=[service], task_definitions=[td], hosts=hosts)


@pytest.mark.parametrize("seed", range(5))
def test_binpack_uses_few_hosts(seed: int) -> None:
    rng = random.Random(seed)
    capacity = 4096
    hosts = [Host(name=f"h{i:03d}", total=Resources(memory=capacity, cpu_units=4096))
             for i in range(60)]
    memory = rng.choice([256, 384, 512, 1000])
    svc = Service(name="web", task_name="web", task_version=1, desired=rng.randint(40, 120))
    td = _td(memory)
    snap = _snapshot(hosts, td, svc)
    result = _scheduler("binpack").plan(snap, snap.clusters["c"], svc)
    assert not result.unschedulable and validate_plan(snap, result.plan) == []
    used = {t.host for t in result.plan.place}
    lower_bound = math.ceil(svc.desired / (capacity // memory))
    assert len(used) == lower_bound


def test_spread_is_even_over_hosts_and_zones() -> None:
    hosts = [Host(name=f"h{i}", total=Resources(memory=10_000, cpu_units=10_000),
                  attributes={"zone": "abc"[i % 3]}) for i in range(7)]
    svc = Service(name="web", task_name="web", task_version=1, desired=20,
                  constraints=["spread:zone"])
    snap = _snapshot(hosts, _td(100), svc)
    result = _scheduler("spread").plan(snap, snap.clusters["c"], svc)
    per_host = [sum(1 for t in result.plan.place if t.host == h.name) for h in hosts]
    zones = {z: sum(n for h, n in zip(hosts, per_host, strict=True)
                    if h.attributes["zone"] == z) for z in "abc"}
    assert max(zones.values()) - min(zones.values()) <= 1
    assert sum(per_host) == 20


def test_spread_without_attribute_levels_hosts() -> None:
    hosts = [Host(name=f"h{i}", total=Resources(memory=10_000, cpu_units=10_000))
             for i in range(6)]
    svc = Service(name="web", task_name="web", task_version=1, desired=14)
    snap = _snapshot(hosts, _td(100), svc)
    result = _scheduler("spread").plan(snap, snap.clusters["c"], svc)
    per_host = [sum(1 for t in result.plan.place if t.host == h.name) for h in hosts]
    assert max(per_host) - min(per_host) <= 1


def test_daemon_runs_one_task_per_eligible_host() -> None:
    hosts = [Host(name=f"h{i}", total=Resources(memory=1000 if i else 10, cpu_units=1000))
             for i in range(4)]
    svc = Service(name="agentd", task_name="web", task_version=1, desired=1)
    snap = _snapshot(hosts, _td(100), svc)
    result = _scheduler("daemon").plan(snap, snap.clusters["c"], svc)
    assert sorted(t.host for t in result.plan.place) == ["h1", "h2", "h3"]  # h0 too small
    assert len({t.id for t in result.plan.place}) == 3
