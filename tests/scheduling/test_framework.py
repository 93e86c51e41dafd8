"""Filters, scorers and the placer."""

from __future__ import annotations

from skedlib.models import Cluster, Container, Host, Resources, Service, Task, TaskDefinition
from skedlib.scheduling.framework import (
    BestFit,
    HostPool,
    LeastLoaded,
    Placement,
    Placer,
    SpreadAttribute,
    TaskRequest,
    Unschedulable,
    stock_filters,
)
from skedlib.scheduling.snapshot import HostState

SVC = Service(name="s", task_name="s", task_version=1, desired=3)


def _hosts(*specs: tuple[str, int, dict[str, str]]) -> list[HostState]:
    return [HostState(Host(name=n, total=Resources(memory=m, cpu_units=1024), attributes=a))
            for n, m, a in specs]


def _request(i: int, memory: int, service: Service = SVC) -> TaskRequest:
    td = TaskDefinition(name="s", version=1, memory=memory,
                        containers=[Container(name="c", type="process")])
    task = Task(cluster=Cluster(name="c"), task_definition=td, service="s", instance=i)
    return TaskRequest.for_task(task, service)


def test_best_fit_packs_the_fullest_host_that_fits() -> None:
    hosts = _hosts(("a", 1000, {}), ("b", 300, {}), ("c", 200, {}))
    placer = Placer(stock_filters(), [BestFit()])
    pool = HostPool(hosts)
    by_name = pool.by_name
    req = _request(0, 250)
    result = placer.place(req, pool)
    assert isinstance(result, Placement) and result.host == "b"
    assert by_name["b"].free.memory == 50


def test_least_loaded_spreads() -> None:
    hosts = _hosts(("a", 1000, {}), ("b", 1000, {}))
    placer = Placer(stock_filters(), [LeastLoaded()])
    pool = HostPool(hosts)
    picked = []
    for i in range(4):
        r = placer.place(_request(i, 100), pool)
        assert isinstance(r, Placement)
        picked.append(r.host)
    assert sorted(picked) == ["a", "a", "b", "b"]


def test_spread_over_an_attribute() -> None:
    hosts = _hosts(("a1", 1000, {"zone": "a"}), ("a2", 1000, {"zone": "a"}),
                   ("b1", 1000, {"zone": "b"}))
    placer = Placer(stock_filters(), [SpreadAttribute("zone", hosts)])
    pool = HostPool(hosts)
    by_name = pool.by_name
    req = _request(0, 10)
    zones = []
    for i in range(4):
        req = TaskRequest.for_task(_request(i, 10).task, SVC, req.service_hosts)
        r = placer.place(req, pool)
        assert isinstance(r, Placement)
        zones.append(by_name[r.host].attributes["zone"])
    assert zones.count("a") == 2 and zones.count("b") == 2


def test_unschedulable_says_which_filter_refused_on_how_many_hosts() -> None:
    hosts = _hosts(("a", 100, {"zone": "x"}), ("b", 1000, {"zone": "y"}),
                   ("c", 1000, {"zone": "y"}))
    svc = Service(name="s", task_name="s", task_version=1, constraints=["attribute:zone == x"])
    result = Placer(stock_filters(), [BestFit()]).choose(_request(0, 500, svc), HostPool(hosts))
    assert isinstance(result, Unschedulable)
    assert result.reasons == {"not enough memory": 1, "constraint 'attribute:zone == x'": 2}
    assert str(result).startswith("0/3 hosts fit: constraint 'attribute:zone == x' on 2 hosts")


def test_distinct_host() -> None:
    hosts = _hosts(("a", 1000, {}), ("b", 1000, {}))
    svc = Service(name="s", task_name="s", task_version=1, constraints=["distinct_host"])
    placer = Placer(stock_filters(), [BestFit()])
    pool = HostPool(hosts)
    req = _request(0, 10, svc)
    results = []
    for i in range(3):
        req = TaskRequest.for_task(_request(i, 10, svc).task, svc, req.service_hosts)
        results.append(placer.place(req, pool))
    assert {r.host for r in results[:2] if isinstance(r, Placement)} == {"a", "b"}
    assert isinstance(results[2], Unschedulable)


def test_a_demand_changed_in_place_is_not_refused_by_its_old_amounts() -> None:
    """The hosts a placer found too small for a demand are remembered per amounts: a
    request whose Resources object changed since is not refused by the old answer."""
    hosts = _hosts(("a", 600, {}), ("b", 1000, {}))  # equally loaded: a comes first
    placer = Placer(stock_filters(), [SpreadAttribute("", hosts), LeastLoaded()])
    pool = HostPool(hosts)
    big = _request(0, 800)
    first = placer.place(big, pool)
    assert isinstance(first, Placement) and first.host == "b"  # a is too small for it
    big.demand.memory = 100  # the same object, now small enough for a
    small = TaskRequest(task=_request(1, 100).task, demand=big.demand, service=SVC,
                        constraints=big.constraints, service_hosts=big.service_hosts)
    second = placer.place(small, pool)
    assert isinstance(second, Placement) and second.host == "a"  # a holds none yet
