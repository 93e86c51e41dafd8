"""How planning time grows with the cluster, for binpack and spread, printed as JSON.

    python bench/scaling.py [--budget SECONDS] [--sizes 1k/1k,5k/2.5k,...] [--repeat N]

Each size plans ``tasks`` tasks of ``tasks // 500`` services (at least 2) on ``hosts``
hosts of 16 GiB / 8 cores (the workload of ``bench/scheduling.py``: seeded, CPU
proportional to memory), one service after another as the daemon would, with
``binpack``, ``spread`` (over hosts) and ``spread`` over a ``zone`` attribute of 10
values (``spread:zone``). Binpack and spread run alternately in this one process, so
``spread_to_binpack`` (placements/s of spread over those of binpack) is a ratio measured
in one run. A scheduler whose next size would take longer than ``--budget`` seconds,
judging by the exponent fitted so far, is skipped there (reported as ``skipped``).

``exponent``: the slope of log(seconds) over log(tasks), fitted by least squares over the
sizes that ran (1.0 is linear).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from scheduling import plan_all, workload

SIZES = [(1_000, 1_000), (5_000, 2_500), (10_000, 5_000), (50_000, 10_000)]
KINDS = [("binpack", "binpack", 0), ("spread", "spread", 0), ("spread_zone", "spread", 10)]


def _size(text: str) -> int:
    text = text.strip().lower()
    scale = 1_000 if text.endswith("k") else 1
    return round(float(text.rstrip("k")) * scale)


def fit_exponent(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of log(seconds) over log(tasks)."""
    if len(points) < 2:
        return None
    xs = [math.log(t) for t, _ in points]
    ys = [math.log(max(s, 1e-6)) for _, s in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return round(sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den, 2) \
        if den else None


def run_one(scheduler: str, tasks: int, hosts: int, zones: int) -> dict[str, Any]:
    snap = workload(1, hosts, tasks, max(2, tasks // 500), correlated=True, zones=zones)
    placed, unschedulable, seconds = plan_all(snap, scheduler)
    return {"placed": placed, "unschedulable": unschedulable, "seconds": round(seconds, 3),
            "placements_per_s": round(placed / seconds) if seconds else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budget", type=float, default=40.0,
                        help="skip a run predicted to take longer (seconds)")
    parser.add_argument("--sizes", default="",
                        help="comma-separated TASKS/HOSTS, e.g. 1k/1k,5k/2.5k")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per size and scheduler (the best is kept)")
    args = parser.parse_args()
    sizes = [(_size(a), _size(b)) for a, b in
             (part.split("/") for part in args.sizes.split(",") if part)] or SIZES
    points: dict[str, list[tuple[int, float]]] = {k: [] for k, _, _ in KINDS}
    rows = []
    for tasks, hosts in sizes:
        row: dict[str, Any] = {"tasks": tasks, "hosts": hosts}
        for kind, scheduler, zones in KINDS:
            done = points[kind]
            if done:
                last_tasks, last_s = done[-1]
                exp = fit_exponent(done) or 1.0
                predicted = last_s * (tasks / last_tasks) ** max(exp, 1.0)
                if predicted > args.budget:
                    row[kind] = {"skipped": f"predicted {predicted:.0f}s > budget"}
                    continue
            runs = [run_one(scheduler, tasks, hosts, zones) for _ in range(args.repeat)]
            best = min(runs, key=lambda r: r["seconds"])
            row[kind] = best
            done.append((tasks, best["seconds"]))
        bp = row["binpack"].get("placements_per_s")
        for kind in ("spread", "spread_zone"):
            sp = row[kind].get("placements_per_s")
            if bp and sp:
                row[f"{kind}_to_binpack"] = round(sp / bp, 3)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    out = {"bench": "scaling", "sizes": rows,
           "exponent": {k: fit_exponent(v) for k, v in points.items()},
           "target": {"spread_to_binpack": 0.5}}
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
