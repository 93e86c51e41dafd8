"""Locks and fencing on every backend (memory, sqlite, etcd, Consul), including a holder
killed with -9.

etcd runs on the session's single node and Consul on its ``-dev`` agent (started by
``tests/harness``); every test works under a key prefix of its own, so the servers are
shared. Leases do not end equally fast everywhere, so the tests that wait for a lease to
end take their TTL and their waits from :data:`TIMING`.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from skedlib.errors import LockError
from skedlib.locks import KeptLease, Lock
from skedlib.plugins import open_backend
from skedlib.store.base import Backend, Compare, Put
from tests.harness import consul as consul_harness
from tests.harness import etcd as etcd_harness
from tests.harness.common import DeleteFailsOnce

etcd_single = etcd_harness.etcd_single
consul_dev = consul_harness.consul_dev


@dataclass(frozen=True)
class Timing:
    """How one backend ends a lease that is no longer kept alive."""

    ttl: float
    """The TTL the tests ask for."""
    outlives: float
    """A time after which a lease of ``ttl`` would surely have ended without keep-alives."""
    ends_within: float
    """A generous bound (it holds on a loaded machine) on when a lease of ``ttl`` has ended
    after its last keep-alive; the tests wait this long for the lock to come free."""


TIMING = {
    # a lease ends at the first call after its deadline
    "memory": Timing(ttl=0.5, outlives=1.6, ends_within=10),
    "sqlite": Timing(ttl=0.5, outlives=1.6, ends_within=10),
    # etcd rounds a TTL up to whole seconds, at least 2 s; its leader checks every 500 ms
    "etcd": Timing(ttl=2, outlives=4, ends_within=20),
    # Consul's shortest lease is 20 s (a session of 10 s, which Consul ends within twice
    # its TTL after the last renewal)
    "consul": Timing(ttl=20, outlives=25, ends_within=40),
}


def on_backends(*names: str, waits_for_expiry: bool = False) -> pytest.MarkDecorator:
    """Run the test on the backends ``names`` (default: all four).

    etcd and Consul start real servers (``integration``); a test that waits for a lease to
    end takes 20 s or more on Consul (``slow`` there)."""
    marks: dict[str, list[pytest.MarkDecorator]] = {
        "etcd": [pytest.mark.integration],
        "consul": [pytest.mark.integration, *([pytest.mark.slow] if waits_for_expiry else [])]}
    return pytest.mark.parametrize(
        "backend_name", [pytest.param(n, marks=marks.get(n, []), id=n)
                         for n in names or list(TIMING)], indirect=True)


@pytest.fixture
def backend_name(request: pytest.FixtureRequest) -> str:
    """The test's parameter: which backend it runs on."""
    name: str = request.param
    return name


@pytest.fixture
def url(request: pytest.FixtureRequest, backend_name: str, tmp_path: Path) -> str:
    """The URL of the test's backend (etcd and Consul are started on first use)."""
    name = backend_name
    if name == "memory":
        return "memory://"
    if name == "sqlite":
        return f"sqlite://{tmp_path}/l.db"
    server = request.getfixturevalue("etcd_single" if name == "etcd" else "consul_dev")
    server_url: str = server.url()
    return server_url


@pytest.fixture
def timing(backend_name: str) -> Timing:
    """The lease timing of the test's backend."""
    return TIMING[backend_name]


@pytest.fixture
def backend(url: str) -> Iterator[Backend]:
    b = open_backend(url)
    yield b
    b.close()


@pytest.fixture
def ns() -> str:
    """A key prefix of the test's own (etcd and Consul are shared by the session)."""
    return f"locks-{uuid.uuid4().hex[:10]}/"


@on_backends()
def test_try_lock_excludes_and_release_frees(backend: Backend, ns: str) -> None:
    key = ns + "x"
    a, b = Lock(backend, key, ttl=1), Lock(backend, key, ttl=1)
    assert a.try_acquire()
    assert not b.try_acquire()
    a.release()
    assert b.try_acquire()
    assert b.token > 0
    b.release()
    assert backend.get(key) is None


@on_backends(waits_for_expiry=True)
def test_lock_is_kept_alive_beyond_its_ttl(backend: Backend, ns: str, timing: Timing) -> None:
    key = ns + "k"
    with Lock(backend, key, ttl=timing.ttl) as lock:
        time.sleep(timing.outlives)
        assert lock.held
        assert not Lock(backend, key, ttl=timing.ttl).try_acquire()


@on_backends()
def test_leaving_the_with_block_releases_even_on_error(backend: Backend, ns: str) -> None:
    key = ns + "e"
    with pytest.raises(RuntimeError), Lock(backend, key, ttl=5) as lock:
        token = lock.token
        assert backend.get(key) is not None
        raise RuntimeError("the work failed")
    assert not lock.held and backend.get(key) is None
    assert not backend.txn([Compare(key, token)], [Put(ns + "data", b"late")]).succeeded
    other = Lock(backend, key, ttl=5)
    assert other.try_acquire()  # free at once, not after the TTL
    other.release()


