"""Claims and finishes in batches (JobStore.claim_many, finish_many) on every local
backend, and the worker's runner threads, which are kept from job to job."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from skedlib.errors import BackendUnavailable
from skedlib.executors.limits import detect_limiter
from skedlib.jobs._config import WorkerConfig, WorkerStats
from skedlib.jobs._running import Runs
from skedlib.jobs.models import JobSpec
from skedlib.jobs.store import JobEnd, JobStore, StoredJob
from skedlib.jobs.worker import JobWorker
from skedlib.plugins import open_backend
from skedlib.runtime import Store
from skedlib.store.base import Backend, Compare, KeyValue, Op, Put, TxnResult
from skedlib.store.memory import MemoryBackend
from tests.harness.common import DelegatingBackend


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    url = "memory://" if request.param == "memory" else f"sqlite://{tmp_path}/jobs.db"
    backend: Backend = open_backend(url)
    try:
        yield JobStore(Store(backend))
    finally:
        backend.close()


def _queued(store: JobStore, *ids: str) -> list[KeyValue]:
    out = []
    for job_id in ids:
        store.submit(JobSpec(command="true"), job_id)
        kv = store.backend.get(store.keys.job_queued(job_id))
        assert kv is not None
        out.append(kv)
    return out


def _register(store: JobStore, node: str) -> int:
    return store.backend.put(store.keys.job_node(node), b"{}")


def _run_batch(store: JobStore, runs: Runs, node: str, rev: int,
               queued: list[KeyValue]) -> None:
    """Claim ``queued`` for ``node`` in one batch, run the jobs and wait for their ends."""
    claimed = store.claim_many(queued, node, rev)
    assert claimed is not None
    with runs.cond:
        batch = [runs.add(stored) for stored in claimed]
    for run in batch:
        runs.launch(run)
    for run in batch:
        assert run.done.wait(30), f"job {run.stored.job.id} did not end"


def test_a_batch_claim_is_all_or_nothing(store: JobStore) -> None:
    a, b, c = _queued(store, "a", "b", "c")
    n1, n2 = _register(store, "n1"), _register(store, "n2")
    assert store.claim(b, "n2", n2) is not None  # another node was first for one
    assert store.claim_many([a, b, c], "n1", n1) is None
    assert [store.get(j).job.status for j in "abc"] == ["queued", "running", "queued"]
    assert store.get("b").job.node == "n2"
    claimed = store.claim_many([a, c], "n1", n1, log_url="http://x", limits="none")
    assert claimed is not None and [s.job.id for s in claimed] == ["a", "c"]
    for stored in claimed:
        assert store.get(stored.job.id) == stored, "the revision returned is the record's"
        assert (stored.job.status, stored.job.node, stored.job.attempts,
                stored.job.log_url) == ("running", "n1", 1, "http://x")
    assert store.inconsistencies() == []


def test_a_batch_claim_compares_the_node_key(store: JobStore) -> None:
    (a,) = _queued(store, "a")
    rev = _register(store, "n1")
    store.backend.delete(store.keys.job_node("n1"))  # the node's lease ended
    assert store.claim_many([a], "n1", rev) is None
    assert store.get("a").job.status == "queued"
    with pytest.raises(ValueError, match="node_revision"):
        store.claim_many([a], "n1", 0)


def test_claim_room_fits_the_backends_transactions() -> None:
    assert JobStore(Store(MemoryBackend())).claim_room() >= 100
    small = JobStore(Store(MemoryBackend(max_txn_ops=13)))
    assert small.claim_room() == 3  # the node's compare, then 4 operations per job
    kvs = _queued(small, "a", "b", "c")
    assert small.claim_many(kvs, "n1", _register(small, "n1")) is not None


@pytest.mark.parametrize("max_txn_ops", [None, 8])
def test_finish_many_writes_each_job_unless_its_record_changed(max_txn_ops: int | None
                                                               ) -> None:
    store = JobStore(Store(MemoryBackend(max_txn_ops=max_txn_ops)))
    ids = ["a", "b", "c", "d", "e"]
    queued, rev = _queued(store, *ids), _register(store, "n1")
    room = store.claim_room()
    claimed: list[StoredJob] = []
    for start in range(0, len(queued), room):
        claimed += store.claim_many(queued[start:start + room], "n1", rev) or []
    assert len(claimed) == 5
    store.cancel("c")  # its end no longer belongs to the node
    ends = [JobEnd(s.job, s.revision, "failed" if s.job.id == "e" else "complete",
                   1 if s.job.id == "e" else 0, "exit code 1" if s.job.id == "e" else "")
            for s in claimed]
    assert store.finish_many(ends) == [True, True, False, True, True]
    jobs = {j: store.get(j).job for j in ids}
    assert [jobs[j].status for j in ids] == ["complete", "complete", "canceled", "complete",
                                             "failed"]
    assert (jobs["e"].exit_code, jobs["e"].reason) == (1, "exit code 1")
    assert store.finish_many(ends) == [False] * 5, "already ended: nothing written"
    assert store.inconsistencies() == []


def test_finish_many_refuses_other_states(store: JobStore) -> None:
    (a,) = _queued(store, "a")
    (stored,) = store.claim_many([a], "n1", _register(store, "n1")) or []
    with pytest.raises(ValueError, match="not complete or failed"):
        store.finish_many([JobEnd(stored.job, stored.revision, "canceled", None, "")])
    assert store.get("a").job.status == "running"


def _runners(node: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"jobs-runner-{node}-")]


def test_runner_threads_are_kept_from_job_to_job(tmp_path: Path) -> None:
    store = JobStore(Store(MemoryBackend()))
    node = f"rt{time.monotonic_ns()}"
    config = WorkerConfig(node=node, state_dir=tmp_path, limits="none")
    runs = Runs(store, config, detect_limiter(node, "none"), WorkerStats(),
                tmp_path / "logs", tmp_path / "work", lambda: None)
    (tmp_path / "logs").mkdir()
    (tmp_path / "work").mkdir()
    rev = _register(store, node)

    def run_batch(ids: list[str]) -> None:
        _run_batch(store, runs, node, rev, _queued(store, *ids))

    run_batch(["a1", "a2", "a3"])
    first = set(_runners(node))
    assert len(first) == 3, "one runner per job running at once"
    run_batch(["b1", "b2"])
    run_batch(["c1", "c2", "c3"])
    assert set(_runners(node)) == first, "the same threads ran the later jobs"
    ids = ["a1", "a2", "a3", "b1", "b2", "c1", "c2", "c3"]
    assert {store.get(j).job.status for j in ids} == {"complete"}
    assert runs.stats.completed == 8 and runs.jobs == {}
    runs.close()
    for thread in first:
        thread.join(10)
        assert not thread.is_alive()
    # a launch after close() still runs, on a thread of its own
    (stored,) = store.claim_many(_queued(store, "z"), node, rev) or []
    with runs.cond:
        run = runs.add(stored)
    runs.launch(run)
    assert run.done.wait(30)
    assert store.get("z").job.status == "complete"


def test_every_job_gets_an_empty_private_directory_of_its_own(tmp_path: Path) -> None:
    """A job without ``cwd`` runs in ``work/<id>``, empty and 0700, whether it was made for
    it or is the empty directory of an ended job renamed; a job's directory that is left
    with files in it is removed, not handed on."""
    store = JobStore(Store(MemoryBackend()))
    node = f"wd{time.monotonic_ns()}"
    config = WorkerConfig(node=node, state_dir=tmp_path, limits="none")
    limiter = detect_limiter(node, "none")
    logs, work = tmp_path / "logs", tmp_path / "work"
    runs = Runs(store, config, limiter, WorkerStats(), logs, work, lambda: None)
    logs.mkdir()
    work.mkdir(mode=0o700)
    rev = _register(store, node)
    script = 'pwd; ls -A; stat -c %a .; case "$SKED_JOB_ID" in *x) echo x > left;; esac'

    def run_batch(ids: list[str]) -> None:
        queued = []
        for job_id in ids:
            store.submit(JobSpec(command="sh", args=["-c", script]), job_id)
            kv = store.backend.get(store.keys.job_queued(job_id))
            assert kv is not None
            queued.append(kv)
        _run_batch(store, runs, node, rev, queued)

    rounds = [["a1", "a2x", "a3"], ["b1", "b2"], ["c1x", "c2", "c3", "c4"]]
    for ids in rounds:
        run_batch(ids)
        for job_id in ids:
            out = (logs / f"{job_id}.log").read_text().split()
            assert out == [str(work / job_id), "700"], f"{job_id} saw {out}"
            assert not (work / job_id).exists(), "a job's directory goes with it"
    spare = sorted(os.listdir(work))
    assert all(name.startswith(".free-") for name in spare), spare
    assert 0 < len(spare) <= 4, "no more kept than jobs ran at once"
    assert all(os.listdir(work / name) == [] for name in spare)
    assert {store.get(j).job.status for ids in rounds for j in ids} == {"complete"}
    runs.close()
    limiter.close()


def _claimed(store: JobStore, node: str, rev: int, job_id: str) -> StoredJob:
    (stored,) = store.claim_many(_queued(store, job_id), node, rev) or []
    return stored


def _end(stored: StoredJob) -> JobEnd:
    return JobEnd(stored.job, stored.revision, "complete", 0, "")


def test_finish_and_claim_writes_both_in_one_transaction(store: JobStore) -> None:
    rev = _register(store, "n1")
    a = _claimed(store, "n1", rev, "a")
    (b,) = _queued(store, "b")
    claimed = store.finish_and_claim([_end(a)], [b], "n1", rev, log_url="http://x",
                                     limits="none")
    assert claimed is not None and [s.job.id for s in claimed] == ["b"]
    done, running = store.get("a"), store.get("b")
    assert done.job.status == "complete" and done.job.exit_code == 0
    assert running.job.status == "running" and running.job.node == "n1"
    assert running.job.attempts == 1 and running.job.log_url == "http://x"
    assert done.revision == running.revision == claimed[0].revision, "one transaction"
    assert store.inconsistencies() == []


def test_finish_and_claim_is_all_or_nothing(store: JobStore) -> None:
    rev = _register(store, "n1")
    n2 = _register(store, "n2")
    # a queued job another node took first: the end is not written either
    a = _claimed(store, "n1", rev, "a")
    (b,) = _queued(store, "b")
    assert store.claim_many([b], "n2", n2) is not None
    assert store.finish_and_claim([_end(a)], [b], "n1", rev) is None
    assert store.get("a").job.status == "running" and store.get("b").job.node == "n2"
    # an ended job canceled meanwhile: the queued job stays queued, as it was
    (c,) = _queued(store, "c")
    store.cancel("a")
    assert store.finish_and_claim([_end(a)], [c], "n1", rev) is None
    assert store.get("a").job.status == "canceled"
    assert store.backend.get(c.key) == c
    # the node's own key changed (its lease ended and it registered again)
    d = _claimed(store, "n1", rev, "d")
    _register(store, "n1")
    assert store.finish_and_claim([_end(d)], [c], "n1", rev) is None
    assert store.get("d").job.status == "running" and store.backend.get(c.key) == c
    assert store.inconsistencies() == []


def test_finish_and_claim_writes_nothing_past_the_backends_transaction_size() -> None:
    small = JobStore(Store(MemoryBackend(max_txn_ops=13)))
    rev = _register(small, "n1")
    a = _claimed(small, "n1", rev, "a")
    queued = _queued(small, "b", "c", "d")
    # the node's compare, 4 for the end and 4 per claim: 17 > 13
    assert small.finish_and_claim([_end(a)], queued, "n1", rev) is None
    assert small.get("a").job.status == "running"
    assert [small.backend.get(kv.key) for kv in queued] == queued
    assert small.finish_and_claim([_end(a)], queued[:2], "n1", rev) is not None  # 13


def _run_until_finished(store: JobStore, backend: Backend, config: WorkerConfig,
                        ids: list[str]) -> JobWorker:
    """Run a worker on ``backend`` until every job of ``ids`` finished (60 s at most)."""
    worker = JobWorker(backend, config)
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and \
                not all(store.get(i).job.finished for i in ids):
            time.sleep(0.05)
    finally:
        worker.stop()
    return worker


def test_a_deep_queue_is_claimed_with_the_ends_of_jobs(tmp_path: Path) -> None:
    """From a deep queue, a worker claims the jobs that take freed slots in the
    transaction that writes the ends; every job still runs once, and the queue empties."""
    backend = open_backend(f"sqlite://{tmp_path}/jobs.db")
    store = JobStore(Store(backend))
    ids = [store.submit(JobSpec(command="true")).id for _ in range(40)]
    node = f"dq{time.monotonic_ns()}"
    worker = _run_until_finished(store, backend, WorkerConfig(
        node=node, state_dir=tmp_path / node, slots=3, claim_window=2, limits="none"), ids)
    jobs = [store.get(i).job for i in ids]
    assert {j.status for j in jobs} == {"complete"}
    assert all(j.attempts == 1 and j.node == node for j in jobs)
    stats = worker.stats
    assert stats.claimed == stats.completed == 40 and stats.conflicts == 0
    assert stats.claimed_with_ends > 0, "no job was claimed with the ends of others"
    assert stats.claimed_with_ends <= 40 - 2 * 2, "a shallow queue is claimed alone"
    assert store.inconsistencies() == []
    backend.close()


class _LostAnswers(DelegatingBackend):
    """Applies every transaction, but loses the answer of every third claim (a write
    with a job's running key), as when the member dies while the write is in flight."""

    def __init__(self, inner: Backend, running: str) -> None:
        super().__init__(inner)
        self.running = running
        self.claims = self.lost = 0
        self.lost_with_ends = 0
        self._lock = threading.Lock()

    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        res = self.inner.txn(compares, ops)
        if not any(isinstance(op, Put) and op.key.startswith(self.running) for op in ops):
            return res
        with self._lock:
            self.claims += 1
            lose = res.succeeded and self.claims % 3 == 1
            if lose:
                self.lost += 1
                # an end moves the job's running key away: a claim with ends deletes one
                self.lost_with_ends += any(not isinstance(op, Put) and
                                           op.key.startswith(self.running) for op in ops)
        if lose:
            raise BackendUnavailable("the member failed while the write was in flight; it "
                                     "may or may not have been applied")
        return res


@pytest.mark.parametrize("deep", [False, True])
def test_a_claim_whose_answer_is_lost_still_runs_its_jobs(tmp_path: Path, deep: bool) -> None:
    """A claim the store applied but whose answer was lost (the member failed in flight)
    is read back: its jobs run, once, and none is left running with nobody running it."""
    inner = open_backend(f"sqlite://{tmp_path}/jobs.db")
    store = JobStore(Store(inner))
    ids = [store.submit(JobSpec(command="true")).id for _ in range(24 if deep else 9)]
    node = f"lost{time.monotonic_ns()}"
    backend = _LostAnswers(inner, store.keys.jobs_running)
    # a deep queue claims with the ends of jobs; a shallow one claims alone
    _run_until_finished(store, backend, WorkerConfig(
        node=node, state_dir=tmp_path / node, slots=3, claim_window=2 if deep else 16,
        limits="none"), ids)
    jobs = [store.get(i).job for i in ids]
    assert backend.lost >= 2, "no claim's answer was lost"
    if deep:
        assert backend.lost_with_ends >= 1, "no claim with ends lost its answer"
    assert [j.id for j in jobs if j.status != "complete"] == []
    assert all(j.attempts == 1 and j.node == node for j in jobs), "a job ran twice"
    assert inner.list(store.keys.node_jobs_running(node)).items == []
    assert store.inconsistencies() == []
    inner.close()


def test_a_claim_is_read_back_only_as_its_own(store: JobStore) -> None:
    a, b = _queued(store, "a", "b")
    n1, n2 = _register(store, "n1"), _register(store, "n2")
    assert store.claimed_by([a, b], "n1") is None, "nothing was claimed yet"
    assert store.claim(b, "n2", n2) is not None
    assert store.claimed_by([a, b], "n1") is None, "another node's claim is not ours"
    claimed = store.claim_many([a], "n1", n1)
    assert claimed is not None
    assert store.claimed_by([a], "n1") == claimed
    store.cancel("a")
    assert store.claimed_by([a], "n1") is None, "a job canceled since is not run"
