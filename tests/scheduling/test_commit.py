"""A service scheduler's plan, committed with optimistic concurrency, converges."""

from __future__ import annotations

from collections.abc import Sequence

from skedlib.client import Client
from skedlib.codecs import encode, parse_manifest
from skedlib.keys import Keyspace
from skedlib.models import Host, Resources, Service
from skedlib.scheduling import (
    BestFit,
    HostState,
    Scorer,
    ServiceScheduler,
    Snapshot,
    commit_plan,
    read_snapshot,
    validate_plan,
)
from skedlib.scheduling.commit import prepare_commit
from skedlib.store.base import Compare, Op, Put, TxnResult

MANIFEST = """
clusters: [{name: c, services: [web]}]
services: [{name: web, task_name: web, task_version: 1, desired: 5}]
task_definitions:
  - {name: web, version: 1, memory: 300, cpu_units: 100,
     containers: [{name: x, type: process, executor: {argv: [sleep, "1"]}}]}
"""


class Binpack(ServiceScheduler):
    name = "test-binpack"

    def scorers(self, snapshot: Snapshot, service: Service,
                hosts: Sequence[HostState]) -> list[Scorer]:
        return [BestFit()]


def _setup(client: Client, hosts: int = 3, memory: int = 1000) -> None:
    client.apply(parse_manifest(MANIFEST, "m.yml"))
    ks = Keyspace()
    for i in range(hosts):
        client.backend.put(ks.agent(f"h{i}"), encode(Host(
            name=f"h{i}", total=Resources(memory=memory, cpu_units=1000))))


def _plan_and_commit(client: Client) -> tuple[int, int]:
    snap = read_snapshot(client.store)
    result = Binpack().plan(snap, snap.clusters["c"], snap.services["web"])
    assert validate_plan(snap, result.plan) == []
    res = commit_plan(client.store, snap, result.plan)
    return len(res.committed), len(result.unschedulable)


def test_plan_commit_converges_and_binpacks() -> None:
    with Client.open("memory://") as client:
        _setup(client)
        assert _plan_and_commit(client) == (5, 0)
        tasks = client.tasks()
        assert sorted(t.instance for t in tasks) == [0, 1, 2, 3, 4]
        per_host = sorted(sum(1 for t in tasks if t.host == h) for h in ("h0", "h1", "h2"))
        assert per_host == [0, 2, 3]  # best fit fills a host (3 x 300 of 1000) before the next
        for t in tasks:
            assert [x.id for x in client.host_tasks(t.host) if x.id == t.id] == [t.id]
        assert _plan_and_commit(client) == (0, 0)  # converged: nothing more to do


def test_unschedulable_tasks_say_why() -> None:
    with Client.open("memory://") as client:
        _setup(client, hosts=1)
        committed, unschedulable = _plan_and_commit(client)
        assert (committed, unschedulable) == (3, 2)
        snap = read_snapshot(client.store)
        result = Binpack().plan(snap, snap.clusters["c"], snap.services["web"])
        assert result.message == "2 task(s) unschedulable: 0/1 hosts fit: not enough memory " \
                                 "on 1 host"


def test_rejected_task_moves_and_avoids_the_host() -> None:
    with Client.open("memory://") as client:
        _setup(client, hosts=3, memory=10_000)
        _plan_and_commit(client)
        victim = client.tasks()[0]
        ks = Keyspace()
        victim.rejected, victim.reject_reason = True, "port taken"
        victim.rejected_hosts.append(victim.host)
        for key in (ks.task(victim.id), ks.host_task(victim.host, victim.id)):
            client.backend.put(key, encode(victim))
        assert _plan_and_commit(client) == (1, 0)
        moved = {t.id: t for t in client.tasks()}[victim.id]
        assert moved.host != victim.host and not moved.rejected
        assert client.host_tasks(victim.host) == [t for t in client.host_tasks(victim.host)
                                                  if t.id != victim.id]


def test_conflicting_write_rejects_only_its_part() -> None:
    with Client.open("memory://") as client:
        _setup(client, hosts=3, memory=10_000)
        snap = read_snapshot(client.store)
        result = Binpack().plan(snap, snap.clusters["c"], snap.services["web"])
        contested = result.plan.place[2]
        client.backend.put(Keyspace().task(contested.id), encode(contested))  # a rival wrote it
        res = commit_plan(client.store, snap, result.plan)
        assert res.conflicts == (contested.id,)
        assert len(res.committed) == 4


def test_commit_in_chunks_on_a_limited_backend() -> None:
    with Client.open("memory://?max_txn_ops=8") as client:
        _setup(client, hosts=3, memory=10_000)
        assert _plan_and_commit(client) == (5, 0)
        assert len(client.tasks()) == 5


class _Txns:
    """The backend's transactions, in order: (compares, ops, succeeded)."""

    def __init__(self, client: Client) -> None:
        self.seen: list[tuple[list[str], list[str], bool]] = []
        backend, txn = client.backend, client.backend.txn

        def recorded(compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
            res = txn(compares, ops)
            self.seen.append(([c.key for c in compares], [op.key for op in ops],
                              res.succeeded))
            return res
        backend.txn = recorded  # type: ignore[method-assign]


def test_also_goes_with_the_last_transaction_of_a_whole_commit() -> None:
    """``also`` rides on the last chunk's transaction, only when every part of the plan
    commits; its revision is reported, and a plan with a conflict leaves it unwritten."""
    also = [Put("extra/status", b"whole")]
    with Client.open("memory://?max_txn_ops=8") as client:
        _setup(client, hosts=3, memory=10_000)
        snap = read_snapshot(client.store)
        plan = Binpack().plan(snap, snap.clusters["c"], snap.services["web"]).plan
        txns = _Txns(client)
        res = prepare_commit(client.store, snap, plan, also=also).run()
        assert len(res.committed) == 5 and len(txns.seen) > 1  # several chunks
        carried = [i for i, (_, keys, _) in enumerate(txns.seen) if "extra/status" in keys]
        assert carried == [len(txns.seen) - 1]
        kv = client.backend.get("extra/status")
        assert kv is not None and kv.value == b"whole"
        assert res.also_revision == kv.revision == res.revision
    with Client.open("memory://") as client:
        _setup(client, hosts=3, memory=10_000)
        snap = read_snapshot(client.store)
        plan = Binpack().plan(snap, snap.clusters["c"], snap.services["web"]).plan
        client.backend.put(Keyspace().task(plan.place[2].id), encode(plan.place[2]))
        txns = _Txns(client)
        res = prepare_commit(client.store, snap, plan, also=also).run()
        assert len(res.committed) == 4 and res.conflicts == (plan.place[2].id,)
        assert res.also_revision == 0 and client.backend.get("extra/status") is None
        # sent with the one transaction, which failed on the conflict: never written
        assert [ok for _, keys, ok in txns.seen if "extra/status" in keys] == [False]
