"""Fixtures for the scheduler tests: a store, ``skedlib-agent`` and ``skedlib-scheduler``
processes, and their cleanup.

Every test gets a key prefix and host names of its own, so tests can share an etcd
server, and the task processes its agents start can be found (and killed in teardown) by
their ``SKED_HOST`` environment variable.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from skedlib.cli.main import main as sked_main
from skedlib.client import Client
from skedlib.codecs import decode, parse_manifest
from skedlib.keys import Keyspace
from skedlib.models import ServiceStatus, Task, TaskHealth
from skedlib.plugins import open_backend
from skedlib.runtime import Store
from tests.harness import etcd as harness
from tests.harness.cgroups import remove_task_cgroups
from tests.harness.common import eventually

etcd_cluster = harness.etcd_cluster

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
AGENT = shutil.which("skedlib-agent", path=str(BIN))
SCHEDULER = shutil.which("skedlib-scheduler", path=str(BIN))
PY = sys.executable


def wait_for(cond: Callable[[], Any], timeout: float = 15.0, what: str = "condition",
             every: float = 0.1) -> Any:
    """Poll ``cond`` until it returns something truthy; fail after ``timeout`` seconds."""
    return eventually(cond, timeout, what, every)


def web_manifest(service: str = "web", desired: int = 2, *, memory: int = 64,
                 scheduler: str = "binpack", version: int = 1, extra: str = "",
                 cluster_services: list[str] | None = None, argv: str | None = None,
                 check: str | None = None) -> str:
    """A manifest: cluster ``default`` running ``service``, by default a Python HTTP server
    on a provided port with a fast HTTP check. ``extra``: more lines of the service (4
    spaces in); ``argv``: the process's argv as a YAML flow list; ``check``: the check as a
    YAML flow mapping."""
    services = cluster_services or [service]
    argv = argv or f"[{PY}, -m, http.server, --bind, 127.0.0.1, $PROVIDED_PORT]"
    check = check or "{http: 'http://127.0.0.1:$PROVIDED_PORT/', interval: 300ms, " \
        "timeout: 250ms}"
    return f"""
clusters:
  - name: default
    services: [{", ".join(services)}]
services:
  - name: {service}
    task_name: {service}
    task_version: {version}
    desired: {desired}
    scheduler: {scheduler}
{extra}
task_definitions:
  - name: {service}
    version: {version}
    provide_port: true
    memory: {memory}
    cpu_units: 64
    grace_period: 2s
    containers:
      - name: web
        type: process
        executor:
          argv: {argv}
        checks: [{check}]
