"""Committing a plan with optimistic concurrency.

Every task in a plan is written as one **group**: its ``state/tasks/<id>`` key and its
``state/hosts/<host>/<id>`` index entry (and the removal of the old index entry when it
moves), guarded by a compare on the task key's revision as the snapshot read it (0 for a
new task). Groups are packed into as few transactions as the backend allows, each also
carrying the caller's ``fence`` (a lock's fencing token). When a transaction fails, its
groups are retried one by one, so a conflicting write rejects only its own part of the
plan; the caller plans those tasks again from a fresh snapshot.

**Per-host guard.** Per-task compares cannot stop two writers that plan *different*
services from filling the same host at once. So every transaction that places tasks on a
host also rewrites that host's allocation marker ``state/alloc/<host>`` and compares its
revision: a placement commits only while nobody else has placed on the host since the
snapshot was read. Revisions only grow, so the marker's revision "as the snapshot saw
it" is its current revision when that is at most the snapshot's revision; a marker
written after the snapshot makes every placement on that host a conflict. A host's
placements are kept together (stops first, then placements), and when a stop on a host
conflicts, the plan's placements on that host are refused too (they may have counted on
the room the stop would have freed). When the snapshot knows the markers' revisions
(:attr:`Snapshot.alloc_revisions`: read with the keyspace, or kept current by a
:class:`~skedlib.scheduling.SnapshotCache`), each is compared with exactly that revision;
otherwise they are listed at commit time. A snapshot built by hand (revision 0) has no
revision to compare with, and is committed with per-task compares only.

**Commits in flight.** A process that commits several plans at once from one snapshot
(the scheduler daemon plans the next service while the last one's transactions are on
the wire) prepares each commit under the snapshot's lock with :func:`prepare_commit` and
sends it after releasing the lock (:meth:`PreparedCommit.run`). The plans prepared later
saw the earlier ones' placements (written into the snapshot before they are committed),
so what they must still be guarded against is everybody else: an
:class:`InflightAllocs` hands each placing host of a later commit the marker revision
that the earlier commit on that host leaves (its transaction's revision, or the revision
it expected when it did not write the marker), and the later commit waits for it host by
host. A foreign write to the host in between moves the marker past that revision, so the
later placement is a conflict, as without pipelining.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Sequence

import msgspec

from skedlib.codecs import encode
from skedlib.errors import TxnTooLarge
from skedlib.keys import Keyspace
from skedlib.runtime.store import Store
from skedlib.scheduling.plan import Plan
from skedlib.scheduling.snapshot import Snapshot
from skedlib.store.base import Compare, Delete, Op, Put

__all__ = ["CommitResult", "InflightAllocs", "PreparedCommit", "commit_plan", "prepare_commit"]


class CommitResult(msgspec.Struct, frozen=True):
    """Task ids written, task ids refused by a conflict, and whether the fence held.

    ``revision`` is the store revision of the last transaction that succeeded;
    ``task_revisions`` maps every committed task id, and ``alloc_revisions`` every host
    whose allocation marker was rewritten, to the revision of its transaction (what a
    :class:`~skedlib.scheduling.SnapshotCache` records). ``also_revision``: the revision
    of the transaction that carried :func:`prepare_commit`'s ``also`` operations (0: they
    were not written).
    """

    committed: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    fenced_out: bool = False
    revision: int = 0
    task_revisions: dict[str, int] = msgspec.field(default_factory=dict)
    alloc_revisions: dict[str, int] = msgspec.field(default_factory=dict)
    also_revision: int = 0


class _Group(msgspec.Struct):
    task_id: str
    compare: Compare
    ops: list[Op]
    host: str = ""
    """The host the task lands on (a placement) or leaves (a stop)."""
    places: bool = True


_by_host = operator.attrgetter("host", "places")
"""A host's groups together, its stops before its placements."""


def _groups(snapshot: Snapshot, plan: Plan, ks: Keyspace) -> list[_Group]:
    groups: list[_Group] = []
    for task, tid in zip(plan.place, plan.place_ids(), strict=True):
        old = snapshot.tasks.get(tid)
        value = encode(task)  # the task and its index entry hold the same record
        key = ks.task(tid)
        ops: list[Op] = [Put(key, value), Put(ks.host_task(task.host, tid), value)]
        if old is not None and old.host and old.host != task.host:
            ops.append(Delete(ks.host_task(old.host, tid)))
        groups.append(_Group(tid, Compare(key, snapshot.task_revisions.get(tid, 0)),
                             ops, task.host, True))
    for tid in plan.stop:
        old = snapshot.tasks.get(tid)
        if old is None:
            continue
        ops = [Delete(ks.task(tid)), Delete(ks.task_health(tid))]
        if old.host:
            ops.append(Delete(ks.host_task(old.host, tid)))
        groups.append(_Group(tid, Compare(ks.task(tid), snapshot.task_revisions[tid]), ops,
                             old.host, False))
    groups.sort(key=_by_host)
    return groups


