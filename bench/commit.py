"""Planned *and committed* placements per second on a real 3-member etcd cluster.

    python bench/commit.py [--quick]

Starts etcd (3 members on loopback, throwaway data), writes 5,000 host records, applies
20 services (10,000 tasks, CPU proportional to memory), and places them two ways, each
in a fresh keyspace (target ≥ 3,000 placements/s):

- ``loop_with_cache``: one thread, service after service, as the daemon's step does it:
  take the service's lock, plan with binpack on a watch-fed ``SnapshotCache`` (the
  keyspace is listed once), commit fenced by the lock (``commit_plan``: chunks of whole
  tasks under etcd's 128-operation limit) and record the commit in the cache; prints the
  split between listing, planning and committing;
- ``scheduler_daemon``: ``SchedulerDaemon`` itself (4 workers), from ``start()`` until
  every task is in the store.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import scheduling as sched_bench  # noqa: E402

from skedlib.codecs import encode  # noqa: E402
from skedlib.keys import Keyspace  # noqa: E402
from skedlib.locks import Lock  # noqa: E402
from skedlib.models import Host  # noqa: E402
from skedlib.plugins import get_registry, open_backend  # noqa: E402
from skedlib.runtime import Group, Store, write_groups  # noqa: E402
from skedlib.scheduler.daemon import SchedulerDaemon  # noqa: E402
from skedlib.scheduling import SnapshotCache, commit_plan  # noqa: E402
from skedlib.store.base import Backend, Put  # noqa: E402


def _setup(url: str, hosts: int, tasks: int, services: int) -> tuple[Backend, Keyspace]:
    backend = open_backend(url)
    ks = Keyspace(f"bench{time.monotonic_ns()}/")
    template = sched_bench.workload(3, hosts, tasks, services, correlated=True)
    puts = [Put(ks.agent(h), encode(Host(name=h, total=s.total)))
            for h, s in template.hosts.items()]
    puts += [Put(ks.task_definition(t.name, t.version), encode(t))
             for t in template.task_definitions.values()]
    puts += [Put(ks.service(s.name), encode(s)) for s in template.services.values()]
    puts += [Put(ks.cluster(c.name), encode(c)) for c in template.clusters.values()]
    setup = [Group(ops=(put,)) for put in puts]
    write_groups(backend, setup)
    return backend, ks


def run_loop(url: str, hosts: int, tasks: int, services: int) -> dict[str, Any]:
    """One thread, service after service: lock, plan on the watch-fed cache, commit."""
    backend, ks = _setup(url, hosts, tasks, services)
    scheduler = get_registry().scheduler_factory("binpack")()
    t0 = time.perf_counter()
    store = Store(backend, ks)
    cache = SnapshotCache(store).start()
    assert cache.wait_ready(60), "the keyspace was not listed within 60s"
    read_s = time.perf_counter() - t0
    plan_s = commit_s = 0.0
    committed = conflicts = 0
    with cache.view() as snap:
        names = list(snap.clusters["bench"].services)
    for name in names:
        lock = Lock(backend, ks.lock("bench", name), ttl=10)
        assert lock.try_acquire()
        with cache.view() as snap:
            t1 = time.perf_counter()
            result = scheduler.plan(snap, snap.clusters["bench"], snap.services[name])
            t2 = time.perf_counter()
            res = commit_plan(store, snap, result.plan, fence=[lock.fence()])
            cache.record(result.plan, res)
            t3 = time.perf_counter()
        lock.release()
        plan_s += t2 - t1
        commit_s += t3 - t2
        committed += len(res.committed)
        conflicts += len(res.conflicts)
    total = time.perf_counter() - t0
    cache.stop()
    stored = len(backend.list(ks.tasks).items)
    backend.close()
    return {"hosts": hosts, "tasks": tasks, "services": services, "committed": committed,
            "conflicts": conflicts, "tasks_in_store": stored,
            "seconds": {"list_once": round(read_s, 3), "plan": round(plan_s, 3),
                        "commit": round(commit_s, 3), "total": round(total, 3)},
            "placements_per_s": round(committed / total), "target": 3000}


def run_daemon(url: str, hosts: int, tasks: int, services: int,
               workers: int) -> dict[str, Any]:
    """The scheduler daemon itself, from start until every task is in the store."""
    backend, ks = _setup(url, hosts, tasks, services)
    daemon = SchedulerDaemon(Store(backend, ks), workers=workers)
    t0 = time.perf_counter()
    daemon.start()
    deadline = t0 + 300
    placed = 0
    while time.perf_counter() < deadline:
        with daemon.cache.view() as snap:
            placed = len(snap.tasks)
        if placed >= tasks:
            break
        time.sleep(0.02)
    total = time.perf_counter() - t0
    daemon.stop()
    stored = len(backend.list(ks.tasks).items)
    backend.close()
    return {"hosts": hosts, "tasks": tasks, "services": services, "workers": workers,
            "tasks_in_store": stored, "runs": daemon.runs, "seconds": round(total, 3),
            "placements_per_s": round(stored / total), "target": 3000}


def main() -> None:
    from tests.harness.etcd import EtcdCluster

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    tasks = 2_000 if args.quick else 10_000
    with EtcdCluster(3, name="benchcommit").start() as cluster:
        out = {"bench": "planned and committed to a 3-member etcd",
               "loop_with_cache": run_loop(cluster.url(), 5_000, tasks, 20),
               "scheduler_daemon": run_daemon(cluster.url(), 5_000, tasks, 20, 4)}
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
