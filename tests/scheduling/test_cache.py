"""SnapshotCache: a listing plus watch events give the snapshot a fresh read would."""

from __future__ import annotations

import random

import pytest

from skedlib.codecs import encode
from skedlib.keys import Keyspace
from skedlib.models import (
    Cluster,
    Container,
    Host,
    HostConfig,
    Resources,
    Rollout,
    RolloutHistory,
    Service,
    ServiceStatus,
    Task,
    TaskDefinition,
    TaskHealth,
)
from skedlib.plugins import open_backend
from skedlib.runtime import Store
from skedlib.scheduling import (
    Plan,
    Snapshot,
    SnapshotCache,
    commit_plan,
    read_snapshot,
)
from skedlib.store.base import Backend, Delete, Put

KS = Keyspace()
CLUSTER = Cluster(name="c", services=["web"])
TD = TaskDefinition(name="web", version=1, memory=100, cpu_units=10,
                    containers=[Container(name="x", type="process")])


def _task(i: int, host: str, rejected: bool = False) -> Task:
    return Task(cluster=CLUSTER, service="web", instance=i, task_definition=TD,
                host=host, port=9000 + i, rejected=rejected)


def _summary(snap: Snapshot) -> dict[str, object]:
    return {
        "hosts": {n: (h.total, h.allocated, sorted(h.tasks), sorted(h.ports), h.draining,
                      sorted(h.attributes.items())) for n, h in snap.hosts.items()},
        "tasks": {t: (snap.tasks[t], snap.task_revisions[t]) for t in snap.tasks},
        "by_service": {k: [t.id for t in snap.service_tasks(*k)] for k in
                       {(t.cluster.name, t.service) for t in snap.tasks.values()}},
        "health": dict(snap.health),
        "services": dict(snap.services), "clusters": dict(snap.clusters),
        "tds": dict(snap.task_definitions), "allocs": dict(snap.alloc_revisions or {}),
        "rollouts": dict(snap.rollouts),
    }


def _random_op(rng: random.Random) -> list[Put | Delete]:
    host = f"h{rng.randrange(4)}"
    i = rng.randrange(12)
    tid = _task(i, host).id
    roll = rng.random()
    if roll < 0.35:
        t = _task(i, host, rejected=rng.random() < 0.1)
        return [Put(KS.task(tid), encode(t)), Put(KS.host_alloc(host), b"{}")]
    if roll < 0.5:
        return [Delete(KS.task(tid)), Delete(KS.task_health(tid))]
    if roll < 0.65:
        return [Put(KS.agent(host), encode(Host(
            name=host, total=Resources(memory=rng.choice([500, 1000]), cpu_units=100),
            ports=[rng.randrange(1, 5)])))]
    if roll < 0.72:
        return [Delete(KS.agent(host))]
    if roll < 0.78:
        return [Put(KS.host_config(host), encode(HostConfig(
            name=host, draining=rng.random() < 0.5, attributes={"zone": rng.choice("ab")})))]
    if roll < 0.8:
        return [Delete(KS.host_config(host))]
    if roll < 0.9:
        return [Put(KS.task_health(tid), encode(TaskHealth(task_id=tid, host=host,
                                                            healthy=rng.random() < 0.5)))]
    if roll < 0.92:
        return [Put(KS.rollout("c", "web"), encode(RolloutHistory(
            cluster="c", service="web", rollouts=[Rollout(from_version=1, to_version=2,
                                                          updated=rng.randrange(3))])))]
    if roll < 0.95:
        return [Put(KS.service("web"), encode(Service(name="web", task_name="web",
                                                       task_version=1,
                                                       desired=rng.randrange(5))))]
    return [Put(KS.cluster("c"), encode(Cluster(name="c", services=["web"])))]


def _drain(backend: Backend, cache: SnapshotCache, watch: object) -> None:
    """Apply events until the cache has seen a write made now (a key outside the schema:
    the cache passes over it but counts its revision)."""
    upto = backend.put(KS.prefix + "test/sentinel", b"x")
    while cache.revision < upto:
        events = watch.next(timeout=5)  # type: ignore[attr-defined]
        assert events, "the watch stopped delivering"
        cache.apply(events)


