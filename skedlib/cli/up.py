"""``sked up``: combined mode — a scheduler daemon and an agent in one process.

Combined mode (``sked up``): on one machine, with the embedded store by default, one
command runs the whole loop. ``sked up -f app.yml`` starts an
:class:`~skedlib.agent.Agent` for this host and a
:class:`~skedlib.scheduler.daemon.SchedulerDaemon`, applies the manifests, prints
progress until every service's tasks are healthy (or ``--timeout`` passes, then says
why), prints the ``sked tasks`` table and keeps running until Ctrl-C / SIGTERM, which
stops the scheduler and the agent — and the tasks, unless ``--keep-tasks``.
``--once`` stops everything as soon as the services converged (exit 0) or the timeout
passed (exit 1).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from skedlib.agent.agent import Agent, AgentConfig, default_state_dir
from skedlib.agent.hostinfo import hold_state_dir
from skedlib.cli.logs import add_log_options, make_formatter
from skedlib.cli.output import table
from skedlib.client import Client
from skedlib.codecs import ManifestDocument, load_manifest, parse_manifest
from skedlib.errors import SkedError
from skedlib.models import DEFAULT_SCHEDULER, EXTERNAL_SCHEDULER, ServiceStatus, scheduler_name
from skedlib.plugins import get_registry, install_hint
from skedlib.scheduler.daemon import Pair, SchedulerDaemon
from skedlib.scheduler.status import describe
from skedlib.views import TASK_HEADERS, View, read_view, task_cells, task_rows

__all__ = ["add_parser", "cmd_up"]


def add_parser(sub: Any, common: argparse.ArgumentParser | None = None) -> None:
    """Add ``up`` to the ``sked`` subcommands (``common``: options every command takes)."""
    p = sub.add_parser(
        "up", parents=[common] if common is not None else [],
        help="combined mode: run a scheduler and an agent here, apply manifests, wait "
             "until healthy",
        description="Run a scheduler daemon and an agent for this host in one process "
                    "(combined mode), apply the manifests, wait until every "
                    "service is healthy, print the tasks, and keep running until Ctrl-C.")
    p.add_argument("-f", "--file", action="append", default=[], metavar="FILE",
                   help="manifest to apply first; repeatable")
    p.add_argument("--host", default=socket.gethostname(),
                   help="this host's name (default: the hostname)")
    p.add_argument("--state-dir", type=Path, default=None,
                   help="the agent's state directory (default: ~/.local/state/skedlib/"
                        "agent/HOST)")
    p.add_argument("--memory", type=int, default=None, metavar="MIB",
                   help="memory offered to tasks (default: the host's total)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait for every service to be healthy (default 60)")
    p.add_argument("--once", action="store_true",
                   help="exit once converged (0) or timed out (1), stopping everything")
    p.add_argument("--keep-tasks", action="store_true",
                   help="leave the tasks running on exit (the next agent adopts them)")
    p.add_argument("--workers", type=int, default=4, help="scheduler workers (default 4)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no scheduler/agent log lines, only progress")
    add_log_options(p, level=False)
    p.set_defaults(func=cmd_up)


def _executors() -> list[str]:
    """bash and process, and docker when its plugin is installed and an engine is near."""
    names = ["bash", "process"]
    installed = get_registry().names("executors")
    sock = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    near = not sock.startswith("unix://") or os.path.exists(sock[len("unix://"):])
    if "docker" in installed and near:
        names.append("docker")
    return [n for n in names if n in installed]


def _load(files: list[str]) -> ManifestDocument | None:
    if not files:
        return None
    docs = [parse_manifest(sys.stdin.read(), "<stdin>") if f == "-" else load_manifest(f)
            for f in files]
    merged = docs[0].manifest
    for d in docs[1:]:
        merged.clusters += d.manifest.clusters
        merged.services += d.manifest.services
        merged.task_definitions += d.manifest.task_definitions
    return ManifestDocument(merged, ", ".join(d.source for d in docs),
                            tuple(w for d in docs for w in d.warnings))


@contextmanager
def _signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` (restored afterwards)."""
    def on_signal(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        stop.set()

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _show_daemon_logs(quiet: bool, log_format: str = "text") -> Callable[[], None]:
    """Show the scheduler's and the agent's log lines on stderr; returns the function
    that puts the loggers back as they were found (``sked up`` can run inside a
    process that has logging of its own)."""
    if quiet:
        return lambda: None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(log_format, "  %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in ("skedlib.scheduler", "skedlib.agent")]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
        lg.propagate = False

    def restore() -> None:
        for lg, (level, propagate) in zip(loggers, saved, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate

    return restore


class _Progress:
    """Judges convergence and prints one line per change of a service's progress."""

    def __init__(self, client: Client, daemon: SchedulerDaemon, out: TextIO) -> None:
        self.client = client
        self.daemon = daemon
        self.out = out
        self.started = time.monotonic()
        self._last: dict[Pair, str] = {}

    def pairs(self, view: View) -> list[Pair]:
        snap = view.snapshot
        return sorted((c.name, s) for c in snap.clusters.values() for s in c.services)

    def status(self, view: View, pair: Pair) -> ServiceStatus | None:
        return self.daemon.last_status(pair) or view.statuses.get(pair)

    def converged(self, view: View, pair: Pair) -> bool:
        """The scheduler says ok, and the store agrees: every task of the pair runs
        healthy on a live host."""
        st = self.status(view, pair)
        if st is None or st.state != "ok":
            return False
        rows = [r for r in task_rows(view) if (r.cluster, r.service) == pair]
        return len(rows) == st.desired and all(r.healthy for r in rows)

    def line(self, view: View, pair: Pair) -> str:
        st = self.status(view, pair)
        rows = [r for r in task_rows(view) if (r.cluster, r.service) == pair]
        healthy = sum(r.healthy for r in rows)
        label = pair[1] if pair[0] == "default" else f"{pair[0]}/{pair[1]}"
        if st is None:
            return f"{label}: waiting for the scheduler"
        text = f"{label}: {st.placed}/{st.desired} placed, {healthy}/{st.desired} healthy"
        if st.state in ("unschedulable", "error"):
            text += f" — {describe(st)}"
        return text

    def report(self, view: View) -> None:
        for pair in self.pairs(view):
            text = self.line(view, pair)
            if self._last.get(pair) != text:
                self._last[pair] = text
                print(f"[{time.monotonic() - self.started:5.1f}s] {text}", file=self.out,
                      flush=True)

    def why_not(self, view: View) -> list[str]:
        """Why each service that is not healthy is not, one line each."""
        lines: list[str] = []
        rows = task_rows(view)
        for pair in self.pairs(view):
            if self.converged(view, pair):
                continue
            st = self.status(view, pair)
            label = pair[1] if pair[0] == "default" else f"{pair[0]}/{pair[1]}"
            lines.append(f"{label}: {describe(st)}")
            for st_reason in (st.reasons if st is not None else [])[1:]:
                lines.append(f"    {st_reason}")
            for r in rows:
                if (r.cluster, r.service) == pair and not r.healthy:
                    detail = f": {r.message}" if r.message else ""
                    lines.append(f"    {r.id} on {r.host or '-'}: {r.state}{detail}")
        return lines


def cmd_up(client: Client, args: argparse.Namespace) -> int:
    """``sked up [-f FILE …] [--once] [--timeout S] [--keep-tasks]``."""
    out = sys.stdout
    stop = threading.Event()
    doc = _load(args.file)
    installed = get_registry().names("schedulers")
    wanted = ({scheduler_name(s.scheduler) for s in doc.manifest.services} if doc
              else {DEFAULT_SCHEDULER})
    for name in sorted(wanted - set(installed) - {EXTERNAL_SCHEDULER}):
        print(f"warning: no scheduler named {name!r} is installed (installed: "
              f"{', '.join(installed) or 'none'}); "
              + (install_hint("schedulers", name) or "its services will not be placed"),
              file=sys.stderr)
    executors = _executors()
    config = AgentConfig(host=args.host, executors=executors, prefix=client.keys.prefix,
                         state_dir=args.state_dir or default_state_dir(args.host),
                         memory=args.memory, stop_tasks_on_exit=not args.keep_tasks)
    print(f"sked up: store {client.backend.url or '?'}, host {args.host}, executors "
          f"{', '.join(executors)}", file=out, flush=True)
    try:  # held while the agent runs (as skedlib-agent holds it)
        state_lock = hold_state_dir(args.host, args.state_dir)
    except OSError as exc:
        raise SkedError(str(exc)) from None
    try:
        return _run_up(client, args, config, doc, stop, out)
    finally:
        os.close(state_lock)


def _run_up(client: Client, args: argparse.Namespace, config: AgentConfig,
            doc: ManifestDocument | None, stop: threading.Event, out: TextIO) -> int:
    """Run the agent and the scheduler until the services converge or the user stops."""
    agent = Agent(client.backend, config)
    daemon = SchedulerDaemon(client.store, workers=args.workers)
    restore_logs = _show_daemon_logs(args.quiet, args.log_format)
    try:
        with _signals(stop):
            agent.start()
            if not agent.wait_ready(30):
                raise SkedError(f"the agent for host {args.host} did not become ready "
                                "within 30s")
            daemon.start()
            if not daemon.wait_ready(30):
                raise SkedError("the scheduler did not read the store within 30s")
            if doc is not None:
                for w in doc.warnings:
                    print(f"warning: {w}", file=sys.stderr)
                result = client.apply(doc)
                for verb, labels in (("created", result.created),
                                     ("configured", result.configured),
                                     ("unchanged", result.unchanged)):
                    for label in labels:
                        print(f"{label} {verb}", file=out)
            code = _converge(client, daemon, args, stop, out)
            if stop.is_set():
                return 130
            if args.once:
                return code
            print("running: Ctrl-C stops the scheduler and the agent"
                  + (" (tasks keep running)" if args.keep_tasks else " and the tasks"),
                  file=out, flush=True)
            progress = _Progress(client, daemon, out)
            progress.report(read_view(client))
            while not stop.wait(1.0):
                progress.report(read_view(client))
            return 0
    finally:
        print("stopping the scheduler and the agent"
              + ("" if args.keep_tasks else " (and the tasks)") + " …", file=out, flush=True)
        daemon.stop()
        agent.stop(stop_tasks=not args.keep_tasks)
        restore_logs()
        print("stopped", file=out, flush=True)


def _converge(client: Client, daemon: SchedulerDaemon, args: argparse.Namespace,
              stop: threading.Event, out: TextIO) -> int:
    """Print progress until every service is healthy (0) or the timeout passes (1)."""
    progress = _Progress(client, daemon, out)
    deadline = time.monotonic() + args.timeout
    while True:
        view = read_view(client)
        progress.report(view)
        pairs = progress.pairs(view)
        if pairs and all(progress.converged(view, p) for p in pairs):
            print(f"every service is healthy ({len(pairs)} service(s), "
                  f"{time.monotonic() - progress.started:.1f}s)", file=out)
            _print_tasks(view, out)
            return 0
        if not pairs and time.monotonic() - progress.started > 1.0:
            print("no services to run (apply a manifest with -f)", file=out)
            return 0
        if time.monotonic() >= deadline or stop.is_set():
            if stop.is_set():
                print("interrupted before every service was healthy:", file=out)
            else:
                print(f"not every service is healthy after {args.timeout:g}s:", file=out)
            for line in progress.why_not(view):
                print(f"  {line}", file=out)
            _print_tasks(view, out)
            return 1
        stop.wait(0.25)


def _print_tasks(view: View, out: TextIO) -> None:
    rows = task_rows(view)
    print("", file=out)
    print(table(TASK_HEADERS, [task_cells(r) for r in rows]) if rows else "no tasks",
          file=out, flush=True)