"""


class Loop:
    """A store, and the agents and schedulers of one test, as real processes."""

    def __init__(self, tmp_path: Path, url: str, prefix: str) -> None:
        self.tmp = tmp_path
        self.url = url
        self.prefix = prefix
        self.keys = Keyspace(prefix)
        self.backend = open_backend(url)
        self.client = Client(Store(self.backend, self.keys))
        self.tag = uuid.uuid4().hex[:6]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: dict[str, Path] = {}
        self.hosts: list[str] = []

    def host(self, n: int) -> str:
        """The name of this test's ``n``-th host."""
        return f"h{n}x{self.tag}"

    # -- processes ------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{name}.log"
        self.logs[name] = log
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start_agent(self, n: int, *extra: str, memory: int = 1024) -> subprocess.Popen[bytes]:
        """``skedlib-agent`` for host ``n``; waits for its host record."""
        assert AGENT is not None, "skedlib-agent is not installed next to this Python"
        host = self.host(n)
        self.hosts.append(host)
        proc = self._spawn(f"agent-{host}", [
            AGENT, "--backend", self.url, "--prefix", self.prefix, "--host", host,
            # five failed checks in a row (1.5 s at the manifests' 300 ms): a Python HTTP
            # server can take longer than two intervals to listen on a loaded machine
            "--state-dir", str(self.tmp / host), "--lease-ttl", "2", "--check-failures", "5",
            "--memory", str(memory), "--cpu-units", "4096", *extra])
        wait_for(lambda: proc.poll() is not None or self.backend.get(self.keys.agent(host)),
                 20, f"the host record of {host}")
        assert proc.poll() is None, f"agent {host} exited:\n{self.log_text()}"
        return proc

    def start_scheduler(self, name: str = "scheduler", *extra: str) -> subprocess.Popen[bytes]:
        """``skedlib-scheduler``."""
        assert SCHEDULER is not None, "skedlib-scheduler is not installed next to this Python"
        return self._spawn(name, [SCHEDULER, "--backend", self.url, "--prefix", self.prefix,
                                  *extra])

    def log_text(self, name: str | None = None) -> str:
        """One process's log, or all of them."""
        paths = [self.logs[name]] if name else list(self.logs.values())
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in paths
                         if p.exists())

    # -- the store ------------------------------------------------------------------------
    def apply(self, manifest: str) -> None:
        """``sked apply`` a manifest given as text."""
        self.client.apply(parse_manifest(manifest, "test.yml"))

    def sked(self, *argv: str) -> tuple[int, str]:
        """Run ``sked`` in-process against this store; (exit status, stdout + stderr)."""
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = sked_main(["--backend", self.url, "--prefix", self.prefix, *argv])
        return code, out.getvalue()

    def tasks(self, service: str | None = None) -> list[Task]:
        """Issued tasks (of one service)."""
        return [t for t in self.client.tasks() if service in (None, t.service)]

    def healthy(self, service: str) -> list[Task]:
        """Tasks of ``service`` that are placed, not rejected and reported healthy."""
        health = self.client.health()
        out = []
        for t in self.tasks(service):
            h: TaskHealth | None = health.get(t.id)
            if not t.rejected and h is not None and h.healthy and h.host == t.host:
                out.append(t)
        return out

    def status(self, service: str, cluster: str = "default") -> ServiceStatus | None:
        """The service's status record."""
        kv = self.backend.get(self.keys.service_status(cluster, service))
        return decode(kv.value, ServiceStatus) if kv else None

    def wait(self, cond: Callable[[], Any], timeout: float, what: str,
             service: str = "web") -> Any:
        """:func:`wait_for`, failing with what the store and the processes say about
        ``service`` (its tasks and their health, its status and rollout record, every
        log of the test)."""
        try:
            return wait_for(cond, timeout, what)
        except AssertionError as exc:
            try:
                seen = self.explain(service)
            except Exception as why:  # the store may be what failed: say so, and the logs
                seen = f"(the store could not be read: {why})\n{self.log_text()}"
            raise AssertionError(f"{exc}\n{seen}") from None

    def explain(self, service: str) -> str:
        """The tasks, health, status and rollout record of ``service``, and the logs."""
        health = self.client.health()
        rollout = self.backend.get(self.keys.rollout("default", service))
        return "\n".join([
            f"{service}: {self.sked('tasks')[1]}",
            *(f"health {t.id}: {health.get(t.id)}" for t in self.tasks(service)),
            f"status: {self.status(service)}",
            f"rollout: {rollout.value.decode() if rollout else None}",
            self.log_text()])

    def wait_healthy(self, service: str, n: int, timeout: float = 30.0) -> list[Task]:
        """Wait until exactly ``n`` tasks of ``service`` exist and all are healthy."""
        def done() -> list[Task] | None:
            ok = self.healthy(service)
            return ok if len(ok) == n and len(self.tasks(service)) == n else None
        result: list[Task] = self.wait(done, timeout, f"{n} healthy {service} task(s)",
                                       service)
        return result

    # -- task processes -------------------------------------------------------------------
    def processes(self, task_id: str | None = None) -> list[psutil.Process]:
        """Live processes the agents of this test started (for one task, when given)."""
        found = []
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                env = p.environ()
                if env.get("SKED_HOST") not in self.hosts:
                    continue
                if task_id is not None and env.get("SKED_TASK_ID") != task_id:
                    continue
                if p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
        return found

    def cleanup(self) -> None:
        """Kill every process of this test, then the task processes its agents started."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for p in self.processes():
            with contextlib.suppress(OSError, psutil.Error):
                os.killpg(os.getpgid(p.pid), signal.SIGKILL)
        wait_for(lambda: not self.processes(), 10, "task processes to be gone")
        remove_task_cgroups(self.hosts)
        self.backend.close()


@pytest.fixture
def sqlite_loop(tmp_path: Path) -> Iterator[Loop]:
    """A :class:`Loop` on a fresh SQLite store."""
    loop = Loop(tmp_path, f"sqlite://{tmp_path}/store.db", "sked/")
    try:
        yield loop
    finally:
        loop.cleanup()


@pytest.fixture
def etcd_loop(tmp_path: Path, etcd_cluster: Any) -> Iterator[Loop]:
    """A :class:`Loop` on the shared 3-member etcd cluster, under a prefix of its own."""
    loop = Loop(tmp_path, etcd_cluster.url(), f"t{uuid.uuid4().hex[:8]}/")
    try:
        yield loop
    finally:
        loop.cleanup()
