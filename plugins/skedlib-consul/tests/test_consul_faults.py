"""Faults on a real 3-server Consul cluster: a killed leader, a frozen server, dead holders.

Every wait has a deadline; the cluster is healed (members resumed and restarted) before
each test. Measured times are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
from skedlib_consul.backend import ConsulBackend

from skedlib.errors import BackendUnavailable
from skedlib.plugins import open_backend
from skedlib.store.base import Compare, Put, WatchEvent
from tests.harness import consul as harness

consul_fault_cluster = harness.consul_fault_cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
TIMEOUT = 3.0  # the backend's per-call timeout in these tests
TTL = 20.0  # the shortest lease on Consul (a session of Consul's minimum, 10 s)
#: what a loaded machine may add to a bounded wait (an unbounded one would hang until
#: pytest's own timeout)
LOAD_SLACK = 3.0


def _ns() -> str:
    return f"faults/{uuid.uuid4().hex[:10]}/"


def _report(text: str) -> None:
    print(f"\n[consul faults] {text}", flush=True)


def _wait_for(what: str, cond: object, timeout: float, interval: float = 0.1) -> float:
    """Wait until ``cond()`` is true; return the seconds waited; fail after ``timeout``."""
    assert callable(cond)
    t0 = time.monotonic()
    while True:
        try:
            if cond():
                return time.monotonic() - t0
        except BackendUnavailable:
            pass
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"{what}: not within {timeout}s")
        time.sleep(interval)


@pytest.mark.parametrize("fault", ["kill", "sigstop"])
def test_leader_fault_while_writing_and_watching(
        consul_fault_cluster: harness.ConsulCluster, fault: str) -> None:
    """kill -9 (or SIGSTOP) the leader, the server the client uses, under writes and a
    watch. Writes resume as soon as the other servers have elected a leader (plus, after
    a SIGSTOP, the timeout of the write held by the frozen leader); the watch delivers
    the final value of every key, never an event twice or out of order."""
    cluster = consul_fault_cluster
    leader = cluster.leader()
    others = [m for m in cluster.members if m is not leader]
    url = cluster.url([leader, *others], timeout=TIMEOUT)  # the client starts on the leader
    ns = _ns()
    keys = [f"{ns}k{i}" for i in range(5)]
    backend = open_backend(url)
    stop = threading.Event()
    written: dict[str, bytes] = {}
    oks: list[float] = []  # when writes were acknowledged
    sent_oks: list[tuple[float, float]] = []  # (sent, acknowledged) of the same
    failures: list[str] = []
    seen: dict[str, bytes] = {}
    delivered: list[tuple[str, int]] = []
    watch_errors: list[str] = []
    watch_done = threading.Event()

    listed = backend.list(ns)

    anomalies: list[str] = []

    def writer() -> None:
        # Each write is a compare-and-swap on the key's last revision, retried until it is
        # known to be done. A plain put retried after an unknown outcome is not safe: the
        # first attempt, held by a frozen server, may be applied when it resumes, after
        # newer writes, and undo them. A stale compare-and-swap fails instead.
        revision = dict.fromkeys(keys, 0)
        i = 0
        while not stop.is_set():
            key, value = keys[i % len(keys)], str(i).encode()
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    res = backend.txn([Compare(key, revision[key])], [Put(key, value)])
                    if res.succeeded:
                        revision[key] = res.revision
                    else:  # an attempt whose outcome was unknown was applied after all
                        kv = backend.get(key)
                        if kv is None or kv.value != value:
                            anomalies.append(f"{key}: expected {value!r}, found {kv}")
                            return
                        revision[key] = kv.revision
                except BackendUnavailable as exc:
                    failures.append(str(exc))
                    time.sleep(0.05)
                    continue
                written[key] = value
                oks.append(time.monotonic())
                sent_oks.append((sent, oks[-1]))
                break
            i += 1
            time.sleep(0.01)

    def watcher() -> None:
        with backend.watch(ns, listed.revision + 1) as w:
            last = 0
            while not w.closed and not watch_done.is_set():
                try:
                    events: list[WatchEvent] = w.next(timeout=0.5)
                except BackendUnavailable as exc:
                    watch_errors.append(str(exc))
                    time.sleep(0.05)
                    continue
                for e in events:
                    assert e.revision >= last, "watch events went back in revision"
                    last = e.revision
                    delivered.append((e.key, e.revision))
                    if e.kind == "put":
                        seen[e.key] = e.value
                    else:
                        seen.pop(e.key, None)
                if stop.is_set() and seen == written:
                    return

    threads = [threading.Thread(target=writer, daemon=True),
               threading.Thread(target=watcher, daemon=True)]
    for t in threads:
        t.start()
    try:
        _wait_for("writes before the fault", lambda: len(oks) >= 20, 10)
        elected: list[float] = []
        killed_at = time.monotonic()
        if fault == "kill":
            leader.kill()  # and reaped: gone when this returns
        else:
            leader.pause()  # returns once the process is stopped
        dead_at = time.monotonic()

        def resumed_writes() -> list[float]:  # acknowledged writes sent after the fault
            return [done for sent, done in sent_oks if sent > dead_at]

        def election() -> None:  # when the servers that answer agree on a new leader
            cluster.leader(timeout=20)
            elected.append(time.monotonic() - killed_at)

        follower = threading.Thread(target=election, daemon=True)
        follower.start()
        _wait_for("a write sent after the fault", resumed_writes, 30, 0.01)
        resumed = resumed_writes()[0] - killed_at
        follower.join(25)
        new_leader = cluster.leader(timeout=20)
        assert elected, "no new leader was elected"
        what = "killed -9" if fault == "kill" else "SIGSTOPped"
        _report(f"leader {leader.name} {what}: new leader {new_leader.name} agreed after "
                f"{elected[0]:.2f}s; writes resumed after {resumed:.2f}s "
                f"({len(failures)} failed attempts)")
        for cause in sorted({f.split(": ", 1)[-1][:160] for f in failures})[:4]:
            _report(f"  a failed write said: {cause}")
        n = len(oks)
        _wait_for("more writes on the new leader", lambda: len(oks) >= n + 20, 20)
    finally:
        stop.set()
        threads[0].join(30)
    threads[1].join(30)
    alive = [t.name for t in threads if t.is_alive()]
    watch_done.set()  # a watcher that has not converged gives up now
    final = {kv.key: kv.value for kv in backend.list(ns).items}
    assert not alive, (
        f"threads still running: {alive}; seen {seen} written {written} stored {final}; "
        f"{len(watch_errors)} watch errors, last: {watch_errors[-3:]}")
    assert not anomalies, anomalies
    # the watch delivered the final value of every key, and no event twice
    assert seen == written, f"watch missed final values (watch errors: {watch_errors[:3]})"
    assert final == written
    assert len(delivered) == len(set(delivered)), "the watch delivered an event twice"
    # Consul 0.8's raft (raft_multiplier 1, its minimum) elects a new leader 1.5-4 s after
    # the old one stops answering; the client adds little to that (0.0-0.3 s measured): a
    # killed leader refuses at once, a frozen one holds the write in flight until its
    # timeout
    slack = LOAD_SLACK if fault == "kill" else TIMEOUT + LOAD_SLACK
    assert resumed < max(elected[0], 0.0) + slack, (
        f"writes resumed {resumed:.2f}s after the fault, {elected[0]:.2f}s after which a new "
        "leader was agreed")

    # the server rejoins (restarted, or resumed by SIGCONT) and serves the writes it missed
    if fault == "kill":
        leader.start()
    else:
        leader.resume()
    cluster.wait_healthy(30)
    with open_backend(cluster.url([leader], timeout=TIMEOUT)) as direct:
        # a write held by the frozen server ran when it resumed: its stale compare failed
        assert {kv.key: kv.value for kv in direct.list(ns).items} == written
    backend.close()


def test_frozen_server_times_out_fails_over_and_rejoins(
        consul_fault_cluster: harness.ConsulCluster) -> None:
    cluster = consul_fault_cluster
    frozen = cluster.followers()[0]
    others = [m for m in cluster.members if m is not frozen]
    url = cluster.url([frozen, *others], timeout=TIMEOUT)
    ns = _ns()
    backend = open_backend(url)
    assert isinstance(backend, ConsulBackend)
    writer = open_backend(url)  # a second client whose first call after the freeze writes
    backend.put(ns + "before", b"1")
    assert writer.get(ns + "before") is not None
    lease = backend.grant_lease(TTL)
    watch = backend.watch(ns, backend.list(ns).revision + 1)
    assert watch.next(timeout=0.2) == []  # its first listing is done: it now blocks
    frozen.pause()
    try:
        # a read fails over within the call
        t0 = time.monotonic()
        kv = backend.get(ns + "before")
        took = time.monotonic() - t0
        assert kv is not None and kv.value == b"1"
        assert took < TIMEOUT + LOAD_SLACK, f"failover read took {took:.2f}s"
        assert backend.current_endpoint != frozen.endpoint
        _report(f"{frozen.name} SIGSTOPped: a read failed over in {took:.2f}s")

        # a write sent to the frozen server times out: its outcome is unknown, so it is
        # not retried elsewhere; the next write goes to another server
        t0 = time.monotonic()
        with pytest.raises(BackendUnavailable, match="outcome unknown"):
            writer.put(ns + "maybe", b"x")
        took = time.monotonic() - t0
        assert took < TIMEOUT + LOAD_SLACK, f"write to a frozen server took {took:.2f}s"
        t0 = time.monotonic()
        writer.put(ns + "during", b"2")
        _report(f"a write to the frozen server failed after {took:.2f}s (outcome unknown); "
                f"the next one succeeded in {time.monotonic() - t0:.2f}s")

        # nothing hangs: every call returns or fails within its bound
        for call in (lambda: backend.list(ns), lambda: backend.put(ns + "again", b"3"),
                     lambda: backend.current_revision(), lambda: backend.keepalive(lease),
                     lambda: backend.grant_lease(TTL)):
            t0 = time.monotonic()
            call()
            assert time.monotonic() - t0 < TIMEOUT * len(cluster.members) + LOAD_SLACK

        # the watch, blocked on the frozen server, moves on and sees the writes
        t0 = time.monotonic()
        watched: dict[str, bytes] = {}
        while set(watched) != {ns + "during", ns + "again"} and time.monotonic() - t0 < 30:
            try:
                watched.update((e.key, e.value) for e in watch.next(timeout=1))
            except BackendUnavailable:
                time.sleep(0.1)
        took = time.monotonic() - t0
        _report(f"the watch on the frozen server delivered after {took:.2f}s")
        assert watched == {ns + "during": b"2", ns + "again": b"3"}
        watch.close()

        # a client that knows only the frozen server fails in time with a clear message
        with pytest.raises(BackendUnavailable) as info:
            t0 = time.monotonic()
            open_backend(cluster.url([frozen], timeout=1))
        assert time.monotonic() - t0 < 1 + LOAD_SLACK
        assert "no answer within" in str(info.value) and frozen.endpoint in str(info.value)
    finally:
        frozen.resume()
    # SIGCONT: it rejoins and serves what was written while it was stopped
    cluster.wait_healthy(30)
    with open_backend(cluster.url([frozen], timeout=TIMEOUT)) as direct:
        got = _wait_for("the resumed server to catch up",
                        lambda: direct.get(ns + "during") is not None, 20)
        kv = direct.get(ns + "during")
        assert kv is not None and kv.value == b"2"
    backend.revoke_lease(lease)
    maybe = backend.get(ns + "maybe")
    _report(f"{frozen.name} SIGCONT: serving again after {got:.2f}s; the write with the "
            f"unknown outcome was {'applied late' if maybe else 'not applied'}")
    backend.close()
    writer.close()


_HOLDER = textwrap.dedent("""
    import json, sys
    from skedlib.plugins import open_backend
    from skedlib.locks import Lock
    from skedlib.store.base import Put

    url, lock_key, data_key = sys.argv[1:4]
    backend = open_backend(url)
    lock = Lock(backend, lock_key, ttl=float(sys.argv[4]), holder="holder-" + lock_key[-1])
    assert lock.try_acquire()
    print(json.dumps({"token": lock.token}), flush=True)
    sys.stdin.readline()  # the test says when to write (after a SIGCONT)
    res = backend.txn([lock.fence()], [Put(data_key, b"stale holder")])
    print(json.dumps({"succeeded": res.succeeded}), flush=True)
