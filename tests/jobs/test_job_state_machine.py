"""The batch-job state machine (:mod:`skedlib.jobs.store`) against a plain Python model.

A hypothesis rule-based machine submits jobs, registers and kills job workers, claims
(fresh and stale), finishes (fresh and stale), cancels, requeues the jobs of dead nodes
(as the cleaner does) and purges old jobs under a clock it controls, on a real backend
(``memory://`` and SQLite). After every step the store must agree with the model and
with itself (:meth:`JobStore.inconsistencies`).

A few example tests pin exact behaviour beside it: the queued key's bytes, the node-key
compare of a claim, a two-thread claim race, and purging in batches under a backend's
``max_txn_ops``.
"""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from skedlib.errors import ConflictError, NotFound, TxnTooLarge
from skedlib.jobs.keys import JobKeyspace
from skedlib.jobs.models import (
    FINISHED_STATES,
    JOB_STATES,
    Job,
    JobNode,
    JobRequirements,
    JobSpec,
)
from skedlib.jobs.store import JobEnd, JobFinished, JobStore, StoredJob, encode_job
from skedlib.keys import Keyspace
from skedlib.plugins import open_backend
from skedlib.runtime import Store
from skedlib.store.base import Backend, Compare, KeyValue, Op, Put, TxnResult
from skedlib.store.memory import MemoryBackend

NODE_NAMES = ("n1", "n2", "n3")
START = 1_700_000_000.25


def _node_record(name: str) -> bytes:
    return msgspec.json.encode(JobNode(name=name, capacity=JobRequirements(), slots=4))


def _claimed(store: JobStore, result: StoredJob | None) -> Job:
    """The job a successful claim returned; its revision must be the record's, so the
    worker can finish with it."""
    assert result is not None
    assert store.get(result.job.id) == result
    return result.job


def _snapshot(backend: Backend, keys: JobKeyspace) -> dict[str, tuple[bytes, int]]:
    """Every key under ``jobs/`` with its value and revision."""
    return {kv.key: (kv.value, kv.revision) for kv in backend.list(keys.jobs).items}


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    url = "memory://" if request.param == "memory" else f"sqlite://{tmp_path}/jobs.db"
    b = open_backend(url)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> Iterator[Backend]:
    b = open_backend(f"sqlite://{tmp_path}/race.db")
    try:
        yield b
    finally:
        b.close()


# -- the model -------------------------------------------------------------------------------
@dataclass
class ModelJob:
    restart: bool
    max_attempts: int
    version: int
    """Bumped (to a number unique in the run) on every write of the record."""
    state: str = "queued"
    node: str = ""
    attempts: int = 0
    finished_at: float | None = None
    exit_code: int | None = None
    reason: str = ""


