"""``memory://``: an in-process backend for tests, examples and single-process use.

``memory://`` alone opens a fresh store; ``memory://NAME`` opens the store of that name
shared by every caller in this process. It keeps the last ``history`` revisions for
watches (default 100,000; fewer when they hold more than twice that many events) and
enforces lease expiry on every call and while watching.
"""

from __future__ import annotations

import bisect
import builtins
import threading
import time
import uuid
from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

from skedlib.errors import BackendUnavailable, Compacted, LeaseExpired, TxnTooLarge
from skedlib.store.base import (
    Backend,
    Compare,
    Delete,
    KeyValue,
    ListResult,
    Op,
    Put,
    TxnResult,
    Watch,
    WatchEvent,
)

__all__ = ["MemoryBackend", "open_memory"]

_NAMED: dict[str, MemoryBackend] = {}
_NAMED_LOCK = threading.Lock()


class _Lease:
    __slots__ = ("expires_at", "keys", "ttl")

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.expires_at = time.monotonic() + ttl
        self.keys: set[str] = set()


class MemoryBackend(Backend):
    """A dictionary with revisions, a bounded event history, leases and a condition."""

    min_lease_ttl = 0.1

    def __init__(self, url: str = "memory://", history: int = 100_000,
                 max_txn_ops: int | None = None) -> None:
        self.url = url
        self._data: dict[str, KeyValue] = {}
        self._events: list[WatchEvent] = []
        self._history = history
        self._compacted = 0  # watches may start at any revision > this
        self._revision = 0
        self._leases: dict[str, _Lease] = {}
        self._cond = threading.Condition()
        self.max_txn_ops = max_txn_ops

    # -- internals (call with the condition held) --------------------------------------------
    def _expire(self) -> None:
        now = time.monotonic()
        dead = [lid for lid, lease in self._leases.items() if lease.expires_at <= now]
        for lid in dead:
            self._end_lease(lid)

    def _end_lease(self, lease_id: str) -> None:
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return
        keys = [k for k in sorted(lease.keys) if k in self._data]
        if keys:
            self._apply([Delete(k) for k in keys])

    def _apply(self, ops: Sequence[Op]) -> int:
        self._revision += 1
        rev = self._revision
        for op in ops:
            old = self._data.get(op.key)
            if old is not None and old.lease and old.lease in self._leases:
                self._leases[old.lease].keys.discard(op.key)
            if isinstance(op, Put):
                created = old.create_revision if old is not None else rev
                self._data[op.key] = KeyValue(op.key, op.value, rev, created, op.lease)
                if op.lease:
                    self._leases[op.lease].keys.add(op.key)
                self._events.append(WatchEvent("put", op.key, op.value, rev))
            elif old is not None:
                del self._data[op.key]
                self._events.append(WatchEvent("delete", op.key, b"", rev))
        if len(self._events) > self._history * 2:
            self._trim(self._revision - self._history)
            if len(self._events) > self._history * 2:
                # a few revisions hold more events than the bound (large transactions):
                # keep the newest ``history`` events' revisions, whole
                self._trim(self._events[-self._history].revision - 1)
        self._cond.notify_all()
        return rev

    def _trim(self, revision: int) -> None:
        """Forget the events at ``revision`` and before (watches may start after it)."""
        del self._events[:self._first_after(revision)]
        self._compacted = max(self._compacted, revision)

    # -- primitives -------------------------------------------------------------------------
    def get(self, key: str) -> KeyValue | None:
        with self._cond:
            self._expire()
            return self._data.get(key)

    def get_many(self, keys: Sequence[str]) -> dict[str, KeyValue]:
        with self._cond:
            self._expire()
            return {key: kv for key in dict.fromkeys(keys)
                    if (kv := self._data.get(key)) is not None}

    def list(self, prefix: str) -> ListResult:
        with self._cond:
            self._expire()
            items = sorted((kv for k, kv in self._data.items() if k.startswith(prefix)),
                           key=lambda kv: kv.key)
            return ListResult(items, self._revision)

    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        limit = self.max_txn_ops
        if limit is not None and len(compares) + len(ops) > limit:
            raise TxnTooLarge(f"{self.url}: transaction of {len(compares) + len(ops)} "
                              f"operations exceeds the limit of {limit}")
        with self._cond:
            self._expire()
            for c in compares:
                kv = self._data.get(c.key)
                if (kv.revision if kv is not None else 0) != c.revision:
                    return TxnResult(False, self._revision)
            for op in ops:
                if isinstance(op, Put) and op.lease and op.lease not in self._leases:
                    raise LeaseExpired(f"{self.url}: lease {op.lease} does not exist")
            if not ops:
                return TxnResult(True, self._revision)
            return TxnResult(True, self._apply(ops))

    def watch(self, prefix: str, start_revision: int) -> Watch:
        return _MemoryWatch(self, prefix, start_revision)

    def grant_lease(self, ttl: float) -> str:
        lease_id = uuid.uuid4().hex
        with self._cond:
            self._leases[lease_id] = _Lease(max(ttl, self.min_lease_ttl))
        return lease_id

    def keepalive(self, lease: str) -> None:
        with self._cond:
            self._expire()
            held = self._leases.get(lease)
            if held is None:
                raise LeaseExpired(f"{self.url}: lease {lease} does not exist")
            held.expires_at = time.monotonic() + held.ttl

    def revoke_lease(self, lease: str) -> None:
        with self._cond:
            self._end_lease(lease)

    def compact(self, revision: int) -> None:
        with self._cond:
            self._trim(min(revision, self._revision) - 1)

    # -- used by the watch ------------------------------------------------------------------
    def _events_from(self, prefix: str, start: int, timeout: float | None,
                     closed: threading.Event) -> builtins.list[WatchEvent]:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                self._expire()
                if start <= self._compacted:
                    raise Compacted(f"{self.url}: revision {start} was compacted; the "
                                    f"oldest watchable revision is {self._compacted + 1}",
                                    self._compacted + 1)
                if closed.is_set():
                    return []
                if self._revision >= start:
                    out = [e for e in self._events_after(start) if e.key.startswith(prefix)]
                    if out:
                        return out
                    start = self._revision + 1
                wait = 0.05
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return []
                    wait = min(wait, left)
                self._cond.wait(wait)

    def _events_after(self, start: int) -> builtins.list[WatchEvent]:
        return self._events[self._first_after(start - 1):]

    def _first_after(self, revision: int) -> int:
        """Index of the first event after ``revision`` (events are in revision order)."""
        return bisect.bisect_right(self._events, revision, key=lambda e: e.revision)


