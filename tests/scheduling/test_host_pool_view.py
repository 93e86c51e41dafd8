"""The copy-on-write HostPool of a snapshot, and the host index the snapshot keeps."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from skedlib.models import Cluster, Container, Host, Resources, Service, Task, TaskDefinition
from skedlib.scheduling._sorted import SortedKeys
from skedlib.scheduling.framework import BestFit, HostPool, Placer, TaskRequest, stock_filters
from skedlib.scheduling.snapshot import HostState, ShareIndex, Snapshot, host_share

CLUSTER = Cluster(name="c", services=["s"])
SVC = Service(name="s", task_name="s", task_version=1, desired=50)


def _td(memory: int) -> TaskDefinition:
    return TaskDefinition(name="s", version=1, memory=memory, cpu_units=memory // 4,
                          containers=[Container(name="c", type="process")])


def _snapshot(n: int, seed: int) -> Snapshot:
    rng = random.Random(seed)
    hosts = [Host(name=f"h{i:03d}", total=Resources(memory=rng.choice([1000, 2000, 4000]),
                                                     cpu_units=1024))
             for i in range(n)]
    snap = Snapshot(1, clusters=[CLUSTER], services=[SVC], task_definitions=[_td(100)],
                    hosts=hosts)
    for i in range(n):  # some load, so the shares differ
        task = Task(cluster=CLUSTER, task_definition=_td(rng.choice([100, 300, 500])),
                    service="other", instance=i, host=f"h{rng.randrange(n):03d}")
        snap.put_task(task, 1)
    return snap


def _request(i: int, memory: int) -> TaskRequest:
    task = Task(cluster=CLUSTER, task_definition=_td(memory), service="s", instance=i)
    return TaskRequest.for_task(task, SVC)


def _fresh_keys(snap: Snapshot) -> list[tuple[float, str]]:
    return list(ShareIndex(snap.hosts.values()).keys)


def _place_all(pool: HostPool, memories: list[int]) -> list[str]:
    placer = Placer(stock_filters(), [BestFit()])
    chosen = []
    for i, m in enumerate(memories):
        result = placer.place(_request(i, m), pool)
        chosen.append(getattr(result, "host", ""))
    return chosen


def _copies(snap: Snapshot) -> HostPool:
    return HostPool([h.copy() for h in snap.hosts.values()])


def test_a_view_leaves_the_snapshot_and_its_index_as_they_were() -> None:
    snap = _snapshot(40, 1)
    before = {n: (h.allocated, set(h.tasks)) for n, h in snap.hosts.items()}
    keys = _fresh_keys(snap)
    pool = HostPool.of(snap, CLUSTER)
    assert _place_all(pool, [300] * 30)
    assert {n: (h.allocated, set(h.tasks)) for n, h in snap.hosts.items()} == before
    assert list(snap.share_index().keys) == keys  # taken back from the plan


def test_a_view_chooses_as_a_pool_of_copies() -> None:
    snap = _snapshot(60, 2)
    memories = [random.Random(3).choice([100, 200, 700]) for _ in range(80)]
    assert _place_all(HostPool.of(snap, CLUSTER), memories) == \
        _place_all(_copies(snap), memories)


def test_two_views_of_one_snapshot_stay_correct() -> None:
    snap = _snapshot(50, 4)
    first, second = HostPool.of(snap, CLUSTER), HostPool.of(snap, CLUSTER)
    reference = _copies(snap)
    memories = [200, 500, 100, 300] * 10
    # interleaved: each pool takes the index back from the other
    for i, m in enumerate(memories):
        placer = Placer(stock_filters(), [BestFit()])
        a = placer.place(_request(i, m), first)
        b = Placer(stock_filters(), [BestFit()]).place(_request(i, m), second)
        ref = Placer(stock_filters(), [BestFit()]).place(_request(i, m), reference)
        assert getattr(a, "host", "") == getattr(ref, "host", "")
        assert getattr(b, "host", "") == getattr(ref, "host", "")
    order = [h.name for h in first.tightest(Resources())]
    assert order == [h.name for h in reference.tightest(Resources())]
    assert list(snap.share_index().keys) == _fresh_keys(snap)


def test_the_index_follows_applied_plans_and_hosts() -> None:
    snap = _snapshot(30, 5)
    pool = HostPool.of(snap, CLUSTER)
    placer = Placer(stock_filters(), [BestFit()])
    placed = []
    for i in range(20):
        request = _request(i, 250)
        result = placer.place(request, pool)
        request.task.host = getattr(result, "host", "")
        placed.append(request.task)
    snap.apply(placed, [])
    assert list(snap.share_index().keys) == _fresh_keys(snap)
    snap.remove_task(placed[0].id)
    snap.remove_host("h003")
    snap.put_host(Host(name="h900", total=Resources(memory=8000, cpu_units=1024)))
    assert list(snap.share_index().keys) == _fresh_keys(snap)
    assert [h for _, h in snap.share_index().keys].count("h003") == 0


def test_a_view_of_a_cluster_with_a_host_list_sees_only_those_hosts() -> None:
    snap = _snapshot(20, 6)
    cluster = Cluster(name="c", services=["s"], hosts=["h001", "h002", "nope"])
    pool = HostPool.of(snap, cluster)
    assert sorted(pool.by_name) == ["h001", "h002"] and len(pool) == 2
    assert set(_place_all(pool, [100] * 5)) <= {"h001", "h002"}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3000)), max_size=4000))
def test_sorted_keys_is_a_sorted_set(ops: list[tuple[bool, int]]) -> None:
    keys: SortedKeys[tuple[float, str]] = SortedKeys()
    model: set[tuple[float, str]] = set()
    for add, n in ops:
        key = (n / 7, f"h{n}")
        if add and key not in model:
            keys.add(key)
            model.add(key)
        elif not add:
            keys.discard(key)
            model.discard(key)
    ordered = sorted(model)
    assert list(keys) == ordered and len(keys) == len(ordered)
    assert list(keys.descending()) == ordered[::-1]
    bound = (1000 / 7, "")
    assert list(keys.from_(bound)) == [k for k in ordered if k >= bound]


def test_host_share_is_free_memory_and_cpu_over_total() -> None:
    host = HostState(Host(name="a", total=Resources(memory=1000, cpu_units=1000)))
    host.assign("t", Resources(memory=250, cpu_units=500))
    assert host_share(host) == 0.75 + 0.5


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), steps=st.integers(1, 40))
def test_a_walk_that_remembers_refused_hosts_yields_what_a_full_walk_would(
        seed: int, steps: int) -> None:
    """tightest(demand, refused) skips what earlier walks found refused, yet yields
    exactly the hosts a full walk in share order would: those with room for the demand
    that are not refused, least free share first, while the plan assigns and releases
    tasks (hosts move back into the skipped stretch) and walks stop early."""
    rng = random.Random(seed)
    snap = _snapshot(30, seed)
    pool = HostPool.of(snap, CLUSTER)
    demands = [Resources(memory=m, cpu_units=c) for m, c in
               [(300, 80), (500, 40), (200, 200)]]
    refused: dict[int, set[str]] = {i: set() for i in range(len(demands))}
    placed: list[tuple[str, str, Resources]] = []
    for step in range(steps):
        which = rng.randrange(len(demands))
        demand, gone = demands[which], refused[which]
        before = set(gone)
        expected = [h.name for h in sorted(pool.by_name.values(),
                                           key=lambda h: (host_share(h), h.name))
                    if h.name not in before and h.free.fits(demand)]
        stop_after = rng.choice([1, 2, 4, len(expected) + 1])
        seen = []
        for host in pool.tightest(demand, gone):
            seen.append(host.name)
            if rng.random() < 0.3:
                gone.add(host.name)  # a caller's filter refused it
            if len(seen) >= stop_after:
                break
        assert seen == expected[:stop_after]
        if seen and rng.random() < 0.7:  # the plan places on one of them
            name = rng.choice(seen)
            pool.assign(name, f"t{step}", demand)
            placed.append((name, f"t{step}", demand))
        if placed and rng.random() < 0.3:  # or moves one away
            name, tid, freed = placed.pop(rng.randrange(len(placed)))
            pool.release(name, tid, freed)
