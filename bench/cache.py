"""How the cost of a task record's rewrite in the scheduler's snapshot grows with its
service, printed as JSON.

    python bench/cache.py [--sizes 1000,10000,100000] [--sample 2000] [--seed 3]
                          [--default-gc]

An agent rewrites a task's record when it provides the task's port, rejects it or claims
it again after a partition, and the scheduler daemon's snapshot cache applies every
such write it watches: the old record is taken out and the new one filed under its host
and its service (``Snapshot.put_task``, what ``SnapshotCache.apply`` does for a task
key). For each size, one service of that many tasks is placed with binpack
(``bench/scheduling.py``'s workload and ``plan_all``, on 5,000 hosts, 10,000 above
50,000 tasks) and ``--sample`` of its tasks, picked at random, are replaced once each by
a copy of their record (``scheduled`` set). Prints the microseconds per rewrite for each
size (``us_per_rewrite``, the median of 5 rounds over the sample) and ``growth``: the
last size's cost over the first's, which stays near 1 when a rewrite does not depend on
how many tasks the service has. The collector is set as ``skedlib-scheduler`` sets it
unless ``--default-gc`` (``gc_thresholds`` in the output).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import scheduling as sched_bench  # noqa: E402


def measure(tasks: int, sample: int, seed: int) -> dict[str, float | int]:
    """Place one service of ``tasks`` tasks, then time the rewrite of ``sample``."""
    hosts = 10_000 if tasks > 50_000 else 5_000
    snap = sched_bench.workload(seed, hosts, tasks, 1, correlated=True)
    placed, _, _ = sched_bench.plan_all(snap, "binpack")
    ids = random.Random(seed).sample(sorted(snap.tasks), min(sample, len(snap.tasks)))
    rounds = []
    for revision in range(2, 7):
        rewritten = [(tid, msgspec.structs.replace(snap.tasks[tid], scheduled=True))
                     for tid in ids]
        t0 = time.perf_counter()
        for tid, task in rewritten:
            snap.put_task(task, revision, tid)
        rounds.append((time.perf_counter() - t0) / len(ids))
    return {"tasks": tasks, "placed": placed, "hosts": hosts,
            "rewrites": len(ids), "us_per_rewrite": round(statistics.median(rounds) * 1e6, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,100000",
                        help="comma-separated tasks in the service (default 1000,10000,100000)")
    parser.add_argument("--sample", type=int, default=2_000,
                        help="tasks rewritten per round (default 2000)")
    parser.add_argument("--seed", type=int, default=3)
    sched_bench.add_gc_option(parser)
    args = parser.parse_args()
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes: expected comma-separated integers, got {args.sizes!r}")
    if not sizes or min(sizes) < 1 or args.sample < 1:
        parser.error("--sizes and --sample must be at least 1")
    thresholds = sched_bench.set_gc(args)  # as skedlib-scheduler sets its collector
    runs = [measure(n, args.sample, args.seed) for n in sizes]
    out = {"bench": "a task record's rewrite in the snapshot, by the size of its service",
           "sizes": runs,
           "growth": round(runs[-1]["us_per_rewrite"] / runs[0]["us_per_rewrite"], 2),
           "gc_thresholds": thresholds}
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
