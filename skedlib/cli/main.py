"""``sked``: the operator CLI.

Commands: ``apply``, ``get``, ``delete`` (desired state); ``tasks`` and ``hosts`` (issued
and actual state, as the seed's ``sked tasks`` table); ``drain``/``undrain``, ``scale``
and ``rollout status|history`` (operations, see :mod:`skedlib.cli.ops`); ``schema``
(JSON Schema of the stored objects); ``example`` (the example manifests that ship with
skedlib, see :mod:`skedlib.cli.example`); ``up`` (combined mode: a scheduler and an agent in
one process, see :mod:`skedlib.cli.up`); ``serve``, ``env``, ``deploy`` and ``deployments``
(daemon-per-host environments and their REST API, see :mod:`skedlib.cli.envs`); ``job``
(batch jobs: submit, status, ls, cancel, wait, logs, nodes, see :mod:`skedlib.cli.jobs`).

Every command takes ``--backend URL`` (default ``$SKED_BACKEND``, else the embedded
SQLite store, see :func:`skedlib.client.default_backend_url`). Errors are one line on
stderr and a non-zero exit: 1 for a failed operation, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from skedlib import __version__
from skedlib.cli import describe, doctor, envs, example, jobs, ops, tasklogs, up
from skedlib.cli.args import OneLineParser, positive_number
from skedlib.cli.logs import OneLineFormatter
from skedlib.cli.output import render, table
from skedlib.cli.schema import KINDS as SCHEMA_KINDS
from skedlib.cli.schema import render_schema
from skedlib.cli.views import (
    HOST_HEADERS,
    SERVICE_HEADERS,
    TASK_HEADERS,
    View,
    host_rows,
    read_view,
    service_row,
    task_cells,
    task_rows,
    tasks_by_host,
)
from skedlib.client import Client, default_backend_url
from skedlib.codecs import load_manifest, parse_manifest, to_builtins
from skedlib.durations import format_duration
from skedlib.errors import (
    NotFound,
    SkedError,
    ValidationError,
    one_line,
)
from skedlib.models import Cluster, TaskDefinition
from skedlib.plugins import plugin_distributions
from skedlib.runtime import wait_for_change
from skedlib.store.credentials import redact_url
from skedlib.store.sqlite import read_only_url

__all__ = ["main"]

_KINDS = {
    "cluster": "cluster", "clusters": "cluster",
    "service": "service", "services": "service", "svc": "service",
    "task_definition": "task_definition", "task_definitions": "task_definition",
    "taskdef": "task_definition", "taskdefs": "task_definition", "td": "task_definition",
    "host": "host", "hosts": "host",
    "task": "task", "tasks": "task",
}


def _kind(value: str) -> str:
    try:
        return _KINDS[value]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"unknown kind {value!r} (clusters, services, task_definitions, hosts, "
            "tasks)") from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sked``."""
    parser = OneLineParser(prog="sked", description="Operate a skedlib cluster.")
    parser.add_argument("--backend", default=None, metavar="URL",
                        help="storage backend URL (default: $SKED_BACKEND or "
                             f"{redact_url(default_backend_url())})")
    parser.add_argument("--prefix", default=None, help="key prefix (default sked/)")
    parser.add_argument("--version", action="version", version=f"sked (skedlib) {__version__}")
    # --backend and --prefix are also accepted after the command (sked up --backend URL)
    common = OneLineParser(add_help=False)
    common.add_argument("--backend", default=argparse.SUPPRESS, metavar="URL",
                        help="storage backend URL (as before the command)")
    common.add_argument("--prefix", default=argparse.SUPPRESS,
                        help="key prefix (as before the command)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("apply", parents=[common],
                       help="write a manifest's desired state (all or nothing)")
    p.add_argument("-f", "--file", required=True, action="append", metavar="FILE",
                   help="manifest YAML file; - reads stdin; repeatable")
    p.add_argument("--wait", action="store_true",
                   help="wait until every applied service runs healthy on its applied "
                        "version (exit 1 if its rollout fails or the timeout passes)")
    p.add_argument("--timeout", type=positive_number, default=ops.DEFAULT_TIMEOUT,
                   metavar="SECONDS",
                   help=f"with --wait: give up after this long (default "
                        f"{ops.DEFAULT_TIMEOUT:g})")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("get", parents=[common], help="show objects")
    p.add_argument("kind", type=_kind, help="clusters, services, task_definitions, hosts, "
                                            "tasks")
    p.add_argument("name", nargs="?", help="one object (task definitions: NAME[:VERSION])")
    p.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    p.set_defaults(func=cmd_get, read_only=True)

    p = sub.add_parser("delete", parents=[common], help="delete an object of desired state")
    p.add_argument("kind", type=_kind)
    p.add_argument("name", help="task definitions: NAME (every version) or NAME:VERSION")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("tasks", parents=[common],
                       help="the issued tasks: where they run, whether healthy")
    p.add_argument("--by-host", action="store_true", help="group the tasks by host")
    p.add_argument("-w", "--watch", action="store_true",
                   help="redraw whenever a task, its health or a host changes (Ctrl-C exits)")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_tasks, read_only=True)

    p = sub.add_parser("hosts", parents=[common],
                       help="live hosts: capacity as scheduled, tasks, attributes")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_hosts, read_only=True)

    p = sub.add_parser("schema", help="JSON Schema of the stored objects (for schedulers "
                                      "in other languages)")
    p.add_argument("kind", nargs="?", metavar="KIND",
                   help=f"one of {', '.join(SCHEMA_KINDS)} (default: every kind)")
    p.set_defaults(func=cmd_schema, needs_backend=False)

    p = sub.add_parser("version", help="versions of skedlib and of every installed plugin")
    p.set_defaults(func=cmd_version, needs_backend=False)

    example.add_parser(sub)

    ops.add_parsers(sub, common)
    doctor.add_parser(sub, common)
    up.add_parser(sub, common)
    envs.add_parsers(sub, common)
    jobs.add_parsers(sub, common)
    describe.add_parser(sub, common)
    tasklogs.add_parser(sub, common)
    return parser


