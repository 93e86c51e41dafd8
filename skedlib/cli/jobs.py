"""``sked job submit|status|ls|cancel|wait|logs|nodes``: batch jobs (see ``docs/jobs.md``).

Like ``sked env``, these commands work on the store directly, through the same
:class:`~skedlib.jobs.client.JobClient` the REST API uses, so they need no running
server; ``sked job logs`` fetches the output from the job worker that ran the job.

Exit status: 0 on success; ``wait ID…`` (and ``submit --wait``) exit 1 when any job
failed or was canceled, after a one-line summary of each on stdout. Errors (an unknown
id, canceling a finished job, a wait that timed out, output that cannot be fetched) are one
line on stderr and exit 1; bad usage (a bad size, ``--env`` without ``=``) is one line and exit 2.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from skedlib.cli.args import positive_number
from skedlib.cli.output import Listing, add_output_options, columns, render, show
from skedlib.client import Client
from skedlib.durations import format_duration
from skedlib.jobs.client import JobClient, JobWaitTimeout
from skedlib.jobs.models import JOB_STATES, Job, JobNode
from skedlib.jobs.reasons import with_waiting_reasons

__all__ = ["JOB_HEADERS", "NODE_HEADERS", "add_parsers", "cmd_job", "parse_cores",
           "parse_size", "summary"]

JOB_HEADERS = ["id", "name", "status", "node", "exit", "age", "duration", "reason"]
NODE_HEADERS = ["name", "slots", "memory", "cpu", "disk", "limits", "log url", "host",
                "pid", "up"]
REASON_WIDTH = 60
"""``sked job ls`` trims reasons to this many characters."""

_UNITS = {"": 1.0, "K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0 ** 2}
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(?:([KMGT])(?:IB|I|B)?)?", re.IGNORECASE)
_MAX_MIB = 2 ** 50
"""Sizes above this many MiB (a zebibyte) are refused: a typo, not a requirement."""


# -- parsing ------------------------------------------------------------------------------
def parse_size(text: str) -> int:
    """A size → whole MiB (rounded up). A plain integer is MiB; a number (decimals
    allowed) with K, M, G or T is binary KiB, MiB, GiB or TiB (``512M``, ``2G``,
    ``1.5GiB``; case-insensitive; ``B``, ``i`` or ``iB`` may follow the letter).

    Raises :class:`ValueError` with a one-line message.
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"bad size {text!r}: expected MiB as an integer, or a number with "
                         "K, M, G or T (binary), e.g. 512M or 2G")
    number, unit = match.group(1), (match.group(2) or "").upper()
    if not unit and not number.isdigit():
        raise ValueError(f"bad size {text!r}: a number without a unit is MiB and must be "
                         "whole; add a unit, e.g. 1.5G")
    mib = math.ceil(float(number) * _UNITS[unit])
    if mib > _MAX_MIB:
        raise ValueError(f"bad size {text!r}: too large")
    return mib


def parse_cores(text: str) -> int:
    """``--cpu CORES`` (a number > 0, e.g. ``0.5``) → cpu units (1024 per core, rounded
    up). Raises :class:`ValueError`."""
    try:
        cores = float(text)
    except ValueError:
        cores = math.nan
    if not 0 < cores <= 1 << 20:  # also refuses nan and inf
        raise ValueError(f"bad CPU {text!r}: expected a number of cores > 0, e.g. 2 or 0.5")
    return math.ceil(cores * 1024)


def _argtype(parse: Any) -> Any:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = parse.__name__
    return convert


def _env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"bad environment variable {text!r}: expected KEY=VALUE")
    return key, value


def _offset(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"bad offset {text!r}: expected a byte count >= 0")
    return int(text)


