"""A de-duplicating work queue, in the manner of client-go's ``workqueue``.

A key (for the scheduler daemon: a ``(cluster, service)`` pair) is in at most one of
three places: **queued** (waiting for a worker), **active** (a worker holds it) or
neither. Adding a queued key does nothing, so a burst of changes to one service runs its
scheduler once. Adding an active key marks it **dirty**: when the worker calls
:meth:`WorkQueue.done`, the key is queued again, so a change that arrived while the key
was being worked on is never lost, and one key is never worked on by two workers at once.

:meth:`WorkQueue.add_after` queues a key later (retries with backoff, a periodic
recheck); only the earliest pending delay of a key is kept.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["WorkQueue"]

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    """Thread-safe de-duplicating FIFO of keys, with delayed adds."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._fifo: deque[K] = deque()
        self._queued: set[K] = set()
        self._active: set[K] = set()
        self._dirty: set[K] = set()
        self._delayed: list[tuple[float, int, K]] = []
        self._due: dict[K, float] = {}
        self._seq = itertools.count()
        self._closed = False

    def add(self, key: K) -> None:
        """Queue ``key`` unless it is queued already (if active: again once it is done)."""
        with self._cond:
            self._add(key)

    def _add(self, key: K) -> None:
        if self._closed:
            return
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._fifo.append(key)
            self._cond.notify()

    def add_after(self, key: K, delay: float) -> None:
        """Queue ``key`` in ``delay`` seconds (at once when ``delay <= 0``)."""
        if delay <= 0:
            self.add(key)
            return
        due = time.monotonic() + delay
        with self._cond:
            if self._closed or self._due.get(key, float("inf")) <= due:
                return
            self._due[key] = due
            heapq.heappush(self._delayed, (due, next(self._seq), key))
            self._cond.notify()

    def _promote(self) -> float | None:
        """Queue the delayed keys that are due; seconds until the next one (None: none)."""
        now = time.monotonic()
        while self._delayed:
            due, _, key = self._delayed[0]
            if self._due.get(key) != due:  # superseded by an earlier delay
                heapq.heappop(self._delayed)
                continue
            if due > now:
                return due - now
            heapq.heappop(self._delayed)
            del self._due[key]
            self._add(key)
        return None

    def get(self, timeout: float | None = None) -> K | None:
        """The next key, now active; None when ``timeout`` passes first or the queue is
        closed. Every key returned must be handed back with :meth:`done`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                until_next = self._promote()
                if self._closed:
                    return None
                if self._fifo:
                    key = self._fifo.popleft()
                    self._queued.discard(key)
                    self._active.add(key)
                    return key
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                waits = [w for w in (until_next, remaining) if w is not None]
                self._cond.wait(min(waits) if waits else None)

    def done(self, key: K) -> None:
        """The worker finished ``key``; queue it again if it was added meanwhile."""
        with self._cond:
            self._active.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self._add(key)

    def close(self) -> None:
        """Stop handing out keys: blocked and later :meth:`get` calls return None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def __len__(self) -> int:
        """Keys queued now (not counting active or delayed ones)."""
        with self._cond:
            return len(self._fifo)

    def pending(self) -> int:
        """Keys queued, active, or waiting for a delay."""
        with self._cond:
            return len(self._queued | self._active | self._dirty | set(self._due))
