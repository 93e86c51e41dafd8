"""Locks and fencing on the built-in backends, including a holder killed with -9."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from skedlib.errors import LockError
from skedlib.locks import KeptLease, Lock
from skedlib.plugins import open_backend
from skedlib.store.base import Backend, Compare, Put


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    url = "memory://" if request.param == "memory" else f"sqlite://{tmp_path}/l.db"
    b = open_backend(url)
    yield b
    b.close()


def test_try_lock_excludes_and_release_frees(backend: Backend) -> None:
    a, b = Lock(backend, "locks/x", ttl=1), Lock(backend, "locks/x", ttl=1)
    assert a.try_acquire()
    assert not b.try_acquire()
    a.release()
    assert b.try_acquire()
    assert b.token > 0
    b.release()
    assert backend.get("locks/x") is None


def test_lock_is_kept_alive_beyond_its_ttl(backend: Backend) -> None:
    with Lock(backend, "locks/k", ttl=0.5) as lock:
        time.sleep(1.6)
        assert lock.held
        assert not Lock(backend, "locks/k", ttl=0.5).try_acquire()


def test_leaving_the_with_block_releases_even_on_error(backend: Backend) -> None:
    with pytest.raises(RuntimeError), Lock(backend, "locks/e", ttl=5) as lock:
        token = lock.token
        assert backend.get("locks/e") is not None
        raise RuntimeError("the work failed")
    assert not lock.held and backend.get("locks/e") is None
    assert not backend.txn([Compare("locks/e", token)], [Put("data", b"late")]).succeeded
    other = Lock(backend, "locks/e", ttl=5)
    assert other.try_acquire()  # free at once, not after the TTL
    other.release()


def test_acquire_waits_for_release_and_times_out(backend: Backend) -> None:
    holder = Lock(backend, "locks/w", ttl=2)
    holder.acquire()
    with pytest.raises(LockError, match="not acquired within"):
        Lock(backend, "locks/w", ttl=2).acquire(timeout=0.3)
    threading.Timer(0.3, holder.release).start()
    waiter = Lock(backend, "locks/w", ttl=2)
    t0 = time.monotonic()
    waiter.acquire(timeout=5)
    assert time.monotonic() - t0 < 3
    waiter.release()


def test_fencing_refuses_a_stale_holder(backend: Backend) -> None:
    stale = Lock(backend, "locks/f", ttl=0.5)
    assert stale.try_acquire()
    fence = stale.fence()
    assert backend.txn([fence], [Put("data", b"by stale while valid")]).succeeded
    # the holder stalls: its lease is no longer renewed and expires
    assert stale._lease is not None
    stale._lease._stop.set()
    deadline = time.monotonic() + 5
    fresh = Lock(backend, "locks/f", ttl=5)
    while not fresh.try_acquire():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert fresh.token != fence.revision
    assert not backend.txn([fence], [Put("data", b"by stale after losing")]).succeeded
    assert backend.txn([fresh.fence()], [Put("data", b"by fresh")]).succeeded
    kv = backend.get("data")
    assert kv is not None and kv.value == b"by fresh"
    fresh.release()


def test_kept_lease_reports_loss(backend: Backend) -> None:
    lost = threading.Event()
    lease = KeptLease(backend, 0.5, on_lost=lost.set)
    backend.revoke_lease(lease.id)
    assert lost.wait(3)
    lease.revoke()


def _hold(url: str, ready: multiprocessing.synchronize.Event) -> None:
    backend = open_backend(url)
    lock = Lock(backend, "locks/dead", ttl=1)
    assert lock.try_acquire()
    ready.set()
    time.sleep(3600)


def test_lock_of_a_killed_process_is_free_within_its_ttl(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/dead.db"
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=_hold, args=(url, ready))
    p.start()
    try:
        assert ready.wait(30)
        with open_backend(url) as backend:
            assert not Lock(backend, "locks/dead").try_acquire()
            p.kill()
            p.join(5)
            killed = time.monotonic()
            lock = Lock(backend, "locks/dead", ttl=1)
            lock.acquire(timeout=5)
            assert time.monotonic() - killed <= 1.0 + 1.0  # TTL plus polling slack
            lock.release()
    finally:
        if p.is_alive():
            p.kill()