# -- the parser ---------------------------------------------------------------------------
def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``job`` and its subcommands to ``sked``'s subcommands."""
    p = sub.add_parser("job", parents=[common],
                       help="batch jobs: submit, status, ls, cancel, wait, logs, nodes")
    jsub = p.add_subparsers(dest="job_command", required=True, metavar="COMMAND")
    p.set_defaults(func=cmd_job)

    c = jsub.add_parser(
        "submit", parents=[common], help="queue a command as a batch job",
        description="Queue CMD ARGS… as a batch job; prints its id. Put -- before the "
                    "command when it has options of its own: sked job submit --memory 2G "
                    "-- python3 train.py --epochs 3. SIZE: an integer is MiB; with K, M, "
                    "G or T it is binary (512M, 2G, 1.5G), rounded up to whole MiB.")
    c.add_argument("--memory", type=_argtype(parse_size), default=0, metavar="SIZE",
                   help="memory it needs; it is killed when it uses more (default: none)")
    cpu = c.add_mutually_exclusive_group()
    cpu.add_argument("--cpu", type=_argtype(parse_cores), default=None, metavar="CORES",
                     help="CPU it needs, in cores (e.g. 0.5); it is throttled to it")
    cpu.add_argument("--cpu-units", type=int, default=None, metavar="N",
                     help="CPU it needs, 1024 per core")
    c.add_argument("--disk", type=_argtype(parse_size), default=0, metavar="SIZE",
                   help="disk the node must have free for it (default: none)")
    c.add_argument("--env", type=_argtype(_env_pair), action="append", default=[],
                   metavar="KEY=VALUE", help="an environment variable; repeatable")
    c.add_argument("--cwd", default="", metavar="DIR",
                   help="working directory on the node (default: a fresh one per job)")
    c.add_argument("--name", default="", help="a label for people (not unique)")
    c.add_argument("--no-restart", action="store_true",
                   help="fail the job when its node dies, instead of queueing it again")
    c.add_argument("--max-attempts", type=int, default=3, metavar="N",
                   help="attempts in all, counting each claim (1-100, default 3)")
    c.add_argument("--timeout", type=positive_number, default=0.0, metavar="SECONDS",
                   help="kill and fail the job after it ran this long (default: no limit)")
    c.add_argument("--id", default=None, dest="job_id",
                   help="the job's id (default: a new UUID v7); a second submit with the "
                        "same id is refused, so a retried command queues one job")
    c.add_argument("--wait", action="store_true",
                   help="then wait until it ends, as `sked job wait` (exit 1 if it failed "
                        "or was canceled)")
    c.add_argument("--wait-timeout", type=positive_number, default=None, metavar="SECONDS",
                   help="with --wait: give up after this long (default: wait until it ends)")
    c.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table",
                   metavar="FORMAT",
                   help="table: the id (with --wait, then a summary line); json, yaml: "
                        "the job")
    c.add_argument("argv", nargs="+", metavar="CMD [ARGS…]", help="the command to run")

    c = jsub.add_parser("status", parents=[common],
                        help="a job's state, node, attempts, exit code, reason, times")
    c.add_argument("job_id", metavar="ID", help="the job")
    add_output_options(c)

    c = jsub.add_parser("ls", parents=[common], help="list jobs, oldest first")
    c.add_argument("--status", choices=JOB_STATES, default=None,
                   help="only jobs in this state")
    add_output_options(c)

    c = jsub.add_parser("cancel", parents=[common],
                        help="cancel a queued or running job (its node stops it)")
    c.add_argument("job_id", metavar="ID", help="the job")

    c = jsub.add_parser("wait", parents=[common],
                        help="wait until jobs end; exit 0 if all succeeded, else 1",
                        description="Wait until every job given has ended, then print a "
                                    "line on each. Exit status: 0 if every job completed "
                                    "with exit code 0; 1 if any failed or was canceled, "
                                    "or the timeout passed (an error, after the lines of "
                                    "the jobs that ended).")
    c.add_argument("job_ids", nargs="+", metavar="ID", help="the jobs (one or more)")
    c.add_argument("--timeout", type=positive_number, default=None, metavar="SECONDS",
                   help="give up after this long in all (exit 1; default: wait until "
                        "they end)")
    c.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table",
                   metavar="FORMAT",
                   help="table: a one-line summary per job; json, yaml: the job (a list "
                        "of jobs for several ids)")

    c = jsub.add_parser("logs", parents=[common],
                        help="a job's output (stdout and stderr), from its node")
    c.add_argument("job_id", metavar="ID", help="the job")
    c.add_argument("-f", "--follow", action="store_true",
                   help="keep writing the output as it comes, until the job ends")
    c.add_argument("--offset", type=_argtype(_offset), default=0, metavar="BYTES",
                   help="start at this byte of the output (default 0)")

    c = jsub.add_parser("nodes", parents=[common], help="the live job workers")
    add_output_options(c)


