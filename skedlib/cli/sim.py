"""``sked sim``: try schedulers against a trace in virtual time (:mod:`skedlib.sim`).

- ``sked sim trace --synthetic --tasks N --seed S`` writes a synthetic JSONL trace to
  stdout (or ``-o FILE``); ``sked sim trace --from google-2011|google-2019|alibaba-2018
  FILE`` converts a public cluster trace;
- ``sked sim run --trace T --hosts N --scheduler A --scheduler B --out DIR`` runs each
  scheduler on the trace, shows a progress bar on stderr (a terminal only), prints a
  summary table and writes ``DIR/report.json`` and PNG plots (with the ``sim`` extra,
  matplotlib; without it the plots are skipped with one line).

Neither needs a store: the simulator opens a ``memory://`` one per run.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import IO, Any

from skedlib.cli.jobs import parse_cores, parse_size
from skedlib.cli.output import table
from skedlib.errors import ValidationError
from skedlib.models import Resources
from skedlib.sim.engine import SimStats, Simulator
from skedlib.sim.importers import IMPORTERS
from skedlib.sim.report import summary_rows, write_plots, write_report
from skedlib.sim.trace import TraceRecord, read_trace, synthetic_trace, write_trace

__all__ = ["ProgressBar", "add_parsers"]


def _converter(parse: Callable[[str], int]) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, not {text!r}")
    return n


def add_parsers(sub: Any, common: argparse.ArgumentParser | None = None) -> None:
    """Add ``sim trace`` and ``sim run`` to the ``sked`` subcommands."""
    parents = [common] if common is not None else []
    p = sub.add_parser("sim", parents=parents,
                       help="simulate schedulers against a trace in virtual time",
                       description="Write traces and run schedulers against them in "
                                   "virtual time (docs/simulator.md).")
    ssub = p.add_subparsers(dest="sim_command", metavar="COMMAND", required=True)

    t = ssub.add_parser("trace", parents=parents, help="write a trace (JSONL) to stdout",
                        description="Write a synthetic trace, or convert a public cluster "
                                    "trace, as JSONL.")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--synthetic", action="store_true",
                     help="a synthetic trace: a service mix, heavy-tailed sizes and "
                          "durations, diurnal arrivals")
    src.add_argument("--from", dest="source", nargs=2, metavar=("FORMAT", "FILE"),
                     help=f"convert FILE of FORMAT ({', '.join(IMPORTERS)})")
    t.add_argument("--tasks", type=_count, default=10_000, help="tasks (synthetic)")
    t.add_argument("--seed", type=int, default=0, metavar="N",
                   help="starts the random generator (synthetic): the same N, the same "
                        "trace")
    t.add_argument("--span", type=float, default=6.0, metavar="HOURS",
                   help="arrivals spread over this many hours (synthetic; default 6)")
    t.add_argument("--failures", type=int, default=0,
                   help="host failures, each followed by a recovery (synthetic)")
    t.add_argument("--fail-hosts", type=_count, default=1000, metavar="N",
                   help="failures pick among the first N hosts (synthetic)")
    _host_options(t)
    t.add_argument("-o", "--output", type=Path, default=None, metavar="FILE",
                   help="write here instead of stdout")
    t.set_defaults(func=cmd_trace, needs_backend=False)

    r = ssub.add_parser("run", parents=parents, help="run schedulers against a trace",
                        description="Run each --scheduler against the trace on --hosts "
                                    "identical virtual hosts; print a summary table and "
                                    "write DIR/report.json and PNG plots.")
    r.add_argument("--trace", type=Path, required=True, help="the JSONL trace")
    r.add_argument("--hosts", type=_count, required=True, help="how many hosts")
    _host_options(r)
    r.add_argument("--scheduler", action="append", required=True, metavar="NAME",
                   help="a registered scheduler (binpack, spread, any installed); "
                        "repeatable")
    r.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="where report.json and the plots go (created 0700)")
    r.add_argument("--samples", type=_count, default=200,
                   help="utilisation samples over the trace (default 200)")
    r.add_argument("--jobs", type=_count, default=1,
                   help="run this many schedulers at once, in processes of their own "
                        "(no progress bar then)")
    r.set_defaults(func=cmd_run, needs_backend=False)


def _host_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host-memory", type=_converter(parse_size), default=16_384,
                   metavar="SIZE", help="memory of each host (default 16G)")
    p.add_argument("--host-cpu", type=_converter(parse_cores), default=8 * 1024,
                   metavar="CORES", help="cores of each host (default 8)")


def cmd_trace(client: object, args: argparse.Namespace) -> int:
    """``sked sim trace``."""
    records: list[TraceRecord]
    if args.synthetic:
        records = list(synthetic_trace(args.tasks, args.seed, span=args.span * 3600,
                                       failures=args.failures, hosts=args.fail_hosts))
    else:
        fmt, path = args.source
        importer = IMPORTERS.get(fmt)
        if importer is None:
            raise ValidationError(f"--from {fmt}: unknown format (one of "
                                  f"{', '.join(IMPORTERS)})")
        try:
            records = list(importer(path, host_memory=args.host_memory,
                                    host_cpu=args.host_cpu))
        except OSError as exc:
            raise ValidationError(f"{path}: {exc.strerror or exc}") from None
    if args.output is None:
        write_trace(records, sys.stdout.buffer)
        sys.stdout.flush()
    else:
        with open(args.output, "wb") as f:
            write_trace(records, f)
    return 0


class ProgressBar:
    """A one-line progress bar on a terminal (nothing elsewhere): our own, ten lines,
    rather than a dependency (docs/decisions.md, "The simulator")."""

    def __init__(self, label: str, stream: IO[str] | None = None, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.label, self.width = label, width
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self._last < 0.1 and done < total):
            return
        self._last = now
        share = done / total if total else 1.0
        bar = "#" * round(share * self.width)
        self.stream.write(f"\r{self.label} [{bar:<{self.width}}] {share:4.0%} "
                          f"{done}/{total} tasks")
        self.stream.flush()

    def close(self) -> None:
        """End the line."""
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _simulate(trace: list[TraceRecord], hosts: int, host: Resources, scheduler: str,
              samples: int, progress: bool) -> SimStats:
    bar = ProgressBar(f"{scheduler:>10}") if progress else None
    try:
        return Simulator(trace, hosts=hosts, host=host, scheduler=scheduler,
                         samples=samples, on_progress=bar).run()
    finally:
        if bar is not None:
            bar.close()


def cmd_run(client: object, args: argparse.Namespace) -> int:
    """``sked sim run``."""
    try:
        trace = read_trace(args.trace)
    except OSError as exc:
        raise ValidationError(f"{args.trace}: {exc.strerror or exc}") from None
    host = Resources(memory=args.host_memory, cpu_units=args.host_cpu)
    names = list(dict.fromkeys(args.scheduler))
    if args.jobs > 1 and len(names) > 1:
        with ProcessPoolExecutor(min(args.jobs, len(names))) as pool:
            futures = [pool.submit(_simulate, trace, args.hosts, host, n, args.samples,
                                   False) for n in names]
            runs = [f.result() for f in futures]
    else:
        runs = [_simulate(trace, args.hosts, host, n, args.samples, True) for n in names]
    report = write_report(args.out, str(args.trace), runs)
    headers, rows = summary_rows(report)
    print(table(headers, rows))
    plots = write_plots(args.out, report)
    if plots is None:
        print("sked: plots skipped: matplotlib is not installed (pip install "
              "'skedlib[sim]')", file=sys.stderr)
    print(f"report: {args.out / 'report.json'}" +
          (f"; plots: {', '.join(p.name for p in plots)}" if plots else ""),
          file=sys.stderr)
    return 0
