"""How fast the simulator runs a large trace, printed as JSON.

    python bench/sim.py [--tasks 100000] [--hosts 10000] [--seed 3]
                        [--scheduler binpack --scheduler spread] [--jobs 2]

Writes a seeded synthetic trace (``sked sim trace --synthetic``'s), then runs each
scheduler on it as ``sked sim run`` does (``--jobs 2``: the two schedulers in processes
of their own, at once, on the two cores). Reported per scheduler: its wall-clock and CPU
seconds (the CPU figure is what a shared, loaded machine changes least), the virtual
span, the plans made and the share of the wall clock spent inside the scheduler's
``plan`` (the rest is validate, commit, the store and the simulator's bookkeeping); and
the total wall clock of the runs (target: 100k tasks on 10k hosts, two schedulers,
within 60 s on the 2-core development machine).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from skedlib.models import Resources
from skedlib.sim import Simulator, TraceRecord, synthetic_trace
from skedlib.sim.report import percentile

HOST = Resources(memory=16_384, cpu_units=8_192)


def run_one(trace: list[TraceRecord], hosts: int, scheduler: str) -> dict[str, Any]:
    t0, c0 = time.perf_counter(), time.process_time()
    stats = Simulator(trace, hosts=hosts, host=HOST, scheduler=scheduler).run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    plans = stats.plan_seconds
    return {"scheduler": scheduler, "wall_seconds": round(wall, 2),
            "cpu_seconds": round(cpu, 2),
            "virtual_hours": round(stats.end / 3600, 1), "placed": stats.placed,
            "unschedulable": stats.unschedulable, "moves": stats.moves,
            "plans": len(plans), "plan_share_of_wall": round(sum(plans) / wall, 3),
            "plan_ms_p50": round(percentile(plans, 50) * 1e3, 2),
            "plan_ms_p99": round(percentile(plans, 99) * 1e3, 2),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--scheduler", action="append", default=None)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    names = args.scheduler or ["binpack", "spread"]
    t0 = time.perf_counter()
    trace = list(synthetic_trace(args.tasks, args.seed))
    generated = time.perf_counter() - t0
    t1 = time.perf_counter()
    if args.jobs > 1:
        with ProcessPoolExecutor(min(args.jobs, len(names))) as pool:
            runs = list(pool.map(run_one, [trace] * len(names), [args.hosts] * len(names),
                                 names))
    else:
        runs = [run_one(trace, args.hosts, n) for n in names]
    total = time.perf_counter() - t1
    for r in runs:
        print(json.dumps(r), file=sys.stderr)
    json.dump({"bench": "sim", "tasks": args.tasks, "hosts": args.hosts,
               "batches": sum(1 for r in trace if hasattr(r, "count")),
               "trace_seconds": round(generated, 2), "jobs": args.jobs,
               "total_wall_seconds": round(total, 2), "target_seconds": 60,
               "runs": runs}, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
