"""Planning speed and quality of the reference schedulers, printed as JSON.

    python bench/scheduling.py [--quick]

Workloads (seeded, so every run plans the same thing):

- ``binpack_10k_on_5k``: 10,000 tasks of 20 services with random demands (128 to 3072
  MiB, CPU proportional to memory; ``..._independent_cpu``: drawn independently) planned
  in-process on 5,000 hosts of 16 GiB / 8 cores, one service
  after another as the daemon would, each plan recorded in the snapshot before the next.
  Target ≥ 50,000 placements/s.
- ``binpack_100k_on_10k``: 100,000 tasks (100 services) on 10,000 hosts. Target ≤ 2 s
  and < 1 GiB (peak RSS of this process, which also holds the snapshot).
- ``binpack_quality``: hosts used vs the lower bound ⌈total demand / host capacity⌉
  (the larger of the memory and cpu bounds) on random workloads whose CPU is
  proportional to memory. Target: at most 1.1 times. ``binpack_quality_independent_cpu`` draws CPU
  independently of memory: a two-dimensional packing whose per-dimension bound no online
  scheduler reaches; reported for information.
- ``spread_evenness``: max - min tasks per host for spread when everything fits
  (target: at most 1).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import resource
import sys
import time
from typing import Any

from skedlib.models import Cluster, Container, Host, Resources, Service, TaskDefinition
from skedlib.plugins import get_registry
from skedlib.scheduler import tune_gc
from skedlib.scheduling import Scheduler, Snapshot, validate_plan

HOST = Resources(memory=16_384, cpu_units=8_192, disk=0)


def add_gc_option(parser: argparse.ArgumentParser) -> None:
    """``--default-gc``: leave Python's collector thresholds; without it
    :func:`set_gc` sets the program's."""
    parser.add_argument("--default-gc", action="store_true",
                        help="leave Python's garbage collector thresholds as they are "
                             "(skedlib-scheduler sets its own: skedlib.scheduler.tune_gc)")


def set_gc(args: argparse.Namespace) -> list[int]:
    """Set the collector as ``skedlib-scheduler`` does (:func:`skedlib.scheduler.tune_gc`)
    unless ``--default-gc`` was given; the thresholds in force, for the output."""
    if not args.default_gc:
        tune_gc()
    return list(gc.get_threshold())


def workload(seed: int, hosts: int, tasks: int, services: int,
             host: Resources = HOST, correlated: bool = False, zones: int = 0) -> Snapshot:
    """``correlated``: each task's CPU is proportional to its memory (as the hosts' are),
    the usual shape of real services; otherwise both are drawn independently.
    ``zones``: hosts get a ``zone`` attribute (round robin over that many values) and
    every service asks to be spread over it (``spread:zone``)."""
    rng = random.Random(seed)
    per = tasks // services
    svcs, tds = [], []
    for i in range(services):
        memory = rng.choice([128, 256, 384, 512, 768, 1024, 1536, 2048, 3072])
        cpu = memory // 2 if correlated else rng.choice([64, 128, 256, 512, 1024])
        tds.append(TaskDefinition(name=f"s{i}", version=1, memory=memory, cpu_units=cpu,
                                  containers=[Container(name="c", type="process")]))
        svcs.append(Service(name=f"s{i}", task_name=f"s{i}", task_version=1, desired=per,
                            constraints=["spread:zone"] if zones else []))
    cluster = Cluster(name="bench", services=[s.name for s in svcs])
    return Snapshot(1, clusters=[cluster], services=svcs, task_definitions=tds,
                    hosts=[Host(name=f"h{i:05d}", total=host,
                                     attributes={"zone": f"z{i % zones}"} if zones else {})
                                for i in range(hosts)])


def plan_all(snapshot: Snapshot, scheduler: str | Scheduler) -> tuple[int, int, float]:
    """Plan every service of the workload (``scheduler``: a registered name, or one)."""
    if isinstance(scheduler, str):
        scheduler = get_registry().scheduler_factory(scheduler)()
    cluster = snapshot.clusters["bench"]
    placed = unschedulable = 0
    t0 = time.perf_counter()
    for name in cluster.services:
        result = scheduler.plan(snapshot, cluster, snapshot.services[name])
        snapshot.apply(result.plan.place, result.plan.stop)
        placed += len(result.plan.place)
        unschedulable += len(result.unschedulable)
    return placed, unschedulable, time.perf_counter() - t0


def bench_speed(hosts: int, tasks: int, services: int,
                correlated: bool = True) -> dict[str, Any]:
    snap = workload(1, hosts, tasks, services, correlated=correlated)
    placed, unschedulable, seconds = plan_all(snap, "binpack")
    return {"hosts": hosts, "tasks": tasks, "services": services,
            "cpu_proportional_to_memory": correlated, "placed": placed,
            "unschedulable": unschedulable, "seconds": round(seconds, 3),
            "placements_per_s": round(placed / seconds),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def bench_quality(seeds: int, correlated: bool) -> dict[str, Any]:
    ratios = []
    for seed in range(seeds):
        rng = random.Random(seed)
        snap = workload(seed, hosts=400, tasks=rng.randint(600, 1500), services=10,
                        correlated=correlated)
        demand = Resources()
        for s in snap.services.values():
            td = snap.task_definitions[(s.task_name, s.task_version)]
            demand = demand + Resources(memory=td.memory * s.desired,
                                        cpu_units=td.cpu_units * s.desired)
        lower = max(math.ceil(demand.memory / HOST.memory),
                    math.ceil(demand.cpu_units / HOST.cpu_units))
        _, unschedulable, _ = plan_all(snap, "binpack")
        assert unschedulable == 0
        used = sum(1 for h in snap.hosts.values() if h.tasks)
        ratios.append(used / lower)
    return {"workloads": seeds, "cpu_proportional_to_memory": correlated,
            "worst_ratio_to_lower_bound": round(max(ratios), 3),
            "mean_ratio": round(sum(ratios) / len(ratios), 3), "target": 1.1}


def bench_spread(seeds: int) -> dict[str, Any]:
    worst = 0
    for seed in range(seeds):
        snap = workload(seed, hosts=50, tasks=700, services=7)
        plan_all(snap, "spread")
        per_service = []
        for s in snap.services:
            counts = [sum(1 for t in snap.service_tasks("bench", s) if t.host == h)
                      for h in snap.hosts]
            per_service.append(max(counts) - min(counts))
        worst = max(worst, *per_service)
    return {"workloads": seeds, "worst_max_minus_min_per_host": worst, "target": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    out = {"bench": "scheduling",
           "binpack_10k_on_5k": bench_speed(5_000, 10_000, 20),
           "binpack_10k_on_5k_independent_cpu": bench_speed(5_000, 10_000, 20,
                                                            correlated=False),
           "binpack_quality": bench_quality(3 if args.quick else 10, correlated=True),
           "binpack_quality_independent_cpu": bench_quality(3 if args.quick else 10,
                                                            correlated=False),
           "spread_evenness": bench_spread(2 if args.quick else 5)}
    if not args.quick:
        out["binpack_100k_on_10k"] = bench_speed(10_000, 100_000, 100)
    snap = workload(7, 100, 300, 3)
    plan = get_registry().scheduler_factory("binpack")().plan(
        snap, snap.clusters["bench"], snap.services["s0"]).plan
    assert validate_plan(snap, plan) == []
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