def _cost(g: _Group, guarded: dict[str, int], hosts_in_chunk: set[str]) -> int:
    """Operations a group adds to a chunk: its compare and ops, and the host guard's
    compare and put the first time the chunk places on a guarded host."""
    extra = 2 if g.places and g.host in guarded and g.host not in hosts_in_chunk else 0
    return len(g.ops) + 1 + extra


def _pack(groups: list[_Group], room: int, guarded: dict[str, int]) -> list[list[_Group]]:
    """Whole groups per chunk."""
    chunks: list[list[_Group]] = []
    current: list[_Group] = []
    hosts: set[str] = set()
    size = 0
    for g in groups:
        alone = _cost(g, guarded, set())
        if alone > room:
            raise TxnTooLarge(f"task {g.task_id}: {alone} operations do not fit in one "
                              f"transaction of {room}")
        cost = _cost(g, guarded, hosts)
        if current and size + cost > room:
            chunks.append(current)
            current, hosts, size = [], set(), 0
            cost = alone
        current.append(g)
        if g.places:
            hosts.add(g.host)
        size += cost
    if current:
        chunks.append(current)
    return chunks


def _marker(host: str) -> bytes:
    return encode({"host": host})


def _txn_parts(members: Sequence[_Group], guarded: dict[str, int], ks: Keyspace
               ) -> tuple[list[Compare], list[Op]]:
    compares = [g.compare for g in members]
    ops: list[Op] = [op for g in members for op in g.ops]
    for host in dict.fromkeys(g.host for g in members if g.places and g.host in guarded):
        compares.append(Compare(ks.host_alloc(host), guarded[host]))
        ops.append(Put(ks.host_alloc(host), _marker(host)))
    return compares, ops


class _Claim:
    """One prepared commit's claim on a host's allocation marker: set once the commit
    knows the marker revision it leaves behind."""

    __slots__ = ("_settled", "_unsettled", "revision")

    def __init__(self) -> None:
        # a lock held until the claim is settled (a commit claims a host per placement
        # or two, and a lock costs a tenth of a threading.Event): waiting is taking it
        # and giving it back at once, so every waiter gets through
        self._unsettled = threading.Lock()
        self._unsettled.acquire()
        self._settled = False
        self.revision = 0

    def settle(self, revision: int) -> None:
        """Once; by the thread that runs the commit (later calls do nothing)."""
        if not self._settled:
            self._settled = True
            self.revision = revision
            self._unsettled.release()

    def wait(self) -> int:
        with self._unsettled:
            return self.revision


