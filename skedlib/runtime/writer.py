"""Writes larger than one transaction: groups packed into fenced chunks.

etcd accepts 128 operations per transaction by default and Consul 0.8 accepts 64, and a
plan, a manifest or a purge may need more. :func:`write_groups` is the one writer for
that: the caller hands it :class:`Group` s — the compares and ops that must apply together
(a task and its host index entry; a job's record and status key) — and it packs them in
order into as few transactions as the backend allows, never splitting a group, with the
same ``fence`` compares (typically a lock's fencing token) in every chunk. When everything
fits it is one transaction, atomic as a whole.

Above the limit, the semantics callers must design for:

- each chunk is atomic, and chunks apply in order: a reader may see a prefix of them;
- when a chunk's compares fail, what happens next is the caller's choice (``on_conflict``):
  ``"stop"`` leaves the earlier chunks and writes nothing more (a lost fence means the
  caller lost its right to write; the new holder plans from what it reads); ``"skip"``
  goes on with the next chunk (independent groups, such as a purge of old records);
  ``"undo"`` puts back what the earlier chunks changed — each undo compared on the
  revision this writer wrote, so a newer write by someone else is kept — for callers that
  promise all or nothing (``sked apply``) and will plan again.

:func:`pack` is the packing alone, for writers with their own conflict handling.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal, TypeVar

import msgspec

from skedlib.errors import TxnTooLarge
from skedlib.store.base import Backend, Compare, Delete, Op, Put

__all__ = ["Group", "WriteResult", "pack", "write_groups"]

T = TypeVar("T")

OnConflict = Literal["stop", "skip", "undo"]


class Group(msgspec.Struct, frozen=True):
    """Compares and ops that must land in the same transaction."""

    compares: tuple[Compare, ...] = ()
    ops: tuple[Op, ...] = ()

    @property
    def size(self) -> int:
        """How many operations of a transaction the group takes."""
        return len(self.compares) + len(self.ops)


class WriteResult(msgspec.Struct, frozen=True):
    """What :func:`write_groups` wrote: groups and chunks applied (and kept), the
    revision of the last chunk written, and whether earlier chunks were undone."""

    written_groups: int
    written_chunks: int
    total_chunks: int
    revision: int
    undone: bool = False

    @property
    def succeeded(self) -> bool:
        """True when every chunk was applied."""
        return self.written_chunks == self.total_chunks and not self.undone


def pack(items: Sequence[T], room: int, size: Callable[[T], int]) -> list[list[T]]:
    """Pack ``items`` in order into chunks whose sizes add up to at most ``room``.

    Raises :class:`TxnTooLarge` when one item alone is larger than ``room``."""
    chunks: list[list[T]] = []
    current: list[T] = []
    used = 0
    for item in items:
        n = size(item)
        if n > room:
            raise TxnTooLarge(f"a group of {n} operations cannot fit in one transaction "
                              f"of {room}")
        if current and used + n > room:
            chunks.append(current)
            current, used = [], 0
        current.append(item)
        used += n
    if current:
        chunks.append(current)
    return chunks


def room_for(backend: Backend, fence: Sequence[Compare], total: int) -> int:
    """The operations one transaction has left beside ``fence`` (``total`` when the
    backend has no limit)."""
    limit = backend.max_txn_ops
    if limit is None:
        return max(1, total)
    room = limit - len(fence)
    if room < 1:
        raise TxnTooLarge(f"{len(fence)} fence compares leave no room in a transaction "
                          f"of {limit} operations")
    return room


def write_groups(backend: Backend, groups: Sequence[Group], *,
                 fence: Sequence[Compare] = (), on_conflict: OnConflict = "stop",
                 before: Mapping[str, bytes | None] | None = None) -> WriteResult:
    """Write ``groups`` in as few fenced transactions as the backend allows.

    ``before`` (with ``on_conflict="undo"``) holds each written key's value as the caller
    read it (None: absent), to put back when a later chunk fails."""
    if not groups:
        return WriteResult(0, 0, 0, 0)
    room = room_for(backend, fence, sum(g.size for g in groups))
    chunks = pack(groups, room, lambda g: g.size)
    written_groups = written_chunks = revision = 0
    written: list[tuple[str, int]] = []
    for chunk in chunks:
        compares = [*fence, *(c for g in chunk for c in g.compares)]
        ops = [op for g in chunk for op in g.ops]
        res = backend.txn(compares, ops)
        if res.succeeded:
            written_groups += len(chunk)
            written_chunks += 1
            revision = res.revision
            if on_conflict == "undo":
                written.extend((op.key, res.revision) for op in ops)
            continue
        if on_conflict == "skip":
            continue
        if on_conflict == "undo" and written:
            _undo(backend, written, before or {}, room)
            return WriteResult(0, 0, len(chunks), revision, undone=True)
        break
    return WriteResult(written_groups, written_chunks, len(chunks), revision)


def _undo(backend: Backend, written: Sequence[tuple[str, int]],
          before: Mapping[str, bytes | None], room: int) -> None:
    """Put back what was written, key by key where nobody wrote since. A key changed
    again by someone else keeps their value (theirs is newer)."""
    undo: list[Group] = []
    for key, rev in written:
        old = before.get(key)
        op: Op = Put(key, old) if old is not None else Delete(key)
        undo.append(Group((Compare(key, rev),), (op,)))
    for chunk in pack(undo, room, lambda g: g.size):
        res = backend.txn([c for g in chunk for c in g.compares],
                          [op for g in chunk for op in g.ops])
        if not res.succeeded:  # someone wrote one of them: undo the rest one by one
            for g in chunk:
                backend.txn(g.compares, g.ops)
