"""Fixtures for the job tests: a store, ``skedlib-agent --jobs-only`` worker processes,
and their cleanup (workers and every job process they started, found by ``SKED_NODE``)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from skedlib.jobs.client import JobClient
from skedlib.jobs.models import Job
from skedlib.keys import Keyspace
from skedlib.plugins import open_backend
from skedlib.runtime import Store
from tests.harness import etcd as harness
from tests.harness.common import eventually

etcd_cluster = harness.etcd_cluster

BIN = Path(sys.executable).parent
AGENT = shutil.which("skedlib-agent", path=str(BIN))


def wait_for(cond: Callable[[], Any], timeout: float = 20.0, what: str = "condition",
             every: float = 0.05) -> Any:
    """Poll ``cond`` until it returns something truthy; fail after ``timeout`` seconds."""
    return eventually(cond, timeout, what, every)


class JobLoop:
    """A store and the job workers of one test, as real processes."""

    def __init__(self, tmp_path: Path, url: str, prefix: str) -> None:
        self.tmp = tmp_path
        self.url = url
        self.prefix = prefix
        self.keys = Keyspace(prefix)
        self.store = Store(open_backend(url), self.keys)
        self.backend = self.store.backend
        self.jobs = JobClient(self.store)
        self.tag = uuid.uuid4().hex[:6]
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def node(self, n: int) -> str:
        """The name of this test's ``n``-th node."""
        return f"w{n}x{self.tag}"

    def start_worker(self, n: int, *extra: str, slots: int = 2, memory: int = 4096,
                     wait: bool = True) -> subprocess.Popen[bytes]:
        """``skedlib-agent --jobs-only`` as node ``n``; waits for its node record."""
        assert AGENT is not None, "skedlib-agent is not installed next to this Python"
        node = self.node(n)
        log = self.tmp / f"worker-{node}.log"
        self.logs[node] = log
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [AGENT, "--jobs-only", "--backend", self.url, "--prefix", self.prefix,
                 "--host", node, "--address", "127.0.0.1", "--state-dir",
                 str(self.tmp / node), "--lease-ttl", "2", "--job-slots", str(slots),
                 "--job-memory", str(memory), "--job-cpu-units", "4096",
                 "--job-grace-period", "2", *extra],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        self.workers[node] = proc
        if wait:
            wait_for(lambda: proc.poll() is not None
                     or self.backend.get(self.jobs.keys.job_node(node)), 20,
                     f"the node record of {node}")
            assert proc.poll() is None, f"worker {node} exited:\n{self.log_text()}"
        return proc

    def kill_worker(self, node: str, sig: int = signal.SIGKILL) -> None:
        """Signal a worker (its process group: the worker only, jobs have their own)."""
        proc = self.workers[node]
        os.kill(proc.pid, sig)
        proc.wait(20)

    def log_text(self) -> str:
        """Every worker's log."""
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}"
                         for p in self.logs.values() if p.exists())

    def wait_finished(self, ids: list[str], timeout: float = 60.0) -> list[Job]:
        """Wait until every job in ``ids`` has ended; returns them."""
        def done() -> list[Job] | None:
            jobs = {j.id: j for j in self.jobs.list()}
            got = [jobs[i] for i in ids if i in jobs]
            return got if len(got) == len(ids) and all(j.finished for j in got) else None
        try:
            jobs: list[Job] = wait_for(done, timeout, f"{len(ids)} jobs to end", every=0.2)
        except AssertionError:
            states = {j.id: (j.status, j.node, j.reason) for j in self.jobs.list()}
            raise AssertionError(f"{states}\n{self.log_text()}") from None
        return jobs

    def job_processes(self) -> list[psutil.Process]:
        """Live processes that workers of this test started."""
        nodes = set(self.workers)
        found = []
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if p.environ().get("SKED_NODE") in nodes and \
                        p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
        return found

    def cleanup(self) -> None:
        """Kill every worker of this test, then any job process left."""
        for proc in self.workers.values():
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for p in self.job_processes():
            with contextlib.suppress(OSError, psutil.Error):
                p.kill()
        wait_for(lambda: not self.job_processes(), 10, "job processes to be gone")
        remove_cgroups(self.workers)
        self.backend.close()


def remove_cgroups(nodes: Iterable[str]) -> None:
    """Remove the job cgroups the workers of ``nodes`` left (a worker killed with -9 does
    not remove its own)."""
    for node in nodes:
        for parent in glob.glob(f"/sys/fs/cgroup/**/skedlib-jobs-{node}", recursive=True):
            for child in glob.glob(f"{parent}/job-*"):
                with contextlib.suppress(OSError):
                    os.rmdir(child)
            with contextlib.suppress(OSError):
                os.rmdir(parent)


@pytest.fixture(params=["sqlite", "etcd"])
def job_loop(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobLoop]:
    """A :class:`JobLoop` on a fresh SQLite store, and on the shared 3-member etcd."""
    if request.param == "sqlite":
        loop = JobLoop(tmp_path, f"sqlite://{tmp_path}/store.db", "sked/")
    else:
        cluster = request.getfixturevalue("etcd_cluster")
        loop = JobLoop(tmp_path, cluster.url(), f"t{uuid.uuid4().hex[:8]}/")
    try:
        yield loop
    finally:
        loop.cleanup()


@pytest.fixture
def sqlite_jobs(tmp_path: Path) -> Iterator[JobLoop]:
    """A :class:`JobLoop` on a fresh SQLite store only."""
    loop = JobLoop(tmp_path, f"sqlite://{tmp_path}/store.db", "sked/")
    try:
        yield loop
    finally:
        loop.cleanup()
