"""SnapshotCache: a listing plus watch events give the snapshot a fresh read would."""

from __future__ import annotations

import random
import time

import msgspec
import pytest

from skedlib.codecs import encode
from skedlib.keys import AgentKey, HealthKey, Keyspace, TaskKey
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
    Change,
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
    store = Store(backend)
    for _ in range(30):
        backend.txn([], _random_op(rng))
    cache = SnapshotCache(store)
    listed = backend.list(KS.prefix)
    cache.reset(listed)
    with backend.watch(KS.prefix, listed.revision + 1) as watch:
        for step in range(300):
            backend.txn([], _random_op(rng))
            if step % 37 == 0 or step == 299:
                _drain(backend, cache, watch)
                with cache.view() as snap:
                    assert _summary(snap) == _summary(read_snapshot(store)), step


def _cache_on_h0() -> tuple[Backend, Store, SnapshotCache, int]:
    """A memory store with host ``h0`` (1,000 MiB), a cache listed from it, and the
    revision its watch starts at."""
    backend = open_backend("memory://")
    store = Store(backend)
    backend.txn([], [Put(KS.agent("h0"), encode(Host(
        name="h0", total=Resources(memory=1000, cpu_units=100))))])
    cache = SnapshotCache(store)
    listed = backend.list(KS.prefix)
    cache.reset(listed)
    return backend, store, cache, listed.revision + 1


def test_a_recorded_commit_is_seen_at_once_and_late_events_do_not_undo_it() -> None:
    backend, store, cache, start = _cache_on_h0()
    with backend.watch(KS.prefix, start) as watch:
        first = _task(0, "h0")
        with cache.view() as snap:
            res = commit_plan(store, snap, Plan(place=[first]))
            cache.record(Plan(place=[first]), res)
            assert snap.hosts["h0"].allocated.memory == 100
            assert snap.task_revisions[first.id] == res.task_revisions[first.id]
            assert snap.alloc_revisions == {"h0": res.revision}
        # a second commit right away, before any event: the host guard holds at the
        # recorded marker revision, so it commits
        second = _task(1, "h0")
        with cache.view() as snap:
            res2 = commit_plan(store, snap, Plan(place=[second]))
            assert res2.committed == (second.id,) and not res2.conflicts
            cache.record(Plan(place=[second]), res2)
        # the stop of the first, recorded; then the late events of all three arrive
        with cache.view() as snap:
            res3 = commit_plan(store, snap, Plan(stop=[first.id]))
            assert res3.committed == (first.id,)
            cache.record(Plan(stop=[first.id]), res3)
        _drain(backend, cache, watch)
        with cache.view() as snap:
            assert _summary(snap) == _summary(read_snapshot(store))
            assert set(snap.tasks) == {second.id}


def test_a_later_write_seen_before_the_record_stands() -> None:
    """The commit's answer comes back after the watch has shown a later write of the
    same key: an agent started the task and wrote its port into it (or a task stopped
    was placed again). The record keeps the later write; before, it went back to the
    commit's record and revision, every later compare on the key failed, and a rolling
    update conflicted on its stops until its deadline."""
    backend, store, cache, start = _cache_on_h0()
    with backend.watch(KS.prefix, start) as watch:
        placed, gone = _task(0, "h0"), _task(1, "h0")
        with cache.view() as snap:
            assert commit_plan(store, snap, Plan(place=[gone])).committed
        _drain(backend, cache, watch)
        with cache.view() as snap:
            res = commit_plan(store, snap, Plan(place=[placed], stop=[gone.id]))
        assert set(res.committed) == {placed.id, gone.id}
        started = msgspec.structs.replace(placed, port=31000)  # the agent's patch
        backend.txn([], [Put(KS.task(placed.id), encode(started)),
                         Put(KS.host_task("h0", placed.id), encode(started))])
        backend.txn([], [Put(KS.task(gone.id), encode(gone))])  # placed again
        _drain(backend, cache, watch)
        cache.record(Plan(place=[placed], stop=[gone.id]), res)
        with cache.view() as snap:
            assert _summary(snap) == _summary(read_snapshot(store))
            assert snap.tasks[placed.id].port == 31000
            # and so the stop of either commits, compared at the store's revision
            stop = commit_plan(store, snap, Plan(stop=[placed.id, gone.id]))
        assert set(stop.committed) == {placed.id, gone.id} and not stop.conflicts


def test_a_stale_cache_makes_a_conflict_not_an_overcommit() -> None:
    """Another writer fills the host; the cache has not seen it: the commit conflicts."""
    backend = open_backend("memory://")
    store = Store(backend)
    backend.txn([], [Put(KS.agent("h0"), encode(Host(
        name="h0", total=Resources(memory=150, cpu_units=100))))])
    cache = SnapshotCache(store)
    cache.reset(backend.list(KS.prefix))
    other = read_snapshot(store)
    assert commit_plan(store, other, Plan(place=[_task(0, "h0")])).committed
    with cache.view() as snap:
        assert snap.hosts["h0"].allocated.memory == 0  # stale
        res = commit_plan(store, snap, Plan(place=[_task(1, "h0")]))
    assert res.conflicts == (_task(1, "h0").id,) and not res.committed


