"""Three ``skedlib-scheduler`` processes against one etcd cluster place 1,000 tasks on 50
hosts while one of them is killed with SIGKILL and restarted, again and again.

At the end: every task placed, each task id in exactly one host index entry (the one its
task record names), and no host overcommitted — not even by two daemons planning
different services onto the same host at the same moment (the per-host guard of
``commit_plan``). No agents: the hosts are records written directly.
"""

from __future__ import annotations

import functools
import json
import random
import time
from collections import Counter, defaultdict

import pytest
import yaml

from skedlib.codecs import decode, encode
from skedlib.models import Host, Resources, ServiceStatus, Task
from tests.scheduler.conftest import Loop, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]

HOSTS = 50
HOST_MEMORY = 1000
# (service, scheduler, tasks, memory per task): 1,000 tasks, 37,500 of 50,000 MiB
SERVICES = [
    (f"s{i}", "spread" if i % 3 == 2 else "binpack", 100, memory)
    for i, memory in enumerate([20, 40, 50, 40, 50, 20, 40, 50, 25, 40])
]


def _manifest(desired: int | None = None) -> str:
    return yaml.safe_dump({
        "clusters": [{"name": "default", "services": [s for s, *_ in SERVICES]}],
        "services": [{"name": s, "task_name": s, "task_version": 1,
                      "desired": n if desired is None else min(n, desired),
                      "scheduler": sched} for s, sched, n, _ in SERVICES],
        "task_definitions": [
            {"name": s, "version": 1, "memory": mem, "cpu_units": 10,
             "containers": [{"name": "m", "type": "process",
                             "executor": {"argv": ["sleep", "600"]}}]}
            for s, _, _, mem in SERVICES],
    })


def _check(loop: Loop) -> dict[str, float]:
    """The invariants; returns figures."""
    tasks = [decode(kv.value, Task) for kv in loop.backend.list(loop.keys.tasks).items]
    index: Counter[str] = Counter()
    where: dict[str, str] = {}
    for kv in loop.backend.list(loop.keys.all_host_tasks).items:
        host, tid = kv.key[len(loop.keys.all_host_tasks):].split("/")
        index[tid] += 1
        where[tid] = host
    duplicated = [tid for tid, n in index.items() if n != 1]
    assert duplicated == [], f"task ids in more than one host index: {duplicated[:10]}"
    assert len(tasks) == sum(n for *_, n, _ in SERVICES)
    assert {t.id for t in tasks} == set(index), "task records and host index differ"
    wrong = [t.id for t in tasks if where[t.id] != t.host]
    assert wrong == [], f"index entries under the wrong host: {wrong[:10]}"
    used: dict[str, Resources] = defaultdict(Resources)
    for t in tasks:
        assert t.host and not t.rejected
        used[t.host] = used[t.host] + Resources(memory=t.task_definition.total_memory(),
                                                cpu_units=t.task_definition.total_cpu_units())
    over = {h: r for h, r in used.items() if r.memory > HOST_MEMORY or r.cpu_units > 1000}
    assert over == {}, f"overcommitted hosts: {over}"
    return {"tasks": len(tasks), "hosts_used": len(used),
            "hosts_full": sum(1 for r in used.values() if r.memory == HOST_MEMORY),
            "fullest_host_memory": max(r.memory for r in used.values())}


def test_three_daemons_1000_tasks_with_kills(etcd_loop: Loop) -> None:
    loop = etcd_loop
    for i in range(HOSTS):
        name = f"f{i:02d}x{loop.tag}"
        loop.backend.put(loop.keys.agent(name), encode(Host(
            name=name, total=Resources(memory=HOST_MEMORY, cpu_units=1000))))
    args = ("--lock-ttl", "2", "--resync", "5", "--workers", "4")
    daemons = {n: loop.start_scheduler(f"scheduler-{n}", *args) for n in "abc"}
    started = time.monotonic()
    wait_for(lambda: all("starting:" in loop.log_text(f"scheduler-{n}") for n in daemons),
             20, "the daemons to start")
    loop.apply(_manifest(desired=40))
    rng = random.Random(1)
    kills = 0
    restarts: Counter[str] = Counter()

    def placed(desired: int | None) -> bool:
        want = sum(n if desired is None else min(n, desired) for *_, n, _ in SERVICES)
        return len(loop.backend.list(loop.keys.tasks).items) == want

    for desired in (60, 80, 100, 70, 90, None):
        # more work (or less: scaling down stops tasks); then kill -9 a daemon while it
        # holds a service's lock (mid-plan or mid-commit), start it again, and let the
        # three finish the wave (the dead one's locks expire after --lock-ttl)
        loop.apply(_manifest(desired))

        def busy() -> str | None:
            pids = {str(p.pid): n for n, p in daemons.items()}
            holders = [kv.value.decode().split(":")[1]
                       for kv in loop.backend.list(loop.keys.locks).items]
            busy = sorted({pids[h] for h in holders if h in pids})
            return rng.choice(busy) if busy else None

        name = wait_for(busy, 20, "a daemon holding a lock", every=0.005)
        daemons[name].kill()
        daemons[name].wait(10)
        kills += 1
        restarts[name] += 1
        daemons[name] = loop.start_scheduler(f"scheduler-{name}-{restarts[name]}", *args)
        wait_for(functools.partial(placed, desired), 60, f"the wave to {desired}", every=0.1)

    def converged() -> bool:
        statuses = [decode(kv.value, ServiceStatus)
                    for kv in loop.backend.list(loop.keys.service_statuses).items]
        return placed(None) and len(statuses) == len(SERVICES) and all(
            s.placed == s.desired == 100 and s.unschedulable == 0 for s in statuses)

    wait_for(converged, 150, "1,000 tasks placed", every=0.5)
    took = time.monotonic() - started
    figures: dict[str, float] = _check(loop)
    logs = loop.log_text()
    figures.update(seconds=round(took, 1), kills=kills,
                   conflicts=logs.count("write conflict(s)"),
                   placements_logged=logs.count(" INFO placed "),
                   stops_logged=logs.count(" INFO stopped "),
                   plan_refusals=logs.count("plan refused"))
    print("three daemons:", json.dumps(figures))
    assert all(p.poll() is None for p in daemons.values()), loop.log_text()
