"""Planned *and committed* placements per second on a real 3-member etcd cluster.

    python bench/commit.py [--quick]

Starts etcd (3 members on loopback, throwaway data), writes 5,000 host records, applies
20 services (10,000 tasks, CPU proportional to memory), then does what a scheduler daemon
does for each service: take the service's lock, read a snapshot, plan with binpack, and
commit the plan
fenced by the lock (``commit_plan``: chunks of whole tasks under etcd's 128-operation
limit). Prints JSON with placements/s end to end (target ≥ 3,000/s) and the split between
planning and committing.
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
from skedlib.scheduling import commit_plan, read_snapshot  # noqa: E402
from skedlib.store.base import Put  # noqa: E402
from skedlib.store.chunks import commit_chunked  # noqa: E402


def run(url: str, hosts: int, tasks: int, services: int) -> dict[str, Any]:
    backend = open_backend(url)
    ks = Keyspace("bench/")
    template = sched_bench.workload(3, hosts, tasks, services, correlated=True)
    setup = [[Put(ks.agent(h), encode(Host(name=h, total=s.total)))]
             for h, s in template.hosts.items()]
    setup += [[Put(ks.task_definition(t.name, t.version), encode(t))]
              for t in template.task_definitions.values()]
    setup += [[Put(ks.service(s.name), encode(s))] for s in template.services.values()]
    setup += [[Put(ks.cluster(c.name), encode(c))] for c in template.clusters.values()]
    commit_chunked(backend, [], setup)
    scheduler = get_registry().scheduler_factory("binpack")()
    t0 = time.perf_counter()
    read_s = plan_s = commit_s = 0.0
    committed = conflicts = 0
    for name in template.clusters["bench"].services:
        lock = Lock(backend, ks.lock("bench", name), ttl=10)
        assert lock.try_acquire()
        t1 = time.perf_counter()
        snapshot = read_snapshot(backend, ks)  # as the daemon does, for every service
        cluster = snapshot.clusters["bench"]
        read_s += time.perf_counter() - t1
        t1 = time.perf_counter()
        result = scheduler.plan(snapshot, cluster, snapshot.services[name])
        t2 = time.perf_counter()
        res = commit_plan(backend, snapshot, result.plan, fence=[lock.fence()], keyspace=ks)
        t3 = time.perf_counter()
        lock.release()
        plan_s += t2 - t1
        commit_s += t3 - t2
        committed += len(res.committed)
        conflicts += len(res.conflicts)
    total = time.perf_counter() - t0
    stored = len(backend.list(ks.tasks).items)
    backend.close()
    return {"hosts": hosts, "tasks": tasks, "services": services, "committed": committed,
            "conflicts": conflicts, "tasks_in_store": stored,
            "seconds": {"read_snapshot": round(read_s, 3), "plan": round(plan_s, 3),
                        "commit": round(commit_s, 3), "total": round(total, 3)},
            "placements_per_s": round(committed / total), "target": 3000}


def main() -> None:
    from tests.harness.etcd import EtcdCluster

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    tasks = 2_000 if args.quick else 10_000
    with EtcdCluster(3, name="benchcommit").start() as cluster:
        out = run(cluster.url(), 5_000, tasks, 20)
    json.dump({"bench": "commit to a 3-member etcd", **out}, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
