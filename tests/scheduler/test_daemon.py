"""The scheduler daemon in-process, on the in-memory store, with host records written by
hand: how it reacts to each kind of change, its locks, its status records, and the
per-host guard of commit_plan it relies on."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence

import pytest
from skedlib_reference import BinpackScheduler

from skedlib.client import Client
from skedlib.codecs import decode, encode, parse_manifest
from skedlib.keys import Keyspace
from skedlib.locks import Lock
from skedlib.models import Host, Resources, ServiceStatus, Task
from skedlib.scheduler.daemon import SchedulerDaemon
from skedlib.scheduler.run import LOGGED_EACH
from skedlib.scheduler.status import same_status
from skedlib.scheduling import CommitResult, commit_plan, read_snapshot
from skedlib.scheduling.commit import PreparedCommit
from skedlib.store.base import Compare, Op, Put, TxnResult
from tests.scheduler.conftest import wait_for

MANIFEST = """
clusters: [{name: default, services: [web, db]}]
services:
  - {name: web, task_name: app, task_version: 1, desired: 3}
  - {name: db, task_name: app, task_version: 1, desired: 1}
task_definitions:
  - {name: app, version: 1, memory: 300, cpu_units: 100,
     containers: [{name: x, type: process, executor: {argv: [sleep, "60"]}}]}