def cmd_apply(client: Client, args: argparse.Namespace) -> int:
    """``sked apply -f FILE [--wait [--timeout S]]``."""
    docs = [parse_manifest(sys.stdin.read(), "<stdin>") if f == "-" else load_manifest(f)
            for f in args.file]
    merged = docs[0].manifest
    for d in docs[1:]:
        merged.clusters += d.manifest.clusters
        merged.services += d.manifest.services
        merged.task_definitions += d.manifest.task_definitions
    warnings = tuple(w for d in docs for w in d.warnings)
    source = ", ".join(d.source for d in docs)
    for w in warnings:
        print(f"warning: {one_line(w)}", file=sys.stderr)
    from skedlib.codecs import ManifestDocument

    doc = ManifestDocument(merged, source, warnings)
    # taken before the apply: rollouts recorded so far, to tell a new one from a stale one
    convergence = client.convergence(merged.services) if args.wait else None
    result = client.apply(doc)
    if convergence is not None:
        convergence.applied()
    for verb, labels in (("created", result.created), ("configured", result.configured),
                         ("unchanged", result.unchanged)):
        for label in labels:
            print(f"{label} {verb}", flush=True)
    if convergence is None:
        return 0
    return ops.wait_for_apply(client, convergence, args.timeout)


def _td_row(t: TaskDefinition) -> list[Any]:
    return [t.name, t.version, ",".join(c.type for c in t.containers),
            t.port or ("provided" if t.provide_port else "-"), t.total_memory(),
            t.total_cpu_units(), format_duration(t.grace_period)]


def cmd_get(client: Client, args: argparse.Namespace) -> int:
    """``sked get KIND [NAME] [-o table|json|yaml]``."""
    kind, name, fmt = args.kind, args.name, args.output
    objects: Sequence[Any]
    headers: list[str]
    row: Callable[[Any], list[Any]]
    if kind == "cluster":
        objects = [c for c in client.clusters() if name in (None, c.name)]
        headers = ["name", "datacenter", "services", "hosts"]

        def row(c: Cluster) -> list[Any]:
            return [c.name, c.datacenter, c.services, c.hosts or "all"]
    elif kind == "service":
        objects = [s for s in client.services() if name in (None, s.name)]
        headers = SERVICE_HEADERS
        view = read_view(client) if fmt == "table" else None

        def row(s: Any) -> list[Any]:
            assert view is not None
            return service_row(view, s)
    elif kind == "task_definition":
        base, _, version = (name or "").partition(":")
        objects = [t for t in client.task_definitions(base or None)
                   if not version or str(t.version) == version]
        headers = ["name", "version", "executors", "port", "memory", "cpu", "grace"]
        row = _td_row
    elif kind == "host":
        live = {h.name: h for h in client.hosts()}
        configs = {h.name: h for h in client.host_configs()}
        names = sorted(set(live) | set(configs))
        objects = [live.get(n) or configs[n] for n in names if name in (None, n)]
        headers = HOST_HEADERS
        rows = {r[0]: r for r in host_rows(read_view(client))} if fmt == "table" else {}

        def row(h: Any) -> list[Any]:
            return rows.get(h.name) or [h.name] + ["-"] * (len(HOST_HEADERS) - 1)
    else:
        view = read_view(client)
        objects = [t for t in view.tasks() if name in (None, t.id)]
        headers = TASK_HEADERS
        cells = {r.id: task_cells(r) for r in task_rows(view, objects)}

        def row(t: Any) -> list[Any]:
            return cells[t.id]
    if name is not None and not objects:
        raise NotFound(f"{kind.replace('_', ' ')} {name!r} not found")
    print(render(objects, fmt, headers, row, single=name is not None and kind != "task_definition"))
    return 0


