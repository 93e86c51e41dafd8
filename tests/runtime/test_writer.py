"""The grouped, fenced writer: packing, fences, and what happens when a chunk loses."""

from __future__ import annotations

import pytest

from skedlib.errors import TxnTooLarge
from skedlib.locks import Lock
from skedlib.plugins import open_backend
from skedlib.runtime import Group, pack, write_groups
from skedlib.store.base import Backend, Compare, Put


def _groups(n: int, size: int = 2, prefix: str = "k") -> list[Group]:
    return [Group(ops=tuple(Put(f"{prefix}/{i}/{j}", b"v") for j in range(size)))
            for i in range(n)]


def test_pack_never_breaks_a_group() -> None:
    chunks = pack(_groups(10, 3), 7, lambda g: g.size)
    assert [sum(g.size for g in c) for c in chunks] == [6, 6, 6, 6, 6]
    with pytest.raises(TxnTooLarge):
        pack(_groups(1, 8), 7, lambda g: g.size)


def test_one_transaction_when_it_fits() -> None:
    backend = open_backend("memory://")
    start = backend.current_revision()
    res = write_groups(backend, _groups(50))
    assert res.succeeded and res.total_chunks == 1 and res.written_groups == 50
    assert res.revision == start + 1


def test_applies_everything_under_a_fence() -> None:
    backend = open_backend("memory://?max_txn_ops=10")
    lock = Lock(backend, "lock", ttl=5)
    assert lock.try_acquire()
    res = write_groups(backend, _groups(20), fence=[lock.fence()])
    assert res.succeeded and res.total_chunks == 5 and res.written_groups == 20
    assert len(backend.list("k/").items) == 40
    lock.release()


def test_stops_at_a_lost_fence() -> None:
    backend = open_backend("memory://?max_txn_ops=10")
    lock = Lock(backend, "lock", ttl=5)
    assert lock.try_acquire()
    fence = lock.fence()
    lock.release()
    res = write_groups(backend, _groups(20), fence=[fence])
    assert not res.succeeded and res.written_chunks == 0
    assert backend.list("k/").items == []


def test_each_chunk_is_atomic_for_a_watcher() -> None:
    backend = open_backend("memory://?max_txn_ops=8")
    start = backend.current_revision() + 1
    write_groups(backend, _groups(12, 4))
    with backend.watch("k/", start) as w:
        events = w.next(timeout=1)
    by_rev: dict[int, set[str]] = {}
    for e in events:
        by_rev.setdefault(e.revision, set()).add(e.key.split("/")[1])
    assert all(len(groups) == 2 for groups in by_rev.values())  # whole groups of 4 keys
    assert len(events) == 48


def _guarded(backend: Backend, n: int) -> list[Group]:
    """Groups that each compare their key to its current revision, as apply writes."""
    groups = []
    for i in range(n):
        key = f"c/{i}"
        kv = backend.get(key)
        groups.append(Group((Compare(key, kv.revision if kv else 0),), (Put(key, b"new"),)))
    return groups


def test_skip_goes_on_after_a_losing_chunk() -> None:
    backend = open_backend("memory://?max_txn_ops=4")
    groups = _guarded(backend, 6)  # 2 groups of 2 per chunk: 3 chunks
    backend.put("c/2", b"theirs")  # the second chunk's compare fails
    res = write_groups(backend, groups, on_conflict="skip")
    assert (res.written_chunks, res.total_chunks, res.written_groups) == (2, 3, 4)
    values = {kv.key: kv.value for kv in backend.list("c/").items}
    assert values == {"c/0": b"new", "c/1": b"new", "c/2": b"theirs", "c/4": b"new",
                      "c/5": b"new"}


def test_undo_puts_back_what_earlier_chunks_wrote_but_keeps_newer_writes() -> None:
    backend = open_backend("memory://?max_txn_ops=4")
    backend.put("c/0", b"old0")
    backend.put("c/1", b"old1")
    before = {f"c/{i}": (kv.value if (kv := backend.get(f"c/{i}")) else None)
              for i in range(6)}
    groups = _guarded(backend, 6)
    # before the third chunk someone writes c/4 (so its compare fails) and c/1 (newer
    # than this writer's value there, so it must survive the undo)
    calls = 0
    real_txn = backend.txn

    def txn(compares, ops):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 3:
            real_txn([], [Put("c/4", b"theirs"), Put("c/1", b"theirs too")])
        return real_txn(compares, ops)

    backend.txn = txn  # type: ignore[method-assign]
    res = write_groups(backend, groups, on_conflict="undo", before=before)
    assert res.undone and not res.succeeded and res.written_groups == 0
    values = {kv.key: kv.value for kv in backend.list("c/").items}
    assert values == {"c/0": b"old0", "c/1": b"theirs too", "c/4": b"theirs"}
