"""The storage contract every backend implements.

A backend is a small, strongly consistent key-value store with revisions, transactions,
watches and leases: the common ground of etcd, Consul and the embedded SQLite store.
Everything else (locks, leader election, fencing, chunked commits, typed objects) is
built once on top of these primitives, in :mod:`skedlib.locks` and :mod:`skedlib.runtime`.

Revisions: every successful write transaction gets one store-wide revision, greater than
every earlier one. A key's ``revision`` is the revision of its last write, and
``create_revision`` that of the write that created it. A :class:`Compare` with
``revision=0`` holds when the key is absent.

Watches deliver every change under a prefix, in revision order, starting at a given
revision (inclusive), in batches that never split one revision. To follow a prefix
without gaps: ``listed = b.list(p)``, then ``b.watch(p, listed.revision + 1)``; after a
batch whose last revision is ``r``, a new watch from ``r + 1`` resumes exactly.
:meth:`Backend.watch_kinds` delivers only puts or only deletes (filtered by the server
where it can, so that the others cost the watcher nothing); resuming after its last
batch is exact too, as the events left out would be left out again.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Collection, Iterator, Sequence
from typing import Literal

import msgspec

__all__ = [
    "WATCH_KINDS",
    "Backend",
    "Compare",
    "Delete",
    "KeyValue",
    "ListResult",
    "Op",
    "Put",
    "TxnResult",
    "Watch",
    "WatchEvent",
    "WatchKind",
    "check_watch_kinds",
]


class KeyValue(msgspec.Struct, frozen=True):
    """A stored key with its value and revisions."""

    key: str
    value: bytes
    revision: int
    """Revision of the last write to this key."""
    create_revision: int
    lease: str | None = None


class ListResult(msgspec.Struct, frozen=True):
    """The keys under a prefix, sorted, as they were at ``revision``."""

    items: list[KeyValue]
    revision: int


class Compare(msgspec.Struct, frozen=True):
    """Holds when ``key``'s last-write revision equals ``revision`` (0: the key is absent)."""

    key: str
    revision: int


class Put(msgspec.Struct, frozen=True):
    """Write ``value`` at ``key``, bound to ``lease`` when one is given."""

    key: str
    value: bytes
    lease: str | None = None


class Delete(msgspec.Struct, frozen=True):
    """Remove ``key`` (a no-op when it is absent)."""

    key: str


Op = Put | Delete


class TxnResult(msgspec.Struct, frozen=True):
    """Whether every compare held; if so the ops were applied at ``revision``."""

    succeeded: bool
    revision: int


WatchKind = Literal["put", "delete"]
"""The kinds of change a watch delivers."""

WATCH_KINDS: frozenset[WatchKind] = frozenset(("put", "delete"))


class WatchEvent(msgspec.Struct, frozen=True):
    """One change: a put (with the new value) or a delete, at ``revision``."""

    kind: WatchKind
    key: str
    value: bytes
    revision: int


