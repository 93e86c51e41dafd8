"""Leases kept alive, locks and fencing tokens, built once on the storage contract.

A :class:`KeptLease` holds a backend lease and renews it from a background thread at a
third of its TTL; when a renewal fails (the lease expired, the backend is gone for longer
than the TTL) it sets :attr:`KeptLease.lost` and calls ``on_lost``.

A :class:`Lock` is a key created only if absent, bound to a kept lease. Its
**fencing token** is the revision at which the key was created: a later transaction that
includes :meth:`Lock.fence` (``Compare(lock_key, token)``) only applies while this holder
still has the lock. When the holder dies or stalls past its TTL, the lease ends, the key
goes, somebody else creates it at a new revision, and the stale holder's fenced writes
are refused by the store itself — no clock or heartbeat has to be trusted::

    with Lock(backend, keyspace.lock("default", "web"), ttl=10) as lock:
        backend.txn([lock.fence()], [Put(key, value)])
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from skedlib.errors import BackendError, LeaseExpired, LockError
from skedlib.runtime.informer import wait_for_change
from skedlib.store.base import Backend, Compare, Delete, Put

__all__ = ["KeptLease", "Lock"]

log = logging.getLogger(__name__)


class KeptLease:
    """A lease renewed in the background until :meth:`revoke` (or the context) ends it."""

    def __init__(self, backend: Backend, ttl: float,
                 on_lost: Callable[[], None] | None = None,
                 on_renewed: Callable[[], None] | None = None) -> None:
        self.backend = backend
        self.ttl = max(ttl, backend.min_lease_ttl)
        sent = time.monotonic()
        self.id = backend.grant_lease(self.ttl)
        self.renewed_at = sent
        """Monotonic time the last successful renewal (or the grant) was *sent*: the
        store keeps the lease at least ``ttl`` from then, whenever its answer arrived."""
        self.lost = threading.Event()
        self._on_lost = on_lost
        self._on_renewed = on_renewed  # after each renewal (the agent counts them)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{self.id[:8]}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval = self.ttl / 3
        last_ok = time.monotonic()
        while not self._stop.wait(interval):
            sent = time.monotonic()
            try:
                self.backend.keepalive(self.id)
                last_ok = time.monotonic()
                self.renewed_at = sent
                if self._on_renewed is not None:
                    self._on_renewed()
            except LeaseExpired:
                self._lose("expired")
                return
            except BackendError as exc:
                if time.monotonic() - last_ok >= self.ttl:
                    self._lose(f"not renewed for {self.ttl:g}s: {exc}")
                    return
                interval = min(self.ttl / 10, 1.0)  # retry sooner while it can still be saved
                continue
            interval = self.ttl / 3

    def _lose(self, why: str) -> None:
        log.warning("lease %s lost: %s", self.id, why)
        self.lost.set()
        if self._on_lost is not None:
            self._on_lost()

    def abandon(self) -> None:
        """Stop renewing without revoking: the lease and its keys end after the TTL."""
        self._stop.set()

    def revoke(self) -> None:
        """Stop renewing and end the lease now (its keys are deleted). Idempotent."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if not self.lost.is_set():
            try:
                self.backend.revoke_lease(self.id)
            except BackendError as exc:  # it will expire on its own
                log.warning("could not revoke lease %s: %s", self.id, exc)

    def __enter__(self) -> KeptLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.revoke()


