"""The copy-on-write HostPool of a snapshot, and the host index the snapshot keeps."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from skedlib.models import Cluster, Container, Host, Resources, Service, Task, TaskDefinition
from skedlib.scheduling._sorted import SortedKeys
from skedlib.scheduling.framework import (
    BestFit,
    HostPool,
    Placement,
    Placer,
    ServiceHosts,
    TaskRequest,
    Unschedulable,
    stock_filters,
)
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

def _fresh_loads(snap: Snapshot, attribute: str) -> dict[str, list[tuple[float, str]]]:
    fresh = ShareIndex(snap.hosts.values()).loads(attribute, snap.hosts.values())
    return {v: list(k) for v, k in fresh.items() if len(k)}


def _kept_loads(snap: Snapshot, attribute: str) -> dict[str, list[tuple[float, str]]]:
    index = snap.share_index()
    return {v: list(k) for v, k in index.loads(attribute, snap.hosts.values()).items()
            if len(k)}


def _zoned(n: int, seed: int) -> Snapshot:
    snap = _snapshot(n, seed)
    for name, state in list(snap.hosts.items()):
        snap.put_host(Host(name=name, total=state.total,
                           attributes={"zone": f"z{int(name[1:]) % 3}"}))
    return snap


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_the_load_orders_follow_plans_tasks_and_hosts(data: st.DataObject) -> None:
    """The snapshot keeps its load orders (the spread walk) as plans borrow them and
    tasks and hosts change: always what sorting the hosts afresh gives."""
    snap = _zoned(data.draw(st.integers(2, 25)), data.draw(st.integers(0, 99)))
    _kept_loads(snap, "")
    _kept_loads(snap, "zone")
    placed: list[Task] = []
    for step in range(data.draw(st.integers(1, 12))):
        action = data.draw(st.sampled_from(["plan", "apply", "remove", "host", "gone"]))
        if action in ("plan", "apply"):
            pool = HostPool.of(snap, CLUSTER)
            memories = data.draw(st.lists(st.sampled_from([50, 100, 400]), max_size=6))
            tasks = []
            for i, m in enumerate(memories):
                request = _request(step * 100 + i, m)
                # walk the load order mid-plan: a view must see its own changes
                assert [h.name for h in pool.least_loaded()] == \
                    [n for _, n in sorted((-_ll(h), h.name) for h in pool.hosts)]
                result = Placer(stock_filters(), [BestFit()]).place(request, pool)
                if hasattr(result, "host"):
                    request.task.host = result.host
                    tasks.append(request.task)
            if action == "apply":
                snap.apply(tasks, [])
                placed += tasks
        elif action == "remove" and placed:
            snap.remove_task(placed.pop(data.draw(st.integers(0, len(placed) - 1))).id)
        elif action == "host":
            name = f"h{data.draw(st.integers(0, 30)):03d}"
            snap.put_host(Host(name=name, total=Resources(memory=3000, cpu_units=1024),
                               attributes={"zone": data.draw(st.sampled_from(["z0", "z9"]))}))
        elif action == "gone" and snap.hosts:
            snap.remove_host(data.draw(st.sampled_from(sorted(snap.hosts))))
        assert list(snap.share_index().keys) == _fresh_keys(snap)
        assert _kept_loads(snap, "") == _fresh_loads(snap, "")
        assert _kept_loads(snap, "zone") == _fresh_loads(snap, "zone")


def _ll(host: HostState) -> float:
    from skedlib.scheduling.snapshot import least_loaded
    return least_loaded(host)


class _CountingPlacer(Placer):
    def __init__(self) -> None:
        super().__init__(stock_filters(), [BestFit()])
        self.walks = 0

    def choose(self, request: TaskRequest, pool: HostPool) -> Placement | Unschedulable:
        self.walks += 1
        return super().choose(request, pool)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_runs_of_identical_tasks_place_as_walking_for_each(data: st.DataObject) -> None:
    """A placer goes on placing a service's identical tasks on the host it chose last
    (no walk) only where walking the index again would choose the same host."""
    snap = _snapshot(data.draw(st.integers(1, 30)), data.draw(st.integers(0, 99)))
    definitions = {m: _td(m) for m in (100, 300, 700)}
    memories = data.draw(st.lists(st.sampled_from([100, 100, 100, 300, 700]),
                                  min_size=1, max_size=60))
    with_runs, walking = HostPool.of(snap, CLUSTER), _copies(snap)
    placer, counts = _CountingPlacer(), ServiceHosts()
    for i, m in enumerate(memories):
        task = Task(cluster=CLUSTER, task_definition=definitions[m], service="s",
                    instance=i)
        got = placer.place(TaskRequest.for_task(task, SVC, counts), with_runs)
        fresh = Placer(stock_filters(), [BestFit()])  # no run to go on from
        want = fresh.place(_request(i, m), walking)
        assert getattr(got, "host", None) == getattr(want, "host", None)
        assert getattr(got, "score", None) == getattr(want, "score", None)
    assert placer.walks <= len(memories)


def test_a_run_goes_on_without_walking() -> None:
    snap = _snapshot(10, 7)
    pool, placer, counts = HostPool.of(snap, CLUSTER), _CountingPlacer(), ServiceHosts()
    td = _td(10)
    for i in range(20):
        task = Task(cluster=CLUSTER, task_definition=td, service="s", instance=i)
        assert isinstance(placer.place(TaskRequest.for_task(task, SVC, counts), pool),
                          Placement)
    assert placer.walks < 20  # tiny tasks: most go on the host of the last one


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_a_pools_load_orders_follow_its_changes(data: st.DataObject) -> None:
    """A pool's load orders (per value of an attribute) are always the hosts sorted
    afresh, on a pool of its own and on a view of a snapshot, built before or after the
    plan changed hosts."""
    snap = _zoned(data.draw(st.integers(1, 12)), data.draw(st.integers(0, 99)))
    if data.draw(st.booleans()):
        _kept_loads(snap, "zone")
    pool = HostPool.of(snap, CLUSTER) if data.draw(st.booleans()) else _copies(snap)
    placed: list[tuple[str, str]] = []
    for step in range(data.draw(st.integers(1, 25))):
        op = data.draw(st.sampled_from(["assign", "release", "look"]))
        if op == "release" and placed:
            name, task_id = placed.pop(data.draw(st.integers(0, len(placed) - 1)))
            pool.release(name, task_id, Resources(memory=10))
        elif op == "assign":
            name = data.draw(st.sampled_from(sorted(pool.by_name)))
            pool.assign(name, f"t{step}", Resources(memory=10))
            placed.append((name, f"t{step}"))
        else:
            values = pool.values("zone")
            assert sorted(values) == sorted({h.attributes["zone"]
                                             for h in pool.by_name.values()})
            for value in values:
                assert [h.name for h in pool.least_loaded("zone", value)] == \
                    [n for _, n in sorted((-_ll(h), h.name) for h in pool.by_name.values()
                                          if h.attributes["zone"] == value)]


def test_a_copy_and_its_host_keep_their_own_ports() -> None:
    host = HostState(Host(name="h", total=Resources(memory=1000, cpu_units=1024),
                          ports=[22]))
    demand = Resources(memory=100, cpu_units=10)
    twin = host.copy()
    twin.assign("t1", demand, port=8080, reserved=[9000])
    assert twin.ports == {22, 8080, 9000}
    assert host.ports == {22}
    host.assign("t2", demand, port=7070)
    assert host.ports == {22, 7070}
    assert twin.ports == {22, 8080, 9000}
    again = host.copy()
    again.release("t2", demand, port=7070)  # a release on the copy leaves the host's
    assert again.ports == {22}
    assert host.ports == {22, 7070}
    third = host.copy()
    host.release("t2", demand, port=7070)  # and one on the host leaves the copy's
    assert third.ports == {22, 7070}
    assert host.ports == {22}


def test_placing_tasks_with_ports_on_a_view_leaves_the_snapshot_ports() -> None:
    snap = _snapshot(10, 5)
    td = TaskDefinition(name="s", version=1, memory=100, cpu_units=25, port=8080,
                        containers=[Container(name="c", type="process")])
    before = {n: set(h.ports) for n, h in snap.hosts.items()}
    pool = HostPool.of(snap, CLUSTER)
    placer = Placer(stock_filters(), [BestFit()])
    hosts = []
    for i in range(3):
        task = Task(cluster=CLUSTER, task_definition=td, service="s", instance=i, port=8080)
        result = placer.place(TaskRequest.for_task(task, SVC), pool)
        assert isinstance(result, Placement)
        hosts.append(result.host)
    assert len(set(hosts)) == 3  # the port is taken on each host it went to
    assert all(8080 in pool.by_name[h].ports for h in hosts)
    assert {n: set(h.ports) for n, h in snap.hosts.items()} == before


def test_a_placed_task_is_charged_under_its_id_given_or_worked_out() -> None:
    """A request's ``task_id`` is the id the pool charges the task under; without it the
    placer works ``task.id`` out."""
    snap = _snapshot(4, 3)
    pool, placer = HostPool.of(snap, CLUSTER), Placer(stock_filters(), [BestFit()])
    given_id = _request(0, 100)
    given_id.task_id = "c-s-1-900"  # (not the task's own: shows which one is used)
    worked_out = _request(1, 100)
    assert worked_out.task_id == ""
    for request, charged in ((given_id, "c-s-1-900"), (worked_out, "c-s-1-1")):
        placed = placer.place(request, pool)
        assert isinstance(placed, Placement)
        assert charged in pool.by_name[placed.host].tasks


def test_service_counts_tell_watchers_added_late_only_of_later_changes() -> None:
    counts = ServiceHosts(["a", "a", "b"])
    counts["a"] += 1  # nobody watches yet
    seen: list[tuple[str, int]] = []
    counts.watch(lambda host, delta: seen.append((host, delta)))
    counts["b"] += 2
    counts["a"] = 3  # no change: no call
    del counts["a"]
    assert seen == [("b", 2), ("a", -3)]
    assert counts == {"b": 3}