class InflightAllocs:
    """The allocation markers that prepared commits of this process are about to rewrite.

    Kept by a :class:`~skedlib.scheduling.SnapshotCache` (``cache.inflight``) and passed
    to :func:`prepare_commit` under the cache's lock; each host maps to the claim of the
    last commit prepared on it. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._claims: dict[str, _Claim] = {}

    def _claim(self, hosts: Sequence[str]) -> tuple[dict[str, _Claim], dict[str, _Claim]]:
        """New claims on ``hosts``, and the claims they come after (hosts of commits
        still in flight)."""
        mine = {h: _Claim() for h in hosts}
        with self._lock:
            before = {h: c for h in hosts if (c := self._claims.get(h)) is not None}
            self._claims.update(mine)
        return mine, before

    def _release(self, claims: dict[str, _Claim]) -> None:
        with self._lock:
            for host, claim in claims.items():
                if self._claims.get(host) is claim:
                    del self._claims[host]

    def __len__(self) -> int:
        """Hosts with a commit in flight."""
        with self._lock:
            return len(self._claims)


class PreparedCommit:
    """A commit whose transactions are built from a snapshot, to be sent by :meth:`run`
    without it (see :func:`prepare_commit`)."""

    def __init__(self, store: Store, groups: list[_Group], fence: Sequence[Compare],
                 guarded: dict[str, int], refused: set[str], revision: int,
                 claims: dict[str, _Claim], after: dict[str, _Claim],
                 inflight: InflightAllocs | None, also: Sequence[Op] = ()) -> None:
        self._store = store
        self._groups = groups
        self._fence = list(fence)
        self._guarded = guarded
        self._refused = refused
        self._revision = revision
        self._claims = claims
        self._after = after
        self._inflight = inflight
        self._also = list(also)
        self._ran = False
        self.values: dict[str, bytes] = {
            op.key: op.value for g in groups if g.places and isinstance(op := g.ops[0], Put)}
        """Task key → the record this commit writes there, for each placement."""

    def run(self) -> CommitResult:
        """Send the transactions (once); what :func:`commit_plan` returns."""
        if self._ran:
            raise RuntimeError("this commit was already run")
        self._ran = True
        try:
            return self._run()
        finally:
            self._settle_all()

    def cancel(self) -> None:
        """Send nothing; the commits prepared after this one go on without it."""
        if not self._ran:
            self._ran = True
            self._settle_all()
        self.release()

    def release(self) -> None:
        """Drop this commit's claims once its result is in the snapshot (idempotent):
        a commit prepared after that reads the markers' revisions from the snapshot
        (until then, from the settled claims)."""
        if self._inflight is not None:
            self._inflight._release(self._claims)
            self._inflight = None

    def _settle_all(self) -> None:
        # hosts not settled yet (not reached, fenced out, an error): their marker is
        # where this commit expected it, as far as it knows
        for host, claim in self._claims.items():
            if host in self._after:  # not reached: the earlier commit's word stands
                self._guarded[host] = self._after.pop(host).wait()
            claim.settle(self._guarded.get(host, 0))

    def _resolve(self, members: Sequence[_Group]) -> None:
        """Wait for the earlier commits in flight on the chunk's hosts to settle."""
        for g in members:
            if g.places and g.host in self._after:
                self._guarded[g.host] = self._after.pop(g.host).wait()

    def _settle(self, hosts: Sequence[str]) -> None:
        """Hand the hosts' marker revisions to the commits prepared after this one."""
        for host in hosts:
            claim = self._claims.get(host)
            if claim is not None:
                claim.settle(self._guarded.get(host, 0))

    def _run(self) -> CommitResult:
        backend, ks = self._store.backend, self._store.keys
        groups, fence, guarded, refused = (self._groups, self._fence, self._guarded,
                                           self._refused)
        if not groups:
            return CommitResult(revision=self._revision)
        committed: list[str] = []
        conflicts: list[str] = []
        also = self._also
        limit = backend.max_txn_ops
        room = (limit - len(fence) - len(also)) if limit is not None else sum(
            _cost(g, guarded, set()) for g in groups)
        revision = also_revision = 0
        task_revs: dict[str, int] = {}
        alloc_revs: dict[str, int] = {}

        def refuse(g: _Group) -> bool:
            if g.places and g.host in refused:
                conflicts.append(g.task_id)
                return True
            return False

        chunks = _pack(groups, room, guarded)
        # a host's placements may span chunks: it is settled after its last one
        last: dict[str, int] = {g.host: i for i, chunk in enumerate(chunks) for g in chunk
                                if g.places}
        settles: list[list[str]] = [[] for _ in chunks]
        for host, i in last.items():
            settles[i].append(host)
        for i, members in enumerate(chunks):
            self._resolve(members)
            todo = [g for g in members if not refuse(g)]
            if not todo:
                self._settle(settles[i])
                continue
            compares, ops = _txn_parts(todo, guarded, ks)
            # the caller's operations go with the last transaction of a commit that has
            # met no conflict so far, and count only if it goes through whole
            carries = bool(also) and i == len(chunks) - 1 and not conflicts
            res = backend.txn([*fence, *compares], [*ops, *also] if carries else ops)
            if res.succeeded:
                if carries:
                    also_revision = res.revision
                committed += [g.task_id for g in todo]
                revision = res.revision
                for g in todo:
                    task_revs[g.task_id] = res.revision
                    if g.places and g.host in guarded:
                        guarded[g.host] = alloc_revs[g.host] = res.revision
                self._settle(settles[i])
                continue
            for g in todo:  # find the conflicting groups; commit the others
                if refuse(g):
                    continue
                compares, ops = _txn_parts([g], guarded, ks)
                one = backend.txn([*fence, *compares], ops)
                if one.succeeded:
                    committed.append(g.task_id)
                    revision = task_revs[g.task_id] = one.revision
                    if g.places and g.host in guarded:
                        guarded[g.host] = alloc_revs[g.host] = one.revision
                    continue
                if fence and not backend.txn(list(fence), []).succeeded:
                    return CommitResult(tuple(committed), tuple(conflicts), True, revision,
                                        task_revs, alloc_revs, also_revision)
                conflicts.append(g.task_id)
                if not g.places and g.host:
                    refused.add(g.host)  # the room this stop would free is not there
                elif g.host in guarded:
                    kv = backend.get(ks.host_alloc(g.host))
                    if (kv.revision if kv else 0) != guarded[g.host]:
                        refused.add(g.host)  # another writer placed on the host
            self._settle(settles[i])
        return CommitResult(tuple(committed), tuple(conflicts), False, revision, task_revs,
                            alloc_revs, also_revision)


