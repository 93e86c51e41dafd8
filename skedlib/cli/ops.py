"""Operator commands for the service lifecycle: ``drain``/``undrain``, ``scale``,
``rollout status``/``rollout history``, and the waiting of ``apply --wait``.

Each command is a thin layer over a :class:`~skedlib.client.Client` method
(:meth:`~skedlib.client.Client.set_draining`, :meth:`~skedlib.client.Client.scale`,
:meth:`~skedlib.client.Client.rollout_history`,
:meth:`~skedlib.client.Client.wait_converged`); errors are raised as
:class:`~skedlib.errors.SkedError` and printed on one line by ``sked``'s ``main``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from skedlib.cli.args import positive_number
from skedlib.cli.output import table
from skedlib.client import Client, Convergence, ServiceProgress
from skedlib.codecs import to_builtins, to_yaml
from skedlib.durations import format_duration
from skedlib.errors import NotFound, SkedError, ValidationError
from skedlib.models import Rollout, RolloutHistory
from skedlib.scheduler.status import describe

__all__ = [
    "DEFAULT_TIMEOUT",
    "ROLLOUT_HEADERS",
    "WaitFailed",
    "add_parsers",
    "cmd_drain",
    "cmd_rollout",
    "cmd_scale",
    "cmd_undrain",
    "wait_for_apply",
]

DEFAULT_TIMEOUT = 300.0
"""Seconds ``apply --wait`` and ``drain --wait`` wait by default."""

ROLLOUT_HEADERS = ["#", "from", "to", "state", "updated", "old", "started", "duration",
                   "reverted to", "message"]


class WaitFailed(SkedError):
    """``--wait`` ended without success: a rollout failed, a scheduler erred, or the
    timeout passed. The message says which, for which service."""


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``drain``, ``undrain``, ``scale`` and ``rollout`` to ``sked``'s subcommands."""
    p = sub.add_parser("drain", parents=[common],
                       help="mark a host draining: schedulers move its tasks elsewhere")
    p.add_argument("host", help="the host (its name, as its agent reports it)")
    p.add_argument("--wait", action="store_true",
                   help="wait until no issued task is left on the host")
    p.add_argument("--timeout", type=positive_number, default=DEFAULT_TIMEOUT,
                   metavar="SECONDS",
                   help=f"with --wait: give up after this long (default {DEFAULT_TIMEOUT:g})")
    p.set_defaults(func=cmd_drain)

    p = sub.add_parser("undrain", parents=[common],
                       help="clear a host's draining mark: it takes tasks again")
    p.add_argument("host", help="the host")
    p.set_defaults(func=cmd_undrain)

    p = sub.add_parser("scale", parents=[common],
                       help="set a service's desired task count (within its min and max)")
    p.add_argument("service", help="the service")
    p.add_argument("count", type=int, metavar="N", help="the new desired count")
    p.set_defaults(func=cmd_scale)

    p = sub.add_parser("rollout", parents=[common],
                       help="a service's rollouts (task version changes)")
    rsub = p.add_subparsers(dest="rollout_command", required=True, metavar="COMMAND")
    for name, text in (("status", "the current rollout; exit 1 if it failed"),
                       ("history", "every recorded rollout, oldest first")):
        r = rsub.add_parser(name, parents=[common], help=text)
        r.add_argument("service", help="the service")
        r.add_argument("--cluster", default=None,
                       help="the cluster (default: the only cluster listing the service)")
        r.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table",
                       metavar="FORMAT", help="table (default), json or yaml")
        r.set_defaults(func=cmd_rollout, read_only=True)


# -- progress lines -----------------------------------------------------------------------
class _ProgressLine:
    """One line rewritten with ``\\r`` on a terminal; plain lines otherwise, printed when
    the text changes or every ``every`` seconds."""

    def __init__(self, out: TextIO, every: float = 10.0) -> None:
        self.out = out
        self.tty = out.isatty()
        self.every = every
        self.started = time.monotonic()
        self._last = ""
        self._last_at = 0.0
        self._drawn = False

    def show(self, text: str) -> None:
        now = time.monotonic()
        if self.tty:
            width = shutil.get_terminal_size((100, 24)).columns - 1
            self.out.write("\r" + text[:max(width, 20)] + "\x1b[K")
            self.out.flush()
            self._drawn = True
        elif text != self._last or now - self._last_at >= self.every:
            print(f"[{now - self.started:5.1f}s] {text}", file=self.out, flush=True)
            self._last_at = now
        self._last = text

    def end(self) -> None:
        if self._drawn:
            self.out.write("\n")
            self.out.flush()
            self._drawn = False