# -- rendering ----------------------------------------------------------------------------
def _span(seconds: float) -> str:
    """``4.2s``, ``3m7s``, ``2h0m5s``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    return format_duration(round(seconds) * 1_000_000_000)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _mib(n: int) -> str:
    if not n:
        return "-"
    for unit, size in (("T", 1024 ** 2), ("G", 1024)):
        if n >= size:
            return f"{n / size:.1f}".removesuffix(".0") + unit
    return f"{n}M"


def _cores(units: int) -> str:
    return f"{units / 1024:.2f}".rstrip("0").rstrip(".") if units else "-"


def _exit(code: int | None) -> str:
    if code is None:
        return "-"
    if code < 0:
        try:
            return f"{code} (killed by {signal.Signals(-code).name})"
        except ValueError:
            return f"{code} (killed by signal {-code})"
    return str(code)


def _ran(job: Job, now: float) -> float | None:
    if job.started_at is None:
        return None
    return (job.finished_at or now) - job.started_at


def _trim(text: str, width: int = REASON_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def _job_row(job: Job, now: float) -> list[Any]:
    ran = _ran(job, now)
    return [job.id, job.name, job.status, job.node,
            "" if job.exit_code is None else job.exit_code, _span(now - job.submitted_at),
            "" if ran is None else _span(ran), _trim(job.reason)]


def _node_row(node: JobNode, now: float) -> list[Any]:
    cap = node.capacity
    return [node.name, node.slots, _mib(cap.memory), _cores(cap.cpu_units), _mib(cap.disk),
            node.limits, node.log_url, node.hostname, node.pid or "",
            _span(now - node.started_at) if node.started_at else ""]


def _status_block(job: Job, now: float) -> str:
    where = f" on node {job.node}" if job.status == "running" and job.node else ""
    ran = _ran(job, now)
    rows = [
        ("name", job.name or "-"),
        ("command", shlex.join([job.command, *job.args])),
        ("requirements", job.requirements.describe()),
        ("node", job.node or "-"),
        ("attempts", f"{job.attempts}/{job.max_attempts}"
                     + ("" if job.restart_on_node_failure else " (no restart)")),
        ("exit code", _exit(job.exit_code)),
        ("reason", job.reason or "-"),
        ("timeout", _span(job.timeout / 1e9) if job.timeout else "none"),
        ("limits", job.limits or "-"),
        ("submitted", f"{_when(job.submitted_at)} ({_span(now - job.submitted_at)} ago)"),
        ("started", _when(job.started_at)),
        ("finished", _when(job.finished_at)),
        ("ran for", "-" if ran is None else _span(ran)),
    ]
    width = max(len(k) for k, _ in rows) + 1
    return "\n".join([f"job {job.id}: {job.status}{where}"]
                     + [f"  {k + ':':<{width}} {v}" for k, v in rows])


def summary(job: Job, now: float | None = None) -> str:
    """One line on how a job ended (or where it is)."""
    now = time.time() if now is None else now
    line = f"job {job.id} {job.status}"
    if job.node and job.started_at is not None:
        line += f" on node {job.node}"
    ran = _ran(job, now)
    if ran is not None:
        line += f" after {_span(ran)}"
    details = []
    if job.exit_code is not None and job.exit_code != 0 and (
            not job.reason or ("exit code" not in job.reason
            and "signal" not in job.reason)):
        details.append(f"exit code {_exit(job.exit_code)}")
    if job.reason and job.reason != job.status:
        details.append(job.reason)
    return line + (": " + "; ".join(details) if details else "")


def _show(objects: Sequence[Any], fmt: str) -> None:
    print(render(objects, fmt, [], lambda o: [], single=True))


def _job_listing(items: Sequence[Job], status: str | None) -> Listing[Job]:
    now = time.time()
    return Listing("job", items, columns(JOB_HEADERS, lambda j: _job_row(j, now),
                                         states=("status",)),
                   name=lambda j: j.id,
                   empty="no jobs" + (f" {status}" if status else ""))


def _node_listing(nodes: Sequence[JobNode]) -> Listing[JobNode]:
    now = time.time()
    return Listing("node", sorted(nodes, key=lambda n: n.name),
                   columns(NODE_HEADERS, lambda n: _node_row(n, now)), name=lambda n: n.name,
                   empty="no job workers (start one: skedlib-agent --jobs)")


# -- commands -----------------------------------------------------------------------------
def cmd_job(client: Client, args: argparse.Namespace) -> int:
    """``sked job submit|status|ls|cancel|wait|logs|nodes``."""
    jobs = JobClient(client.store)
    command: str = args.job_command
    if command == "submit":
        return _submit(jobs, args)
    if command == "status":
        def status() -> Listing[Job]:
            job = jobs.status(args.job_id)
            return Listing("job", [job], [], name=lambda j: j.id, single=True,
                           text=lambda js, _: "\n\n".join(
                               _status_block(j, time.time()) for j in js))
        return show(client, args, status)
    if command == "ls":
        return show(client, args, lambda: _job_listing(
            with_waiting_reasons(jobs, jobs.list(args.status)), args.status))
    if command == "cancel":
        job = jobs.cancel(args.job_id)
        was = (f"it was running on node {job.node}, which stops it"
               if job.started_at is not None and job.node else "it was queued")
        print(f"job {job.id} canceled ({was})")
        return 0
    if command == "wait":
        return _wait(jobs, args.job_ids, args.timeout, args.output)
    if command == "logs":
        return _logs(jobs, args.job_id, args.follow, args.offset)
    return show(client, args, lambda: _node_listing(jobs.nodes()))


def _submit(jobs: JobClient, args: argparse.Namespace) -> int:
    cpu_units = args.cpu if args.cpu is not None else (args.cpu_units or 0)
    job = jobs.submit(args.argv[0], args.argv[1:], env=dict(args.env), cwd=args.cwd,
                      memory=args.memory, cpu_units=cpu_units, disk=args.disk,
                      restart_on_node_failure=not args.no_restart,
                      max_attempts=args.max_attempts, timeout=args.timeout,
                      name=args.name, job_id=args.job_id)
    if args.output == "table":
        print(job.id, flush=True)
    if args.wait:
        return _wait(jobs, [job.id], args.wait_timeout, args.output)
    if args.output != "table":
        _show([job], args.output)
    return 0


def _wait(jobs: JobClient, job_ids: Sequence[str], timeout: float | None, fmt: str) -> int:
    """Wait for each job in turn (``timeout`` is for them all); print each outcome as it
    is known; 0 if every job succeeded, else 1."""
    deadline = None if timeout is None else time.monotonic() + timeout
    ended: list[Job] = []
    for job_id in job_ids:
        left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
        try:
            job = jobs.wait(job_id, left)
        except JobWaitTimeout:
            now = jobs.status(job_id)
            raise JobWaitTimeout(f"job {job_id} is still {now.status} after {timeout:g}s"
                                 + (f": {now.reason}" if now.reason else "")) from None
        ended.append(job)
        if fmt == "table":
            print(summary(job), flush=True)
    if fmt != "table":
        print(render(ended, fmt, [], lambda o: [], single=len(ended) == 1))
    return 0 if all(j.succeeded for j in ended) else 1


def _logs(jobs: JobClient, job_id: str, follow: bool, offset: int) -> int:
    out = sys.stdout.buffer
    chunks = jobs.logs(job_id, follow=follow, offset=offset)
    try:
        for chunk in chunks:
            out.write(chunk)
            out.flush()
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return 0