@pytest.mark.parametrize("seed", range(8))
def test_listing_plus_events_equals_a_fresh_read(seed: int) -> None:
    rng = random.Random(seed)
    backend = open_backend("memory://")
    for _ in range(30):
        backend.txn([], _random_op(rng))
    cache = SnapshotCache(Store(backend))
    listed = backend.list(KS.prefix)
    cache.reset(listed)
    with backend.watch(KS.prefix, listed.revision + 1) as watch:
        for step in range(300):
            backend.txn([], _random_op(rng))
            if step % 37 == 0 or step == 299:
                _drain(backend, cache, watch)
                with cache.view() as snap:
                    assert _summary(snap) == _summary(read_snapshot(Store(backend))), step


def test_a_recorded_commit_is_seen_at_once_and_late_events_do_not_undo_it() -> None:
    backend = open_backend("memory://")
    backend.txn([], [Put(KS.agent("h0"), encode(Host(
        name="h0", total=Resources(memory=1000, cpu_units=100))))])
    cache = SnapshotCache(Store(backend))
    listed = backend.list(KS.prefix)
    cache.reset(listed)
    with backend.watch(KS.prefix, listed.revision + 1) as watch:
        first = _task(0, "h0")
        with cache.view() as snap:
            res = commit_plan(Store(backend), snap, Plan(place=[first]))
            cache.record(Plan(place=[first]), res)
            assert snap.hosts["h0"].allocated.memory == 100
            assert snap.task_revisions[first.id] == res.task_revisions[first.id]
            assert snap.alloc_revisions == {"h0": res.revision}
        # a second commit right away, before any event: the host guard holds at the
        # recorded marker revision, so it commits
        second = _task(1, "h0")
        with cache.view() as snap:
            res2 = commit_plan(Store(backend), snap, Plan(place=[second]))
            assert res2.committed == (second.id,) and not res2.conflicts
            cache.record(Plan(place=[second]), res2)
        # the stop of the first, recorded; then the late events of all three arrive
        with cache.view() as snap:
            res3 = commit_plan(Store(backend), snap, Plan(stop=[first.id]))
            assert res3.committed == (first.id,)
            cache.record(Plan(stop=[first.id]), res3)
        _drain(backend, cache, watch)
        with cache.view() as snap:
            assert _summary(snap) == _summary(read_snapshot(Store(backend)))
            assert set(snap.tasks) == {second.id}


def test_a_stale_cache_makes_a_conflict_not_an_overcommit() -> None:
    """Another writer fills the host; the cache has not seen it: the commit conflicts."""
    backend = open_backend("memory://")
    backend.txn([], [Put(KS.agent("h0"), encode(Host(
        name="h0", total=Resources(memory=150, cpu_units=100))))])
    cache = SnapshotCache(Store(backend))
    cache.reset(backend.list(KS.prefix))
    other = read_snapshot(Store(backend))
    assert commit_plan(Store(backend), other, Plan(place=[_task(0, "h0")])).committed
    with cache.view() as snap:
        assert snap.hosts["h0"].allocated.memory == 0  # stale
        res = commit_plan(Store(backend), snap, Plan(place=[_task(1, "h0")]))
    assert res.conflicts == (_task(1, "h0").id,) and not res.committed


def test_statuses_and_bad_records() -> None:
    backend = open_backend("memory://")
    status = ServiceStatus(cluster="c", service="web", state="ok")
    backend.txn([], [Put(KS.service_status("c", "web"), encode(status)),
                     Put(KS.service("bad"), b"{not json")])
    bad: list[str] = []
    cache = SnapshotCache(Store(backend), on_bad=lambda kv, exc: bad.append(kv.key))
    cache.reset(backend.list(KS.prefix))
    assert cache.status("c", "web") == status
    assert bad == [KS.service("bad")]
    with pytest.raises(Exception, match="bad"):
        SnapshotCache(Store(backend)).reset(backend.list(KS.prefix))