def _bar(done: int, total: int, width: int = 10) -> str:
    filled = width if total <= 0 else min(width, round(width * done / total))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _labels(progress: Sequence[ServiceProgress]) -> dict[tuple[str, str], str]:
    """``service``, or ``cluster/service`` for a service listed by several clusters."""
    counts: dict[str, int] = {}
    for p in progress:
        counts[p.service] = counts.get(p.service, 0) + 1
    return {(p.cluster, p.service): p.service if counts[p.service] == 1 or not p.cluster
            else f"{p.cluster}/{p.service}" for p in progress}


def _progress_text(progress: Sequence[ServiceProgress], tty: bool) -> str:
    labels = _labels(progress)
    parts = []
    for p in progress:
        label = f"{labels[(p.cluster, p.service)]} v{p.task_version}"
        if not p.cluster:
            parts.append(f"{label}: not in any cluster")
            continue
        text = f"{label}: {p.healthy}/{p.desired} healthy {_bar(p.healthy, p.desired)}"
        if p.state == "converged":
            text += " ok"
        elif not tty and p.message:
            text += f" ({p.message})"
        parts.append(text)
    return ("  " if tty else "; ").join(parts)


def _where(p: ServiceProgress) -> str:
    return f"service {p.service!r} in cluster {p.cluster!r}" if p.cluster else \
        f"service {p.service!r}"


# -- apply --wait -------------------------------------------------------------------------
def wait_for_apply(client: Client, convergence: Convergence, timeout: float,
                   out: TextIO | None = None) -> int:
    """After an apply: show progress until every service of the manifest converged
    (returns 0); raises :class:`WaitFailed` when a rollout failed, a scheduler reported
    an error, or ``timeout`` seconds passed."""
    out = out or sys.stdout
    line = _ProgressLine(out)
    progress = client.wait_converged(
        convergence, timeout, lambda ps: line.show(_progress_text(ps, line.tty)))
    line.end()
    failed = [p for p in progress if p.state == "failed"]
    if failed:
        raise WaitFailed("; ".join(f"{_where(p)}: {p.message}" for p in failed))
    waiting = [p for p in progress if p.state == "waiting"]
    if waiting:
        raise WaitFailed(f"timed out after {timeout:g}s: " + "; ".join(
            f"{_where(p)} v{p.task_version}: {p.message or 'not converged'}"
            for p in waiting))
    elapsed = time.monotonic() - line.started
    pairs = [p for p in progress if p.cluster]
    print(f"converged: {len(pairs)} service(s) healthy on the applied version "
          f"({elapsed:.1f}s)", file=out)
    return 0


# -- drain / undrain ----------------------------------------------------------------------
def cmd_drain(client: Client, args: argparse.Namespace) -> int:
    """``sked drain HOST [--wait] [--timeout S]``."""
    _switch_draining(client, args.host, True)
    if not args.wait:
        return 0
    return _wait_drained(client, args.host, args.timeout, sys.stdout)


def _wait_drained(client: Client, host: str, timeout: float, out: TextIO) -> int:
    line = _ProgressLine(out)
    left: list[str] = []

    def check() -> tuple[list[str], bool]:
        left[:] = sorted(t.id for t in client.host_tasks(host))
        line.show(f"host {host}: {len(left)} task(s) left"
                  + (f" ({', '.join(left[:5])}{' …' if len(left) > 5 else ''})"
                     if left else ""))
        return left, not left

    client.await_changes(client.keys.host_tasks(host), time.monotonic() + timeout, check)
    line.end()
    if left:
        raise WaitFailed(f'host "{host}": {len(left)} task(s) still on it after '
                         f"{timeout:g}s: {_why_left(client, host)}")
    print(f"host {host} drained", file=out)
    return 0


def _why_left(client: Client, host: str) -> str:
    """The tasks left on a host, grouped by service, with what the scheduler says."""
    by_pair: dict[tuple[str, str], list[str]] = {}
    for t in client.host_tasks(host):
        by_pair.setdefault((t.cluster.name, t.service), []).append(t.id)
    parts = []
    for (cluster, service), ids in sorted(by_pair.items()):
        status = client.service_status(cluster, service)
        parts.append(f"{', '.join(sorted(ids))} (service {service!r} in {cluster!r}: "
                     f"{describe(status)})")
    return "; ".join(parts)