class JobMachine(RuleBasedStateMachine):
    """A JobStore on a real backend, under a keyspace of its own, beside a model."""

    jobs = Bundle("jobs")
    nodes = Bundle("nodes")

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self.backend = backend
        self.clock = FakeClock()
        self.store = JobStore(Store(backend, Keyspace(f"sm{uuid.uuid4().hex[:12]}/")),
                              clock=self.clock)
        self.keys = self.store.keys
        self.model: dict[str, ModelJob] = {}
        self.purged: set[str] = set()
        self.counter = 0
        self.versions = 0
        self.node_revs: dict[str, list[int]] = {}
        self.alive: set[str] = set()
        # reads remembered for stale use later: (what was read, the model version then)
        self.queued_reads: dict[str, tuple[KeyValue, int]] = {}
        self.running_reads: dict[str, tuple[StoredJob, int]] = {}

    # -- helpers ------------------------------------------------------------------------------
    def _version(self) -> int:
        self.versions += 1
        return self.versions

    def _spec(self, restart: bool, max_attempts: int) -> JobSpec:
        return JobSpec(command="true", restart_on_node_failure=restart,
                       max_attempts=max_attempts)

    def _new_job(self, job_id: str, restart: bool, max_attempts: int) -> None:
        job = self.store.submit(self._spec(restart, max_attempts), job_id)
        assert (job.id, job.status, job.attempts) == (job_id, "queued", 0)
        assert job.submitted_at == self.clock.now
        self.model[job_id] = ModelJob(restart, max_attempts, self._version())
        self.purged.discard(job_id)

    def _claimed(self, job_id: str, node: str) -> None:
        m = self.model[job_id]
        m.state, m.node, m.attempts, m.reason = "running", node, m.attempts + 1, ""
        m.exit_code, m.finished_at, m.version = None, None, self._version()

    def _ended(self, job_id: str, state: str, reason: str,
               exit_code: int | None = None) -> None:
        m = self.model[job_id]
        m.state, m.reason, m.finished_at = state, reason, self.clock.now
        m.exit_code, m.version = exit_code, self._version()

    def _cancel(self, job_id: str, reason: str = "canceled") -> None:
        done = self.store.cancel(job_id, reason)
        assert (done.status, done.reason, done.finished_at) == (
            "canceled", reason, self.clock.now)
        self._ended(job_id, "canceled", reason, self.model[job_id].exit_code)

    def _expected_requeue(self, job_id: str, why: str) -> str:
        """Apply a requeue-or-fail to the model; the state the job goes to."""
        m = self.model[job_id]
        if m.restart and m.attempts < m.max_attempts:
            m.state, m.reason = "queued", f"{why} during attempt {m.attempts}; queued again"
            m.version = self._version()
        else:
            tail = "" if not m.restart else f" (all {m.max_attempts} attempts used)"
            self._ended(job_id, "failed", f"{why}{tail}")
        return m.state

    def _in_state(self, state: str) -> list[str]:
        return sorted(job_id for job_id, m in self.model.items() if m.state == state)

    def _read_queued(self, job_id: str) -> KeyValue | None:
        kv = self.backend.get(self.keys.job_queued(job_id))
        m = self.model.get(job_id)
        if kv is None:
            assert m is None or m.state != "queued"
            return None
        assert m is not None and m.state == "queued"
        record = self.backend.get(self.keys.job(job_id))
        assert record is not None and record.value == kv.value
        self.queued_reads[job_id] = (kv, m.version)
        return kv

    # -- jobs -----------------------------------------------------------------------------------
    @rule(target=jobs, restart=st.sampled_from([True, False]),
          max_attempts=st.sampled_from([3, 2, 1]))
    def submit(self, restart: bool, max_attempts: int) -> str:
        self.counter += 1
        job_id = f"job{self.counter:03d}"
        self._new_job(job_id, restart, max_attempts)
        return job_id

    @rule(job_id=jobs, restart=st.booleans(), max_attempts=st.integers(1, 3))
    def submit_again(self, job_id: str, restart: bool, max_attempts: int) -> None:
        """An id in use is refused; a purged one may be used again."""
        if job_id in self.model:
            before = _snapshot(self.backend, self.keys)
            with pytest.raises(ConflictError) as exc:
                self.store.submit(self._spec(restart, max_attempts), job_id)
            assert type(exc.value) is ConflictError
            assert _snapshot(self.backend, self.keys) == before
        else:
            self._new_job(job_id, restart, max_attempts)

    # -- nodes ----------------------------------------------------------------------------------
    @initialize(target=nodes)
    def first_nodes(self) -> object:
        return multiple(*(self.register_node(name) for name in NODE_NAMES[:2]))

    @rule(target=nodes, name=st.sampled_from(NODE_NAMES))
    def register_node(self, name: str) -> str:
        rev = self.backend.put(self.keys.job_node(name), _node_record(name))
        self.node_revs.setdefault(name, []).append(rev)
        self.alive.add(name)
        return name

    @rule(node=nodes)
    def kill_node(self, node: str) -> None:
        self.backend.delete(self.keys.job_node(node))
        self.alive.discard(node)

    # -- claims ---------------------------------------------------------------------------------
    @rule(job_id=jobs, node=nodes, reuse_read=st.booleans(), old_node_rev=st.booleans())
    def claim(self, job_id: str, node: str, reuse_read: bool, old_node_rev: bool) -> None:
        """Claim with a fresh read of the queued key, or one remembered from earlier; with
        the node's current revision or its first (stale once it was registered again)."""
        fresh = not (reuse_read and job_id in self.queued_reads)
        if fresh and self._read_queued(job_id) is None:
            return
        kv, read_version = self.queued_reads[job_id]
        revs = self.node_revs[node]
        self._claim(job_id, kv, read_version, node, revs[0] if old_node_rev else revs[-1])

    @rule(node=nodes)
    def worker_claims_next(self, node: str) -> None:
        """What a worker does: claim the first queued job its watch of the prefix shows."""
        listed = self.backend.list(self.keys.jobs_queued).items
        assert [kv.key.rsplit("/", 1)[1] for kv in listed] == sorted(
            job_id for job_id, m in self.model.items() if m.state == "queued")
        if listed:
            job_id = listed[0].key.rsplit("/", 1)[1]
            self.queued_reads[job_id] = (listed[0], self.model[job_id].version)
            self._claim(job_id, listed[0], self.model[job_id].version, node,
                        self.node_revs[node][-1])

    def _claim(self, job_id: str, kv: KeyValue, read_version: int, node: str,
               node_rev: int) -> None:
        """Claim succeeds iff the job is still queued as read and the node's key is still
        at ``node_rev``; else it returns None and writes nothing."""
        m = self.model.get(job_id)
        expect = (m is not None and m.state == "queued" and m.version == read_version
                  and node in self.alive and node_rev == self.node_revs[node][-1])
        before = _snapshot(self.backend, self.keys)
        result = self.store.claim(kv, node, node_rev, log_url=f"http://{node}/logs",
                                  limits="none")
        if not expect:
            assert result is None
            assert _snapshot(self.backend, self.keys) == before
            return
        got = _claimed(self.store, result)
        assert m is not None and result is not None
        assert (got.id, got.status, got.node, got.attempts) == (
            job_id, "running", node, m.attempts + 1)
        assert (got.started_at, got.finished_at, got.log_url) == (
            self.clock.now, None, f"http://{node}/logs")
        self._claimed(job_id, node)
        # the worker may finish later with what claim returned
        self.running_reads[job_id] = (result, self.model[job_id].version)

    @rule(data=st.data(), node=nodes, old_node_rev=st.booleans())
    def claim_batch(self, data: st.DataObject, node: str, old_node_rev: bool) -> None:
        """Claim several queued jobs in one transaction (JobStore.claim_many) with reads
        fresh or remembered: all are claimed iff every read is current and the node's key
        is at the revision given, else nothing is written."""
        ids = data.draw(st.lists(st.sampled_from(sorted(self.model) or ["none"]),
                                 min_size=1, max_size=4, unique=True), label="jobs")
        reads: list[tuple[str, KeyValue, int]] = []
        for job_id in ids:
            fresh = data.draw(st.booleans(), label=f"fresh read of {job_id}") \
                or job_id not in self.queued_reads
            if fresh and (job_id not in self.model or self._read_queued(job_id) is None):
                continue
            kv, read_version = self.queued_reads[job_id]
            reads.append((job_id, kv, read_version))
        if not reads:
            return
        revs = self.node_revs[node]
        node_rev = revs[0] if old_node_rev else revs[-1]
        expect = node in self.alive and node_rev == revs[-1] and all(
            self.model[j].state == "queued" and self.model[j].version == v
            for j, _, v in reads)
        before = _snapshot(self.backend, self.keys)
        result = self.store.claim_many([kv for _, kv, _ in reads], node, node_rev)
        if not expect:
            assert result is None
            assert _snapshot(self.backend, self.keys) == before
            return
        assert result is not None and [r.job.id for r in result] == [j for j, _, _ in reads]
        for stored in result:
            got = _claimed(self.store, stored)
            assert (got.status, got.node, got.attempts) == (
                "running", node, self.model[got.id].attempts + 1)
            self._claimed(got.id, node)
            self.running_reads[got.id] = (stored, self.model[got.id].version)

    @precondition(lambda self: self._in_state("queued"))
    @rule(data=st.data(), node=nodes, other=nodes,
          interfere=st.sampled_from(["claim", "cancel"]))
    def stale_claim(self, data: st.DataObject, node: str, other: str, interfere: str) -> None:
        """Read the queued key, let another node's claim or a cancel go first: the claim
        made with that read must then lose, and write nothing."""
        job_id = data.draw(st.sampled_from(self._in_state("queued")), label="queued job")
        kv = self._read_queued(job_id)
        assert kv is not None
        if interfere == "claim" and other in self.alive:
            won = _claimed(self.store, self.store.claim(kv, other, self.node_revs[other][-1]))
            assert won.node == other
            self._claimed(job_id, other)
        else:
            self._cancel(job_id, "canceled by a test")
        before = _snapshot(self.backend, self.keys)
        assert self.store.claim(kv, node, self.node_revs[node][-1]) is None
        assert _snapshot(self.backend, self.keys) == before

    # -- finishing ------------------------------------------------------------------------------
    @rule(job_id=jobs)
    def read_running(self, job_id: str) -> None:
        """A worker reads the record of a job it runs (to finish it, maybe much later)."""
        m = self.model.get(job_id)
        if m is not None and m.state == "running":
            self.running_reads[job_id] = (self.store.get(job_id), m.version)

    @rule(job_id=jobs, status=st.sampled_from(["complete", "failed"]),
          exit_code=st.integers(-9, 3), reuse_read=st.booleans())
    def finish(self, job_id: str, status: str, exit_code: int, reuse_read: bool) -> None:
        """Finish with a fresh read (succeeds) or a remembered one (succeeds iff the record
        did not change since)."""
        m = self.model.get(job_id)
        if reuse_read and job_id in self.running_reads:
            stored, read_version = self.running_reads[job_id]
        else:
            if m is None or m.state != "running":
                return
            stored, read_version = self.store.get(job_id), m.version
        expect = m is not None and m.version == read_version
        before = _snapshot(self.backend, self.keys)
        reason = f"exit {exit_code}"
        ok = self.store.finish(stored.job, stored.revision, status,  # type: ignore[arg-type]
                               exit_code=exit_code, reason=reason)
        assert ok is expect
        if ok:
            assert m is not None and m.state == "running"
            self._ended(job_id, status, reason, exit_code)
        else:
            assert _snapshot(self.backend, self.keys) == before

    @precondition(lambda self: self.running_reads)
    @rule(data=st.data(), status=st.sampled_from(["complete", "failed"]))
    def finish_batch(self, data: st.DataObject, status: str) -> None:
        """End several jobs in one call (JobStore.finish_many) with remembered reads: each
        is written iff its record did not change since it was read, whatever the others."""
        ids = data.draw(st.lists(st.sampled_from(sorted(self.running_reads)), min_size=1,
                                 max_size=4, unique=True), label="jobs")
        ends = [JobEnd(self.running_reads[j][0].job, self.running_reads[j][0].revision,
                       status, 0, f"batch {status}") for j in ids]  # type: ignore[arg-type]
        expect = [j in self.model and self.model[j].version == self.running_reads[j][1]
                  for j in ids]
        before = _snapshot(self.backend, self.keys)
        assert self.store.finish_many(ends) == expect
        for job_id, ok in zip(ids, expect, strict=True):
            if ok:
                self._ended(job_id, status, f"batch {status}", 0)
        if not any(expect):
            assert _snapshot(self.backend, self.keys) == before

    @precondition(lambda self: self._in_state("running"))
    @rule(data=st.data(), status=st.sampled_from(["complete", "failed"]),
          exit_code=st.integers(-9, 3))
    def worker_finishes(self, data: st.DataObject, status: str, exit_code: int) -> None:
        """What a worker does: finish a job its running prefix shows (a fresh read)."""
        job_id = data.draw(st.sampled_from(self._in_state("running")), label="running job")
        node = self.model[job_id].node
        listed = self.backend.list(self.keys.node_jobs_running(node)).items
        assert [kv.key.rsplit("/", 1)[1] for kv in listed] == [
            j for j in self._in_state("running") if self.model[j].node == node]
        stored = self.store.get(job_id)
        reason = f"exit {exit_code}"
        assert self.store.finish(stored.job, stored.revision, status,  # type: ignore[arg-type]
                                 exit_code=exit_code, reason=reason)
        self._ended(job_id, status, reason, exit_code)

    @precondition(lambda self: self._in_state("running"))
    @rule(data=st.data(), via=st.sampled_from(["cancel", "requeue"]))
    def finish_after_takeover(self, data: st.DataObject, via: str) -> None:
        """A worker read its running job; then it was canceled or taken back (its node
        taken for lost): the worker's finish, and a second take-back, must write nothing."""
        job_id = data.draw(st.sampled_from(self._in_state("running")), label="running job")
        m = self.model[job_id]
        stored = self.store.get(job_id)
        if via == "cancel":
            self._cancel(job_id, "canceled while running")
        else:
            why = f"node {m.node} lost"
            new = self.store.requeue_or_fail(stored, why)
            assert new is not None
            assert new.status == self._expected_requeue(job_id, why)
            assert new.reason == m.reason and m.node in new.reason
        before = _snapshot(self.backend, self.keys)
        assert self.store.finish(stored.job, stored.revision, "complete", exit_code=0,
                                 reason="done") is False
        assert self.store.requeue_or_fail(stored, "again") is None
        assert _snapshot(self.backend, self.keys) == before

    # -- cancel ---------------------------------------------------------------------------------
    @rule(job_id=jobs)
    def cancel(self, job_id: str) -> None:
        m = self.model.get(job_id)
        if m is None:
            with pytest.raises(NotFound):
                self.store.cancel(job_id)
        elif m.state in FINISHED_STATES:
            before = _snapshot(self.backend, self.keys)
            with pytest.raises(JobFinished, match=m.state):
                self.store.cancel(job_id)
            assert _snapshot(self.backend, self.keys) == before
        else:
            self._cancel(job_id, "canceled by a person")

    @rule()
    def cancel_unknown(self) -> None:
        with pytest.raises(NotFound):
            self.store.cancel("nosuchjob")

    # -- the cleaner ----------------------------------------------------------------------------
    @rule(node=nodes)
    def requeue_dead_node(self, node: str) -> None:
        """The cleaner, once a node's key is gone (its lease ended): every job running
        there is queued again or failed. A live node is killed first."""
        self._node_lost(node)

    @precondition(lambda self: self._in_state("running"))
    @rule(data=st.data())
    def busy_node_dies(self, data: st.DataObject) -> None:
        """A node running jobs dies, and the cleaner takes its jobs back."""
        self._node_lost(data.draw(st.sampled_from(
            sorted({self.model[j].node for j in self._in_state("running")})), label="node"))

    def _node_lost(self, node: str) -> None:
        if node in self.alive:
            self.kill_node(node)
        why = f"node {node} lost"
        expected = {job_id: self._expected_requeue(job_id, why)
                    for job_id, m in sorted(self.model.items())
                    if m.state == "running" and m.node == node}
        moved = self.store.requeue_node(node, why)
        assert {j.id: j.status for j in moved} == expected
        for job in moved:
            assert node in job.reason
            assert (job.node, job.reason) == (node, self.model[job.id].reason)
        # nothing is left running there: a second pass moves nothing
        assert self.store.requeue_node(node, why) == []

    @rule(dt=st.sampled_from([0.25, 0.5, 1.0, 2.0, 7.5]))
    def advance_clock(self, dt: float) -> None:
        self.clock.now += dt

    @rule(age=st.sampled_from([0.0, 0.5, 1.0, 3.0, 10.0]))
    def purge(self, age: float) -> None:
        older_than = self.clock.now - age
        cutoff = math.floor(older_than)
        expected = sorted(job_id for job_id, m in self.model.items()
                          if m.state in FINISHED_STATES and m.finished_at is not None
                          and math.floor(m.finished_at) < cutoff)
        assert self.store.purge(older_than) == len(expected)
        for job_id in expected:
            del self.model[job_id]
            self.purged.add(job_id)

    def teardown(self) -> None:
        # every example has a prefix of its own on a shared backend: leave it empty
        for kv in self.backend.list(self.keys.prefix).items:
            self.backend.delete(kv.key)

    # -- invariants -----------------------------------------------------------------------------
    @invariant()
    def store_is_consistent(self) -> None:
        assert self.store.inconsistencies() == []

    @invariant()
    def store_matches_model(self) -> None:
        for job_id, m in self.model.items():
            job = self.store.get(job_id).job
            assert (job.status, job.node, job.attempts) == (m.state, m.node, m.attempts), job_id
            assert (job.finished_at, job.exit_code, job.reason) == (
                m.finished_at, m.exit_code, m.reason), job_id
            assert (job.restart_on_node_failure, job.max_attempts) == (
                m.restart, m.max_attempts)
        for job_id in self.purged:
            with pytest.raises(NotFound):
                self.store.get(job_id)
        for state in JOB_STATES:
            assert [j.id for j in self.store.list(state)] == sorted(
                job_id for job_id, m in self.model.items() if m.state == state)
        assert [j.id for j in self.store.list()] == sorted(self.model)
        # purged jobs are gone entirely: every key under jobs/ belongs to a model job
        # (or is a node key)
        for key in _snapshot(self.backend, self.keys):
            if key.startswith(self.keys.job_nodes):
                continue
            assert key.rsplit("/", 1)[1] in self.model, key


