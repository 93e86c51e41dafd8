"""Every performance target in one run, each beside what was measured, printed as JSON.

    python bench/targets.py [--backends sqlite,etcd] [--large] [--jobs-baseline DIR]
                            [--repeat N]

Runs the benches one after the other, each in a process of its own (as when run by
hand), and gathers their JSON:

- ``bench/scaling.py --sizes 10k/5k,100k/10k --no-sampled --budget 400 --repeat N``
  (with ``--large`` also ``1m/100k``; each cell the fastest of its N plans, which evens
  out the machine's load for every scheduler alike): binpack's rate at 10k tasks on 5k
  hosts, its seconds at 100k on 10k (and at 1M on 100k, with its peak memory), its time
  exponent from 10k, its packing quality, and spread's and spread-over-zones' rates over
  binpack's at every size (the smallest of the sizes' ratios is the one held against
  the target);
- ``bench/commit.py --backend B --repeat N`` for each of ``--backends``: the scheduler
  daemon's placements per second over the raw store's (median of the rounds), and on
  etcd its placements per second (the smallest round);
- with ``--jobs-baseline DIR`` (a checkout of the tree to compare with),
  ``bench/jobs.py --backends … --workers 1,4 --no-rq --no-secondary --jobs 1000
  --baseline DIR --repeat 2``: jobs per second per worker over the baseline's (median
  of the rounds) and the worker CPU per job (the largest round).

``targets`` lists each target with ``want``, ``measured``, ``met`` and where the figure
comes from; ``runs`` holds every bench's whole output. The ratios are worked out here
from the rates the benches print, to four decimals (the benches round their own). A
bench that fails is reported with its exit status and its last lines of stderr, and its
targets as not measured.
"""

from __future__ import annotations

import argparse
import json
import operator
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
_AT_LEAST, _AT_MOST = (operator.ge, "≥"), (operator.le, "≤")


def _run(args: list[str], timeout: float) -> dict[str, Any]:
    """The JSON a bench printed, or why there is none."""
    started = time.monotonic()
    print(f"[targets] {' '.join(args)}", file=sys.stderr, flush=True)
    try:
        done = subprocess.run([sys.executable, str(HERE / args[0]), *args[1:]],
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout:.0f}s"}
    seconds = round(time.monotonic() - started, 1)
    if done.returncode != 0:
        return {"error": f"exit status {done.returncode}", "seconds": seconds,
                "stderr_tail": done.stderr.strip().splitlines()[-5:]}
    try:
        out: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError as exc:
        return {"error": f"its output is not JSON: {exc}", "seconds": seconds}
    out["bench_seconds"] = seconds
    return out


class _Targets:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, target: str, how: tuple[Callable[[Any, Any], bool], str], want: float,
            source: str, get: Callable[[], float | None]) -> None:
        """One target; ``get`` reads the measured figure from a bench's output (None, or
        an exception, when that bench did not measure it)."""
        try:
            measured = get()
        except (KeyError, IndexError, TypeError, ValueError):
            measured = None
        test, sign = how
        self.rows.append({"target": target, "want": f"{sign} {want:g}",
                          "measured": measured,
                          "met": None if measured is None else bool(test(measured, want)),
                          "from": source})


def _size(scaling: dict[str, Any], tasks: int) -> dict[str, Any]:
    return next(s for s in scaling["sizes"] if s["tasks"] == tasks)


# The ratios held against targets are worked out here from the rates the benches print,
# to four decimals: the benches round their own ratios (to two or three decimals), and
# spread:zone at 0.49993 of binpack passed a 0.5 target as 0.5.

def _smallest_ratio(scaling: dict[str, Any], kind: str) -> float:
    return round(float(min(s[kind]["placements_per_s"] / s["binpack"]["placements_per_s"]
                           for s in scaling["sizes"])), 4)


def _daemon_over_raw(commit: dict[str, Any]) -> float:
    daemons, raws = commit["scheduler_daemon"], commit["raw_store"]
    if isinstance(daemons, dict):  # one round
        daemons, raws = [daemons], [raws]
    return round(float(statistics.median(d["placements_per_s"] / r["placements_per_s"]
                                         for d, r in zip(daemons, raws, strict=True))), 4)


def _slowest_daemon(commit: dict[str, Any]) -> float:
    return float(min(r["placements_per_s"] for r in commit["scheduler_daemon"]))


def _jobs_ratio(jobs: dict[str, Any], backend: str, workers: str) -> float:
    rounds = jobs["vs_baseline"][backend][workers]["jobs_per_s"]
    return round(float(statistics.median(
        t / b for b, t in zip(rounds["baseline"], rounds["this"], strict=True))), 4)


