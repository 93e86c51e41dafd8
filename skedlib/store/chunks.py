"""Commits larger than one transaction: chunks, each atomic and fenced.

etcd accepts 128 operations per transaction by default and Consul 0.8 accepts 64. A
plan or manifest may need more. :func:`commit_chunked` splits the operations into
chunks that fit, and puts the same ``fence`` compares (typically a lock's fencing token)
in every chunk. The semantics, which callers must design for:

- each chunk is atomic: a reader sees all of it or none of it;
- chunks apply in order; a reader may observe the store between two chunks (a prefix of
  the chunks applied), so ops that must be seen together must be in one chunk — put
  related keys (a task and its host index entry) next to each other: a chunk boundary
  never splits a ``group``;
- if a fence compare fails, the chunk and every later one are not applied, and
  :class:`ChunkedResult` says how many were; the earlier chunks stay (the fence means
  the caller lost its right to write; the new holder plans from what it reads).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from skedlib.errors import TxnTooLarge
from skedlib.store.base import Backend, Compare, Op

__all__ = ["ChunkedResult", "commit_chunked", "split_chunks"]


class ChunkedResult(msgspec.Struct, frozen=True):
    """How many ops were applied, in how many chunks, and the last revision written."""

    applied_ops: int
    applied_chunks: int
    total_chunks: int
    revision: int

    @property
    def succeeded(self) -> bool:
        """True when every chunk was applied."""
        return self.applied_chunks == self.total_chunks


def split_chunks(groups: Sequence[Sequence[Op]], room: int) -> list[list[Op]]:
    """Pack groups of ops into chunks of at most ``room`` ops without splitting a group."""
    chunks: list[list[Op]] = []
    current: list[Op] = []
    for group in groups:
        if len(group) > room:
            raise TxnTooLarge(f"a group of {len(group)} operations cannot fit in one "
                              f"transaction of {room}")
        if len(current) + len(group) > room:
            chunks.append(current)
            current = []
        current.extend(group)
    if current:
        chunks.append(current)
    return chunks


def commit_chunked(backend: Backend, fence: Sequence[Compare],
                   groups: Sequence[Sequence[Op]]) -> ChunkedResult:
    """Apply ``groups`` of ops in as few fenced transactions as the backend allows."""
    limit = backend.max_txn_ops
    room = (limit - len(fence)) if limit is not None else max(1, sum(map(len, groups)))
    if room < 1:
        raise TxnTooLarge(f"{len(fence)} fence compares leave no room in a transaction "
                          f"of {limit} operations")
    chunks = split_chunks(groups, room)
    applied_ops = 0
    revision = 0
    for i, chunk in enumerate(chunks):
        res = backend.txn(fence, chunk)
        if not res.succeeded:
            return ChunkedResult(applied_ops, i, len(chunks), revision)
        applied_ops += len(chunk)
        revision = res.revision
    return ChunkedResult(applied_ops, len(chunks), len(chunks), revision)