class Watch(abc.ABC):
    """A stream of changes under one prefix. Iterate it, or call :meth:`next`.

    ``next`` returns the next batch of events (all of one or more whole revisions), or an
    empty list when ``timeout`` passes first. It raises
    :class:`~skedlib.errors.Compacted` when the start revision is no longer kept, and
    :class:`~skedlib.errors.BackendUnavailable` when the backend cannot be reached.
    """

    @abc.abstractmethod
    def next(self, timeout: float | None = None) -> list[WatchEvent]:
        """Wait up to ``timeout`` seconds (None: forever) for the next batch of events."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop watching; a blocked :meth:`next` returns an empty list. Idempotent."""

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """True once :meth:`close` was called."""

    def __iter__(self) -> Iterator[WatchEvent]:
        while not self.closed:
            yield from self.next(timeout=0.5)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _KindsWatch(Watch):
    """The events of ``kinds`` out of another watch (the others dropped here)."""

    def __init__(self, inner: Watch, kinds: frozenset[WatchKind]) -> None:
        self._inner = inner
        self._kinds = kinds

    def next(self, timeout: float | None = None) -> list[WatchEvent]:
        """The next batch holding an event of ``kinds``; [] after ``timeout`` or once
        closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            events = self._inner.next(left)
            if not events:
                return []
            kept = [ev for ev in events if ev.kind in self._kinds]
            if kept:
                return kept
            if deadline is not None and time.monotonic() >= deadline:
                return []

    def close(self) -> None:
        """Close the watch underneath."""
        self._inner.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._inner.closed


def check_watch_kinds(kinds: Collection[WatchKind]) -> frozenset[WatchKind]:
    """``kinds`` checked: a non-empty collection of "put" and "delete"."""
    chosen = frozenset(kinds)
    if not chosen or not chosen <= WATCH_KINDS:
        raise ValueError(f"watch kinds must be some of 'put' and 'delete', not "
                         f"{sorted(chosen)!r}")
    return chosen


class Backend(abc.ABC):
    """A storage backend: implement the abstract methods; the rest is built on them.

    Implementations must be safe to call from several threads at once. Every call that
    crosses a network has a timeout and raises
    :class:`~skedlib.errors.BackendUnavailable` instead of hanging.
    """

    #: the most operations (compares + puts + deletes) one transaction may hold; None: no limit
    max_txn_ops: int | None = None
    #: the shortest lease TTL the backend honours, in seconds (shorter ones are raised to it)
    min_lease_ttl: float = 1.0

    url: str = ""

    # -- primitives -----------------------------------------------------------------------
    @abc.abstractmethod
    def get(self, key: str) -> KeyValue | None:
        """The key's current value, or None."""

    @abc.abstractmethod
    def list(self, prefix: str) -> ListResult:
        """Every key that starts with ``prefix``, sorted by key, with the revision read at."""

    @abc.abstractmethod
    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        """Apply ``ops`` atomically if every compare holds, else change nothing.

        Raises :class:`~skedlib.errors.TxnTooLarge` beyond :attr:`max_txn_ops`.
        Ops on the same key apply in order. A put bound to an unknown or expired lease
        raises :class:`~skedlib.errors.LeaseExpired` and changes nothing.
        """

    @abc.abstractmethod
    def watch(self, prefix: str, start_revision: int) -> Watch:
        """Changes under ``prefix`` from ``start_revision`` on (inclusive)."""

    def watch_kinds(self, prefix: str, start_revision: int,
                    kinds: Collection[WatchKind]) -> Watch:
        """Like :meth:`watch`, delivering only the events of ``kinds`` ("put",
        "delete"); a batch left empty by them is not delivered.

        The default filters :meth:`watch`'s batches in this process; a backend whose
        server filters (etcd) overrides it, so that the changes left out are not sent.
        Raises ValueError for an empty ``kinds`` or an unknown kind.
        """
        chosen = check_watch_kinds(kinds)
        inner = self.watch(prefix, start_revision)
        return inner if chosen == WATCH_KINDS else _KindsWatch(inner, chosen)

    @abc.abstractmethod
    def grant_lease(self, ttl: float) -> str:
        """A new lease that expires ``ttl`` seconds after its grant or last keep-alive."""

    @abc.abstractmethod
    def keepalive(self, lease: str) -> None:
        """Restart the lease's TTL; raises :class:`~skedlib.errors.LeaseExpired` if gone."""

    @abc.abstractmethod
    def revoke_lease(self, lease: str) -> None:
        """End the lease now and delete its keys. Revoking a missing lease is a no-op."""

    def compact(self, revision: int) -> None:  # noqa: B027 - optional for backends
        """Forget history older than ``revision`` (watches from before it fail). Optional."""

    def close(self) -> None:  # noqa: B027 - optional for backends
        """Release connections and threads. Idempotent."""

    def expect_concurrency(self, threads: int) -> None:  # noqa: B027 - optional
        """Hint: up to ``threads`` threads may call this backend at once (size pools so).

        A backend with a connection pool keeps that many connections for reuse; the
        default does nothing. Only ever widens: several users may each give a hint.
        """

    # -- conveniences built on the primitives ----------------------------------------------
    def current_revision(self, prefix: str = "") -> int:
        """The store's current revision, learnt without reading outside ``prefix``.

        Callers pass the key prefix they work under (a keyspace's prefix), so that a
        backend whose credentials cover only that prefix (an etcd role, a Consul ACL
        policy) can answer; the revision is the store's, not the prefix's. The default
        lists the empty range ``prefix + "\\x00"``.
        """
        return self.list(prefix + "\x00").revision

    def get_many(self, keys: Sequence[str]) -> dict[str, KeyValue]:
        """The current values of ``keys`` (the absent ones left out), read together where
        the backend can (one request, at one revision); the default reads them one by one.
        """
        found: dict[str, KeyValue] = {}
        for key in dict.fromkeys(keys):
            kv = self.get(key)
            if kv is not None:
                found[key] = kv
        return found

    def put(self, key: str, value: bytes, lease: str | None = None) -> int:
        """Write unconditionally; returns the revision of the write."""
        return self.txn([], [Put(key, value, lease)]).revision

    def delete(self, key: str) -> int:
        """Delete unconditionally; returns the revision of the write."""
        return self.txn([], [Delete(key)]).revision

    def create(self, key: str, value: bytes, lease: str | None = None) -> bool:
        """Write ``key`` only if it is absent; True when written."""
        return self.txn([Compare(key, 0)], [Put(key, value, lease)]).succeeded

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

