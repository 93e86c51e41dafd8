"""``skedlib-scheduler``: run the scheduler daemon until SIGTERM or SIGINT.

::

    skedlib-scheduler --backend etcd://10.0.0.1:2379,10.0.0.2:2379 --workers 4

Run as many as you like against one store: they share the work through per-service
locks. Logs one line per action on stderr ("placed default-web-1-0 on h1",
"web: 2 task(s) unschedulable: …"). Exit status: 0 after a clean shutdown, 1 when it
cannot start (backend, plugins), 2 for bad usage.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from skedlib.cli.args import add_backend_options, metrics_listen, positive_number, start_metrics
from skedlib.cli.logs import add_log_options, configure_logging
from skedlib.client import default_backend_url
from skedlib.errors import SkedError
from skedlib.keys import Keyspace
from skedlib.plugins import get_registry, open_backend
from skedlib.runtime import Store
from skedlib.scheduler.daemon import SchedulerDaemon, tune_gc, tune_switch_interval
from skedlib.scheduling import ExecSchedulers
from skedlib.scheduling.executable import DEFAULT_TIMEOUT

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``skedlib-scheduler``."""
    p = argparse.ArgumentParser(prog="skedlib-scheduler",
                                description="Keep every service of every cluster placed.")
    add_backend_options(p)
    p.add_argument("--workers", type=int, default=4,
                   help="services planned at once (default 4)")
    p.add_argument("--lock-ttl", type=positive_number, default=10.0, metavar="SECONDS",
                   help="TTL of the per-service locks' leases (default 10)")
    p.add_argument("--resync", type=positive_number, default=30.0, metavar="SECONDS",
                   help="every service is planned again this often (default 30)")
    p.add_argument("--metrics", type=metrics_listen, default=None, metavar="[HOST]:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (HOST "
                        "defaults to 127.0.0.1; a non-loopback address exposes them to "
                        "the network, unauthenticated; see docs/metrics.md)")
    p.add_argument("--exec-schedulers", type=Path, default=None, metavar="DIR",
                   help="offer each executable DIR/NAME as the scheduler NAME: it reads the "
                        "service to plan as JSON on stdin and writes its plan on stdout "
                        "(`sked schema exec_request`, `exec_response`; "
                        "docs/writing-a-scheduler.md)")
    p.add_argument("--exec-timeout", type=positive_number, default=DEFAULT_TIMEOUT,
                   metavar="SECONDS", help="an exec scheduler is killed after this long "
                                           f"(default {DEFAULT_TIMEOUT:g})")
    add_log_options(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``skedlib-scheduler``."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, log_format=args.log_format)
    log = logging.getLogger("skedlib.scheduler")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del frame
        log.info("%s: shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        keyspace = Keyspace(args.prefix)
        registry = get_registry()
        if args.exec_schedulers is not None:
            programs = ExecSchedulers(args.exec_schedulers, timeout=args.exec_timeout)
            registry.register(programs, name=f"exec-schedulers:{programs.directory}")
            for name, why in {**programs.skipped, **programs.refused()}.items():
                log.warning("exec scheduler %s: %s", name, why)
        schedulers = registry.names("schedulers")
        backend = open_backend(args.backend or default_backend_url())
    except (SkedError, OSError) as exc:
        print(f"skedlib-scheduler: {exc}", file=sys.stderr)
        return 1
    log.info("schedulers installed: %s", ", ".join(schedulers) or "none")
    tune_gc()
    tune_switch_interval()
    try:
        exporter = start_metrics(args.metrics, "skedlib-scheduler")
    except SkedError as exc:
        print(f"skedlib-scheduler: {exc}", file=sys.stderr)
        backend.close()
        return 1
    try:
        daemon = SchedulerDaemon(Store(backend, keyspace), registry,
                                 workers=max(1, args.workers),
                                 lock_ttl=args.lock_ttl, resync=args.resync)
        daemon.run(stop)
    finally:
        if exporter is not None:
            exporter.close()
        backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