def prepare_commit(store: Store, snapshot: Snapshot, plan: Plan,
                   fence: Sequence[Compare] = (),
                   inflight: InflightAllocs | None = None,
                   also: Sequence[Op] = ()) -> PreparedCommit:
    """Build :func:`commit_plan`'s transactions from ``snapshot`` now, to send them later
    with :meth:`PreparedCommit.run` (which reads nothing of the snapshot).

    With ``inflight`` (the snapshot cache's), call it while holding the snapshot, and
    write the plan's placements into the snapshot before letting go of it: commits
    prepared later on the same hosts then compare those hosts' markers with the
    revisions this one leaves (see the module's docstring). Every prepared commit must
    be run (or cancelled), or later ones on its hosts wait for ever, and released
    (:meth:`PreparedCommit.release`) once its result is recorded in the snapshot.

    ``also``: operations written in the commit's last transaction when every part of the
    plan commits (the scheduler daemon's status record, which then costs no transaction
    of its own); :attr:`CommitResult.also_revision` says whether they were. A plan with
    nothing to write sends no transaction, so no ``also`` either.
    """
    backend, ks = store.backend, store.keys
    groups = _groups(snapshot, plan, ks)
    guarded: dict[str, int] = {}
    """Guarded host → the revision its allocation marker must still have."""
    refused: set[str] = set()
    """Hosts whose placements are all conflicts (placed on since, or a stop failed)."""
    placing = sorted({g.host for g in groups if g.places})
    if snapshot.revision and placing:
        if snapshot.alloc_revisions is not None:
            markers = snapshot.alloc_revisions
        else:
            n = len(ks.host_allocs)
            markers = {kv.key[n:]: kv.revision for kv in backend.list(ks.host_allocs).items}
        for host in placing:
            rev = markers.get(host, 0)
            if snapshot.alloc_revisions is None and rev > snapshot.revision:
                refused.add(host)
            else:
                guarded[host] = rev
    claims: dict[str, _Claim] = {}
    after: dict[str, _Claim] = {}
    if inflight is not None and guarded:
        claims, after = inflight._claim(sorted(guarded))
        if after:
            # the hosts that wait for an earlier commit go last (a stable sort keeps each
            # host's groups together), so the rest is sent at once, beside that commit
            groups.sort(key=lambda g: g.host in after)
    return PreparedCommit(store, groups, fence, guarded, refused, snapshot.revision, claims,
                          after, inflight, also)


def commit_plan(store: Store, snapshot: Snapshot, plan: Plan,
                fence: Sequence[Compare] = ()) -> CommitResult:
    """Write ``plan`` under the store's keyspace; conflicting tasks are left out and
    reported, never half written.

    Each task's two keys (and the removal of its old host's index entry) are written
    together, compared on the task key's revision in ``snapshot``; placements on a host
    are also guarded by the host's allocation marker (the module's docstring has the
    rules). Conflicts are not retried: plan them again from a fresh snapshot.

    Args:
        store: Where to write (its backend and keyspace).
        snapshot: What the plan was made from (``read_snapshot(store)``, a
            :class:`SnapshotCache` view, or a hand-built one: per-task compares only).
        plan: The tasks to place (each with its ``host``) and the task ids to stop.
        fence: Compares every transaction carries, e.g. ``[lock.fence()]``.

    Returns:
        A :class:`CommitResult`: ``committed`` and ``conflicts`` (task ids), and
        ``fenced_out`` when the fence failed (nothing more was written).

    Raises:
        TxnTooLarge: One task's writes (with the fence) exceed the backend's transaction
            limit.
        BackendError: The store could not be reached.

    Example:
        ```python
        result = commit_plan(store, snap, plan, fence=[lock.fence()])
        if result.conflicts:       # somebody changed these tasks or their hosts since
            ...                    # read a new snapshot and plan them again
        ```
    """
    return prepare_commit(store, snapshot, plan, fence).run()