def test_job_state_machine(backend: Backend) -> None:
    run_state_machine_as_test(
        lambda: JobMachine(backend),
        settings=settings(max_examples=60, stateful_step_count=100, deadline=None,
                          suppress_health_check=list(HealthCheck)))


# -- examples that pin exact behaviour -------------------------------------------------------
def _register(store: JobStore, name: str) -> int:
    return store.backend.put(store.keys.job_node(name), _node_record(name))


def test_queued_key_holds_the_record_bytes(backend: Backend) -> None:
    store = JobStore(Store(backend), clock=FakeClock())
    job = store.submit(JobSpec(command="true", args=["a b"], env={"X": "1"}), "j1")
    record = backend.get(store.keys.job("j1"))
    queued = backend.get(store.keys.job_queued("j1"))
    assert record is not None and queued is not None
    assert queued.value == record.value == encode_job(job)
    assert queued.revision == record.revision

    # after a claim and a requeue the queued key holds the new record's bytes again
    rev = _register(store, "n1")
    _claimed(store, store.claim(queued, "n1", rev))
    assert backend.get(store.keys.job_queued("j1")) is None
    running_key = backend.get(store.keys.job_running("n1", "j1"))
    assert running_key is not None and running_key.value == b""
    backend.delete(store.keys.job_node("n1"))
    [requeued] = store.requeue_node("n1", "node n1 lost")
    assert (requeued.status, requeued.attempts) == ("queued", 1)
    record = backend.get(store.keys.job("j1"))
    queued = backend.get(store.keys.job_queued("j1"))
    assert record is not None and queued is not None
    assert queued.value == record.value == encode_job(requeued)
    assert store.inconsistencies() == []


