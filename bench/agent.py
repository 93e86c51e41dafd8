"""Benchmark the host agent; prints one JSON object.

Runs a real ``skedlib-agent`` against a throwaway SQLite store and measures:

- ``start_latency_s``: from a task's key written (both keys, one transaction) to its
  health record saying healthy, p50/p99 over ``--tasks`` tasks written at once;
- ``tasks_started_per_s``: tasks / (last healthy - first written);
- ``restart_latency_s``: from ``kill -9`` of a task's process to its health record saying
  healthy again with one more attempt (includes the 0.2 s first backoff), over
  ``--kills`` tasks, one at a time;
- ``agent_rss_mb``: the agent process's resident memory with every task running (tasks
  are separate processes); ``import_baseline_rss_mb`` is a process that only imports the
  agent and loads the installed plugins, so ``agent_own_rss_mb`` (the difference) is what
  running the tasks costs.

Tasks are ``sleep`` commands (process executor, no checks: healthy while running), which
measures the agent rather than the tasks' start-up; ``--kind http`` runs tiny Python HTTP
servers with an http check instead. Usage::

    .venv/bin/python bench/agent.py [--tasks 100] [--kills 10] [--kind sleep|http]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from skedlib.codecs import decode, encode
from skedlib.keys import Keyspace
from skedlib.models import Check, Cluster, Container, Task, TaskDefinition, TaskHealth
from skedlib.plugins import open_backend
from skedlib.store.base import Backend, Put

AGENT = shutil.which("skedlib-agent", path=str(Path(sys.executable).parent)) or "skedlib-agent"


def _task(i: int, kind: str, host: str) -> Task:
    if kind == "http":
        container = Container(name="web", type="process", executor={
            "argv": [sys.executable, "-m", "http.server", "$PROVIDED_PORT", "--bind",
                     "127.0.0.1"]},
            checks=[Check(http="http://127.0.0.1:$PROVIDED_PORT/", interval="250ms",
                          timeout="200ms")])
    else:
        container = Container(name="main", type="process",
                              executor={"argv": ["sleep", "3600"]})
    td = TaskDefinition(name="bench", version=1, provide_port=kind == "http",
                        containers=[container], grace_period=2_000_000_000)
    return Task(cluster=Cluster(name="bench"), task_definition=td, service="bench",
                instance=i, host=host)


class HealthLog:
    """Follows ``state/health/`` and remembers, per task, when it (re)became healthy."""

    def __init__(self, backend: Backend, keys: Keyspace) -> None:
        self.backend = backend
        self.prefix = keys.health
        self.healthy_at: dict[str, list[tuple[float, int]]] = {}
        self.cond = threading.Condition()
        self.stop = threading.Event()
        start = backend.list(self.prefix).revision + 1
        self.thread = threading.Thread(target=self._run, args=(start,), daemon=True)
        self.thread.start()

    def _run(self, start: int) -> None:
        with self.backend.watch(self.prefix, start) as watch:
            while not self.stop.is_set():
                events = watch.next(timeout=0.2)
                now = time.time()
                for ev in events:
                    if ev.kind != "put":
                        continue
                    h = decode(ev.value, TaskHealth)
                    if h.healthy:
                        with self.cond:
                            seen = self.healthy_at.setdefault(h.task_id, [])
                            if not seen or seen[-1][1] != h.attempts:
                                seen.append((now, h.attempts))
                            self.cond.notify_all()

    def wait(self, pred: Any, timeout: float) -> bool:
        with self.cond:
            return bool(self.cond.wait_for(pred, timeout))


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 4)


def _task_pids(host: str) -> dict[str, int]:
    pids: dict[str, int] = {}
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            env = p.environ()
            if env.get("SKED_HOST") == host and p.status() != psutil.STATUS_ZOMBIE:
                pids[env["SKED_TASK_ID"]] = p.pid
    return pids


def kill_tasks(host: str) -> None:
    """kill -9 the process group of every task process of ``host``."""
    for pid in _task_pids(host).values():
        with contextlib.suppress(OSError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)


def _import_baseline() -> float:
    """RSS (MB) of a process that imports the agent and loads every installed plugin."""
    code = ("import psutil; from skedlib.plugins import get_registry; get_registry(); "
            "import skedlib.cli.agent, skedlib.executors.process; "
            "print(psutil.Process().memory_info().rss)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return int(out.split()[-1]) / 1e6


def run(tasks: int, kills: int, kind: str, workers: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="sked-bench-agent-"))
    url = f"sqlite://{tmp}/store.db"
    host = f"bench{uuid.uuid4().hex[:6]}"
    backend = open_backend(url)
    keys = Keyspace()
    log = tmp / "agent.log"
    with log.open("wb") as out:
        agent = subprocess.Popen(
            [AGENT, "--backend", url, "--host", host, "--state-dir", str(tmp / "state"),
             "--executors", "process", "--lease-ttl", "5", "--workers", str(workers),
             "--stop-tasks-on-exit", "--log-level", "WARNING"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    health = HealthLog(backend, keys)
    try:
        deadline = time.monotonic() + 30
        while backend.get(keys.agent(host)) is None:
            if agent.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the agent did not start:\n{log.read_text()}")
            time.sleep(0.05)

        # -- start latency ------------------------------------------------------------
        written: dict[str, float] = {}
        for i in range(tasks):
            t = _task(i, kind, host)
            value = encode(t)
            backend.txn([], [Put(keys.host_task(host, t.id), value),
                             Put(keys.task(t.id), value)])
            written[t.id] = time.time()
        if not health.wait(lambda: len(health.healthy_at) >= tasks, 120):
            raise RuntimeError(f"only {len(health.healthy_at)} of {tasks} became healthy:\n"
                               f"{log.read_text()[-2000:]}")
        latencies = [health.healthy_at[i][0][0] - written[i] for i in written]
        span = max(health.healthy_at[i][0][0] for i in written) - min(written.values())

        # -- memory -------------------------------------------------------------------
        time.sleep(1.0)  # let start-up garbage be collected
        rss = psutil.Process(agent.pid).memory_info().rss / 1e6
        baseline = _import_baseline()

        # -- restart latency ----------------------------------------------------------
        pids = _task_pids(host)
        restarts: list[float] = []
        for task_id in sorted(pids)[:kills]:
            before = len(health.healthy_at[task_id])
            killed = time.time()
            os.kill(pids[task_id], signal.SIGKILL)
            if not health.wait(lambda tid=task_id, n=before: len(health.healthy_at[tid]) > n,
                               30):
                raise RuntimeError(f"{task_id} was not restarted:\n{log.read_text()[-2000:]}")
            restarts.append(health.healthy_at[task_id][-1][0] - killed)
        return {
            "tasks": tasks,
            "kind": kind,
            "workers": workers,
            "start_latency_s": {"p50": _pct(latencies, 0.5), "p99": _pct(latencies, 0.99),
                                "max": round(max(latencies), 4)},
            "tasks_started_per_s": round(tasks / span, 1),
            "restart_latency_s": {"p50": _pct(restarts, 0.5),
                                  "max": round(max(restarts), 4), "n": len(restarts)}
            if restarts else None,
            "agent_rss_mb": round(rss, 1),
            "import_baseline_rss_mb": round(baseline, 1),
            "agent_own_rss_mb": round(rss - baseline, 1),
            "targets": {"restart_latency_s": "< 1", "agent_rss_mb": "< 60"},
        }
    finally:
        health.stop.set()
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(60)
            except subprocess.TimeoutExpired:
                agent.kill()
        kill_tasks(host)  # never leave a task behind
        backend.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--kind", choices=("sleep", "http"), default="sleep")
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args()
    print(json.dumps(run(args.tasks, args.kills, args.kind, args.workers), indent=2))


if __name__ == "__main__":
    main()