"""


@pytest.fixture
def client() -> Iterator[Client]:
    with Client.open(f"memory://{uuid.uuid4().hex}") as c:
        yield c


@pytest.fixture
def daemon(client: Client) -> Iterator[SchedulerDaemon]:
    d = SchedulerDaemon(client.store, workers=2, lock_ttl=1.0, resync=60)
    d.start()
    assert d.wait_ready(5)
    yield d
    d.stop()


def _host(client: Client, name: str, memory: int = 1000) -> None:
    client.backend.put(Keyspace().agent(name), encode(Host(
        name=name, total=Resources(memory=memory, cpu_units=1000))))


def _status(client: Client, service: str) -> ServiceStatus | None:
    kv = client.backend.get(Keyspace().service_status("default", service))
    return decode(kv.value, ServiceStatus) if kv else None


def _where(client: Client) -> dict[str, str]:
    return {t.id: t.host for t in client.tasks()}


def test_unschedulable_until_a_host_joins(client: Client, daemon: SchedulerDaemon) -> None:
    client.apply(parse_manifest(MANIFEST, "m.yml"))
    st = wait_for(lambda: _status(client, "web"), 5, "a status")
    assert st.state == "unschedulable" and st.message == "3 task(s) unschedulable: no live hosts"
    assert st.desired == 3 and st.placed == 0 and st.unschedulable == 3
    _host(client, "h1", memory=2000)
    wait_for(lambda: len(client.tasks()) == 4, 5, "4 tasks placed when h1 joined")
    assert set(_where(client).values()) == {"h1"}
    st = wait_for(lambda: (s := _status(client, "web")) and s.unschedulable == 0 and s, 5,
                  "status updated")
    assert (st.state, st.placed, st.healthy) == ("progressing", 3, 0)


def test_tasks_of_a_gone_host_move(client: Client, daemon: SchedulerDaemon) -> None:
    _host(client, "h1", memory=2000)
    _host(client, "h2", memory=2000)
    client.apply(parse_manifest(MANIFEST, "m.yml"))
    wait_for(lambda: len(client.tasks()) == 4, 5, "4 tasks")
    before = _where(client)
    gone = before["default-web-1-0"]
    client.backend.delete(Keyspace().agent(gone))
    other = ({"h1", "h2"} - {gone}).pop()
    wait_for(lambda: set(_where(client).values()) == {other}, 5, "tasks moved off " + gone)
    # the index follows: no entry is left under the gone host
    assert client.host_tasks(gone) == []


def test_a_rejected_task_is_placed_elsewhere(client: Client, daemon: SchedulerDaemon) -> None:
    _host(client, "h1")
    _host(client, "h2")
    client.apply(parse_manifest(MANIFEST.replace("desired: 3", "desired: 1"), "m.yml"))
    wait_for(lambda: len(client.tasks()) == 2, 5, "2 tasks")
    task = next(t for t in client.tasks() if t.service == "web")
    first = task.host
    task.rejected, task.reject_reason, task.rejected_hosts = True, "port taken", [first]
    ks = Keyspace()
    client.backend.put(ks.task(task.id), encode(task))
    client.backend.put(ks.host_task(first, task.id), encode(task))
    moved: Task = wait_for(lambda: (t := next(t for t in client.tasks() if t.id == task.id))
                           and not t.rejected and t, 5, "the task placed again")
    assert moved.host != first and moved.rejected_hosts == [first]
    assert client.host_tasks(first) == [t for t in client.host_tasks(first) if t.id != task.id]


def test_deleting_the_cluster_stops_everything(client: Client, daemon: SchedulerDaemon) -> None:
    _host(client, "h1", memory=2000)
    client.apply(parse_manifest(MANIFEST, "m.yml"))
    wait_for(lambda: len(client.tasks()) == 4 and _status(client, "db"), 5, "4 tasks")
    client.delete("cluster", "default")
    wait_for(lambda: not client.tasks() and not _status(client, "web")
             and not _status(client, "db"), 5, "tasks and statuses gone")
    assert client.backend.list(Keyspace().all_host_tasks).items == []


def test_a_locked_service_is_left_to_its_holder(client: Client) -> None:
    _host(client, "h1")
    client.apply(parse_manifest(MANIFEST, "m.yml"))
    d = SchedulerDaemon(client.store, lock_ttl=1.0)
    with Lock(client.backend, Keyspace().lock("default", "web"), ttl=5):
        out = d.run_once(("default", "web"))
        assert out.skipped and out.retry_after == 1.0 and client.tasks() == []
    out = d.run_once(("default", "web"))
    assert not out.skipped and len(out.placed) == 3
    assert d.run_once(("default", "web")).placed == []  # converged: nothing to do


def test_status_is_written_only_when_it_changes(client: Client) -> None:
    _host(client, "h1")
    client.apply(parse_manifest(MANIFEST, "m.yml"))
    d = SchedulerDaemon(client.store)
    d.run_once(("default", "web"))
    key = Keyspace().service_status("default", "web")
    first = client.backend.get(key)
    assert first is not None
    d.run_once(("default", "web"))
    assert client.backend.get(key) == first


def test_a_run_writes_its_status_with_its_commit(client: Client) -> None:
    """A run whose whole plan commits writes the service's status in the commit's
    transaction: one transaction a run (the lock aside), and the status says what the
    store holds."""
    _host(client, "h1", memory=2000)
    client.apply(parse_manifest(MANIFEST, "m.yml"))
    d = SchedulerDaemon(client.store)
    key = Keyspace().service_status("default", "web")
    writes: list[list[str]] = []
    txn = client.backend.txn

    def recorded(compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        res = txn(compares, ops)
        if ops and res.succeeded and "/locks/" not in ops[0].key:
            writes.append([op.key for op in ops])
        return res
    client.backend.txn = recorded  # type: ignore[method-assign]
    out = d.run_once(("default", "web"))
    assert len(out.placed) == 3
    commits = [keys for keys in writes if any("/tasks/" in k for k in keys)]
    assert len(commits) == 1 and commits[0][-1] == key
    assert [keys for keys in writes if key in keys] == commits
    st = _status(client, "web")
    assert st is not None and (st.desired, st.placed, st.state) == (3, 3, "progressing")
    assert same_status(d.last_status(("default", "web")), st)
    writes.clear()
    assert d.run_once(("default", "web")).placed == []
    assert writes == []  # converged, the status unchanged: nothing written


@pytest.mark.parametrize("max_ops", [None, 8])
def test_a_run_whose_commit_conflicts_writes_its_status_on_its_own(
        max_ops: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The status sent with a commit counts only if the whole plan commits: after a
    conflict the run writes the status of what did commit, in a transaction of its own
    (also when the commit is several transactions and a later one goes through)."""
    with Client.open(f"memory://{uuid.uuid4().hex}"
                     + (f"?max_txn_ops={max_ops}" if max_ops else "")) as client:
        _host(client, "h1", memory=2000)
        client.apply(parse_manifest(MANIFEST, "m.yml"))
        d = SchedulerDaemon(client.store)
        snap = read_snapshot(client.store)
        rival = Task(cluster=snap.clusters["default"], task_definition=snap.task_definitions[
            ("app", 1)], service="web", instance=1, host="h1")
        run = PreparedCommit.run

        def raced(self: PreparedCommit) -> CommitResult:
            client.backend.put(Keyspace().task(rival.id), encode(rival))  # written first
            return run(self)
        monkeypatch.setattr(PreparedCommit, "run", raced)
        key = Keyspace().service_status("default", "web")
        written: list[tuple[int, list[str]]] = []  # (placed, the transaction's keys)
        txn = client.backend.txn

        def recorded(compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
            res = txn(compares, ops)
            if res.succeeded:
                written.extend((decode(op.value, ServiceStatus).placed, [o.key for o in ops])
                               for op in ops if op.key == key and isinstance(op, Put))
            return res
        monkeypatch.setattr(client.backend, "txn", recorded)
        out = d.run_once(("default", "web"))
        assert out.conflicts == [rival.id] and len(out.placed) == 2
        assert written == [(2, [key])]  # never the status of a whole commit; on its own
        st = _status(client, "web")
        assert st is not None and (st.desired, st.placed, st.state) == (3, 2, "progressing")


def test_a_large_run_logs_one_line_and_each_task_at_debug(
        client: Client, caplog: pytest.LogCaptureFixture) -> None:
    """Up to LOGGED_EACH tasks a run logs a line per task at INFO; beyond, one INFO line
    with the counts, and the lines per task at DEBUG only."""
    for name in ("h1", "h2"):  # room for 20 tasks (CPU)
        _host(client, name, memory=100_000)
    client.apply(parse_manifest(MANIFEST.replace("desired: 3", f"desired: {LOGGED_EACH + 5}"),
                                "m.yml"))
    d = SchedulerDaemon(client.store)
    with caplog.at_level(logging.INFO, logger="skedlib.scheduler"):
        assert len(d.run_once(("default", "db")).placed) == 1
        assert len(d.run_once(("default", "web")).placed) == LOGGED_EACH + 5
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any(m.startswith("placed default-db-1-0 on h") for m in info)
    assert not any(m.startswith("placed default-web-") for m in info)
    assert f"web: placed {LOGGED_EACH + 5} task(s) (0 of them moved), stopped 0; " \
        "each at DEBUG" in info
    caplog.clear()
    client.apply(parse_manifest(MANIFEST.replace("desired: 3", "desired: 1"), "m.yml"))
    with caplog.at_level(logging.DEBUG, logger="skedlib.scheduler"):
        assert len(d.run_once(("default", "web")).stopped) == LOGGED_EACH + 4
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    stops = [level for level, m in lines if m.startswith("stopped default-web-")]
    assert stops == [logging.DEBUG] * (LOGGED_EACH + 4)
    assert (logging.INFO, f"web: placed 0 task(s) (0 of them moved), stopped "
                          f"{LOGGED_EACH + 4}; each at DEBUG") in lines


def test_an_uninstalled_scheduler_stops_only_its_service(client: Client) -> None:
    _host(client, "h1")
    client.apply(parse_manifest(MANIFEST.replace(
        "desired: 1}", "desired: 1, scheduler: not-installed}"), "m.yml"))
    d = SchedulerDaemon(client.store)
    assert d.run_once(("default", "db")).placed == []
    st = _status(client, "db")
    assert st is not None and st.state == "error"
    assert st.message.startswith("no scheduler named 'not-installed' is installed")
    assert len(d.run_once(("default", "web")).placed) == 3


def test_two_services_cannot_overfill_one_host(client: Client) -> None:
    """Two plans made from the same snapshot for *different* services both fit the host
    alone, not together: the per-host guard lets the first commit and refuses the second,
    which is planned again from a fresh snapshot."""
    _host(client, "h1", memory=1000)
    _host(client, "h2", memory=1000)
    client.apply(parse_manifest(MANIFEST.replace("desired: 3", "desired: 2")
                                .replace("desired: 1", "desired: 2"), "m.yml"))
    snap = read_snapshot(client.store)
    c = snap.clusters["default"]
    web = BinpackScheduler().plan(snap, c, snap.services["web"]).plan
    db = BinpackScheduler().plan(snap, c, snap.services["db"]).plan
    assert {t.host for t in web.place} == {t.host for t in db.place} == {"h1"}  # 4 x 300
    assert len(commit_plan(client.store, snap, web).committed) == 2
    res = commit_plan(client.store, snap, db)
    assert res.committed == () and len(res.conflicts) == 2
    fresh = read_snapshot(client.store)
    db = BinpackScheduler().plan(fresh, c, fresh.services["db"]).plan
    assert len(commit_plan(client.store, fresh, db).committed) == 2
    per_host: dict[str, int] = {}
    for t in client.tasks():
        per_host[t.host] = per_host.get(t.host, 0) + t.task_definition.memory
    assert all(m <= 1000 for m in per_host.values()), per_host


def test_a_bad_record_does_not_stop_the_others(client: Client,
                                               caplog: pytest.LogCaptureFixture) -> None:
    _host(client, "h1", memory=2000)
    client.apply(parse_manifest(MANIFEST, "m.yml"))
    ks = Keyspace()
    client.backend.put(ks.task("default-db-1-0"), b"{not json")
    client.backend.put(ks.agent("broken"), b"[]")
    d = SchedulerDaemon(client.store)
    assert len(d.run_once(("default", "web")).placed) == 3
    assert "ignoring a record that does not decode" in caplog.text
    assert caplog.text.count("state/agents/broken") == 1
    d.run_once(("default", "web"))
    assert caplog.text.count("state/agents/broken") == 1  # logged once