def test_claim_compares_the_node_key(backend: Backend) -> None:
    store = JobStore(Store(backend), clock=FakeClock())
    store.submit(JobSpec(command="true"), "j1")
    queued = backend.get(store.keys.job_queued("j1"))
    assert queued is not None
    rev = _register(store, "n1")
    backend.delete(store.keys.job_node("n1"))  # the node's lease ended
    assert store.claim(queued, "n1", rev) is None
    new_rev = _register(store, "n1")  # back, but as a new incarnation
    assert store.claim(queued, "n1", rev) is None
    assert store.get("j1").job.status == "queued"
    assert backend.get(store.keys.job_queued("j1")) == queued
    claimed = _claimed(store, store.claim(queued, "n1", new_rev))
    assert (claimed.status, claimed.node) == ("running", "n1")
    assert store.inconsistencies() == []


def test_requeue_counts_attempts(backend: Backend) -> None:
    store = JobStore(Store(backend), clock=FakeClock())
    store.submit(JobSpec(command="true", max_attempts=2), "again")
    store.submit(JobSpec(command="true", restart_on_node_failure=False), "once")

    def lose_node(job_id: str, incarnation: int) -> Job:
        node = f"n{incarnation}"
        queued = backend.get(store.keys.job_queued(job_id))
        assert queued is not None
        _claimed(store, store.claim(queued, node, _register(store, node)))
        backend.delete(store.keys.job_node(node))
        [moved] = store.requeue_node(node, f"node {node} lost")
        assert moved == store.get(job_id).job
        return moved

    first = lose_node("again", 1)
    assert (first.status, first.attempts, first.node) == ("queued", 1, "n1")
    assert first.reason == "node n1 lost during attempt 1; queued again"
    second = lose_node("again", 2)
    assert (second.status, second.attempts, second.node) == ("failed", 2, "n2")
    assert second.reason == "node n2 lost (all 2 attempts used)"
    once = lose_node("once", 3)
    assert (once.status, once.attempts, once.reason) == ("failed", 1, "node n3 lost")
    assert store.inconsistencies() == []


