"""The backend conformance suite: a backend that passes it may call itself a backend.

Use it from a pytest module of your own::

    import pytest
    from skedlib.testing import BackendConformance

    class TestMyBackend(BackendConformance):
        lease_ttl = 2.0            # a TTL your backend honours (≥ its min_lease_ttl)
        lease_expiry_slack = 3.0   # how late after the TTL a lease may end

        @pytest.fixture
        def backend_url(self) -> str:
            return "mystore://127.0.0.1:1234"

Every test opens the backend through the plugin registry (so the URL scheme must be
registered by an installed plugin) and works under a key prefix unique to the test, so
one running server can serve the whole suite. Class attributes tune it:

- ``lease_ttl`` / ``lease_expiry_slack``: the lease tests wait ``2 x ttl + slack`` at most
  (Consul, for one, may end a session up to twice its TTL after the last renewal);
- ``cross_process``: False when the URL cannot be opened from another process
  (``memory://``); the multi-process tests are then skipped;
- ``ordered_watch_history``: False when the backend's watch reports the final state
  rather than every intermediate write (Consul's blocking queries); watch tests then
  check that the last value of every key arrives, not every intermediate one.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from skedlib.errors import LeaseExpired, TxnTooLarge
from skedlib.plugins import open_backend
from skedlib.store.base import Backend, Compare, Delete, Put, WatchEvent, WatchKind

__all__ = ["BackendConformance"]


def _collect(backend: Backend, prefix: str, start: int, want: int,
             timeout: float = 10.0, kinds: Sequence[WatchKind] | None = None
             ) -> list[WatchEvent]:
    events: list[WatchEvent] = []
    deadline = time.monotonic() + timeout
    watch = (backend.watch(prefix, start) if kinds is None
             else backend.watch_kinds(prefix, start, kinds))
    with watch as w:
        while len(events) < want and time.monotonic() < deadline:
            events += w.next(timeout=max(0.0, deadline - time.monotonic()))
    return events


def _increment_worker(url: str, key: str, n: int) -> None:
    backend = open_backend(url)
    try:
        for _ in range(n):
            while True:
                kv = backend.get(key)
                value = int(kv.value) if kv else 0
                rev = kv.revision if kv else 0
                if backend.txn([Compare(key, rev)], [Put(key, str(value + 1).encode())]
                               ).succeeded:
                    break
    finally:
        backend.close()


def _put_keys(url: str, prefix: str, n: int) -> None:
    backend = open_backend(url)
    try:
        for i in range(n):
            backend.put(f"{prefix}{i:02d}", str(i).encode())
    finally:
        backend.close()


def _hold_lease_then_die(url: str, key: str, ttl: float, ready: Any) -> None:
    backend = open_backend(url)
    lease = backend.grant_lease(ttl)
    backend.put(key, b"held", lease=lease)
    ready.set()
    time.sleep(3600)  # killed by the test


class BackendConformance:
    """The tests every backend must pass. Subclass it and provide ``backend_url``."""

    lease_ttl: ClassVar[float] = 1.0
    lease_expiry_slack: ClassVar[float] = 2.0
    cross_process: ClassVar[bool] = True
    ordered_watch_history: ClassVar[bool] = True

    @pytest.fixture
    def backend_url(self) -> str:
        raise NotImplementedError("provide a backend_url fixture")

    @pytest.fixture
    def backend(self, backend_url: str) -> Iterator[Backend]:
        b = open_backend(backend_url)
        try:
            yield b
        finally:
            b.close()

    @pytest.fixture
    def ns(self) -> str:
        return f"conformance/{uuid.uuid4().hex[:12]}/"

    # -- basic reads and writes -----------------------------------------------------------
    def test_get_missing_is_none(self, backend: Backend, ns: str) -> None:
        assert backend.get(ns + "nope") is None

    def test_put_get_revisions(self, backend: Backend, ns: str) -> None:
        r1 = backend.put(ns + "a", b"1")
        kv = backend.get(ns + "a")
        assert kv is not None and kv.value == b"1"
        assert kv.revision == kv.create_revision == r1
        r2 = backend.put(ns + "a", b"2")
        assert r2 > r1
        kv2 = backend.get(ns + "a")
        assert kv2 is not None
        assert (kv2.value, kv2.revision, kv2.create_revision) == (b"2", r2, r1)

    def test_binary_values_round_trip(self, backend: Backend, ns: str) -> None:
        value = bytes(range(256)) + "é✓".encode()
        backend.put(ns + "bin", value)
        kv = backend.get(ns + "bin")
        assert kv is not None and kv.value == value

    def test_get_many_reads_what_get_reads(self, backend: Backend, ns: str) -> None:
        lease = backend.grant_lease(max(30.0, backend.min_lease_ttl))
        keys = [f"{ns}m/{i}" for i in range(140)]  # more than one etcd transaction holds
        for i, key in enumerate(keys[:136]):
            if i % 2 == 0:
                backend.put(key, str(i).encode(), lease=lease if i % 4 == 0 else None)
        backend.delete(keys[0])
        asked = [*reversed(keys), keys[2], ns + "m/absent"]
        found = backend.get_many(asked)
        expected = {key: kv for key in keys if (kv := backend.get(key)) is not None}
        assert len(expected) == 67
        assert found == expected
        assert backend.get_many([]) == {}

    def test_list_prefix_sorted_and_bounded(self, backend: Backend, ns: str) -> None:
        for k in ["b", "a", "c/x", "c/y"]:
            backend.put(ns + "p/" + k, k.encode())
        backend.put(ns + "q", b"outside")
        listed = backend.list(ns + "p/")
        assert [kv.key for kv in listed.items] == [ns + "p/" + k for k in
                                                     ["a", "b", "c/x", "c/y"]]
        assert listed.revision >= max(kv.revision for kv in listed.items)
        assert backend.list(ns + "p/c/").items[0].value == b"c/x"
        assert backend.list(ns + "nothing/").items == []

    def test_delete(self, backend: Backend, ns: str) -> None:
        backend.put(ns + "d", b"x")
        backend.delete(ns + "d")
        assert backend.get(ns + "d") is None
        backend.delete(ns + "d")  # deleting a missing key is a no-op
        assert backend.get(ns + "d") is None

    # -- transactions ---------------------------------------------------------------------
    def test_txn_compare_absent(self, backend: Backend, ns: str) -> None:
        assert backend.create(ns + "c", b"1")
        assert not backend.create(ns + "c", b"2")
        kv = backend.get(ns + "c")
        assert kv is not None and kv.value == b"1"

    def test_txn_compare_revision(self, backend: Backend, ns: str) -> None:
        rev = backend.put(ns + "k", b"1")
        ok = backend.txn([Compare(ns + "k", rev)], [Put(ns + "k", b"2")])
        assert ok.succeeded
        stale = backend.txn([Compare(ns + "k", rev)], [Put(ns + "k", b"3")])
        assert not stale.succeeded
        kv = backend.get(ns + "k")
        assert kv is not None and kv.value == b"2" and kv.revision == ok.revision

    def test_txn_is_all_or_nothing(self, backend: Backend, ns: str) -> None:
        backend.put(ns + "x", b"0")
        res = backend.txn([Compare(ns + "x", 0)],
                          [Put(ns + "y", b"1"), Put(ns + "z", b"1")])
        assert not res.succeeded
        assert backend.get(ns + "y") is None and backend.get(ns + "z") is None
        kv = backend.get(ns + "x")
        assert kv is not None
        res = backend.txn([Compare(ns + "x", kv.revision), Compare(ns + "y", 0)],
                          [Put(ns + "y", b"1"), Delete(ns + "x"), Put(ns + "z", b"2")])
        assert res.succeeded
        got_y, got_z = backend.get(ns + "y"), backend.get(ns + "z")
        assert backend.get(ns + "x") is None
        assert got_y is not None and got_z is not None
        assert got_y.revision == got_z.revision == res.revision

    def test_txn_too_large_is_refused_whole(self, backend: Backend, ns: str) -> None:
        limit = backend.max_txn_ops
        if limit is None:
            pytest.skip("backend has no transaction size limit")
        ops = [Put(f"{ns}big/{i:04d}", b"v") for i in range(limit + 1)]
        with pytest.raises(TxnTooLarge):
            backend.txn([], ops)
        assert backend.list(ns + "big/").items == []

    def test_concurrent_increments_lose_nothing_threads(self, backend: Backend,
                                                       ns: str) -> None:
        key, threads, each = ns + "counter", 4, 15
        errors: list[BaseException] = []

        def work() -> None:
            try:
                for _ in range(each):
                    while True:
                        kv = backend.get(key)
                        n = int(kv.value) if kv else 0
                        if backend.txn([Compare(key, kv.revision if kv else 0)],
                                       [Put(key, str(n + 1).encode())]).succeeded:
                            break
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        ts = [threading.Thread(target=work) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        assert not errors
        kv = backend.get(key)
        assert kv is not None and int(kv.value) == threads * each

    def test_concurrent_increments_lose_nothing_processes(self, backend: Backend,
                                                         backend_url: str, ns: str) -> None:
        if not self.cross_process:
            pytest.skip("this backend cannot be shared between processes")
        key, procs, each = ns + "counter", 3, 10
        ctx = multiprocessing.get_context("spawn")
        ps = [ctx.Process(target=_increment_worker, args=(backend_url, key, each))
              for _ in range(procs)]
        for p in ps:
            p.start()
        for p in ps:
            p.join(120)
        assert all(p.exitcode == 0 for p in ps)
        kv = backend.get(key)
        assert kv is not None and int(kv.value) == procs * each

    def test_current_revision_is_the_stores_whatever_the_prefix(self, backend: Backend,
                                                                  ns: str) -> None:
        written = backend.put(ns + "rev/a", b"1")
        under_ns = backend.current_revision(ns)
        elsewhere = backend.current_revision(ns + "empty/")
        assert under_ns >= written and elsewhere >= under_ns  # the store's, not the prefix's
        assert backend.list(ns).revision >= elsewhere

    # -- watches --------------------------------------------------------------------------
    def test_watch_sees_puts_and_deletes_in_order(self, backend: Backend, ns: str) -> None:
        start = backend.current_revision(ns) + 1
        backend.put(ns + "w/a", b"1")
        backend.put(ns + "other", b"not watched")
        backend.put(ns + "w/b", b"2")
        backend.delete(ns + "w/a")
        # without ordered history the final states may arrive as one event per key
        events = _collect(backend, ns + "w/", start, want=3 if self.ordered_watch_history else 1)
        if self.ordered_watch_history:
            assert [(e.kind, e.key, e.value) for e in events] == [
                ("put", ns + "w/a", b"1"), ("put", ns + "w/b", b"2"),
                ("delete", ns + "w/a", b"")]
        else:
            final = {e.key: e for e in events}
            assert final[ns + "w/b"].value == b"2"
        revs = [e.revision for e in events]
        assert revs == sorted(revs)

    def test_watch_wakes_on_later_write(self, backend: Backend, ns: str) -> None:
        start = backend.current_revision(ns) + 1
        got: list[WatchEvent] = []
        with backend.watch(ns, start) as w:
            def writer() -> None:
                time.sleep(0.3)
                backend.put(ns + "late", b"x")
            t = threading.Thread(target=writer)
            t.start()
            deadline = time.monotonic() + 10
            while not got and time.monotonic() < deadline:
                got = w.next(timeout=1.0)
            t.join()
        assert [(e.kind, e.key, e.value) for e in got] == [("put", ns + "late", b"x")]

    def test_watch_sees_writes_of_another_process(self, backend: Backend, backend_url: str,
                                                  ns: str) -> None:
        if not self.cross_process:
            pytest.skip("this backend cannot be shared between processes")
        start = backend.current_revision(ns) + 1
        with backend.watch(ns + "x/", start) as w:  # open before the writer starts
            ctx = multiprocessing.get_context("spawn")
            p = ctx.Process(target=_put_keys, args=(backend_url, ns + "x/", 5))
            p.start()
            events: list[WatchEvent] = []
            deadline = time.monotonic() + 60
            final: dict[str, bytes] = {}
            while len(final) < 5 and time.monotonic() < deadline:
                events += w.next(timeout=1.0)
                final = {e.key: e.value for e in events}
            p.join(60)
        assert p.exitcode == 0
        assert final == {f"{ns}x/{i:02d}": str(i).encode() for i in range(5)}
        if self.ordered_watch_history:
            assert [e.key for e in events] == sorted(final)

    def test_watch_timeout_returns_empty(self, backend: Backend, ns: str) -> None:
        with backend.watch(ns, backend.current_revision(ns) + 1) as w:
            t0 = time.monotonic()
            assert w.next(timeout=0.2) == []
            assert time.monotonic() - t0 < 5

    def test_watch_resume_has_no_gaps_or_duplicates(self, backend: Backend, ns: str) -> None:
        start = backend.current_revision(ns) + 1
        for i in range(10):
            backend.put(f"{ns}r/{i}", str(i).encode())
        first = _collect(backend, ns + "r/", start, want=4)
        seen = first[:4] if self.ordered_watch_history else first
        resume_from = seen[-1].revision + 1
        for i in range(10, 15):
            backend.put(f"{ns}r/{i}", str(i).encode())
        rest = _collect(backend, ns + "r/", resume_from, want=15 - len(seen))
        keys = [e.key for e in seen + rest]
        assert keys == [f"{ns}r/{i}" for i in range(15)]

    def test_watch_close_unblocks(self, backend: Backend, ns: str) -> None:
        w = backend.watch(ns, backend.current_revision(ns) + 1)
        out: list[list[WatchEvent]] = []
        t = threading.Thread(target=lambda: out.append(w.next(timeout=30)))
        t.start()
        time.sleep(0.2)
        w.close()
        t.join(10)
        assert not t.is_alive() and out == [[]] and w.closed

    def test_list_then_watch_misses_nothing(self, backend: Backend, ns: str) -> None:
        backend.put(ns + "lw/a", b"1")
        listed = backend.list(ns + "lw/")
        backend.put(ns + "lw/b", b"2")
        events = _collect(backend, ns + "lw/", listed.revision + 1, want=1)
        assert [(e.key, e.value) for e in events] == [(ns + "lw/b", b"2")]

    def _kinds_writes(self, backend: Backend, prefix: str) -> int:
        """Puts and deletes under ``prefix``; the revision before them."""
        start = backend.current_revision(prefix) + 1
        backend.put(prefix + "a", b"1")
        backend.put(prefix + "b", b"2")
        backend.delete(prefix + "a")
        backend.put(prefix + "c", b"3")
        backend.delete(prefix + "b")
        return start

    def test_watch_kinds_deletes_only(self, backend: Backend, ns: str) -> None:
        prefix = ns + "kd/"
        backend.put(prefix + "a", b"1")
        start = backend.current_revision(ns) + 1
        with backend.watch_kinds(prefix, start, ["delete"]) as w:
            backend.put(prefix + "b", b"2")
            assert w.next(timeout=2.0) == []  # puts only so far (Consul: it listed them)
            backend.delete(prefix + "a")
            backend.put(prefix + "c", b"3")
            events: list[WatchEvent] = []
            deadline = time.monotonic() + 10
            while not events and time.monotonic() < deadline:
                events = w.next(timeout=1.0)
        assert [(e.kind, e.key, e.value) for e in events] == [("delete", prefix + "a", b"")]

    def test_watch_kinds_deletes_in_order(self, backend: Backend, ns: str) -> None:
        if not self.ordered_watch_history:
            pytest.skip("the watch reports final states: no deletes before its first look")
        start = self._kinds_writes(backend, ns + "ko/")
        events = _collect(backend, ns + "ko/", start, want=2, kinds=["delete"])
        assert [(e.kind, e.key, e.value) for e in events] == [
            ("delete", ns + "ko/a", b""), ("delete", ns + "ko/b", b"")]
        assert events[0].revision < events[1].revision

    def test_watch_kinds_puts_only(self, backend: Backend, ns: str) -> None:
        start = self._kinds_writes(backend, ns + "kp/")
        want = 3 if self.ordered_watch_history else 1
        events = _collect(backend, ns + "kp/", start, want=want, kinds=("put",))
        if self.ordered_watch_history:
            assert [(e.kind, e.key, e.value) for e in events] == [
                ("put", ns + "kp/a", b"1"), ("put", ns + "kp/b", b"2"),
                ("put", ns + "kp/c", b"3")]
        else:  # the final states: c alone is still there
            assert [(e.kind, e.key, e.value) for e in events] == [("put", ns + "kp/c", b"3")]

    def test_watch_kinds_both_is_the_whole_watch(self, backend: Backend, ns: str) -> None:
        start = self._kinds_writes(backend, ns + "kb/")
        want = 5 if self.ordered_watch_history else 3
        both = _collect(backend, ns + "kb/", start, want=want, kinds=("put", "delete"))
        assert both == _collect(backend, ns + "kb/", start, want=want)

    def test_watch_kinds_resumes_after_its_last_batch(self, backend: Backend,
                                                      ns: str) -> None:
        if not self.ordered_watch_history:
            pytest.skip("the watch reports final states: no deletes before its first look")
        start = self._kinds_writes(backend, ns + "kr/")
        first = _collect(backend, ns + "kr/", start, want=2, kinds=["delete"])
        backend.put(ns + "kr/d", b"4")
        backend.delete(ns + "kr/c")
        rest = _collect(backend, ns + "kr/", first[-1].revision + 1, want=1, kinds=["delete"])
        assert sorted(e.key for e in first) == [ns + "kr/a", ns + "kr/b"]
        assert [(e.kind, e.key) for e in rest] == [("delete", ns + "kr/c")]

    def test_watch_kinds_times_out_past_other_changes(self, backend: Backend,
                                                      ns: str) -> None:
        prefix = ns + "kt/"
        with backend.watch_kinds(prefix, backend.current_revision(ns) + 1, ["delete"]) as w:
            backend.put(prefix + "a", b"1")
            t0 = time.monotonic()
            assert w.next(timeout=0.5) == []  # a put only: nothing for this watch
            assert time.monotonic() - t0 < 5
            backend.delete(prefix + "a")
            got: list[WatchEvent] = []
            deadline = time.monotonic() + 10
            while not got and time.monotonic() < deadline:
                got = w.next(timeout=1.0)
        assert [(e.kind, e.key) for e in got] == [("delete", prefix + "a")]

    def test_watch_kinds_refuses_unknown_kinds(self, backend: Backend, ns: str) -> None:
        for kinds in ([], ["update"], ["put", "removed"]):
            with pytest.raises(ValueError, match="watch kinds"):
                backend.watch_kinds(ns, 1, kinds)  # type: ignore[arg-type]

    # -- leases ---------------------------------------------------------------------------
    def test_lease_expiry_deletes_keys_and_notifies_watch(self, backend: Backend,
                                                         ns: str) -> None:
        lease = backend.grant_lease(self.lease_ttl)
        rev = backend.put(ns + "l/a", b"1", lease=lease)
        backend.put(ns + "l/keep", b"1")
        kv = backend.get(ns + "l/a")
        assert kv is not None and kv.lease == lease
        events = _collect(backend, ns + "l/", rev + 1, want=2,
                          timeout=self.lease_ttl * 2 + self.lease_expiry_slack + 5)
        deletes = [e for e in events if e.kind == "delete"]
        assert [e.key for e in deletes] == [ns + "l/a"]
        assert backend.get(ns + "l/a") is None
        assert backend.get(ns + "l/keep") is not None
        with pytest.raises(LeaseExpired):
            backend.keepalive(lease)

    def test_keepalive_extends_lease(self, backend: Backend, ns: str) -> None:
        lease = backend.grant_lease(self.lease_ttl)
        backend.put(ns + "ka", b"1", lease=lease)
        end = time.monotonic() + self.lease_ttl * 2.5
        while time.monotonic() < end:
            backend.keepalive(lease)
            time.sleep(self.lease_ttl / 4)
        assert backend.get(ns + "ka") is not None
        backend.revoke_lease(lease)
        assert backend.get(ns + "ka") is None

    def test_revoke_deletes_keys_and_is_idempotent(self, backend: Backend, ns: str) -> None:
        lease = backend.grant_lease(max(self.lease_ttl, 10))
        backend.put(ns + "rv/a", b"1", lease=lease)
        backend.put(ns + "rv/b", b"1", lease=lease)
        backend.revoke_lease(lease)
        assert backend.list(ns + "rv/").items == []
        backend.revoke_lease(lease)
        with pytest.raises(LeaseExpired):
            backend.put(ns + "rv/c", b"1", lease=lease)
        assert backend.get(ns + "rv/c") is None

    def test_lease_of_dead_process_expires(self, backend: Backend, backend_url: str,
                                          ns: str) -> None:
        if not self.cross_process:
            pytest.skip("this backend cannot be shared between processes")
        ctx = multiprocessing.get_context("spawn")
        ready = ctx.Event()
        p = ctx.Process(target=_hold_lease_then_die,
                        args=(backend_url, ns + "dead", self.lease_ttl, ready))
        p.start()
        try:
            assert ready.wait(60)
            assert backend.get(ns + "dead") is not None
            p.kill()
            p.join(10)
            deadline = time.monotonic() + self.lease_ttl * 2 + self.lease_expiry_slack
            while backend.get(ns + "dead") is not None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert backend.get(ns + "dead") is None
        finally:
            if p.is_alive():
                p.kill()

    # -- the backend against a model ------------------------------------------------------
    def test_stateful_against_model(self, backend: Backend, ns: str) -> None:
        run_state_machine_as_test(
            lambda: _ModelMachine(backend, ns + uuid.uuid4().hex[:8] + "/",  # type: ignore[arg-type]
                                  self.ordered_watch_history),
            settings=settings(max_examples=15, stateful_step_count=20, deadline=None,
                              suppress_health_check=list(HealthCheck)))


_KEYS = st.sampled_from(["a", "b", "c", "d/e", "d/f"])
_VALUES = st.binary(max_size=8)


class _ModelMachine(RuleBasedStateMachine):
    """Puts, deletes and compare-transactions checked against a dict of (value, revision);
    at the end, a watch from the start replays the run and must arrive at the same state."""

    def __init__(self, backend: Backend, ns: str, ordered_watch_history: bool = True) -> None:
        super().__init__()
        self.backend = backend
        self.ns = ns
        self.ordered = ordered_watch_history
        self.model: dict[str, tuple[bytes, int]] = {}
        self.start = backend.current_revision(ns) + 1
        self.last_revision = 0
        self.last_change = 0  # the revision of the last write that changed a key

    def _rev(self, key: str) -> int:
        return self.model.get(key, (b"", 0))[1]

    def _saw(self, revision: int) -> None:
        assert revision >= self.last_revision
        self.last_revision = revision

    @rule(key=_KEYS, value=_VALUES)
    def put(self, key: str, value: bytes) -> None:
        rev = self.backend.put(self.ns + key, value)
        assert rev > self.last_revision
        self._saw(rev)
        self.model[key] = (value, rev)
        self.last_change = rev

    @rule(key=_KEYS)
    def delete(self, key: str) -> None:
        rev = self.backend.delete(self.ns + key)
        self._saw(rev)
        if self.model.pop(key, None) is not None:
            self.last_change = rev

    @rule(key=_KEYS, other=_KEYS, value=_VALUES, stale=st.booleans())
    def txn(self, key: str, other: str, value: bytes, stale: bool) -> None:
        expect = self._rev(key) + (7 if stale else 0)
        res = self.backend.txn([Compare(self.ns + key, expect)],
                               [Put(self.ns + other, value), Delete(self.ns + key)]
                               if key != other else [Put(self.ns + other, value)])
        assert res.succeeded is (not stale)
        if res.succeeded:
            self._saw(res.revision)
            self.last_change = res.revision
            if key != other:
                self.model.pop(key, None)
            self.model[other] = (value, res.revision)

    @invariant()
    def matches_model(self) -> None:
        listed = self.backend.list(self.ns)
        got = {kv.key[len(self.ns):]: (kv.value, kv.revision) for kv in listed.items}
        assert got == self.model
        assert listed.revision >= max((r for _, r in self.model.values()), default=0)
        for key in ("a", "d/e"):
            kv = self.backend.get(self.ns + key)
            assert (None if kv is None else (kv.value, kv.revision)) == self.model.get(key)

    def _replay(self) -> None:
        """A watch from the start, applied to an empty dict, gives the model."""
        if not self.ordered or self.last_change < self.start:
            return
        replayed: dict[str, tuple[bytes, int]] = {}
        revisions: list[int] = []
        deadline = time.monotonic() + 30
        with self.backend.watch(self.ns, self.start) as w:
            while (not revisions or revisions[-1] < self.last_change) and \
                    time.monotonic() < deadline:
                for e in w.next(timeout=1.0):
                    revisions.append(e.revision)
                    if e.kind == "put":
                        replayed[e.key[len(self.ns):]] = (e.value, e.revision)
                    else:
                        replayed.pop(e.key[len(self.ns):], None)
        assert revisions == sorted(revisions)
        assert replayed == self.model

    def teardown(self) -> None:
        self._replay()
        for key in list(self.model):
            self.backend.delete(self.ns + key)