def cmd_undrain(client: Client, args: argparse.Namespace) -> int:
    """``sked undrain HOST``."""
    _switch_draining(client, args.host, False)
    return 0


def _switch_draining(client: Client, host: str, on: bool) -> None:
    before = client.host_config(host)
    client.set_draining(host, on)
    if bool(before and before.draining) == on:
        print(f"host {host} " + ("already draining" if on else "was not draining"))
    else:
        print(f"host {host} " + ("draining" if on else "no longer draining"))


# -- scale --------------------------------------------------------------------------------
def cmd_scale(client: Client, args: argparse.Namespace) -> int:
    """``sked scale SERVICE N``."""
    result = client.scale(args.service, args.count)
    if result.revision:
        print(f"service {args.service} scaled: desired {result.previous} → "
              f"{result.service.desired}")
    else:
        print(f"service {args.service}: desired is already {result.service.desired}")
    return 0


# -- rollout status / history -------------------------------------------------------------
def _rollout_cluster(client: Client, service: str, cluster: str | None) -> str:
    """``--cluster``, else the only cluster listing the service (or, for a service no
    cluster lists, the only cluster with a rollout record of it)."""
    if cluster:
        return cluster
    names = client.clusters_of(service)
    if not names:
        recorded = sorted(
            h.cluster for h in (client.rollout_history(c.name, service)
                                for c in client.clusters()) if h is not None)
        if client.service(service) is None and not recorded:
            raise NotFound(f"service {service!r} not found")
        if len(recorded) == 1:
            return recorded[0]
        raise ValidationError(f'service "{service}": no cluster lists it; pass --cluster')
    if len(names) > 1:
        raise ValidationError(f'service "{service}" is in clusters {", ".join(names)}; '
                              "pass --cluster")
    return names[0]


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _duration(r: Rollout, now: float) -> str:
    if not r.started_at:
        return "-"
    end = r.finished_at or (now if r.state == "running" else r.started_at)
    return format_duration(max(0, round(end - r.started_at)) * 10**9)


def _rollout_text(cluster: str, service: str, r: Rollout, now: float) -> str:
    lines = [f"service {service} in cluster {cluster}: rollout v{r.from_version} → "
             f"v{r.to_version} {r.state}",
             f"  updated:     {r.updated}/{r.desired} healthy on v{r.to_version}",
             f"  old tasks:   {r.old}",
             f"  started:     {_when(r.started_at)}"]
    if r.finished_at:
        lines.append(f"  finished:    {_when(r.finished_at)}")
    lines.append(f"  duration:    {_duration(r, now)}"
                 + (" (running)" if r.state == "running" else ""))
    if r.message:
        lines.append(f"  message:     {r.message}")
    if r.reverted_to:
        lines.append(f"  reverted to: v{r.reverted_to}")
    return "\n".join(lines)


def _history_rows(history: RolloutHistory, now: float) -> list[list[Any]]:
    return [[i + 1, f"v{r.from_version}", f"v{r.to_version}", r.state,
             f"{r.updated}/{r.desired}", r.old, _when(r.started_at), _duration(r, now),
             f"v{r.reverted_to}" if r.reverted_to else "", r.message]
            for i, r in enumerate(history.rollouts)]


def _dump(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(to_builtins(data), indent=2, ensure_ascii=False)
    return to_yaml(data).rstrip()


def cmd_rollout(client: Client, args: argparse.Namespace) -> int:
    """``sked rollout status|history SERVICE [--cluster C] [-o table|json|yaml]``: exit 1
    from ``status`` when the current rollout failed."""
    cluster = _rollout_cluster(client, args.service, args.cluster)
    stored = client.rollout_history(cluster, args.service)
    if stored is None and client.cluster(cluster) is None:
        raise NotFound(f"cluster {cluster!r} not found")
    history = stored or RolloutHistory(cluster=cluster, service=args.service)
    current = history.current
    now = time.time()
    if args.rollout_command == "history":
        if args.output != "table":
            print(_dump(history, args.output))
        elif not history.rollouts:
            print(f"service {args.service} in cluster {cluster}: no rollout recorded")
        else:
            print(table(ROLLOUT_HEADERS, _history_rows(history, now)))
        return 0
    if args.output != "table":
        print(_dump({"cluster": cluster, "service": args.service, "rollout": current},
                    args.output))
    elif current is None:
        print(f"service {args.service} in cluster {cluster}: no rollout recorded")
    else:
        print(_rollout_text(cluster, args.service, current, now))
    return 1 if current is not None and current.state == "failed" else 0
