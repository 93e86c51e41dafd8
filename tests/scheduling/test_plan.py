"""Plan validation: a plan that validates never overcommits a host."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from skedlib.codecs import encode
from skedlib.keys import Keyspace
from skedlib.models import Cluster, Container, Host, Resources, Task, TaskDefinition
from skedlib.plugins import open_backend
from skedlib.runtime import Store
from skedlib.scheduling import Plan, Snapshot, demand_of, read_snapshot, validate_plan
from skedlib.store.base import Put

CLUSTER = Cluster(name="c", services=["s"])


def _td(memory: int, cpu: int) -> TaskDefinition:
    return TaskDefinition(name="s", version=1, memory=memory, cpu_units=cpu,
                          containers=[Container(name="x", type="process")])


def _task(i: int, host: str, memory: int, cpu: int, port: int = 0) -> Task:
    return Task(cluster=CLUSTER, task_definition=_td(memory, cpu), service="s", instance=i,
                host=host, port=port, scheduled=True)


hosts_st = st.lists(st.builds(lambda m, c: (m, c), st.integers(0, 4096),
                              st.integers(0, 4096)), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(hosts=hosts_st, data=st.data())
def test_a_plan_that_validates_never_overcommits(hosts: list[tuple[int, int]],
                                                 data: st.DataObject) -> None:
    names = [f"h{i}" for i in range(len(hosts))]
    live = [Host(name=n, total=Resources(memory=m, cpu_units=c))
            for n, (m, c) in zip(names, hosts, strict=True)]
    existing = [(_task(i, data.draw(st.sampled_from(names)), data.draw(st.integers(0, 1024)),
                        data.draw(st.integers(0, 1024)), data.draw(st.sampled_from([0, 80, 81]))),
                 1) for i in range(data.draw(st.integers(0, 5)))]
    snap = Snapshot(10, hosts=live, tasks=existing)
    placements = [_task(100 + i, data.draw(st.sampled_from(names)),
                        data.draw(st.integers(0, 2048)), data.draw(st.integers(0, 2048)),
                        data.draw(st.sampled_from([0, 80, 81, 82])))
                  for i in range(data.draw(st.integers(0, 6)))]
    stops = data.draw(st.lists(st.sampled_from([t.id for t, _ in existing] or ["none-s-1-0"]),
                               unique=True, max_size=3))
    plan = Plan(place=placements, stop=stops)
    problems = validate_plan(snap, plan)
    # apply the plan independently and check the invariants
    final = {t.id: t for t, _ in existing if t.id not in stops}
    for t in placements:
        final[t.id] = t
    used: dict[str, Resources] = {n: Resources() for n in names}
    for t in final.values():
        used[t.host] = used[t.host] + demand_of(t.task_definition)
    placed_hosts = {t.host for t in placements}
    overcommitted = [n for n, h in zip(names, live, strict=True)
                     if n in placed_hosts and not h.total.fits(used[n])]
    # a placed task whose port another task on its host also uses
    collisions = [t.id for t in placements if t.port and any(
        o.id != t.id and o.host == t.host and o.port == t.port for o in final.values())]
    # what the plan adds never overcommits a host or reuses a port, unless reported
    assert bool(problems) == bool(overcommitted or collisions)


def test_draining_rejected_and_unknown_hosts_are_refused() -> None:
    live = [Host(name="a", total=Resources(memory=100, cpu_units=100), draining=True),
            Host(name="b", total=Resources(memory=100, cpu_units=100))]
    snap = Snapshot(1, hosts=live)
    t1 = _task(0, "a", 1, 1)
    t2 = _task(1, "b", 1, 1)
    t2.rejected_hosts = ["b"]
    t3 = _task(2, "zz", 1, 1)
    reasons = {p.task_id: p.reason for p in validate_plan(snap, Plan(place=[t1, t2, t3]))}
    assert reasons == {t1.id: "host is draining", t2.id: "host rejected this task before",
                       t3.id: "no live host of that name"}


def test_read_snapshot_is_consistent_and_counts_allocations() -> None:
    backend = open_backend("memory://")
    ks = Keyspace()
    backend.put(ks.agent("h1"), encode(Host(name="h1", total=Resources(memory=1000,
                                                                       cpu_units=1000))))
    t = _task(0, "h1", 300, 200, port=8080)
    backend.txn([], [Put(ks.task(t.id), encode(t)), Put(ks.host_task("h1", t.id), encode(t)),
                     Put("unrelated/key", b"x")])
    snap = read_snapshot(Store(backend))
    assert snap.revision == backend.current_revision()
    h = snap.hosts["h1"]
    assert h.free == Resources(memory=700, cpu_units=800) and h.ports == {8080}
    assert snap.service_tasks("c", "s") == [t]


def test_place_ids_follow_the_tasks_the_plan_holds() -> None:
    plan = Plan(place=[_task(1, "h1", 1, 1), _task(2, "h1", 1, 1)], stop=["c-s-1-9"])
    ids = plan.place_ids()
    assert ids == ["c-s-1-1", "c-s-1-2"]
    assert plan.place_ids() is ids  # formatted once while the tasks stay
    plan.place.append(_task(3, "h2", 1, 1))  # a task added: its id too
    assert plan.place_ids() == ["c-s-1-1", "c-s-1-2", "c-s-1-3"]
    plan.place[0] = _task(7, "h1", 1, 1)  # a task replaced: its new id
    assert plan.place_ids() == ["c-s-1-7", "c-s-1-2", "c-s-1-3"]
    del plan.place[1]
    assert plan.place_ids() == ["c-s-1-7", "c-s-1-3"]
    assert plan.by_id() == {"c-s-1-7": plan.place[0], "c-s-1-3": plan.place[1]}
    # the cache is not part of the plan's value or its encoding
    assert plan == Plan(place=list(plan.place), stop=["c-s-1-9"])
    assert b"place_ids" not in encode(plan)


def test_a_plan_without_refused_ids_keeps_the_rest_in_order() -> None:
    plan = Plan(place=[_task(i, "h1", 1, 1) for i in range(4)], stop=["c-s-1-8", "c-s-1-9"])
    rest = plan.without({"c-s-1-1", "c-s-1-9"})
    assert rest.place_ids() == ["c-s-1-0", "c-s-1-2", "c-s-1-3"]
    assert rest.stop == ["c-s-1-8"]
    assert plan.place_ids() == ["c-s-1-0", "c-s-1-1", "c-s-1-2", "c-s-1-3"]  # unchanged