class Lock:
    """A mutual-exclusion lock on one key, with a fencing token.

    ``try_acquire()`` returns at once; ``acquire(timeout)`` waits (watching the key) and
    raises :class:`LockError` when the time runs out. The lock is released on
    :meth:`release`, on leaving the ``with`` block, or by lease expiry if the process dies.
    Pass :meth:`fence` in every transaction made under the lock: once the lock is lost
    (lease expired, process paused), the store refuses those writes.

    Args:
        backend: The store's backend (``store.backend``).
        key: The key the lock is; it exists while the lock is held. To keep a script from
            fighting the scheduler daemon over a service, take the daemon's own lock of
            that service, ``store.keys.lock(cluster, service)``; for anything else, a key
            of your own under the prefix (``store.keys.prefix + "locks/my-job"``).
        ttl: Seconds the lock outlives a holder that stopped renewing it (a dead process).
        holder: Who holds it, for people reading the key (default: host, pid and object).
        lease: A kept lease to bind the key to instead of one of its own (``ttl`` is then
            the lease's): a process holding many locks renews one lease for all of them,
            and taking a lock costs one transaction. Releasing the lock leaves the lease
            alone; losing the lease loses every lock on it.

    Example:
        ```python
        with Store.open(url) as store:
            lock = Lock(store.backend, store.keys.lock("default", "web"))
            with lock:                     # acquire(), then release() on leaving
                snap = read_snapshot(store)
                result = commit_plan(store, snap, plan, fence=[lock.fence()])
                assert not result.fenced_out   # True: the lock was lost, nothing written
        ```
    """

    def __init__(self, backend: Backend, key: str, ttl: float = 10.0,
                 holder: str | None = None, *, lease: KeptLease | None = None) -> None:
        self.backend = backend
        self.key = key
        self.ttl = ttl
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._shared = lease
        self._lease: KeptLease | None = None
        self._token = 0

    @property
    def token(self) -> int:
        """The fencing token: the revision at which this holder created the lock key."""
        if not self._token:
            raise LockError(f"lock {self.key} is not held")
        return self._token

    @property
    def held(self) -> bool:
        """True while acquired and its lease has not been lost."""
        return bool(self._token) and self._lease is not None and not self._lease.lost.is_set()

    def fence(self) -> Compare:
        """A compare that holds only while this holder still owns the lock."""
        return Compare(self.key, self.token)

    def try_acquire(self) -> bool:
        """Take the lock if it is free; True when taken."""
        if self.held:
            return True
        lease = self._shared or KeptLease(self.backend, self.ttl)
        try:
            res = self.backend.txn([Compare(self.key, 0)],
                                   [Put(self.key, self.holder.encode(), lease=lease.id)])
        except BaseException:
            self._end(lease)
            raise
        if not res.succeeded:
            self._end(lease)
            return False
        self._lease, self._token = lease, res.revision
        return True

    def _end(self, lease: KeptLease) -> None:
        """Revoke ``lease`` unless it is shared (then its other keys stay)."""
        if lease is not self._shared:
            lease.revoke()

    def acquire(self, timeout: float | None = None) -> None:
        """Wait until the lock is taken, at most ``timeout`` seconds (None: forever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.try_acquire():
                return
            kv = self.backend.get(self.key)
            if kv is None:
                continue
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise LockError(f"lock {self.key} not acquired within {timeout}s "
                                f"(held by {kv.value.decode(errors='replace')})")
            # any change of the key (or a second without one) means: try again
            wait_for_change(self.backend, self.key, kv.revision,
                            min(left, 1.0) if left is not None else 1.0)

    def release(self) -> None:
        """Give the lock up (only if still ours). Idempotent.

        On a shared lease, a delete that failed leaves the lock held (its key may still
        be there, on a lease that lives on): call :meth:`release` again later. On a
        lease of its own, the lease is revoked in any case, and the key goes with it."""
        lease, token = self._lease, self._token
        if lease is None:
            return
        self._lease, self._token = None, 0
        try:
            self.backend.txn([Compare(self.key, token)], [Delete(self.key)])
        except BackendError as exc:
            if lease is self._shared and not lease.lost.is_set():
                self._lease, self._token = lease, token
                log.warning("could not delete lock %s (still held; to be given back "
                            "again): %s", self.key, exc)
                return
            log.warning("could not delete lock %s: %s", self.key, exc)
        self._end(lease)

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
