"""Commits larger than one transaction."""

from __future__ import annotations

import pytest

from skedlib.errors import TxnTooLarge
from skedlib.locks import Lock
from skedlib.plugins import open_backend
from skedlib.store.base import Op, Put
from skedlib.store.chunks import commit_chunked, split_chunks


def _groups(n: int, size: int = 2) -> list[list[Op]]:
    return [[Put(f"k/{i}/{j}", b"v") for j in range(size)] for i in range(n)]


def test_split_never_breaks_a_group() -> None:
    chunks = split_chunks(_groups(10, 3), room=7)
    assert [len(c) for c in chunks] == [6, 6, 6, 6, 6]
    with pytest.raises(TxnTooLarge):
        split_chunks(_groups(1, 8), room=7)


def test_chunked_commit_applies_everything_under_a_fence() -> None:
    backend = open_backend("memory://?max_txn_ops=10")
    lock = Lock(backend, "lock", ttl=5)
    assert lock.try_acquire()
    res = commit_chunked(backend, [lock.fence()], _groups(20))
    assert res.succeeded and res.total_chunks == 5 and res.applied_ops == 40
    assert len(backend.list("k/").items) == 40
    lock.release()


def test_chunked_commit_stops_at_a_lost_fence() -> None:
    backend = open_backend("memory://?max_txn_ops=10")
    lock = Lock(backend, "lock", ttl=5)
    assert lock.try_acquire()
    fence = lock.fence()
    lock.release()
    res = commit_chunked(backend, [fence], _groups(20))
    assert not res.succeeded and res.applied_chunks == 0
    assert backend.list("k/").items == []


def test_each_chunk_is_atomic_for_a_watcher() -> None:
    backend = open_backend("memory://?max_txn_ops=8")
    start = backend.current_revision() + 1
    commit_chunked(backend, [], _groups(12, 4))
    with backend.watch("k/", start) as w:
        events = w.next(timeout=1)
    by_rev: dict[int, set[str]] = {}
    for e in events:
        by_rev.setdefault(e.revision, set()).add(e.key.split("/")[1])
    # every revision holds whole groups of 4 keys
    assert all(len(groups) == 2 for groups in by_rev.values())
    assert len(events) == 48