def test_two_threads_claim_one_job_exactly_one_wins(sqlite_backend: Backend) -> None:
    store = JobStore(Store(sqlite_backend))
    revs = {name: _register(store, name) for name in ("a", "b")}
    for i in range(50):
        job_id = f"race{i:02d}"
        store.submit(JobSpec(command="true"), job_id)
        queued = sqlite_backend.get(store.keys.job_queued(job_id))
        assert queued is not None
        barrier = threading.Barrier(2)
        results: dict[str, object] = {}

        def claimer(node: str, queued: KeyValue = queued,
                    barrier: threading.Barrier = barrier,
                    results: dict[str, object] = results) -> None:
            barrier.wait(timeout=10)
            try:
                results[node] = store.claim(queued, node, revs[node])
            except Exception as exc:  # reported below
                results[node] = exc

        threads = [threading.Thread(target=claimer, args=(n,)) for n in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads)
        assert not any(isinstance(r, Exception) for r in results.values()), results
        winners = [n for n, r in results.items() if r is not None]
        assert len(winners) == 1, (i, results)
        job = store.get(job_id).job
        assert (job.status, job.node, job.attempts) == ("running", winners[0], 1)
    assert store.inconsistencies() == []
    assert len(store.list("running")) == 50


class _CountingBackend(MemoryBackend):
    """A MemoryBackend that records the size of every transaction."""

    def __init__(self, max_txn_ops: int) -> None:
        super().__init__(max_txn_ops=max_txn_ops)
        self.sizes: list[int] = []

    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        self.sizes.append(len(compares) + len(ops))
        return super().txn(compares, ops)