def test_statuses_and_bad_records() -> None:
    backend = open_backend("memory://")
    store = Store(backend)
    status = ServiceStatus(cluster="c", service="web", state="ok")
    backend.txn([], [Put(KS.service_status("c", "web"), encode(status)),
                     Put(KS.service("bad"), b"{not json")])
    bad: list[str] = []
    cache = SnapshotCache(store, on_bad=lambda kv, exc: bad.append(kv.key))
    cache.reset(backend.list(KS.prefix))
    assert cache.status("c", "web") == status
    assert bad == [KS.service("bad")]
    # without on_bad the record is quarantined too (never fatal), and marked invalid
    quiet = SnapshotCache(store)
    quiet.reset(backend.list(KS.prefix))
    with quiet.view() as snap:
        assert "bad" not in snap.services and KS.service("bad") in snap.invalid


def test_each_change_is_reported_once_with_its_record_before_and_after() -> None:
    backend = open_backend("memory://")
    store = Store(backend)
    seen: list[tuple[object, object, object, bool]] = []
    listed: list[int] = []

    def changed(snap: Snapshot, change: Change) -> None:
        # handed the snapshot as it stands just after the change
        if isinstance(change.key, AgentKey):
            assert (change.key.host in snap.hosts) == (change.new is not None)
        seen.append((change.key, change.old, change.new, change.bad))

    cache = SnapshotCache(store, on_bad=lambda kv, exc: None, on_change=changed,
                          on_reset=lambda snap: listed.append(snap.revision))
    cache.refresh()
    assert listed == [backend.current_revision()]
    h0 = Host(name="h0", total=Resources(memory=1000, cpu_units=100))
    h0_drained = Host(name="h0", total=Resources(memory=1000, cpu_units=100), draining=True)
    task = _task(0, "h0")
    health = TaskHealth(task_id=task.id, host="h0", healthy=True)
    with backend.watch(KS.prefix, backend.current_revision() + 1) as watch:
        backend.txn([], [Put(KS.agent("h0"), encode(h0))])
        backend.txn([], [Put(KS.agent("h0"), encode(h0_drained))])
        backend.txn([], [Put(KS.task(task.id), encode(task))])
        backend.txn([], [Put(KS.task_health(task.id), encode(health))])
        backend.txn([], [Put(KS.task("c-web-1-1"), b"{not json")])
        backend.txn([], [Delete(KS.agent("h0")), Put(KS.host_alloc("h0"), b"{}")])
        _drain(backend, cache, watch)
    assert seen == [
        (AgentKey("h0"), None, h0, False),
        (AgentKey("h0"), h0, h0_drained, False),
        (TaskKey(task.id), None, task, False),
        (HealthKey(task.id), None, health, False),
        (TaskKey("c-web-1-1"), None, None, True),
        (AgentKey("h0"), h0_drained, None, False),
    ]  # the allocation marker and the sentinel are not records: no change
    seen.clear()
    with cache.view() as snap:  # a commit written through is reported too
        res = commit_plan(store, snap, Plan(stop=[task.id]))
        cache.record(Plan(stop=[task.id]), res)
    assert seen == [(TaskKey(task.id), task, None, False)]


def test_a_started_cache_follows_the_store() -> None:
    backend = open_backend("memory://")
    store = Store(backend)
    backend.put(KS.cluster("c"), encode(CLUSTER))
    cache = SnapshotCache(store).start()
    try:
        assert cache.wait_ready(10) and cache.started
        with cache.view() as snap:
            assert set(snap.clusters) == {"c"}
        upto = backend.put(KS.agent("h0"), encode(Host(
            name="h0", total=Resources(memory=1000, cpu_units=100))))
        deadline = time.monotonic() + 30
        while cache.revision < upto and time.monotonic() < deadline:
            time.sleep(0.01)
        with cache.view() as snap:
            assert set(snap.hosts) == {"h0"}
    finally:
        cache.stop()


def test_a_task_record_whose_id_does_not_match_its_key_is_occupied_not_a_task() -> None:
    backend = open_backend("memory://")
    store = Store(backend)
    real = _task(0, "h0")
    backend.put(KS.task(real.id), encode(real))
    wrong_key = KS.task(_task(1, "h0").id)
    backend.put(wrong_key, encode(real))  # task 0's record under task 1's key
    cache = SnapshotCache(store)
    cache.refresh()
    with cache.view() as snap:
        assert list(snap.tasks) == [real.id] and snap.task_revisions[real.id] == 1
        assert set(snap.invalid_tasks) == {_task(1, "h0").id}
        assert "does not match its key" in snap.invalid[wrong_key]
    with backend.watch(KS.prefix, backend.current_revision() + 1) as watch:
        backend.put(wrong_key, encode(_task(1, "h0")))  # repaired
        _drain(backend, cache, watch)
        with cache.view() as snap:
            assert snap.invalid == {} and snap.invalid_tasks == {}
            assert sorted(snap.tasks) == [real.id, _task(1, "h0").id]
        backend.put(wrong_key, b"{garbage")  # broken again, then deleted
        _drain(backend, cache, watch)
        with cache.view() as snap:
            assert list(snap.tasks) == [real.id] and wrong_key in snap.invalid
        backend.delete(wrong_key)
        _drain(backend, cache, watch)
        with cache.view() as snap:
            assert snap.invalid == {} and snap.invalid_tasks == {}
