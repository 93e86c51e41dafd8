"""The elected job cleaner, with in-process workers: one cleaner at a time, another takes
over when it goes, finished jobs are removed after the retention and the backend's history
is compacted."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from skedlib.errors import Compacted
from skedlib.jobs.client import JobClient
from skedlib.jobs.models import JobRequirements
from skedlib.jobs.worker import JobWorker, WorkerConfig
from skedlib.keys import Keyspace
from skedlib.plugins import open_backend
from skedlib.runtime import Store
from skedlib.store.base import Backend
from tests.harness import etcd as harness
from tests.jobs.conftest import remove_cgroups, wait_for

etcd_cluster = harness.etcd_cluster


@pytest.fixture(params=["sqlite", "etcd"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Backend, str]]:
    if request.param == "sqlite":
        backend = open_backend(f"sqlite://{tmp_path}/store.db")
        prefix = "sked/"
    else:
        cluster: Any = request.getfixturevalue("etcd_cluster")
        backend = open_backend(cluster.url())
        prefix = f"t{uuid.uuid4().hex[:8]}/"
    try:
        yield backend, prefix
    finally:
        backend.close()


def _worker(backend: Backend, prefix: str, tmp: Path, name: str, **kw: Any) -> JobWorker:
    cfg = WorkerConfig(node=name, state_dir=tmp / name, prefix=prefix, lease_ttl=1.0,
                       slots=2, capacity=JobRequirements(memory=1024, cpu_units=2048,
                                                         disk=1024), limits="none", **kw)
    return JobWorker(backend, cfg)


def test_one_cleaner_at_a_time_and_a_successor(store: tuple[Backend, str],
                                               tmp_path: Path) -> None:
    backend, prefix = store
    tag = uuid.uuid4().hex[:6]
    workers = [_worker(backend, prefix, tmp_path, f"c{i}x{tag}", cleanup_interval=0.5)
               for i in range(3)]
    try:
        for w in workers:
            w.start()
        cleaners = wait_for(lambda: [w for w in workers if w._is_cleaner()] or None, 10,
                            "a cleaner")
        assert len(cleaners) == 1
        first = cleaners[0]
        first.stop()  # releases the lock
        rest = [w for w in workers if w is not first]
        second = wait_for(lambda: [w for w in rest if w._is_cleaner()] or None, 10,
                          "a new cleaner")
        assert len(second) == 1
    finally:
        for w in workers:
            w.stop()
        remove_cgroups(w.node for w in workers)


def test_finished_jobs_are_removed_after_retention_and_history_compacted(
        store: tuple[Backend, str], tmp_path: Path) -> None:
    backend, prefix = store
    jobs = JobClient(Store(backend, Keyspace(prefix)))
    start = backend.current_revision()
    worker = _worker(backend, prefix, tmp_path, f"r0x{uuid.uuid4().hex[:6]}",
                     retention=1.0, cleanup_interval=0.5)
    try:
        worker.start()
        ids = [jobs.submit("echo", [str(i)]).id for i in range(5)]
        for job_id in ids:
            assert jobs.wait(job_id, timeout=20).status == "complete"
        log_file = worker.logs_dir / f"{ids[0]}.log"
        assert log_file.read_bytes() == b"0\n"
        wait_for(lambda: not jobs.list(), 15, "finished jobs to be removed")
        assert backend.list(jobs.keys.jobs_finished("complete")).items == []
        wait_for(lambda: not log_file.exists(), 10, "the node's output file to go")

        def compacted() -> bool:
            try:
                with backend.watch(jobs.keys.jobs, start + 1) as w:
                    w.next(timeout=0.2)
            except Compacted:
                return True
            return False
        wait_for(compacted, 15, "the history to be compacted")
        assert worker.stats.purged == 5
    finally:
        worker.stop()
        remove_cgroups([worker.node])