def _jobs_cpu(jobs: dict[str, Any], backend: str, workers: str) -> float:
    return float(max(jobs["vs_baseline"][backend][workers]["worker_cpu_ms_per_job"]["this"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="sqlite,etcd",
                        help="comma-separated: sqlite, etcd (bench/commit.py and jobs)")
    parser.add_argument("--large", action="store_true",
                        help="also plan 1M tasks on 100k hosts (minutes, GiBs)")
    parser.add_argument("--jobs-baseline", metavar="DIR",
                        help="a checkout to compare the jobs' rate with (bench/jobs.py)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds of bench/commit.py, and plans per cell of "
                             "bench/scaling.py (the fastest counts; default 3)")
    args = parser.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    for b in backends:
        if b not in ("sqlite", "etcd"):
            parser.error(f"--backends: unknown backend {b!r} (sqlite, etcd)")
    if args.jobs_baseline and not Path(args.jobs_baseline, "skedlib").is_dir():
        parser.error(f"--jobs-baseline: {args.jobs_baseline} is not a skedlib checkout "
                     "(no skedlib/ in it)")

    runs: dict[str, Any] = {}
    sizes = "10k/5k,100k/10k" + (",1m/100k" if args.large else "")
    runs["scaling"] = sc = _run(["scaling.py", "--sizes", sizes, "--no-sampled",
                                 "--budget", "400", "--repeat", str(args.repeat)],
                                timeout=3600)
    for b in backends:
        runs[f"commit_{b}"] = _run(["commit.py", "--backend", b, "--repeat",
                                    str(args.repeat)], timeout=1800)
    if args.jobs_baseline:
        runs["jobs"] = _run(["jobs.py", "--backends", ",".join(backends), "--workers", "1,4",
                             "--no-rq", "--no-secondary", "--jobs", "1000", "--baseline",
                             args.jobs_baseline, "--repeat", "2"], timeout=3600)

    t = _Targets()
    scaling_cmd = (f"bench/scaling.py --sizes {sizes} --no-sampled --budget 400 "
                   f"--repeat {args.repeat}")
    t.add("binpack placements/s, 10k tasks on 5k hosts", _AT_LEAST, 50_000,
          f"{scaling_cmd} (sizes[10k].binpack.placements_per_s)",
          lambda: _size(sc, 10_000)["binpack"]["placements_per_s"])
    t.add("binpack seconds, 100k tasks on 10k hosts", _AT_MOST, 2.0,
          f"{scaling_cmd} (sizes[100k].binpack.seconds)",
          lambda: _size(sc, 100_000)["binpack"]["seconds"])
    if args.large:
        t.add("binpack seconds, 1M tasks on 100k hosts", _AT_MOST, 30.0,
              f"{scaling_cmd} (sizes[1M].binpack.seconds)",
              lambda: _size(sc, 1_000_000)["binpack"]["seconds"])
        t.add("peak memory MiB, 1M tasks on 100k hosts", _AT_MOST, 4096,
              f"{scaling_cmd} (sizes[1M].binpack.peak_rss_mib)",
              lambda: _size(sc, 1_000_000)["binpack"]["peak_rss_mib"])
    t.add("binpack time exponent from 10k", _AT_MOST, 1.1,
          f"{scaling_cmd} (exponent_from_10k.binpack)",
          lambda: sc["exponent_from_10k"]["binpack"])
    t.add("binpack packing quality (hosts used over the lower bound)", _AT_MOST, 1.1,
          f"{scaling_cmd} (sizes[].binpack.quality, the largest)",
          lambda: max(s["binpack"]["quality"] for s in sc["sizes"]))
    for kind, label in (("spread", "spread"), ("spread_zone", "spread:zone")):
        t.add(f"{label} rate over binpack's (the smallest over the sizes)", _AT_LEAST, 0.5,
              f"{scaling_cmd} (sizes[].{kind}.placements_per_s over "
              "sizes[].binpack.placements_per_s)",
              partial(_smallest_ratio, sc, kind))
    for b in backends:
        run = runs[f"commit_{b}"]
        want = 0.8 if b == "etcd" else 0.5
        cmd = f"bench/commit.py --backend {b} --repeat {args.repeat}"
        t.add(f"{b}: daemon placements/s over the raw store's (median)", _AT_LEAST, want,
              f"{cmd} (scheduler_daemon[].placements_per_s over raw_store[]'s, median)",
              partial(_daemon_over_raw, run))
        if b == "etcd":
            t.add("etcd: daemon placements/s (the smallest round)", _AT_LEAST, 5000,
                  f"{cmd} (scheduler_daemon[].placements_per_s)",
                  partial(_slowest_daemon, run))
    if args.jobs_baseline:
        jobs = runs["jobs"]
        cmd = "bench/jobs.py … --baseline DIR --repeat 2"
        for b in backends:
            key = "etcd3" if b == "etcd" else b
            for workers in ("1", "4"):
                t.add(f"jobs on {b}, {workers} worker(s): jobs/s over the baseline's "
                      "(median)", _AT_LEAST, 2.0,
                      f"{cmd} (vs_baseline.{key}.{workers}.jobs_per_s: this over "
                      "baseline, median)",
                      partial(_jobs_ratio, jobs, key, workers))
                t.add(f"jobs on {b}, {workers} worker(s): worker CPU ms per job "
                      "(the largest round)", _AT_MOST, 2.0,
                      f"{cmd} (vs_baseline.{key}.{workers}.worker_cpu_ms_per_job.this)",
                      partial(_jobs_cpu, jobs, key, workers))
    measured = [r for r in t.rows if r["met"] is not None]
    json.dump({"bench": "targets",
               "met": sum(r["met"] for r in measured), "not_met": sum(not r["met"]
                                                                    for r in measured),
               "not_measured": len(t.rows) - len(measured),
               "targets": t.rows, "runs": runs}, sys.stdout, indent=2, ensure_ascii=False)
    print()


if __name__ == "__main__":
    main()
