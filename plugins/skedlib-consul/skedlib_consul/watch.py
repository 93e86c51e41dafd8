"""Watches on Consul: blocking queries on a prefix, diffed into events.

See :class:`ConsulWatch` for what a watch can and cannot see; a watch is made by
:meth:`skedlib_consul.backend.ConsulBackend.watch`.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from skedlib import KeyValue, Watch, WatchEvent

if TYPE_CHECKING:
    from skedlib_consul.backend import ConsulBackend

__all__ = ["MAX_WATCH_WAIT", "ConsulWatch"]

#: the longest blocking query a watch sends (a frozen server is noticed within this)
MAX_WATCH_WAIT = 10.0


class _Poll:
    """One listing in flight on a daemon thread; ``done`` is set when it has an outcome."""

    def __init__(self, backend: ConsulBackend, prefix: str, index: int, wait: float,
                 wake: threading.Event) -> None:
        self.done = threading.Event()
        self.result: tuple[int, list[KeyValue]] | None = None
        self.error: BaseException | None = None
        self._wake = wake
        thread = threading.Thread(target=self._run, args=(backend, prefix, index, wait),
                                  name="consul-watch", daemon=True)
        thread.start()

    def _run(self, backend: ConsulBackend, prefix: str, index: int, wait: float) -> None:
        try:
            self.result = backend.poll(prefix, index, wait)
        except BaseException as exc:  # handed to the caller of next()
            self.error = exc
        finally:
            self.done.set()
            self._wake.set()


class ConsulWatch(Watch):
    """Changes under a prefix, from Consul blocking queries diffed against the last listing.

    Each poll lists the prefix (``?recurse``) and blocks until its index moves past the
    last one seen; the new listing is compared with the previous one:

    - a key that is new or whose ``ModifyIndex`` moved is a ``put`` event with the key's
      current value, at the key's ``ModifyIndex`` (the same revision :meth:`~Backend.get`
      reports);
    - a key that disappeared is a ``delete`` event at the listing's index, the index at
      which the deletion was seen (exact when it was the only change between two polls).

    What a watcher cannot see: writes between two polls collapse. A key written twice
    between polls yields one put with the last value; a key created and deleted between
    polls yields nothing; a key deleted and re-created yields one put. The first poll
    reports every key whose ``ModifyIndex`` is at least ``start_revision`` as a put, but
    cannot report deletions that happened between ``start_revision`` and that first poll:
    Consul keeps no history. None of this raises (there is nothing like etcd's
    compaction to report); use ``list`` + ``watch(prefix, listed.revision + 1)`` and keep
    polling to miss no final state.

    Events come in revision order, a poll's events in one batch. ``close()`` returns a
    blocked :meth:`next` at once; the request in flight ends on its own within
    :data:`MAX_WATCH_WAIT` seconds. A failed poll raises BackendUnavailable from
    :meth:`next`; the watch stays usable and the next call resumes where it was.
    """

    def __init__(self, backend: ConsulBackend, prefix: str, start_revision: int) -> None:
        self._backend = backend
        self._prefix = prefix
        self._start = max(start_revision, 1)
        self._known: dict[str, KeyValue] | None = None  # the last listing
        self._index = 0
        self._last = 0  # highest revision delivered
        self._closed = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._pending: _Poll | None = None

    def next(self, timeout: float | None = None) -> list[WatchEvent]:
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        with self._lock:
            while not self._closed.is_set():
                if self._pending is None:
                    budget = MAX_WATCH_WAIT if deadline is None else \
                        deadline - time.monotonic()
                    wait = min(max(budget, 0.05), MAX_WATCH_WAIT)
                    index = max(self._index, 1) if self._known is not None else 0
                    self._pending = _Poll(self._backend, self._prefix, index, wait,
                                          self._wake)
                poll = self._pending
                if poll.done.is_set():
                    self._pending = None
                    if poll.error is not None:
                        raise poll.error
                    assert poll.result is not None
                    events = self._diff(*poll.result)
                    if events:
                        return events
                    if deadline is not None and time.monotonic() >= deadline:
                        return []
                    continue
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return []
                self._wake.wait(left)
                self._wake.clear()
        return []

    def _diff(self, index: int, items: list[KeyValue]) -> list[WatchEvent]:
        if self._known is not None and index < self._index:
            # the index went back: a server that lags (a deposed leader) or tombstones
            # reaped. Nothing newer can be in this listing; wait from here, diff later.
            self._index = index
            return []
        new = {kv.key: kv for kv in items}
        events: list[WatchEvent] = []
        old = self._known
        for key, kv in new.items():
            before = old.get(key) if old is not None else None
            if before is None or before.revision != kv.revision:
                events.append(WatchEvent("put", key, kv.value, kv.revision))
        if old is not None:
            at = max(index, self._last)
            events += [WatchEvent("delete", key, b"", at) for key in old if key not in new]
        self._known = new
        self._index = index
        events = [e for e in events if e.revision >= self._start]
        events.sort(key=lambda e: (e.revision, e.key))
        if events:
            self._last = max(self._last, events[-1].revision)
        return events

    def close(self) -> None:
        self._closed.set()
        self._wake.set()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()
