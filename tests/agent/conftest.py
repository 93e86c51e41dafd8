"""Fixtures for the agent tests: a store, a unique host, ``skedlib-agent`` subprocesses.

Every test gets its own host name, so the processes its tasks start can be found (and
killed in teardown) by their ``SKED_HOST`` environment variable, even when other test
runs share the machine. ``store`` is parametrized by the tests that ask for it through
``backend_kind``: sqlite always, etcd when the harness finds an etcd binary and the
``skedlib-etcd`` plugin (each etcd test uses a key prefix of its own on a shared server).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psutil
import pytest

from skedlib.codecs import decode, encode
from skedlib.keys import Keyspace
from skedlib.models import Check, Cluster, Container, Host, Task, TaskDefinition, TaskHealth
from skedlib.plugins import open_backend
from skedlib.store.base import Backend, Delete, Put
from tests.harness import etcd as harness
from tests.harness.cgroups import remove_task_cgroups
from tests.harness.common import eventually

etcd_single = harness.etcd_single

PY = sys.executable
AGENT = shutil.which("skedlib-agent", path=str(Path(sys.executable).parent))
T = TypeVar("T")


wait_for = eventually


def make_task(instance: int = 0, *, service: str = "web", containers: list[Container],
              provide_port: bool = True, port: int = 0, max_attempts: int = 0,
              memory: int = 0, grace: float = 2.0) -> Task:
    """A task of cluster ``default`` with the given containers."""
    td = TaskDefinition(name=service, version=1, provide_port=provide_port, port=port,
                        containers=containers, grace_period=int(grace * 1e9),
                        max_attempts=max_attempts, memory=memory)
    return Task(cluster=Cluster(name="default"), task_definition=td, service=service,
                instance=instance)


def http_server(*, check: str | None = "http://127.0.0.1:$PROVIDED_PORT/",
                interval: str = "300ms", name: str = "web") -> Container:
    """A process container serving HTTP on $PROVIDED_PORT, with an http check."""
    checks = [Check(http=check, interval=interval, timeout="250ms")] if check else []
    return Container(name=name, type="process",
                     executor={"argv": [PY, "-m", "http.server", "$PROVIDED_PORT",
                                        "--bind", "127.0.0.1"]},
                     checks=checks)


def sleeper(name: str = "main", seconds: int = 600) -> Container:
    """A process container that sleeps (healthy while it runs: no checks)."""
    return Container(name=name, type="process", executor={"argv": ["sleep", str(seconds)]})


class AgentEnv:
    """A store, a host and the agents, tasks and processes of one test."""

    def __init__(self, tmp_path: Path, url: str, prefix: str) -> None:
        self.tmp = tmp_path
        self.url = url
        self.prefix = prefix
        self.keys = Keyspace(prefix)
        self.host = f"h{uuid.uuid4().hex[:10]}"
        self.backend: Backend = open_backend(url)
        self.state_dir = tmp_path / "state"
        self.agents: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    # -- agents ---------------------------------------------------------------------------
    def start_agent(self, *extra: str, lease_ttl: float = 2.0, host: str | None = None,
                    wait: bool = True) -> subprocess.Popen[bytes]:
        """Start ``skedlib-agent`` for this host (or ``host``); waits until its host record
        appears. Another host gets a state directory of its own, as on a machine of its
        own (two agents cannot share one)."""
        state_dir = self.state_dir if host in (None, self.host) else \
            self.tmp / f"state-{host}"
        return self.start_agent_in(state_dir, *extra, lease_ttl=lease_ttl, host=host,
                                   wait=wait)

    def start_agent_in(self, state_dir: Path, *extra: str, lease_ttl: float = 2.0,
                       host: str | None = None, wait: bool = True
                       ) -> subprocess.Popen[bytes]:
        """:meth:`start_agent` with the state directory ``state_dir``."""
        assert AGENT is not None, "skedlib-agent is not installed next to this Python"
        log = self.tmp / f"agent-{len(self.logs)}.log"
        self.logs.append(log)
        argv = [AGENT, "--backend", self.url, "--prefix", self.prefix,
                "--host", host or self.host, "--state-dir", str(state_dir),
                "--lease-ttl", str(lease_ttl), "--check-failures", "2",
                "--executor-opt", "bash.detach_window=0.5", "--executors", "bash,process",
                *extra]
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.agents.append(proc)
        if wait:
            wait_for(lambda: proc.poll() is not None or self.host_record(host) is not None,
                     15, "the agent's host record")
            assert proc.poll() is None, f"the agent exited:\n{self.log_text()}"
        return proc

    def log_text(self) -> str:
        """Every agent log of this test."""
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def kill9(self, proc: subprocess.Popen[bytes]) -> None:
        """``kill -9`` the agent (its tasks are in their own sessions and survive)."""
        proc.kill()
        proc.wait(10)

    def terminate(self, proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
        """SIGTERM the agent and wait for it to exit."""
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout)

    # -- the store ------------------------------------------------------------------------
    def put_task(self, task: Task, host: str | None = None) -> None:
        """Issue ``task`` to this host (both keys), by hand, as a user would."""
        task.host = host or self.host
        value = encode(task)
        # one transaction, as a scheduler writes them: an agent that patches the task
        # (a rejection) between two puts would have its patch overwritten by the second
        self.backend.txn([], [Put(self.keys.host_task(task.host, task.id), value),
                              Put(self.keys.task(task.id), value)])

    def put_raw(self, task_id: str, value: bytes) -> None:
        """Write arbitrary bytes as an issued task."""
        self.backend.txn([], [Put(self.keys.host_task(self.host, task_id), value),
                              Put(self.keys.task(task_id), value)])

    def delete_task(self, task_id: str) -> None:
        """Remove the task from the issued state (both keys)."""
        self.backend.txn([], [Delete(self.keys.host_task(self.host, task_id)),
                              Delete(self.keys.task(task_id))])

    def run_sleeper(self, instance: int = 0) -> tuple[Task, int]:
        """Issue a sleeping task (no port) to this host and wait until it is healthy;
        the task and its process's pid."""
        task = make_task(instance, containers=[sleeper()], provide_port=False)
        self.put_task(task)
        self.wait_healthy(task.id)
        return task, self.pid(task.id)

    def task(self, task_id: str, *, by_host: bool = False) -> Task | None:
        """The stored task (``state/tasks`` or the host's index)."""
        key = self.keys.host_task(self.host, task_id) if by_host else self.keys.task(task_id)
        kv = self.backend.get(key)
        return decode(kv.value, Task) if kv else None

    def health(self, task_id: str) -> TaskHealth | None:
        """The task's health record."""
        kv = self.backend.get(self.keys.task_health(task_id))
        return decode(kv.value, TaskHealth) if kv else None

    def host_record(self, host: str | None = None) -> Host | None:
        """The live host record."""
        kv = self.backend.get(self.keys.agent(host or self.host))
        return decode(kv.value, Host) if kv else None

    def _wait_task(self, task_id: str, state: str, cond: Callable[[], T | None],
                   timeout: float) -> T:
        """Wait until ``cond`` returns the record that shows the task in ``state``; on a
        timeout, fail with the task's health record and the agents' log."""
        try:
            result: T = wait_for(cond, timeout, f"{task_id} to be {state}")
        except AssertionError:
            raise AssertionError(f"{task_id} not {state}: {self.health(task_id)}\n"
                                 f"{self.log_text()}") from None
        return result

    def wait_healthy(self, task_id: str, timeout: float = 15.0) -> TaskHealth:
        """Wait until the task's health record says healthy."""
        def healthy() -> TaskHealth | None:
            h = self.health(task_id)
            return h if h is not None and h.healthy else None
        return self._wait_task(task_id, "healthy", healthy, timeout)

    def wait_rejected(self, task_id: str, timeout: float = 15.0) -> Task:
        """Wait until ``state/tasks/<id>`` says rejected."""
        def rejected() -> Task | None:
            t = self.task(task_id)
            return t if t is not None and t.rejected else None
        return self._wait_task(task_id, "rejected", rejected, timeout)

    # -- task processes -------------------------------------------------------------------
    def processes(self, task_id: str | None = None) -> list[psutil.Process]:
        """Live processes started for this host (for one task, when given)."""
        found = []
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                env = p.environ()
                if env.get("SKED_HOST") != self.host:
                    continue
                if task_id is not None and env.get("SKED_TASK_ID") != task_id:
                    continue
                if p.status() == psutil.STATUS_ZOMBIE:
                    continue
                found.append(p)
        return found

    def pid(self, task_id: str) -> int:
        """The pid of the task's single process (waits for it)."""
        procs = wait_for(lambda: self.processes(task_id), 10, f"a process of {task_id}")
        assert len(procs) == 1, f"expected one process for {task_id}, found {procs}"
        pid: int = procs[0].pid
        return pid

    def cleanup(self) -> None:
        """Kill the agents, then every process group started for this host."""
        for proc in self.agents:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for p in self.processes():
            with contextlib.suppress(OSError, psutil.Error):
                os.killpg(os.getpgid(p.pid), signal.SIGKILL)
        wait_for(lambda: not self.processes(), 10, "task processes to be gone")
        remove_task_cgroups([self.host])
        self.backend.close()


@pytest.fixture(params=["sqlite", pytest.param("etcd", marks=pytest.mark.integration)])
def backend_kind(request: pytest.FixtureRequest) -> str:
    """The store the key agent tests run on."""
    kind: str = request.param
    return kind


@pytest.fixture
def env(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[AgentEnv]:
    """An :class:`AgentEnv` on sqlite, or on etcd when the test asks for ``backend_kind``."""
    kind = request.getfixturevalue("backend_kind") if "backend_kind" in \
        request.fixturenames else "sqlite"
    prefix = f"t{uuid.uuid4().hex[:8]}/"
    if kind == "etcd":
        cluster: harness.EtcdCluster = request.getfixturevalue("etcd_single")
        url = cluster.url()
    else:
        url = f"sqlite://{tmp_path}/store.db"
    e = AgentEnv(tmp_path, url, prefix)
    try:
        yield e
    finally:
        e.cleanup()
