"""How planning time grows with the cluster, for binpack and spread, printed as JSON.

    python bench/scaling.py [--million] [--budget SECONDS] [--sizes 1k/1k,...] [--repeat N]

Sizes (tasks/hosts): 1k/1k, 5k/2.5k, 10k/5k, 50k/10k, 100k/10k, 300k/30k, and with
``--million`` 1M/100k (about a minute for binpack, and several GiB: spread is skipped
there by the budget). Each size plans ``tasks`` tasks of ``tasks // 500`` services
(at least 2) on ``hosts`` hosts of 16 GiB / 8 cores (the workload of
``bench/scheduling.py``: seeded, CPU proportional to memory), one service after
another as the daemon would, with ``binpack``, ``spread`` (over hosts) and ``spread``
over a ``zone`` attribute of 10 values (``spread:zone``). Binpack and spread run
alternately in this one process, so ``spread_to_binpack`` (placements/s of spread over
those of binpack) is a ratio measured
in one run. A scheduler whose next size would take longer than ``--budget`` seconds,
judging by the exponent fitted so far, is skipped there (reported as ``skipped``).

``sampled_search``: the cost of the bounded sample a custom scorer without a walk gets
(the best of ``max(100, 5 % of hosts)`` feasible hosts, in a rotating order): two custom
scorers, best fit and least loaded with no walk, plan the same workload sampled and
exhaustively (every host scored); reported are the hosts used (best fit: fewer is
better), the spread of tasks per host (least loaded: max - min, lower is better) and the
speed of both.

``cpu_seconds`` (and ``placements_per_cpu_s``): the CPU time the planning took, which
a shared machine's load disturbs much less than the wall-clock ``seconds`` (planning
runs on one thread).

``exponent``: the slope of log(seconds) over log(tasks), fitted by least squares over the
sizes that ran (1.0 is linear); ``exponent_from_10k``: the same over the sizes of 10k
tasks and more (the target for binpack: at most 1.1).

Each binpack row also gives ``quality``: the hosts binpack used over the lower bound
⌈total demand / host capacity⌉ (the larger of the memory and CPU bounds; target at most
1.1), and every row ``peak_rss_mib``: the peak RSS of this process so far (it only grows:
run a size alone, with ``--sizes``, for its own peak).

The process's garbage collector is set as ``skedlib-scheduler`` sets it
(:func:`skedlib.scheduler.tune_gc`; ``gc_thresholds`` in the output) unless
``--default-gc`` leaves Python's defaults (a library user's script that does not set
them plans under those).

To compare with another tree in the same run, alternate this script between the two
trees (``PYTHONPATH=<other tree> python <other tree>/bench/scaling.py``), as
docs/performance.md does.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from collections.abc import Sequence
from typing import Any

from scheduling import HOST, add_gc_option, plan_all, set_gc, workload

from skedlib import (
    BestFit,
    HostPool,
    HostState,
    LeastLoaded,
    Scorer,
    Service,
    ServiceScheduler,
    Snapshot,
    TaskRequest,
)

SIZES = [(1_000, 1_000), (5_000, 2_500), (10_000, 5_000), (50_000, 10_000),
         (100_000, 10_000), (300_000, 30_000)]
MILLION = (1_000_000, 100_000)
TARGETS = {"binpack_placements_per_s_at_10k_on_5k": 50_000,
           "binpack_seconds_at_100k_on_10k": 2.0,
           "binpack_seconds_at_1m_on_100k": 30.0, "peak_rss_mib_at_1m_on_100k": 4096,
           "binpack_exponent_from_10k": 1.1, "binpack_quality": 1.1,
           "spread_to_binpack": 0.5}
KINDS = [("binpack", "binpack", 0), ("spread", "spread", 0), ("spread_zone", "spread", 10)]


def _size(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return round(float(text.rstrip("km")) * scale)


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


class _NoWalk(Scorer):
    """A stock scorer hidden behind a custom one that declares no walk."""

    def __init__(self, inner: Scorer) -> None:
        self.inner, self.name = inner, f"custom_{inner.name}"

    def score(self, request: TaskRequest, host: HostState) -> float:
        return self.inner.score(request, host)

    def strata(self, request: TaskRequest, pool: HostPool,
               others: Sequence[Scorer]) -> None:
        return None


def _custom(inner: type[Scorer], exhaustive: bool) -> ServiceScheduler:
    class Custom(ServiceScheduler):
        name = "custom"
        min_sample = 10**9 if exhaustive else 100

        def scorers(self, snapshot: Snapshot, service: Service,
                    hosts: Sequence[HostState]) -> list[Scorer]:
            return [_NoWalk(inner())]

    return Custom()


def bench_sampled(hosts: int, tasks: int) -> dict[str, Any]:
    out: dict[str, Any] = {"hosts": hosts, "tasks": tasks,
                           "scored_per_task": max(100, math.ceil(0.05 * hosts))}
    for inner in (BestFit, LeastLoaded):
        row: dict[str, Any] = {}
        for mode in ("sampled", "exhaustive"):
            snap = workload(2, hosts, tasks, max(2, tasks // 500), correlated=True)
            placed, _, seconds = plan_all(snap, _custom(inner, mode == "exhaustive"))
            per_host = [len(h.tasks) for h in snap.hosts.values()]
            row[mode] = {"placed": placed, "seconds": round(seconds, 3),
                         "placements_per_s": round(placed / seconds),
                         "hosts_used": sum(1 for n in per_host if n),
                         "max_minus_min_tasks_per_host": max(per_host) - min(per_host)}
        s, e = row["sampled"], row["exhaustive"]
        row["hosts_used_ratio"] = round(s["hosts_used"] / e["hosts_used"], 3)
        row["speedup"] = round(e["seconds"] / s["seconds"], 1)
        out[f"custom_{inner.name}"] = row
    return out


def lower_bound(snap: Snapshot) -> int:
    """⌈total demand / host capacity⌉, the larger of the memory and CPU bounds."""
    memory = cpu = 0
    for s in snap.services.values():
        td = snap.task_definitions[(s.task_name, s.task_version)]
        memory += td.memory * s.desired
        cpu += td.cpu_units * s.desired
    return max(math.ceil(memory / HOST.memory), math.ceil(cpu / HOST.cpu_units))


def run_one(scheduler: str, tasks: int, hosts: int, zones: int) -> dict[str, Any]:
    snap = workload(1, hosts, tasks, max(2, tasks // 500), correlated=True, zones=zones)
    cpu = time.process_time()
    placed, unschedulable, seconds = plan_all(snap, scheduler)
    cpu = time.process_time() - cpu
    out: dict[str, Any] = {
        "placed": placed, "unschedulable": unschedulable, "seconds": round(seconds, 3),
        "placements_per_s": round(placed / seconds) if seconds else None,
        "cpu_seconds": round(cpu, 3),
        "placements_per_cpu_s": round(placed / cpu) if cpu else None}
    if scheduler == "binpack":
        used = sum(1 for h in snap.hosts.values() if h.tasks)
        out["hosts_used"], out["lower_bound"] = used, lower_bound(snap)
        out["quality"] = round(used / out["lower_bound"], 3)
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budget", type=float, default=40.0,
                        help="skip a run predicted to take longer (seconds)")
    parser.add_argument("--sizes", default="",
                        help="comma-separated TASKS/HOSTS, e.g. 1k/1k,5k/2.5k")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per size and scheduler (the best is kept)")
    parser.add_argument("--no-sampled", action="store_true",
                        help="skip the sampled-search quality figures")
    parser.add_argument("--kinds", default="binpack,spread,spread_zone",
                        help="which of binpack, spread, spread_zone to run")
    parser.add_argument("--million", action="store_true",
                        help="add 1M tasks on 100k hosts (binpack about a minute)")
    add_gc_option(parser)
    args = parser.parse_args()
    thresholds = set_gc(args)
    sizes = [(_size(a), _size(b)) for a, b in
             (part.split("/") for part in args.sizes.split(",") if part)] or \
        SIZES + ([MILLION] if args.million else [])
    points: dict[str, list[tuple[int, float]]] = {k: [] for k, _, _ in KINDS}
    cpu_points: dict[str, list[tuple[int, float]]] = {k: [] for k, _, _ in KINDS}
    rows = []
    for tasks, hosts in sizes:
        row: dict[str, Any] = {"tasks": tasks, "hosts": hosts}
        for kind, scheduler, zones in KINDS:
            if kind not in args.kinds.split(","):
                row[kind] = {"skipped": "not asked for (--kinds)"}
                continue
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
            cpu_points[kind].append((tasks, best["cpu_seconds"]))
        bp = row["binpack"].get("placements_per_s")
        for kind in ("spread", "spread_zone"):
            sp = row[kind].get("placements_per_s")
            if bp and sp:
                row[f"{kind}_to_binpack"] = round(sp / bp, 3)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    out = {"bench": "scaling", "sizes": rows,
           "sampled_search": None if args.no_sampled else bench_sampled(2_000, 4_000),
           "exponent": {k: fit_exponent(v) for k, v in points.items()},
           "exponent_from_10k": {k: fit_exponent([p for p in v if p[0] >= 10_000])
                                 for k, v in points.items()},
           "cpu_exponent_from_10k": {k: fit_exponent([p for p in v if p[0] >= 10_000])
                                     for k, v in cpu_points.items()},
           "gc_thresholds": thresholds, "target": TARGETS}
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
