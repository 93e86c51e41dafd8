"""``skedlib-agent``: run the tasks issued to this host.

::

    skedlib-agent --backend sqlite:///var/lib/sked.db --host web-1 \\
        --attribute zone=a --executors bash,process --lease-ttl 10

Logs one line per action on stderr. SIGTERM or SIGINT stops watching and exits; tasks
keep running for the next agent to adopt, unless ``--stop-tasks-on-exit``. Exit status:
0 after a clean shutdown, 1 when the agent cannot start (backend, plugin, state dir),
2 for bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from skedlib.agent.hostinfo import (
    default_address,
    default_state_dir,
    hold_state_dir,
    measure_total,
)
from skedlib.agent.ports import DEFAULT_PORT_RANGE
from skedlib.api.listen import is_loopback
from skedlib.cli.args import add_backend_options, metrics_listen, positive_number, start_metrics
from skedlib.cli.logs import add_log_options, configure_logging
from skedlib.durations import SECOND, parse_duration
from skedlib.errors import SkedError, ValidationError
from skedlib.executors.policy import HostPolicy, Identity, load_policy
from skedlib.jobs.models import JobRequirements
from skedlib.jobs.worker import JobWorker, WorkerConfig
from skedlib.plugins import default_backend_url, open_backend

if TYPE_CHECKING:  # imported when an agent runs: a job worker alone does not load it
    from skedlib.agent.agent import Agent, AgentConfig

__all__ = ["JOBS_LISTEN_DEFAULT", "build_parser", "config_from_args", "host_policy_from_args",
           "main", "worker_config_from_args"]


JOBS_LISTEN_DEFAULT = "127.0.0.1"
"""The job output server's default host: loopback (another host needs ``--jobs-listen``)."""


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _port_range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition("-")
    try:
        lo, hi = int(low), int(high)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW-HIGH, got {text!r}") from None
    if not sep or not 0 < lo <= hi <= 65535:
        raise argparse.ArgumentTypeError(f"expected LOW-HIGH within 1-65535, got {text!r}")
    return lo, hi


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage, got {text!r}") from None
    if not 0 < value < 100:
        raise argparse.ArgumentTypeError(
            f"expected a percentage greater than 0 and less than 100, got {text!r}")
    return value


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT with a host (0.0.0.0 for every "
                                         f"interface), got {text!r}")
    return host, int(port)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") \
            from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _duration(text: str) -> float:
    """Seconds from a Go-style duration (``30s``, ``1m``) or a bare number of seconds."""
    try:
        return float(text) if text.strip().replace(".", "", 1).isdigit() \
            else parse_duration(text) / SECOND
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``skedlib-agent``."""
    p = argparse.ArgumentParser(prog="skedlib-agent",
                                description="Run the tasks the issued state gives this host.")
    add_backend_options(p)
    p.add_argument("--host", default=socket.gethostname(),
                   help="this host's name (default: the hostname)")
    p.add_argument("--address", default="", help="address published in the host record "
                                                 "(default: the outward IP address)")
    p.add_argument("--cluster", default="", help="cluster published in the host record")
    p.add_argument("--attribute", action="append", type=_key_value, default=[],
                   metavar="KEY=VALUE", help="a host attribute for constraints; repeatable")
    p.add_argument("--executors", action="append", metavar="NAME[,NAME…]",
                   help="executors enabled on this host (default: every installed one)")
    p.add_argument("--policy", type=Path, default=None, metavar="FILE",
                   help="host policy (YAML): which executors, commands, images, docker "
                        "options and users this host accepts (default: every executor, "
                        "command and image; no dangerous docker option; see "
                        "docs/security.md)")
    p.add_argument("--run-as", default="", metavar="USER[:GROUP]",
                   help="run process and bash tasks as this user, and docker containers "
                        "with --user UID:GID (default: the policy's run_as, else the "
                        "agent's own user)")
    p.add_argument("--executor-opt", action="append", type=_key_value, default=[],
                   metavar="EXECUTOR.KEY=VALUE",
                   help="an executor option, e.g. process.log_max_bytes=1000000")
    p.add_argument("--health-provider", default="",
                   help="health provider plugin (default: consul with a consul:// backend, "
                        "else local)")
    p.add_argument("--health-opt", action="append", type=_key_value, default=[],
                   metavar="KEY=VALUE",
                   help="a health provider option, e.g. consul.url=http://127.0.0.1:8500")
    p.add_argument("--state-dir", type=Path, default=None,
                   help="executor state (pid records, work dirs); must survive restarts "
                        "(default: ~/.local/state/skedlib/agent/HOST, as root "
                        "/var/lib/skedlib/agent/HOST)")
    p.add_argument("--log-dir", type=Path, default=None,
                   help="task logs (default: STATE_DIR/logs)")
    p.add_argument("--lease-ttl", type=positive_number, default=10.0, metavar="SECONDS",
                   help="TTL of the host record's lease (default 10)")
    p.add_argument("--memory", type=int, default=None, metavar="MIB",
                   help="memory offered to tasks (default: the host's total)")
    p.add_argument("--cpu-units", type=int, default=None,
                   help="CPU units offered, 1024 per core (default: every core)")
    p.add_argument("--disk", type=int, default=None, metavar="MIB",
                   help="disk offered to tasks (default: the state dir's file system)")
    p.add_argument("--port-range", type=_port_range, default=DEFAULT_PORT_RANGE,
                   metavar="LOW-HIGH",
                   help="where provided ports are picked (default "
                        f"{DEFAULT_PORT_RANGE[0]}-{DEFAULT_PORT_RANGE[1]})")
    p.add_argument("--workers", type=int, default=16,
                   help="starts and stops in flight at once (default 16)")
    p.add_argument("--check-failures", type=int, default=3,
                   help="consecutive critical results of a check that count as a failed "
                        "attempt (default 3)")
    p.add_argument("--memory-pressure", type=_percent, default=0.0, metavar="PERCENT",
                   help="when this percent of the host's memory or more is in use, give up "
                        "one running task (the lowest priority, then the newest) so the "
                        "scheduler moves it (default: off)")
    p.add_argument("--pressure-cooldown", type=_seconds, default=60.0, metavar="SECONDS",
                   help="seconds between two give-ups under memory pressure (default 60)")
    p.add_argument("--stop-after-disconnect", type=_duration, default=0.0,
                   metavar="DURATION",
                   help="stop (fence) this host's tasks when the host lease could not be "
                        "renewed for this long, e.g. 8s, so they never run beside their "
                        "replacements; a task definition's stop_after_disconnect wins; "
                        "from half the lease TTL to the TTL (default: off)")

    p.add_argument("--logs-address", type=_listen, default=("127.0.0.1", 0),
                   metavar="HOST:PORT",
                   help="where the task output server for `sked logs` listens (default "
                        "127.0.0.1:0, a free loopback port: `sked logs` works on this host "
                        "only; give the published address, or 0.0.0.0, to serve other "
                        "hosts; requests need the token the agent publishes in the store)")
    p.add_argument("--no-logs-server", action="store_true",
                   help="serve no task output (`sked logs` cannot reach this host)")
    p.add_argument("--no-events", action="store_true",
                   help="record no task events in the store (`sked describe` shows none)")
    p.add_argument("--stop-tasks-on-exit", action="store_true",
                   help="stop every task on SIGTERM/SIGINT (default: leave them running)")
    g = p.add_argument_group("batch jobs (work stealing; see docs/jobs.md)")
    g.add_argument("--jobs", action="store_true",
                   help="also work off the batch job queue on this host")
    g.add_argument("--jobs-only", action="store_true",
                   help="only work off the batch job queue (no tasks)")
    g.add_argument("--job-slots", type=int, default=0, metavar="N",
                   help="jobs run at once at most (default: the number of cores)")
    g.add_argument("--job-memory", type=int, default=None, metavar="MIB",
                   help="memory offered to jobs (default: the host's total)")
    g.add_argument("--job-cpu-units", type=int, default=None, metavar="UNITS",
                   help="CPU offered to jobs, 1024 per core (default: every core)")
    g.add_argument("--job-disk", type=int, default=None, metavar="MIB",
                   help="disk offered to jobs (default: free space of the state dir)")
    g.add_argument("--jobs-listen", type=_listen, default=None, metavar="HOST:PORT",
                   help="where the job output server listens (default 127.0.0.1:0, a free "
                        "loopback port: `sked job logs` works on this host only; give the "
                        "published address, or 0.0.0.0, to serve other hosts)")
    g.add_argument("--job-limits", default="auto",
                   choices=("auto", "cgroup2", "cgroup1", "rlimit", "none"),
                   help="how job requirements are enforced (default auto: cgroup v2, "
                        "else v1, else rlimits)")
    g.add_argument("--job-retention", type=_seconds, default=7 * 86400.0, metavar="SECONDS",
                   help="how long finished jobs and their output are kept (default 7 days)")
    g.add_argument("--job-grace-period", type=_seconds, default=10.0, metavar="SECONDS",
                   help="SIGTERM to SIGKILL when a job is stopped (default 10)")
    g.add_argument("--job-drain", type=_seconds, default=0.0, metavar="SECONDS",
                   help="on shutdown, let running jobs finish this long before giving "
                        "them back to the queue (default 0)")
    g.add_argument("--job-claim-delay", type=_seconds, default=0.02, metavar="SECONDS",
                   help="wait before a claim when every slot is busy, scaled by the load "
                        "(default 0.02)")
    g.add_argument("--no-job-cleaner", action="store_true",
                   help="never act as the elected job cleaner")
    p.add_argument("--metrics", type=metrics_listen, default=None, metavar="[HOST]:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (HOST "
                        "defaults to 127.0.0.1; a non-loopback address exposes them to "
                        "the network, unauthenticated; see docs/metrics.md)")
    add_log_options(p)
    return p


def host_policy_from_args(args: argparse.Namespace) -> HostPolicy:
    """The host policy of parsed arguments (``--policy``, ``--run-as``): what tasks and
    jobs may run here, and as whom."""
    policy = load_policy(args.policy) if args.policy else HostPolicy()
    if args.run_as:
        try:
            Identity.resolve(args.run_as)
        except ValueError as exc:
            raise SkedError(f"--run-as {args.run_as}: {exc}") from None
        policy.run_as = args.run_as
    return policy


def _executor_options(args: argparse.Namespace) -> dict[str, dict[str, str]]:
    """``--executor-opt EXECUTOR.KEY=VALUE`` items: executor → its options."""
    options: dict[str, dict[str, str]] = {}
    for key, value in args.executor_opt:
        name, sep, option = key.partition(".")
        if not sep or not option:
            raise SkedError(f"--executor-opt {key}={value}: expected EXECUTOR.KEY=VALUE")
        options.setdefault(name, {})[option] = value
    return options


def config_from_args(args: argparse.Namespace,
                     policy: HostPolicy | None = None) -> AgentConfig:
    """An :class:`AgentConfig` from parsed arguments (``policy``: the one
    :func:`host_policy_from_args` gave, else read again)."""
    from skedlib.agent.agent import AgentConfig

    executors = None
    if args.executors:
        executors = [n.strip() for item in args.executors for n in item.split(",")
                     if n.strip()]
    options = _executor_options(args)
    if policy is None:
        policy = host_policy_from_args(args)
    return AgentConfig(
        host_policy=policy,
        host=args.host, address=args.address, cluster=args.cluster,
        attributes=dict(args.attribute), executors=executors, executor_options=options,
        health_provider=args.health_provider, health_options=dict(args.health_opt),
        # None: the agent's own default, which it narrows to 0700 if an older version
        # left it wider (a --state-dir the operator gave is theirs)
        state_dir=args.state_dir, log_dir=args.log_dir,
        prefix=args.prefix, lease_ttl=args.lease_ttl, memory=args.memory,
        cpu_units=args.cpu_units, disk=args.disk, port_range=args.port_range,
        workers=max(1, args.workers), check_failures=max(1, args.check_failures),
        stop_tasks_on_exit=args.stop_tasks_on_exit, memory_pressure=args.memory_pressure,
        pressure_cooldown=args.pressure_cooldown,
        stop_after_disconnect=args.stop_after_disconnect, events=not args.no_events,
        logs_listen=None if args.no_logs_server else args.logs_address)


def worker_config_from_args(args: argparse.Namespace,
                            policy: HostPolicy | None = None) -> WorkerConfig:
    """A job :class:`WorkerConfig` from parsed arguments, under the agent's host
    ``policy`` (the commands and the user of jobs too)."""
    # loopback unless the operator says otherwise: the log server serves job output
    host, port = args.jobs_listen or (JOBS_LISTEN_DEFAULT, 0)
    if is_loopback(host):
        advertise = host  # other hosts could not reach it under another name
    else:
        advertise = args.address or (host if host not in ("0.0.0.0", "::")
                                     else default_address())
    capacity = None
    if args.job_memory is not None or args.job_cpu_units is not None \
            or args.job_disk is not None:
        total = measure_total(args.state_dir or default_state_dir(args.host),
                              memory=args.job_memory, cpu_units=args.job_cpu_units,
                              disk=args.job_disk)
        capacity = JobRequirements(memory=total.memory, cpu_units=total.cpu_units,
                                   disk=total.disk)
    if args.job_slots < 0:
        raise SkedError(f"--job-slots must be >= 0, got {args.job_slots}")
    return WorkerConfig(
        node=args.host, state_dir=args.state_dir or default_state_dir(args.host),
        capacity=capacity, slots=args.job_slots, listen=(host, port),
        advertise=advertise,
        lease_ttl=args.lease_ttl, claim_delay=args.job_claim_delay, limits=args.job_limits,
        retention=args.job_retention, cleaner=not args.no_job_cleaner,
        grace_period=args.job_grace_period, drain_timeout=args.job_drain,
        prefix=args.prefix, policy=policy or HostPolicy())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``skedlib-agent``."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, log_format=args.log_format)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del frame
        logging.getLogger("skedlib.agent").info("%s: shutting down",
                                                signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        policy = host_policy_from_args(args)
        if args.jobs_only:  # no agent configuration (nor the agent's modules), but a
            _executor_options(args)  # malformed option is still an error
            config = None
        else:
            config = config_from_args(args, policy)
        backend = open_backend(args.backend or default_backend_url())
    except (SkedError, OSError) as exc:
        print(f"skedlib-agent: {exc}", file=sys.stderr)
        return 1
    agent: Agent | None = None
    worker: JobWorker | None = None
    opened = contextlib.ExitStack()  # what is given back at exit, the last first
    opened.callback(backend.close)
    try:
        exporter = start_metrics(args.metrics, "skedlib-agent")
        if exporter is not None:
            opened.callback(exporter.close)
        if config is not None:
            from skedlib.agent.agent import Agent

            # held before the agent is built: opening its executors and health provider
            # already touches what is in the directory
            opened.callback(os.close, hold_state_dir(config.host, config.state_dir))
            agent = Agent(backend, config)
        if args.jobs or args.jobs_only:
            worker = JobWorker(backend, worker_config_from_args(args, policy))
    except (SkedError, OSError, ValueError) as exc:
        print(f"skedlib-agent: {exc}", file=sys.stderr)
        opened.close()
        return 1
    with opened:
        if worker is not None:
            worker.start()
        if agent is not None:
            agent.start()
        stop.wait()
        if agent is not None:
            agent.stop()
        if worker is not None:
            worker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