def _finished_jobs(store: JobStore, n: int) -> None:
    rev = _register(store, "n1")
    for i in range(n):
        job_id = f"old{i:02d}"
        store.submit(JobSpec(command="true"), job_id)
        if i % 3 == 0:
            store.cancel(job_id)
            continue
        queued = store.backend.get(store.keys.job_queued(job_id))
        assert queued is not None
        _claimed(store, store.claim(queued, "n1", rev))
        stored = store.get(job_id)
        status = "complete" if i % 3 == 1 else "failed"
        assert store.finish(stored.job, stored.revision, status, exit_code=i % 3 - 1,
                            reason="done")


@pytest.mark.parametrize("with_fence", [False, True])
def test_purge_respects_max_txn_ops(with_fence: bool) -> None:
    backend = _CountingBackend(max_txn_ops=7)
    with pytest.raises(TxnTooLarge):  # the limit is honoured
        backend.txn([], [Put(f"k{i}", b"") for i in range(8)])
    clock = FakeClock()
    store = JobStore(Store(backend), clock=clock)
    _finished_jobs(store, 50)
    store.submit(JobSpec(command="true"), "young")  # unfinished: never purged
    fence: list[Compare] = []
    if with_fence:
        fence = [Compare("cleaner-lock", backend.put("cleaner-lock", b"me"))]
    clock.now += 100
    backend.sizes.clear()
    assert store.purge(clock.now, fence) == 50
    assert max(backend.sizes) <= 7
    assert len(backend.sizes) >= 50 // 2  # several batches, not one transaction
    assert [j.id for j in store.list()] == ["young"]
    assert [kv.key for kv in backend.list(store.keys.jobs).items] == sorted([
        store.keys.job("young"), store.keys.job_node("n1"), store.keys.job_queued("young")])
    assert store.inconsistencies() == []


