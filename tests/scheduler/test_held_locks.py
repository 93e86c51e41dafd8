"""The daemon's pair locks on one kept lease: a lock whose key could not be deleted is
given back later, not left on the lease for good (which would lock every daemon out of
the pair for as long as this one runs)."""

from __future__ import annotations

from skedlib.keys import Keyspace
from skedlib.plugins import open_backend
from skedlib.runtime import Store
from skedlib.scheduler.run import _HeldLocks
from tests.harness.common import DeleteFailsOnce


def test_a_lock_whose_give_back_failed_is_given_back_at_the_next_sweep() -> None:
    backend = DeleteFailsOnce(open_backend("memory://"))
    store = Store(backend, Keyspace("held/"))
    pair = ("c1", "web")
    key = store.keys.lock(*pair)
    mine = _HeldLocks(store, "mine", ttl=5, hold=0.0)
    lock = mine.take(pair)
    assert lock is not None
    mine.keep(pair, lock)
    mine.sweep()  # the delete fails: still held, kept for the next sweep
    assert lock.held and backend.get(key) is not None
    assert mine.take(pair) is lock  # and still usable meanwhile
    mine.keep(pair, lock)
    mine.sweep()
    assert not lock.held and backend.get(key) is None
    other = _HeldLocks(store, "other", ttl=5, hold=0.0)
    taken = other.take(pair)
    assert taken is not None and taken.held
    other.close()
    mine.close()
    assert backend.get(key) is None
    backend.close()


def test_a_fenced_out_lock_is_given_back_even_when_the_store_failed_once() -> None:
    backend = DeleteFailsOnce(open_backend("memory://"))
    store = Store(backend, Keyspace("held/"))
    pair = ("c1", "web")
    mine = _HeldLocks(store, "mine", ttl=5, hold=0.0)
    lock = mine.take(pair)
    assert lock is not None
    mine.keep(pair, lock, fenced_out=True)  # the delete fails: kept for a sweep
    assert lock.held
    mine.sweep()
    assert not lock.held and backend.get(store.keys.lock(*pair)) is None
    mine.close()
    backend.close()
