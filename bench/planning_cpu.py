"""CPU time per placement of binpack, spread and spread:zone, and the garbage
collector's share of it, printed as JSON.

    python bench/planning_cpu.py [--sizes 10k/5k,100k/10k]

The workload and order of ``bench/scaling.py`` (each size: binpack, spread, spread over
10 zones, one process), timed with ``time.process_time`` only around the plans, with the
plugin registry loaded before the first (``bench/scaling.py`` charges that load to
binpack's first size). ``gc`` gives the collections per generation and their CPU
seconds (``gc.callbacks``), under the collector setting of ``skedlib-scheduler``
(``gc_thresholds``) unless ``--default-gc`` is given. Alternate it between two trees to
compare them.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from typing import Any

from scaling import KINDS, _size
from scheduling import add_gc_option, plan_all, set_gc, workload

from skedlib.plugins import get_registry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10k/5k,100k/10k",
                        help="comma-separated TASKS/HOSTS")
    add_gc_option(parser)
    args = parser.parse_args()
    thresholds = set_gc(args)
    get_registry()
    started: list[float] = [0.0]
    counts, seconds = [0, 0, 0], [0.0, 0.0, 0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.process_time()
        else:
            counts[info["generation"]] += 1
            seconds[info["generation"]] += time.process_time() - started[0]

    gc.callbacks.append(on_gc)
    rows = []
    for part in args.sizes.split(","):
        tasks, hosts = (_size(x) for x in part.split("/"))
        row: dict[str, Any] = {"tasks": tasks, "hosts": hosts}
        for kind, scheduler, zones in KINDS:
            snap = workload(1, hosts, tasks, max(2, tasks // 500), correlated=True,
                            zones=zones)
            counts[:], seconds[:] = [0, 0, 0], [0.0, 0.0, 0.0]
            cpu = time.process_time()
            placed, _, _ = plan_all(snap, scheduler)
            cpu = time.process_time() - cpu
            row[kind] = {"placed": placed, "cpu_seconds": round(cpu, 3),
                         "placements_per_cpu_s": round(placed / cpu) if cpu else None,
                         "gc": {"collections": list(counts),
                                "cpu_seconds": [round(s, 3) for s in seconds]}}
        bp = row["binpack"]["placements_per_cpu_s"]
        for kind in ("spread", "spread_zone"):
            if bp and row[kind]["placements_per_cpu_s"]:
                row[f"{kind}_to_binpack_cpu"] = round(row[kind]["placements_per_cpu_s"] / bp, 3)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    json.dump({"bench": "planning_cpu", "sizes": rows, "gc_thresholds": thresholds}, sys.stdout,
              indent=2)
    print()


if __name__ == "__main__":
    main()
