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

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 3.0  # the backend's per-call timeout in these tests
TTL = 10.0


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


def test_leader_killed_while_writing_and_watching(
        consul_fault_cluster: harness.ConsulCluster) -> None:
    cluster = consul_fault_cluster
    leader = cluster.leader()
    others = [m for m in cluster.members if m is not leader]
    url = cluster.url([leader, *others], timeout=TIMEOUT)  # the client starts on the leader
    ns = _ns()
    keys = [f"{ns}k{i}" for i in range(5)]
    backend = open_backend(url)
    stop = threading.Event()
    written: dict[str, bytes] = {}
    oks: list[float] = []
    failures: list[str] = []
    seen: dict[str, bytes] = {}
    watch_errors: list[str] = []
    watch_done = threading.Event()

    listed = backend.list(ns)

    def writer() -> None:
        i = 0
        while not stop.is_set():
            key, value = keys[i % len(keys)], str(i).encode()
            while not stop.is_set():  # retry the same write until it is known to be done
                try:
                    backend.put(key, value)
                except BackendUnavailable as exc:
                    failures.append(str(exc))
                    time.sleep(0.05)
                    continue
                written[key] = value
                oks.append(time.monotonic())
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
        killed_at = time.monotonic()
        leader.kill()
        _wait_for("a write after the kill", lambda: oks and oks[-1] > killed_at, 30, 0.01)
        resumed = min(t for t in oks if t > killed_at) - killed_at
        new_leader = cluster.leader(timeout=20)
        _report(f"leader {leader.name} killed -9: writes resumed after {resumed:.2f}s "
                f"({len(failures)} failed attempts), new leader {new_leader.name}")
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
    # the watch delivered the final value of every key
    assert seen == written, f"watch missed final values (watch errors: {watch_errors[:3]})"
    assert final == written
    assert resumed < 15, f"writes took {resumed:.1f}s to resume"

    # the killed server rejoins with its data and serves the writes it missed
    leader.start()
    cluster.wait_healthy(30)
    with open_backend(cluster.url([leader], timeout=TIMEOUT)) as direct:
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
    frozen.pause()
    try:
        # a read fails over within the call
        t0 = time.monotonic()
        kv = backend.get(ns + "before")
        took = time.monotonic() - t0
        assert kv is not None and kv.value == b"1"
        assert took < TIMEOUT + 1, f"failover read took {took:.2f}s"
        assert backend.current_endpoint != frozen.endpoint
        _report(f"{frozen.name} SIGSTOPped: a read failed over in {took:.2f}s")

        # a write sent to the frozen server times out: its outcome is unknown, so it is
        # not retried elsewhere; the next write goes to another server
        t0 = time.monotonic()
        with pytest.raises(BackendUnavailable, match="outcome unknown"):
            writer.put(ns + "maybe", b"x")
        took = time.monotonic() - t0
        assert took < TIMEOUT + 1, f"write to a frozen server took {took:.2f}s"
        t0 = time.monotonic()
        writer.put(ns + "during", b"2")
        _report(f"a write to the frozen server failed after {took:.2f}s (outcome unknown); "
                f"the next one succeeded in {time.monotonic() - t0:.2f}s")

        # nothing hangs: every call returns or fails within its bound
        for call in (lambda: backend.list(ns), lambda: backend.put(ns + "again", b"3"),
                     lambda: backend.current_revision()):
            t0 = time.monotonic()
            call()
            assert time.monotonic() - t0 < TIMEOUT * len(cluster.members) + 1

        # a client that knows only the frozen server fails in time with a clear message
        with pytest.raises(BackendUnavailable) as info:
            t0 = time.monotonic()
            open_backend(cluster.url([frozen], timeout=1))
        assert time.monotonic() - t0 < 3
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
                         lambda: backend.get(ns + "lock/a") is None, 2 * TTL + 5)
        _wait_for("the stalled holder's lock key to go",
                  lambda: backend.get(ns + "lock/b") is None, 2 * TTL + 5)
        _report(f"holder killed -9: its session-bound key was gone after {gone:.1f}s "
                f"(TTL {TTL:g}s; Consul allows up to 2 x TTL)")
        assert gone <= 2 * TTL + 3

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
