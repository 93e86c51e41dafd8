"""Commits in flight: later plans count their placements and are guarded by the host
markers they leave; placements that do not commit are taken out again."""

from __future__ import annotations

import threading

from skedlib.codecs import encode
from skedlib.keys import Keyspace
from skedlib.models import Cluster, Container, Host, Resources, Task, TaskDefinition
from skedlib.plugins import open_backend
from skedlib.runtime import Store
from skedlib.scheduling import CommitResult, Plan, SnapshotCache, read_snapshot
from skedlib.scheduling.commit import CommitResult as _CommitResult
from skedlib.scheduling.commit import prepare_commit
from skedlib.store.base import Put

KS = Keyspace()
CLUSTER = Cluster(name="c", services=["web", "db"])
TD = TaskDefinition(name="web", version=1, memory=100, cpu_units=10,
                    containers=[Container(name="x", type="process")])


def _task(service: str, i: int, host: str) -> Task:
    return Task(cluster=CLUSTER, service=service, instance=i, task_definition=TD, host=host)


def _cache(memory: int = 1000) -> tuple[Store, SnapshotCache]:
    backend = open_backend("memory://")
    store = Store(backend)
    backend.txn([], [Put(KS.agent("h0"), encode(Host(
        name="h0", total=Resources(memory=memory, cpu_units=100))))])
    cache = SnapshotCache(store)
    cache.reset(backend.list(KS.prefix))
    return store, cache


def test_a_later_commit_on_the_same_host_waits_for_the_marker_the_first_leaves() -> None:
    store, cache = _cache()
    first, second = Plan(place=[_task("web", 0, "h0")]), Plan(place=[_task("db", 0, "h0")])
    with cache.view() as snap:
        a = prepare_commit(store, snap, first, inflight=cache.inflight)
        cache.place_pending(first, a.values)
        assert snap.hosts["h0"].allocated.memory == 100  # counted before it commits
    with cache.view() as snap:
        b = prepare_commit(store, snap, second, inflight=cache.inflight)
        cache.place_pending(second, b.values)
        assert snap.hosts["h0"].allocated.memory == 200
    results: dict[str, CommitResult] = {}
    later = threading.Thread(target=lambda: results.setdefault("b", b.run()))
    later.start()
    later.join(0.3)
    assert later.is_alive() and "b" not in results  # waits for the first one's marker
    res_a = a.run()
    later.join(10)
    assert res_a.committed == (first.place[0].id,)
    # without the first commit's revision it would compare with the marker as the
    # snapshot had it (absent) and conflict
    assert results["b"].committed == (second.place[0].id,) and not results["b"].conflicts
    marker = store.get(KS.host_alloc("h0"))
    assert marker is not None and marker.revision == results["b"].revision
    for plan, res, prepared in ((first, res_a, a), (second, results["b"], b)):
        cache.record(plan, res)
        prepared.release()
    assert len(cache.inflight) == 0
    with cache.view() as snap:
        assert set(snap.tasks) == set(read_snapshot(store).tasks)
        assert snap.hosts["h0"].allocated.memory == 200


def test_a_foreign_placement_in_between_makes_the_later_commit_a_conflict() -> None:
    store, cache = _cache()
    first, second = Plan(place=[_task("web", 0, "h0")]), Plan(place=[_task("db", 0, "h0")])
    with cache.view() as snap:
        a = prepare_commit(store, snap, first, inflight=cache.inflight)
        cache.place_pending(first, a.values)
        b = prepare_commit(store, snap, second, inflight=cache.inflight)
        cache.place_pending(second, b.values)
    assert a.run().committed
    # somebody else places on h0 after the first commit, before the second is sent
    store.txn([], [Put(KS.host_alloc("h0"), b"{}")])
    res_b = b.run()
    assert res_b.conflicts == (second.place[0].id,) and not res_b.committed


def test_pending_placements_that_do_not_commit_are_taken_out() -> None:
    store, cache = _cache()
    plan = Plan(place=[_task("web", 0, "h0"), _task("web", 1, "h0")])
    with cache.view() as snap:
        prepared = prepare_commit(store, snap, plan, inflight=cache.inflight)
        cache.place_pending(plan, prepared.values)
        assert snap.hosts["h0"].allocated.memory == 200
    prepared.cancel()  # nothing sent: as a commit that failed
    cache.record(plan, _CommitResult())
    with cache.view() as snap:
        assert snap.tasks == {} and snap.hosts["h0"].allocated.memory == 0
    assert len(cache.inflight) == 0


def test_a_claim_lets_every_waiter_through_with_the_revision_it_was_settled_at() -> None:
    from skedlib.scheduling.commit import _Claim

    claim = _Claim()
    seen: list[int] = []
    waiters = [threading.Thread(target=lambda: seen.append(claim.wait())) for _ in range(3)]
    for t in waiters:
        t.start()
    for t in waiters:
        t.join(0.05)
    assert seen == [] and all(t.is_alive() for t in waiters)  # nothing before it settles
    claim.settle(7)
    claim.settle(9)  # settled once: later calls do nothing
    for t in waiters:
        t.join(5)
    assert seen == [7, 7, 7]
    assert claim.wait() == 7  # and after
