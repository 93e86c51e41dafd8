"""The spread index: the walk SpreadAttribute gives the placer, and the sampled search of
scorers without a walk."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from skedlib.models import Cluster, Container, Host, Resources, Service, Task, TaskDefinition
from skedlib.scheduling.framework import (
    BestFit,
    HostPool,
    LeastLoaded,
    Placement,
    Placer,
    Scorer,
    ServiceHosts,
    SpreadAttribute,
    TaskRequest,
    Unschedulable,
    stock_filters,
)
from skedlib.scheduling.snapshot import HostState, Snapshot


def _hosts(n: int, zones: int = 0, memory: int = 1000,
           sizes: list[int] | None = None) -> list[HostState]:
    return [HostState(Host(name=f"h{i:03d}",
                           total=Resources(memory=sizes[i] if sizes else memory,
                                           cpu_units=1024),
                           attributes={"zone": f"z{i % zones}"} if zones else {}))
            for i in range(n)]


def _svc(*constraints: str) -> Service:
    return Service(name="s", task_name="s", task_version=1, desired=1,
                   constraints=list(constraints))


def _request(i: int, memory: int, svc: Service, counts: Counter[str],
             rejected: list[str] | None = None, port: int = 0) -> TaskRequest:
    td = TaskDefinition(name="s", version=1, memory=memory, port=port,
                        containers=[Container(name="c", type="process")])
    task = Task(cluster=Cluster(name="c"), task_definition=td, service="s", instance=i,
                rejected_hosts=rejected or [], port=port)
    return TaskRequest.for_task(task, svc, counts)


def _spread(attribute: str, hosts: list[HostState]) -> list[Scorer]:
    spread = SpreadAttribute(attribute, hosts)
    spread.weight = 10.0  # as the spread scheduler
    return [spread, LeastLoaded()]


class _NoWalk(SpreadAttribute):
    """SpreadAttribute scored on every host: the brute force the index must match."""

    def strata(self, request: TaskRequest, pool: HostPool,
               others: Sequence[Scorer]) -> None:
        return None


def test_placements_spread_evenly_over_zones_and_hosts() -> None:
    hosts = _hosts(200, zones=5)
    pool, counts = HostPool(hosts), ServiceHosts()
    placer = Placer(stock_filters(), _spread("zone", hosts))
    for i in range(1000):
        assert isinstance(placer.place(_request(i, 10, _svc("spread:zone"), counts), pool),
                          Placement)
    per_zone = Counter(pool.by_name[h].attributes["zone"] for h in counts.elements())
    per_host = [counts[h.name] for h in hosts]
    assert max(per_zone.values()) - min(per_zone.values()) <= 1
    assert max(per_host) - min(per_host) <= 1


def test_hosts_that_fill_up_leave_the_walk() -> None:
    hosts = _hosts(100, sizes=[100 if i % 2 else 1000 for i in range(100)])
    pool, counts = HostPool(hosts), ServiceHosts()
    placer = Placer(stock_filters(), _spread("", hosts))
    for i in range(550):  # exactly what fits: 50 hosts of 10 tasks and 50 of one
        result = placer.place(_request(i, 100, _svc(), counts), pool)
        assert isinstance(result, Placement)
    assert all(h.free.memory >= 0 for h in hosts)
    assert all(counts[h.name] == 1 for h in hosts if h.total.memory == 100)
    result = placer.place(_request(10**6, 100, _svc(), counts), pool)
    assert isinstance(result, Unschedulable)
    assert result.reasons == {"not enough memory": 100}


def test_constraints_and_filters_are_honoured() -> None:
    hosts = _hosts(120, zones=4)
    hosts[5].draining = True
    svc = _svc("spread:zone", "attribute:zone != z0")
    pool, counts = HostPool(hosts), ServiceHosts()
    placer = Placer(stock_filters(), _spread("zone", hosts))
    placed = []
    for i in range(300):
        result = placer.place(_request(i, 10, svc, counts, rejected=["h001"]), pool)
        assert isinstance(result, Placement)
        placed.append(result.host)
    assert not {pool.by_name[h].attributes["zone"] for h in placed} & {"z0"}
    assert "h005" not in placed and "h001" not in placed
    per_zone = Counter(pool.by_name[h].attributes["zone"] for h in placed)
    assert sorted(per_zone.values()) == [100, 100, 100]


def test_distinct_host_with_many_hosts() -> None:
    hosts = _hosts(150)
    svc = _svc("distinct_host")
    pool, counts = HostPool(hosts), ServiceHosts()
    placer = Placer(stock_filters(), _spread("", hosts))
    results = [placer.place(_request(i, 10, svc, counts), pool) for i in range(151)]
    assert len({r.host for r in results[:150] if isinstance(r, Placement)}) == 150
    assert isinstance(results[150], Unschedulable)


def test_the_index_follows_released_tasks() -> None:
    hosts = _hosts(3)
    pool, counts = HostPool(hosts), ServiceHosts()
    placer = Placer(stock_filters(), _spread("", hosts))
    for i in range(6):
        placer.place(_request(i, 10, _svc(), counts), pool)
    assert [counts[h.name] for h in hosts] == [2, 2, 2]
    for i in (0, 3):  # both tasks of h000 stop (instances 0 and 3 went there)
        pool.release("h000", f"c-s-1-{i}", Resources(memory=10), 0)
        counts["h000"] -= 1
    result = placer.choose(_request(7, 10, _svc(), counts), pool)
    assert isinstance(result, Placement) and result.host == "h000"


def test_a_plain_counter_gives_the_same_choices() -> None:
    def run(counts: Counter[str]) -> list[str]:
        hosts = _hosts(30, zones=3)
        pool = HostPool(hosts)
        placer = Placer(stock_filters(), _spread("zone", hosts))
        out = []
        for i in range(60):
            r = placer.place(_request(i, 7 + i % 5, _svc("spread:zone"), counts), pool)
            assert isinstance(r, Placement)
            out.append(r.host)
        return out

    assert run(Counter()) == run(ServiceHosts())


def test_spread_followed_by_other_scorers_has_no_walk() -> None:
    hosts = _hosts(3)
    spread = SpreadAttribute("", hosts)
    request = _request(0, 10, _svc(), ServiceHosts())
    assert spread.strata(request, HostPool(hosts), [BestFit()]) is None
    assert spread.strata(request, HostPool(hosts), [LeastLoaded()]) is not None
    # scoring every host (3 < min_sample): best fit after spread still packs
    result = Placer(stock_filters(), [spread, BestFit()]).choose(
        request, HostPool(_hosts(3, sizes=[1000, 50, 1000])))
    assert isinstance(result, Placement) and result.host == "h001"


class _Counting(Scorer):
    name = "custom"

    def __init__(self) -> None:
        self.calls = 0

    def score(self, request: TaskRequest, host: HostState) -> float:
        self.calls += 1
        return host.free.memory / host.total.memory


def test_a_scorer_without_a_walk_scores_a_bounded_rotating_sample() -> None:
    hosts = _hosts(4000)
    scorer = _Counting()
    pool, counts = HostPool(hosts), ServiceHosts()
    placer = Placer(stock_filters(), [scorer])
    first = placer.place(_request(0, 10, _svc(), counts), pool)
    assert scorer.calls == 200  # max(100, 5% of 4000)
    second = placer.place(_request(1, 10, _svc(), counts), pool)
    assert isinstance(first, Placement) and isinstance(second, Placement)
    assert first.host != second.host  # the next sample starts where the last stopped


def test_the_sampled_search_still_finds_the_only_host_that_fits() -> None:
    hosts = _hosts(500, sizes=[10] * 499 + [1000])
    result = Placer(stock_filters(), [_Counting()]).choose(
        _request(0, 100, _svc(), ServiceHosts()), HostPool(hosts))
    assert isinstance(result, Placement) and result.host == "h499"


@settings(max_examples=150, deadline=None)
@given(data=st.data(), zones=st.integers(0, 4), n=st.integers(1, 25),
       steps=st.integers(1, 40), view=st.booleans())
def test_the_index_chooses_what_scoring_every_host_chooses(
        data: st.DataObject, zones: int, n: int, steps: int, view: bool) -> None:
    """The spread walk, on a pool of its own or on a copy-on-write view of a snapshot
    (whose load orders the snapshot keeps), chooses as scoring every host does."""
    sizes = data.draw(st.lists(st.sampled_from([50, 100, 300, 1000]), min_size=n,
                               max_size=n))
    attribute = "zone" if zones else ""
    hosts = _hosts(n, zones=zones or 0, sizes=sizes)
    for h in hosts:
        h.draining = data.draw(st.booleans()) and data.draw(st.booleans())
    pool, counts = HostPool(hosts), ServiceHosts()
    if view:
        snap = Snapshot(1, hosts=[msgspec.structs.replace(h.host, draining=h.draining)
                                  for h in hosts])
        snap.share_index().loads(attribute, snap.hosts.values())  # kept from before
        pool = HostPool.of(snap, Cluster(name="c"))
    indexed = Placer(stock_filters(), _spread(attribute, hosts))
    brute_scorer = _NoWalk(attribute, hosts)
    brute_scorer.weight = 10.0
    brute = Placer(stock_filters(), [brute_scorer, LeastLoaded()])
    constraints = data.draw(st.sampled_from([(), ("distinct_host",),
                                             ("attribute:zone != z1",)]))
    svc = _svc(*constraints)
    placed: list[tuple[str, str, int]] = []
    for i in range(steps):
        if placed and data.draw(st.integers(0, 4)) == 0:  # a task stops
            host, task_id, memory = placed.pop(data.draw(st.integers(0, len(placed) - 1)))
            pool.release(host, task_id, Resources(memory=memory), 0)
            counts[host] -= 1
            # a placer remembers refusals by monotonic filters for one plan (hosts only
            # lose room); the index lives on the scorer and must follow the release
            indexed = Placer(stock_filters(), indexed.scorers)
        memory = data.draw(st.sampled_from([10, 40, 100]))
        rejected = data.draw(st.lists(st.sampled_from([h.name for h in hosts]),
                                      max_size=2))
        request = _request(i, memory, svc, counts, rejected=rejected)
        want, got = brute.choose(request, pool), indexed.choose(request, pool)
        assert type(got) is type(want)
        if isinstance(want, Unschedulable):
            assert got == want
            continue
        assert isinstance(got, Placement)
        assert abs(got.score - want.score) < 1e-9
        # the walk's shortcut scores its host from the index: the very sum scoring makes
        assert got.score == indexed._score(request, pool.by_name[got.host])
        close = [h.name for h in pool.by_name.values() if brute._refusal(request, h) is None
                 and abs(brute._score(request, h) - want.score) < 1e-9]
        if len(close) == 1:
            assert got.host == want.host
        result = indexed.place(request, pool)
        assert isinstance(result, Placement)
        placed.append((result.host, request.task.id, memory))


def test_a_better_host_in_a_later_group_beats_the_walks_first_host() -> None:
    """The first host of the walk (its value holds the fewest tasks) is not the choice
    when a host of a value holding more scores higher: the placer looks past it."""
    hosts = _hosts(2, zones=2)
    pool, counts = HostPool(hosts), ServiceHosts()
    pool.assign("h000", "other", Resources(memory=990, cpu_units=1000))  # z0: nearly full
    counts["h001"] = 1  # z1 holds one task of the service: z0's host comes first
    spread = SpreadAttribute("zone", hosts)  # at weight 1 the load outweighs the count
    placer = Placer(stock_filters(), [spread, LeastLoaded()])
    request = _request(0, 5, _svc("spread:zone"), counts)
    brute = Placer(stock_filters(), [_NoWalk("zone", hosts), LeastLoaded()])
    want = brute.choose(request, pool)
    assert isinstance(want, Placement) and want.host == "h001"
    assert placer.choose(request, pool) == want


def test_a_subclass_that_changes_the_score_is_scored_by_its_own_score() -> None:
    """The shortcut's score comes from the index only for the stock scorer: a subclass
    that scores otherwise is asked (its walk is the stock one)."""

    class Halved(SpreadAttribute):
        def score(self, request: TaskRequest, host: HostState) -> float:
            return super().score(request, host) / 2

    hosts = _hosts(20, zones=4)
    pool, counts = HostPool(hosts), ServiceHosts()
    placer = Placer(stock_filters(), [Halved("zone", hosts), LeastLoaded()])
    for i in range(30):
        request = _request(i, 10, _svc("spread:zone"), counts)
        got = placer.choose(request, pool)
        assert isinstance(got, Placement)
        assert got.score == placer._score(request, pool.by_name[got.host])
        placer.place(request, pool)