""")


def _start_holder(url: str, lock_key: str, data_key: str) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, url, lock_key, data_key, str(TTL)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, "the holder process did not start"
    return proc, int(json.loads(line)["token"])


def test_dead_and_stalled_lock_holders(consul_fault_cluster: harness.ConsulCluster) -> None:
    cluster = consul_fault_cluster
    url = cluster.url(timeout=TIMEOUT)
    ns = _ns()
    backend = open_backend(url)
    killed, k_token = _start_holder(url, ns + "lock/a", ns + "data/a")
    stalled, s_token = _start_holder(url, ns + "lock/b", ns + "data/b")
    try:
        kv = backend.get(ns + "lock/a")
        assert kv is not None and kv.lease is not None and kv.revision == k_token
        killed.kill()
        os.kill(stalled.pid, signal.SIGSTOP)  # a holder that stalls past its TTL
        gone = _wait_for("the dead holder's lock key to go",
                         lambda: backend.get(ns + "lock/a") is None, TTL + 10)
        _wait_for("the stalled holder's lock key to go",
                  lambda: backend.get(ns + "lock/b") is None, TTL + 10)
        _report(f"holder killed -9: its session-bound key was gone after {gone:.1f}s "
                f"(TTL {TTL:g}s)")
        # free within the TTL (+ polling and a loaded machine), not 2 x the session TTL
        assert gone <= TTL + LOAD_SLACK

        # someone else takes both locks
        new_tokens = {}
        for name in ("a", "b"):
            lease = backend.grant_lease(TTL)
            res = backend.txn([Compare(ns + f"lock/{name}", 0)],
                              [Put(ns + f"lock/{name}", b"new holder", lease=lease)])
            assert res.succeeded
            new_tokens[name] = res.revision
        assert new_tokens["a"] > k_token and new_tokens["b"] > s_token

        # the dead holder's fenced write (its token, sent by anyone) is refused
        res = backend.txn([Compare(ns + "lock/a", k_token)], [Put(ns + "data/a", b"stale")])
        assert not res.succeeded
        assert backend.get(ns + "data/a") is None

        # the stalled holder wakes up and tries its fenced write: refused by the store
        os.kill(stalled.pid, signal.SIGCONT)
        assert stalled.stdin is not None and stalled.stdout is not None
        stalled.stdin.write("write\n")
        stalled.stdin.flush()
        out, _ = stalled.communicate(timeout=30)
        assert json.loads(out.strip().splitlines()[-1]) == {"succeeded": False}
        assert backend.get(ns + "data/b") is None
        kv = backend.get(ns + "lock/b")
        assert kv is not None and kv.value == b"new holder"
    finally:
        for p in (killed, stalled):
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
            p.wait(10)
            for pipe in (p.stdin, p.stdout):
                if pipe is not None:
                    pipe.close()
        backend.close()
