"""Commits larger than one transaction on real etcd and Consul servers.

``skedlib.runtime.write_groups`` splits a commit into transactions of at most
``max_txn_ops`` operations (etcd: 128, Consul 0.8: 64), each carrying the same fence.
These tests check the documented semantics on both (docs/backends/etcd.md and
consul.md, "Large commits"): each chunk is atomic (one revision, never seen in part), the
chunks apply in order, a reader may see a prefix of whole chunks, and a lost fence stops
the rest while the chunks before it stay.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Sequence

import pytest

from skedlib.plugins import open_backend
from skedlib.runtime import Group, write_groups
from skedlib.store.base import (
    Backend,
    Compare,
    KeyValue,
    Op,
    Put,
    TxnResult,
)
from tests.harness import consul as consul_harness
from tests.harness import etcd as etcd_harness
from tests.harness.common import DelegatingBackend

pytestmark = [pytest.mark.integration]

etcd_single = etcd_harness.etcd_single
consul_dev = consul_harness.consul_dev


@pytest.fixture(params=["etcd", "consul"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    server = request.getfixturevalue("etcd_single" if request.param == "etcd" else "consul_dev")
    b = open_backend(server.url())
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def ns() -> str:
    return f"chunked/{uuid.uuid4().hex[:10]}/"


def _groups(ns: str, n: int) -> list[Group]:
    """``n`` tasks, each a task key and its host index entry (a group never split)."""
    return [Group(ops=(Put(f"{ns}tasks/{i:04d}", b"task"),
                       Put(f"{ns}hosts/h{i % 7}/{i:04d}", b"idx")))
            for i in range(n)]


def _per_chunk(backend: Backend) -> int:
    """Groups of two ops in one chunk beside one fence compare (etcd 63, Consul 31)."""
    assert backend.max_txn_ops is not None
    return (backend.max_txn_ops - 1) // 2


def _written(backend: Backend, ns: str) -> list[KeyValue]:
    return backend.list(ns + "tasks/").items + backend.list(ns + "hosts/").items


def test_a_commit_over_the_limit_lands_in_atomic_chunks(backend: Backend, ns: str) -> None:
    fence_key = ns + "lock"
    token = backend.put(fence_key, b"me")
    per = _per_chunk(backend)
    groups = _groups(ns, 2 * per + 24)  # two full chunks and one of 24 groups
    result = write_groups(backend, groups, fence=[Compare(fence_key, token)])
    assert result.succeeded and result.written_groups == len(groups)
    assert result.total_chunks == result.written_chunks == 3
    # each chunk is one transaction: every key it wrote has its revision
    items = _written(backend, ns)
    by_revision: dict[int, int] = {}
    for kv in items:
        by_revision[kv.revision] = by_revision.get(kv.revision, 0) + 1
    assert [by_revision[r] for r in sorted(by_revision)] == [2 * per, 2 * per, 48]
    assert max(by_revision) == result.revision
    # a task and its index entry are never split between two chunks
    revision_of = {kv.key: kv.revision for kv in items}
    for task, index in (g.ops for g in groups):
        assert revision_of[task.key] == revision_of[index.key]


class _FenceTakenAfter(DelegatingBackend):
    """The real backend; after ``n`` transactions someone else takes the fence key.

    Not a mock: every call goes to the server. It only interleaves a competitor's write
    at a deterministic point, between two chunks.
    """

    def __init__(self, inner: Backend, fence_key: str, n: int) -> None:
        super().__init__(inner)
        self.fence_key, self.n = fence_key, n
        self.calls = 0

    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        result = self.inner.txn(compares, ops)
        self.calls += 1
        if self.calls == self.n:
            self.inner.put(self.fence_key, b"someone else")
        return result


def test_a_lost_fence_stops_the_rest_and_keeps_what_was_applied(backend: Backend,
                                                                 ns: str) -> None:
    fence_key = ns + "lock"
    token = backend.put(fence_key, b"me")
    per = _per_chunk(backend)
    racing = _FenceTakenAfter(backend, fence_key, 1)
    result = write_groups(racing, _groups(ns, 2 * per + 24), fence=[Compare(fence_key, token)])
    assert not result.succeeded
    assert (result.written_chunks, result.total_chunks, result.written_groups) == (1, 3, per)
    # a reader sees exactly the first chunk: a prefix of the commit, never part of a chunk
    tasks = backend.list(ns + "tasks/").items
    assert [kv.key for kv in tasks] == [f"{ns}tasks/{i:04d}" for i in range(per)]
    assert {kv.revision for kv in _written(backend, ns)} == {result.revision}


class _WaitsForAReadAfterEachChunk(DelegatingBackend):
    """Holds the commit after each chunk until the reader has listed the prefix once since.

    Without it the reader thread may not be scheduled while the commit runs (a loaded
    machine, the GIL), and the test would show nothing about what it sees in between.
    """

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.cond = threading.Condition()
        self.applied = 0  # chunks applied so far
        self.read_since = 0  # the number of chunks applied before the last read began

    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        result = self.inner.txn(compares, ops)
        with self.cond:
            self.applied += 1
            self.cond.wait_for(lambda: self.read_since >= self.applied, timeout=10)
        return result

    def read(self, prefix: str) -> int:
        with self.cond:
            before = self.applied
        count = len(self.inner.list(prefix).items)
        with self.cond:
            self.read_since = before
            self.cond.notify_all()
        return count


def test_readers_see_whole_chunks_while_a_commit_runs(backend: Backend, ns: str) -> None:
    fence_key = ns + "lock"
    token = backend.put(fence_key, b"me")
    per = _per_chunk(backend)
    n = 6 * per + 22  # seven chunks
    gated = _WaitsForAReadAfterEachChunk(backend)
    seen: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.append(gated.read(ns + "tasks/"))

    t = threading.Thread(target=reader)
    t.start()
    try:
        result = write_groups(gated, _groups(ns, n), fence=[Compare(fence_key, token)])
    finally:
        stop.set()
        t.join(10)
    assert result.succeeded and result.total_chunks == 7
    # a reader only ever observes a prefix of whole chunks: multiples of `per` tasks
    assert set(seen) <= {0, *range(per, n, per), n}, sorted(set(seen))
    # it read after each chunk, so it saw every prefix the commit went through
    assert set(range(per, n, per)) <= set(seen), sorted(set(seen))