class _MemoryWatch(Watch):
    def __init__(self, backend: MemoryBackend, prefix: str, start_revision: int) -> None:
        self._backend = backend
        self._prefix = prefix
        self._next = max(start_revision, 1)
        self._closed = threading.Event()

    def next(self, timeout: float | None = None) -> list[WatchEvent]:
        events = self._backend._events_from(self._prefix, self._next, timeout, self._closed)
        if events:
            self._next = events[-1].revision + 1
        return events

    def close(self) -> None:
        self._closed.set()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()


def open_memory(url: str) -> MemoryBackend:
    """Open ``memory://`` (a fresh store) or ``memory://NAME`` (shared in this process).

    ``?max_txn_ops=N`` imposes an operation limit, to test chunked commits.
    """
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    raw = query.get("max_txn_ops", [""])[0]
    if raw and not (raw.isascii() and raw.isdigit() and int(raw) > 0):
        raise BackendUnavailable(f"{url}: max_txn_ops must be a whole number greater than 0")
    limit = int(raw) if raw else None
    name = parts.netloc + parts.path
    if not name:
        return MemoryBackend(url, max_txn_ops=limit)
    with _NAMED_LOCK:
        backend = _NAMED.get(name)
        if backend is None:
            backend = _NAMED[name] = MemoryBackend(url, max_txn_ops=limit)
        return backend
