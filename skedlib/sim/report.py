"""Summaries of simulator runs: ``report.json``, the summary table, PNG plots.

Per scheduler (docs/simulator.md says what each figure means): utilisation over time,
hosts used against the lower bound, fragmentation, pending time p50/p99, placement
latency (wall-clock per plan), unschedulable tasks, moves.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from skedlib._files import private_dirs, write_private
from skedlib.sim.engine import SimStats

__all__ = ["PLOTS", "percentile", "summarise", "summary_rows", "write_plots", "write_report"]

PLOTS = ("utilisation.png", "hosts.png", "pending.png")
"""The plots :func:`write_plots` writes."""


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values`` by nearest rank; 0.0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    k = min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1
    return ordered[k]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def summarise(stats: SimStats) -> dict[str, Any]:
    """The report entry of one run."""
    s = stats.samples
    busy = [x for x in s if x["lower_bound"]]
    ratios = [x["hosts_used"] / x["lower_bound"] for x in busy]
    plans = stats.plan_seconds
    return {
        "scheduler": stats.scheduler,
        "hosts": stats.hosts,
        "host": {"memory": stats.host.memory, "cpu_units": stats.host.cpu_units},
        "tasks": stats.tasks,
        "placed": stats.placed,
        "unschedulable": stats.unschedulable,
        "moves": stats.moves,
        "refused": stats.refused,
        "conflicts": stats.conflicts,
        "utilisation": {
            "mean_memory": round(_mean([x["memory"] for x in s]), 4),
            "mean_cpu": round(_mean([x["cpu"] for x in s]), 4),
            "peak_memory": max((x["memory"] for x in s), default=0.0),
            "peak_cpu": max((x["cpu"] for x in s), default=0.0),
        },
        "hosts_used": {
            "mean": round(_mean([x["hosts_used"] for x in s]), 1),
            "peak": max((x["hosts_used"] for x in s), default=0),
            "lower_bound_mean": round(_mean([x["lower_bound"] for x in s]), 1),
            "lower_bound_peak": max((x["lower_bound"] for x in s), default=0),
            "mean_ratio_to_bound": round(_mean(ratios), 3),
        },
        "fragmentation": {"mean": round(_mean([x["fragmentation"] for x in s]), 4),
                          "peak": max((x["fragmentation"] for x in s), default=0.0)},
        "pending_seconds": {"p50": round(percentile(stats.pending_times, 50), 3),
                            "p99": round(percentile(stats.pending_times, 99), 3),
                            "max": round(max(stats.pending_times, default=0.0), 3)},
        "placement_latency_ms": {"plans": len(plans),
                                 "p50": round(percentile(plans, 50) * 1e3, 3),
                                 "p99": round(percentile(plans, 99) * 1e3, 3),
                                 "mean": round(_mean(plans) * 1e3, 3)},
        "wall_seconds": round(stats.wall_seconds, 3),
        "virtual_seconds": round(stats.end, 3),
        "timeline": s,
    }


def write_report(out: Path, trace: str, runs: Sequence[SimStats]) -> dict[str, Any]:
    """Write ``out/report.json`` (private to the user: 0600 in a 0700 directory) and
    return it."""
    private_dirs(out, narrow_existing=False)
    report = {"trace": trace, "schedulers": {r.scheduler: summarise(r) for r in runs}}
    write_private(out / "report.json", json.dumps(report, indent=1).encode() + b"\n")
    return report


def summary_rows(report: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The summary table: headers and one row per scheduler."""
    headers = ["SCHEDULER", "PLACED", "UNSCHEDULABLE", "MOVES", "MEM UTIL", "HOSTS USED",
               "LOWER BOUND", "USED/BOUND", "FRAG", "PENDING P50", "PENDING P99",
               "PLAN P50", "PLAN P99", "WALL"]
    rows = []
    for name, r in report["schedulers"].items():
        h, p, lat = r["hosts_used"], r["pending_seconds"], r["placement_latency_ms"]
        rows.append([name, r["placed"], r["unschedulable"], r["moves"],
                     f"{r['utilisation']['mean_memory']:.1%}", h["mean"],
                     h["lower_bound_mean"], f"{h['mean_ratio_to_bound']:.3f}",
                     f"{r['fragmentation']['mean']:.1%}", f"{p['p50']:g}s", f"{p['p99']:g}s",
                     f"{lat['p50']:.1f}ms", f"{lat['p99']:.1f}ms", f"{r['wall_seconds']:.1f}s"])
    return headers, rows


def write_plots(out: Path, report: dict[str, Any]) -> list[Path] | None:
    """Side-by-side PNG plots of every scheduler in ``report`` under ``out``; None when
    matplotlib (the ``sim`` extra) is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    runs = report["schedulers"]
    names = list(runs)
    written = []

    def panel(file: str, title: str, series: list[tuple[str, str]], ylabel: str) -> None:
        fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6),
                                 sharey=True, squeeze=False)
        for ax, name in zip(axes[0], names, strict=True):
            tl = runs[name]["timeline"]
            hours = [x["t"] / 3600 for x in tl]
            for key, label in series:
                ax.plot(hours, [x[key] for x in tl], label=label)
            ax.set_title(f"{name}: {title}")
            ax.set_xlabel("virtual hours")
            ax.grid(alpha=0.3)
            ax.legend(loc="best", fontsize="small")
        axes[0][0].set_ylabel(ylabel)
        fig.tight_layout()
        path = out / file
        fig.savefig(path, dpi=90)
        plt.close(fig)
        os.chmod(path, 0o600)
        written.append(path)

    panel(PLOTS[0], "utilisation", [("memory", "memory"), ("cpu", "cpu"),
                                    ("fragmentation", "fragmentation")], "share")
    panel(PLOTS[1], "hosts", [("hosts_used", "hosts used"),
                              ("lower_bound", "lower bound")], "hosts")
    panel(PLOTS[2], "pending tasks", [("pending", "pending")], "tasks")
    return written
