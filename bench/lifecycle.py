"""Lifecycle timings with real agents and task processes, printed as JSON.

    python bench/lifecycle.py [--tasks N] [--backend sqlite|etcd]

On one machine: 4 ``skedlib-agent`` processes (lease TTL 2 s), one
``skedlib-scheduler``, and a service of N tasks (default 100; ``spread``, so each agent
runs a quarter), each a small HTTP server (busybox ``httpd`` when installed, else
Python's ``http.server``) with an HTTP check every 300 ms.

- ``rollout``: from applying version 2 until the rollout record says ``succeeded`` and
  every task runs version 2 (``max_parallel`` 20, ``min`` N-10, ``max`` N+10,
  ``min_healthy_time`` 1 s);
- ``host_failure``: from killing one agent and its tasks (kill -9: the host is gone)
  until every task is healthy again on the other hosts. Target: lease TTL + 3 s.
  (For scale: Kubernetes by default waits about 5 minutes before evicting the pods of
  an unreachable node.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from skedlib.codecs import decode  # noqa: E402
from skedlib.models import RolloutHistory  # noqa: E402
from tests.scheduler.conftest import Loop, wait_for, web_manifest  # noqa: E402

LEASE_TTL = 2.0


def manifest(version: int, tasks: int) -> str:
    busybox = shutil.which("busybox")
    argv = f"[{busybox}, httpd, -f, -p, '127.0.0.1:$PROVIDED_PORT', -h, /var/empty]" \
        if busybox else None
    extra = (f"    min: {tasks - 10}\n    max: {tasks + 10}\n"
             "    update: {max_parallel: 20, min_healthy_time: 1s, deadline: 5m}")
    return web_manifest("web", tasks, memory=16, scheduler="spread", version=version,
                        extra=extra, argv=argv,
                        check="{tcp: '127.0.0.1:$PROVIDED_PORT', interval: 300ms, "
                              "timeout: 250ms}")


def run(loop: Loop, tasks: int) -> dict[str, Any]:
    Path("/var/empty").mkdir(exist_ok=True)
    agents = [loop.start_agent(i + 1, memory=16 * tasks) for i in range(4)]
    loop.start_scheduler("scheduler", "--workers", "2")
    t0 = time.monotonic()
    loop.apply(manifest(1, tasks))
    loop.wait_healthy("web", tasks, timeout=300)
    first = time.monotonic() - t0

    t0 = time.monotonic()
    loop.apply(manifest(2, tasks))

    def rolled() -> bool:
        kv = loop.backend.get(loop.keys.rollout("default", "web"))
        h = decode(kv.value, RolloutHistory) if kv else None
        return bool(h and h.current and h.current.state == "succeeded")

    wait_for(rolled, 600, "the rollout", every=0.05)
    rollout = time.monotonic() - t0
    done = loop.wait_healthy("web", tasks, timeout=120)
    assert {t.task_definition.version for t in done} == {2}

    victim_host = loop.hosts[0]
    lost = sum(1 for t in done if t.host == victim_host)
    t0 = time.monotonic()
    os.killpg(agents[0].pid, signal.SIGKILL)
    for p in loop.processes():
        with contextlib.suppress(Exception):
            if p.environ().get("SKED_HOST") == victim_host:
                p.kill()
    wait_for(lambda: (h := loop.healthy("web")) and len(h) == tasks and
             all(t.host != victim_host for t in h), 300, "recovery", every=0.05)
    recovery = time.monotonic() - t0
    return {
        "tasks": tasks, "agents": 4,
        "first_deploy_s": round(first, 2),
        "rollout": {"seconds": round(rollout, 2), "max_parallel": 20,
                    "min_healthy_time_s": 1.0, "min": tasks - 10, "max": tasks + 10},
        "host_failure": {"tasks_lost": lost, "seconds_to_all_healthy": round(recovery, 2),
                         "lease_ttl_s": LEASE_TTL, "target_s": LEASE_TTL + 3},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--backend", choices=["sqlite", "etcd"], default="sqlite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sked-bench-") as tmp, \
            contextlib.ExitStack() as stack:
        if args.backend == "etcd":
            from tests.harness.etcd import EtcdCluster
            cluster = stack.enter_context(EtcdCluster(3, name="benchlife").start())
            url, prefix = cluster.url(), f"b{uuid.uuid4().hex[:6]}/"
        else:
            url, prefix = f"sqlite://{tmp}/store.db", "sked/"
        loop = Loop(Path(tmp), url, prefix)
        try:
            out = run(loop, args.tasks)
        finally:
            loop.cleanup()
    json.dump({"bench": "lifecycle", "backend": args.backend, **out}, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