def test_purge_with_a_lost_fence_deletes_nothing() -> None:
    backend = MemoryBackend(max_txn_ops=7)
    clock = FakeClock()
    store = JobStore(Store(backend), clock=clock)
    _finished_jobs(store, 6)
    rev = backend.put("cleaner-lock", b"me")
    backend.put("cleaner-lock", b"someone else")
    clock.now += 100
    assert store.purge(clock.now, [Compare("cleaner-lock", rev)]) == 0
    assert len(store.list()) == 6
    assert store.inconsistencies() == []


def test_purge_keeps_jobs_that_ended_at_or_after_the_cutoff() -> None:
    clock = FakeClock(1000.5)
    store = JobStore(Store(MemoryBackend()), clock=clock)
    store.submit(JobSpec(command="true"), "j1")
    store.cancel("j1")  # ended at 1000.5, epoch 1000
    assert store.purge(1000.9) == 0  # same epoch second: kept
    assert store.purge(1001.0) == 1
    with pytest.raises(NotFound):
        store.get("j1")


@pytest.mark.parametrize("max_txn_ops", [None, 7])
def test_purge_deletes_at_most_limit(max_txn_ops: int | None) -> None:
    clock = FakeClock()
    store = JobStore(Store(MemoryBackend(max_txn_ops=max_txn_ops)), clock=clock)
    _finished_jobs(store, 12)  # 4 of each finished state
    clock.now += 100
    assert store.purge(clock.now, limit=3) == 3  # within one batch
    assert len(store.list()) == 9
    assert store.purge(clock.now, limit=5) == 5  # across batches (7 ops: 2 jobs each)
    assert len(store.list()) == 4
    assert store.purge(clock.now, limit=0) == 0
    assert store.purge(clock.now) == 4
    assert store.list() == []
    assert store.inconsistencies() == []
