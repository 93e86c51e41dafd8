"""Benchmark the double-run window after a late agent restart; prints one JSON object.

Runs a real ``skedlib-agent`` against a throwaway SQLite store with ``--tasks`` process
tasks (``sleep``, or tiny HTTP servers with ``--kind http``), then:

1. ``kill -9`` the agent (its tasks run on: they are in their own sessions);
2. waits until its lease expires (its host record is gone);
3. moves every task away, as a scheduler would: ``state/tasks/<id>`` is reissued to
   another host and the host key ``state/hosts/<host>/<id>`` is deleted;
4. restarts the agent and measures the time until no process of those (stale) tasks
   remains on this host.

``stale_gone_s`` is measured from the restart (process spawned), ``after_ready_s`` from
the agent's host record appearing again (it has adopted, or is stopping, what it found).
Usage::

    .venv/bin/python bench/stale.py [--tasks 200] [--kind sleep|http] [--workers 16]
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
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.agent import AGENT, HealthLog, _task, _task_pids, kill_tasks  # noqa: E402
from skedlib.codecs import encode  # noqa: E402
from skedlib.keys import Keyspace  # noqa: E402
from skedlib.plugins import open_backend  # noqa: E402
from skedlib.store.base import Delete, Put  # noqa: E402


def _wait(cond: Any, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)


def run(tasks: int, kind: str, workers: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="sked-bench-stale-"))
    url = f"sqlite://{tmp}/store.db"
    host = f"bench{uuid.uuid4().hex[:6]}"
    backend = open_backend(url)
    keys = Keyspace()
    log = tmp / "agent.log"
    argv = [AGENT, "--backend", url, "--host", host, "--state-dir", str(tmp / "state"),
            "--executors", "process", "--lease-ttl", "2", "--workers", str(workers),
            "--log-level", "WARNING"]
    procs: list[subprocess.Popen[bytes]] = []

    def spawn() -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        procs.append(p)
        return p

    health = HealthLog(backend, keys)
    try:
        agent = spawn()
        _wait(lambda: backend.get(keys.agent(host)) is not None, 30, "the agent", log)
        ids = []
        for i in range(tasks):
            t = _task(i, kind, host)
            value = encode(t)
            backend.txn([], [Put(keys.host_task(host, t.id), value),
                             Put(keys.task(t.id), value)])
            ids.append(t.id)
        if not health.wait(lambda: len(health.healthy_at) >= tasks, 180):
            raise RuntimeError(f"only {len(health.healthy_at)} of {tasks} became healthy:\n"
                               f"{log.read_text()[-2000:]}")
        _wait(lambda: len(_task_pids(host)) >= tasks, 60, "every task process", log)

        agent.kill()
        agent.wait(10)
        _wait(lambda: backend.get(keys.agent(host)) is None, 30, "the lease to expire", log)
        for i, task_id in enumerate(ids):  # the scheduler moved them away
            t = _task(i, kind, "elsewhere")
            backend.txn([], [Delete(keys.host_task(host, task_id)),
                             Put(keys.task(task_id), encode(t))])
        assert len(_task_pids(host)) >= tasks, "the task processes died with the agent"

        restarted = time.monotonic()
        spawn()
        ready = 0.0
        while True:
            if not ready and backend.get(keys.agent(host)) is not None:
                ready = time.monotonic()
            if not _task_pids(host):
                gone = time.monotonic()
                break
            if time.monotonic() - restarted > 300:
                raise RuntimeError(f"stale tasks still run after 300 s:\n"
                                   f"{log.read_text()[-3000:]}")
            time.sleep(0.02)
        return {
            "tasks": tasks,
            "kind": kind,
            "workers": workers,
            "stale_gone_s": round(gone - restarted, 3),
            "after_ready_s": round(gone - ready, 3) if ready else None,
            "stale_stopped_per_s": round(tasks / max(gone - restarted, 1e-6), 1),
            "target": {"stale_gone_s": "<= 3 for 200 tasks"},
        }
    finally:
        health.stop.set()
        health.thread.join(5)  # its watch must end before the store closes
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(OSError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        kill_tasks(host)  # never leave a task behind
        backend.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--kind", choices=("sleep", "http"), default="sleep")
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args()
    print(json.dumps(run(args.tasks, args.kind, args.workers), indent=2))


if __name__ == "__main__":
    main()
