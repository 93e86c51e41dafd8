"""Committing a plan with optimistic concurrency.

Every task in a plan is written as one **group**: its ``state/tasks/<id>`` key and its
``state/hosts/<host>/<id>`` index entry (and the removal of the old index entry when it
moves), guarded by a compare on the task key's revision as the snapshot read it (0 for a
new task). Groups are packed into as few transactions as the backend allows, each also
carrying the caller's ``fence`` (a lock's fencing token). When a transaction fails, its
groups are retried one by one, so a conflicting write rejects only its own part of the
plan; the caller plans those tasks again from a fresh snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from skedlib.codecs import encode
from skedlib.errors import TxnTooLarge
from skedlib.keys import Keyspace
from skedlib.scheduling.plan import Plan
from skedlib.scheduling.snapshot import Snapshot
from skedlib.store.base import Backend, Compare, Delete, Op, Put

__all__ = ["CommitResult", "commit_plan"]


class CommitResult(msgspec.Struct, frozen=True):
    """Task ids written, task ids refused by a conflict, and whether the fence held."""

    committed: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    fenced_out: bool = False
    revision: int = 0


class _Group(msgspec.Struct):
    task_id: str
    compare: Compare
    ops: list[Op]


def _groups(snapshot: Snapshot, plan: Plan, ks: Keyspace) -> list[_Group]:
    groups: list[_Group] = []
    for task in plan.place:
        tid = task.id
        old = snapshot.tasks.get(tid)
        ops: list[Op] = [Put(ks.task(tid), encode(task)),
                         Put(ks.host_task(task.host, tid), encode(task))]
        if old is not None and old.host and old.host != task.host:
            ops.append(Delete(ks.host_task(old.host, tid)))
        groups.append(_Group(tid, Compare(ks.task(tid), snapshot.task_revisions.get(tid, 0)),
                             ops))
    for tid in plan.stop:
        old = snapshot.tasks.get(tid)
        if old is None:
            continue
        ops = [Delete(ks.task(tid)), Delete(ks.task_health(tid))]
        if old.host:
            ops.append(Delete(ks.host_task(old.host, tid)))
        groups.append(_Group(tid, Compare(ks.task(tid), snapshot.task_revisions[tid]), ops))
    return groups


def _pack(groups: list[_Group], room: int) -> list[list[_Group]]:
    """Whole groups per chunk; a group costs its compare plus its ops."""
    chunks: list[list[_Group]] = []
    current: list[_Group] = []
    size = 0
    for g in groups:
        cost = len(g.ops) + 1
        if cost > room:
            raise TxnTooLarge(f"task {g.task_id}: {cost} operations do not fit in one "
                              f"transaction of {room}")
        if current and size + cost > room:
            chunks.append(current)
            current, size = [], 0
        current.append(g)
        size += cost
    if current:
        chunks.append(current)
    return chunks


def commit_plan(backend: Backend, snapshot: Snapshot, plan: Plan,
                fence: Sequence[Compare] = (), keyspace: Keyspace | None = None
                ) -> CommitResult:
    """Write ``plan``; conflicting tasks are left out and reported, never half written."""
    ks = keyspace or Keyspace()
    groups = _groups(snapshot, plan, ks)
    if not groups:
        return CommitResult(revision=snapshot.revision)
    limit = backend.max_txn_ops
    room = (limit - len(fence)) if limit is not None else sum(len(g.ops) + 1 for g in groups)
    committed: list[str] = []
    conflicts: list[str] = []
    revision = 0
    for members in _pack(groups, room):
        res = backend.txn([*fence, *(g.compare for g in members)],
                          [op for g in members for op in g.ops])
        if res.succeeded:
            committed += [g.task_id for g in members]
            revision = res.revision
            continue
        for g in members:  # find the conflicting groups; commit the others
            one = backend.txn([*fence, g.compare], g.ops)
            if one.succeeded:
                committed.append(g.task_id)
                revision = one.revision
            elif fence and not backend.txn(list(fence), []).succeeded:
                return CommitResult(tuple(committed), tuple(conflicts), True, revision)
            else:
                conflicts.append(g.task_id)
    return CommitResult(tuple(committed), tuple(conflicts), False, revision)