@on_backends()
def test_acquire_waits_for_release_and_times_out(backend: Backend, ns: str) -> None:
    key = ns + "w"
    holder = Lock(backend, key, ttl=2)
    holder.acquire()
    with pytest.raises(LockError, match="not acquired within"):
        Lock(backend, key, ttl=2).acquire(timeout=0.3)
    releasing = threading.Event()

    def release() -> None:
        releasing.set()
        holder.release()

    timer = threading.Timer(0.3, release)
    timer.start()
    waiter = Lock(backend, key, ttl=2)
    try:
        waiter.acquire(timeout=30)
        # the holder's lease is still kept alive: only its release can have freed the lock
        assert releasing.is_set()
    finally:
        timer.join()
    waiter.release()


@on_backends(waits_for_expiry=True)
def test_fencing_refuses_a_stale_holder(backend: Backend, ns: str, timing: Timing) -> None:
    key, data = ns + "f", ns + "data"
    stale = Lock(backend, key, ttl=timing.ttl)
    assert stale.try_acquire()
    fence = stale.fence()
    assert backend.txn([fence], [Put(data, b"by stale while valid")]).succeeded
    # the holder stalls: its lease is no longer renewed and expires
    assert stale._lease is not None
    stale._lease._stop.set()
    deadline = time.monotonic() + timing.ends_within
    fresh = Lock(backend, key, ttl=5)
    while not fresh.try_acquire():
        assert time.monotonic() < deadline, "the stalled holder's lease did not end"
        time.sleep(0.05)
    assert fresh.token != fence.revision
    assert not backend.txn([fence], [Put(data, b"by stale after losing")]).succeeded
    assert backend.txn([fresh.fence()], [Put(data, b"by fresh")]).succeeded
    kv = backend.get(data)
    assert kv is not None and kv.value == b"by fresh"
    fresh.release()


@on_backends(waits_for_expiry=True)
def test_kept_lease_reports_loss(backend: Backend, timing: Timing) -> None:
    lost = threading.Event()
    lease = KeptLease(backend, timing.ttl, on_lost=lost.set)
    backend.revoke_lease(lease.id)
    assert lost.wait(timing.ends_within)  # at the next keep-alive, a third of the TTL on
    lease.revoke()


def _hold(url: str, key: str, ttl: float, ready: multiprocessing.synchronize.Event) -> None:
    backend = open_backend(url)
    lock = Lock(backend, key, ttl=ttl)
    assert lock.try_acquire()
    ready.set()
    time.sleep(3600)


# memory:// lives in one process only: nobody outside can hold its locks
@on_backends("sqlite", "etcd", "consul", waits_for_expiry=True)
def test_lock_of_a_killed_process_is_free_within_its_ttl(url: str, ns: str,
                                                         timing: Timing) -> None:
    key = ns + "dead"
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=_hold, args=(url, key, timing.ttl, ready))
    p.start()
    try:
        assert ready.wait(60)
        with open_backend(url) as backend:
            assert not Lock(backend, key).try_acquire()
            p.kill()
            p.join(5)
            # nothing but the end of the dead holder's lease frees the key; the wait is
            # the TTL plus slack for a loaded machine
            lock = Lock(backend, key, ttl=timing.ttl)
            lock.acquire(timeout=timing.ends_within)
            lock.release()
    finally:
        if p.is_alive():
            p.kill()


def test_locks_on_one_shared_lease() -> None:
    """Several locks bound to one kept lease: giving one back leaves the lease and the
    others; ending the lease loses them all (their fences fail)."""
    backend = open_backend("memory://")
    lease = KeptLease(backend, ttl=5)
    a = Lock(backend, "locks/a", lease=lease)
    b = Lock(backend, "locks/b", lease=lease)
    assert a.try_acquire() and b.try_acquire()
    assert backend.get("locks/a").lease == backend.get("locks/b").lease == lease.id
    a.release()
    assert backend.get("locks/a") is None and not lease.lost.is_set()
    assert b.held and backend.txn([b.fence()], []).succeeded
    assert a.try_acquire()  # taken again on the same lease
    lease.revoke()
    assert backend.get("locks/a") is None and backend.get("locks/b") is None
    assert not backend.txn([b.fence()], []).succeeded
    assert not backend.txn([a.fence()], []).succeeded
    backend.close()


def test_a_lock_on_a_shared_lease_stays_held_until_its_key_is_deleted() -> None:
    """A release whose delete fails would leave the key on a lease that lives on, locked
    for everybody for good: the lock stays held, and a later release gives it back."""
    backend = DeleteFailsOnce(open_backend("memory://"))
    lease = KeptLease(backend, ttl=5)
    lock = Lock(backend, "locks/a", lease=lease)
    assert lock.try_acquire()
    lock.release()
    assert lock.held and backend.get("locks/a") is not None
    assert backend.txn([lock.fence()], []).succeeded
    lock.release()
    assert not lock.held and backend.get("locks/a") is None
    other = Lock(backend, "locks/a", lease=KeptLease(backend, ttl=5))
    assert other.try_acquire()
    lease.revoke()
    backend.close()


def test_a_lock_of_its_own_lease_is_freed_even_when_its_delete_fails() -> None:
    backend = DeleteFailsOnce(open_backend("memory://"))
    lock = Lock(backend, "locks/a", ttl=5)
    assert lock.try_acquire()
    lock.release()  # the delete fails; revoking the lease removes the key
    assert not lock.held and backend.get("locks/a") is None
    backend.close()