def cmd_delete(client: Client, args: argparse.Namespace) -> int:
    """``sked delete KIND NAME``."""
    if args.kind == "task":
        raise ValidationError("tasks are issued state; delete or scale their service instead")
    client.delete(args.kind, args.name)
    print(f"{args.kind} {args.name} deleted")
    return 0


def _render_tasks(view: View, args: argparse.Namespace) -> str:
    if args.output == "json":
        return json.dumps(to_builtins(task_rows(view)), indent=2, ensure_ascii=False)
    if not args.by_host:
        rows = task_rows(view)
        return table(TASK_HEADERS, [task_cells(r) for r in rows]) if rows else "no tasks"
    sections = []
    for host, summary, rows in tasks_by_host(view):
        text = f"{host}: {summary}"
        if rows:
            text += "\n" + table([h for h in TASK_HEADERS if h != "host"],
                                 [[c for i, c in enumerate(task_cells(r)) if i != 1]
                                  for r in rows])
        sections.append(text)
    return "\n\n".join(sections) if sections else "no hosts and no tasks"


def cmd_tasks(client: Client, args: argparse.Namespace) -> int:
    """``sked tasks [--by-host] [--watch] [-o table|json]``: the seed's table, with the
    agent's view of each task (``state``)."""
    view = read_view(client)
    if not args.watch:
        print(_render_tasks(view, args))
        return 0
    return _watch_tasks(client, args, view)


def _watch_tasks(client: Client, args: argparse.Namespace, view: View) -> int:
    """Redraw on every change under ``state/`` (tasks, health, hosts); Ctrl-C exits."""
    tty = sys.stdout.isatty()
    state_prefix = f"{client.keys.prefix}state/"
    try:
        while True:
            text = _render_tasks(view, args)
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J")
            stamp = time.strftime("%H:%M:%S")
            print(f"{stamp}  revision {view.revision}  (watching; Ctrl-C exits)\n{text}",
                  flush=True)
            if not tty:
                print(flush=True)
            while wait_for_change(client.backend, state_prefix, view.revision, 1.0) is None:
                pass  # nothing yet (or the store is away: read again when it is back)
            time.sleep(0.2)  # let a burst of changes land: one redraw for all of them
            view = read_view(client)
    except KeyboardInterrupt:
        return 0


def cmd_hosts(client: Client, args: argparse.Namespace) -> int:
    """``sked hosts [-o table|json]``: memory and CPU are allocated/total as scheduled."""
    rows = host_rows(read_view(client))
    if args.output == "json":
        print(json.dumps([dict(zip(HOST_HEADERS, r, strict=True)) for r in rows], indent=2,
                         ensure_ascii=False))
    else:
        print(table(HOST_HEADERS, rows) if rows else "no hosts")
    return 0


def cmd_schema(client: Client | None, args: argparse.Namespace) -> int:
    """``sked schema [KIND]``: JSON Schema of the stored objects."""
    del client
    print(render_schema(args.kind))
    return 0


def cmd_version(client: Client | None, args: argparse.Namespace) -> int:
    """``sked version``: skedlib's version, then each plugin distribution registered in the
    ``skedlib`` entry-point group, with its version and what it registers."""
    del client, args
    print(f"skedlib {__version__}")
    for name, version, entry_points in plugin_distributions():
        print(f"{name} {version} (plugin: {', '.join(entry_points)})")
    return 0


def _read_only_url(url: str) -> str:
    """``url`` for a command that only reads: an embedded store is opened only if it
    exists, so a typo in a path does not leave an empty store behind."""
    return read_only_url(url) if urlsplit(url).scheme == "sqlite" else url


class _SkippedRecords(logging.Handler):
    """Shows the one-line warning about each record a read skips (decode or quarantine,
    in :mod:`skedlib.codecs`) as ``sked: warning: …`` on the current stderr."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.setFormatter(OneLineFormatter("sked: warning: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


@contextlib.contextmanager
def _skipped_records_shown() -> Iterator[None]:
    records_log = logging.getLogger("skedlib.codecs")
    handler, propagate = _SkippedRecords(), records_log.propagate
    records_log.addHandler(handler)
    records_log.propagate = False
    try:
        yield
    finally:
        records_log.removeHandler(handler)
        records_log.propagate = propagate


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sked``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if not getattr(args, "needs_backend", True):
            code: int = args.func(None, args)
            return code
        url = args.backend or default_backend_url()
        read_only = getattr(args, "read_only", False)
        if read_only:
            url = _read_only_url(url)
        with (_skipped_records_shown() if read_only else contextlib.nullcontext(),
              Client.open(url, args.prefix) as client):
            code = args.func(client, args)
            return code
    except SkedError as exc:
        print(f"sked: error: {one_line(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
