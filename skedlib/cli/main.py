"""``sked``: the operator CLI.

Commands: ``apply``, ``get``, ``delete`` (desired state); ``tasks`` and ``hosts`` (issued
and actual state, as Sked's ``sked tasks`` table); ``drain``/``undrain``, ``scale``
and ``rollout status|history`` (operations, see :mod:`skedlib.cli.ops`); ``schema``
(JSON Schema of the stored objects); ``example`` (the example manifests that ship with
skedlib, see :mod:`skedlib.cli.example`); ``up`` (combined mode: a scheduler and an agent in
one process, see :mod:`skedlib.cli.up`); ``serve``, ``env``, ``deploy`` and ``deployments``
(daemon-per-host environments and their REST API, see :mod:`skedlib.cli.envs`); ``job``
(batch jobs: submit, status, ls, cancel, wait, logs, nodes, see :mod:`skedlib.cli.jobs`);
``config`` (contexts, :mod:`skedlib.cli.config`); ``completion``
(:mod:`skedlib.cli.completion`); ``version``.

Every get and list command shows what it read through :mod:`skedlib.cli.output`
(``-o``, ``--no-headers``, ``--sort-by``, ``-l``, ``-w``, colour). The store comes from
``--backend URL``, else ``$SKED_BACKEND``, else the context's, else the embedded SQLite
store (see :mod:`skedlib.cli.config`). Errors are one line on stderr and a non-zero exit:
1 for a failed operation, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import platform
import sys
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from skedlib import __version__
from skedlib.cli import (
    completion,
    config,
    datacenters,
    describe,
    doctor,
    envs,
    example,
    jobs,
    ops,
    sim,
    tasklogs,
    up,
)
from skedlib.cli.args import OneLineParser, kind_of, positive_number
from skedlib.cli.logs import OneLineFormatter
from skedlib.cli.output import Column, Listing, add_output_options, columns, show
from skedlib.cli.schema import KINDS as SCHEMA_KINDS
from skedlib.cli.schema import render_schema
from skedlib.cli.views import host_listing, service_listing, task_listing
from skedlib.client import Client, default_backend_url
from skedlib.codecs import load_manifest, parse_manifest, to_builtins, to_yaml
from skedlib.durations import format_duration
from skedlib.errors import (
    NotFound,
    SkedError,
    ValidationError,
    one_line,
)
from skedlib.models import Cluster, TaskDefinition
from skedlib.plugins import plugin_distributions
from skedlib.store.credentials import redact_url
from skedlib.store.sqlite import read_only_url
from skedlib.views import (
    read_view,
)

__all__ = ["COMMAND_GROUPS", "build_parser", "main", "version_info", "version_text"]

_KINDS = {
    "cluster": "cluster", "clusters": "cluster",
    "service": "service", "services": "service", "svc": "service",
    "task_definition": "task_definition", "task_definitions": "task_definition",
    "taskdef": "task_definition", "taskdefs": "task_definition", "td": "task_definition",
    "host": "host", "hosts": "host",
    "task": "task", "tasks": "task",
}


_kind = kind_of(_KINDS, "unknown kind {value!r} (clusters, services, task_definitions, "
                        "hosts, tasks)")


def _complete_kinds(**_: Any) -> list[str]:
    """What Tab offers for ``get KIND`` and ``delete KIND``."""
    return ["clusters", "services", "task_definitions", "hosts", "tasks"]


COMMAND_GROUPS: list[tuple[str, list[str]]] = [
    ("Look at the cluster", ["get", "tasks", "hosts", "describe", "logs", "rollout",
                             "doctor"]),
    ("Change desired state", ["apply", "delete", "scale", "drain", "undrain", "example",
                              "federate"]),
    ("Run the cluster", ["up", "serve", "sim"]),
    ("Environments and batch jobs", ["env", "deploy", "deployments", "job"]),
    ("Settings and tools", ["config", "completion", "schema", "version"]),
]
"""How ``sked --help`` groups the subcommands; a subcommand not listed here is shown under
"Other commands", so a new one appears without a change here."""


class _Version(argparse.Action):
    """``--version``: what ``sked version`` prints, then exit 0."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(version_text())
        parser.exit()


def _grouped_help(sub: Any) -> str:
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    listed = {n for _, names in COMMAND_GROUPS for n in names}
    groups = [(title, [n for n in names if n in helps]) for title, names in COMMAND_GROUPS]
    groups.append(("Other commands", [n for n in helps if n not in listed]))
    width = max(map(len, helps)) + 2
    lines = []
    for title, names in groups:
        if names:
            lines.append(f"{title}:")
            lines += [f"  {n:<{width}}{helps[n]}" for n in names]
            lines.append("")
    lines.append("Run sked COMMAND --help for a command's options. Every get and list "
                 "command takes -o, --no-headers, --sort-by, -l and -w.")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sked``."""
    parser = OneLineParser(
        prog="sked",
        description="Operate a skedlib cluster: look at what runs, change desired state, "
                    "run the daemons.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default=None, metavar="URL",
                        help="storage backend URL (default: $SKED_BACKEND, else the "
                             "context's, else "
                             f"{redact_url(default_backend_url())})")
    parser.add_argument("--prefix", default=None,
                        help="key prefix (default: $SKED_PREFIX, else the context's, "
                             "else sked/)")
    parser.add_argument("--context", default=None, metavar="NAME",
                        help="use this context of the configuration file (default: "
                             "$SKED_CONTEXT, else its current context; see sked config)")
    parser.add_argument("--no-color", action="store_true",
                        help="no colour even on a terminal (also: $NO_COLOR)")
    datacenters.add_options(parser, top=True)
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="print the versions of skedlib, Python and the plugins")
    # the global options are also accepted after the command (sked up --backend URL)
    common = OneLineParser(add_help=False)
    common.add_argument("--backend", default=argparse.SUPPRESS, metavar="URL",
                        help="storage backend URL (as before the command)")
    common.add_argument("--prefix", default=argparse.SUPPRESS,
                        help="key prefix (as before the command)")
    common.add_argument("--context", default=argparse.SUPPRESS, metavar="NAME",
                        help="context of the configuration file (as before the command)")
    common.add_argument("--no-color", action="store_true", default=argparse.SUPPRESS,
                        help="no colour (as before the command)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help=argparse.SUPPRESS)

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

    p = sub.add_parser("get", parents=[common],
                       help="show clusters, services, task definitions, hosts or tasks")
    a = p.add_argument("kind", type=_kind,
                       help="clusters, services (svc), task_definitions (td), hosts, tasks")
    a.completer = _complete_kinds  # type: ignore[attr-defined]  # read by argcomplete
    p.add_argument("name", nargs="?", metavar="NAME",
                   help="one object (task definitions: NAME[:VERSION])")
    add_output_options(p, selector="labels (services and their tasks) or attributes "
                                   "(hosts)")
    datacenters.add_options(p)
    p.set_defaults(func=cmd_get, read_only=True)

    p = sub.add_parser("delete", parents=[common], help="delete an object of desired state")
    a = p.add_argument("kind", type=_kind,
                       help="cluster, service, task_definition or host (its settings)")
    a.completer = _complete_kinds  # type: ignore[attr-defined]
    p.add_argument("name", metavar="NAME",
                   help="the object; task definitions: NAME (every version) or NAME:VERSION")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("tasks", parents=[common],
                       help="the issued tasks: where they run, whether healthy")
    p.add_argument("--by-host", action="store_true", help="group the tasks by host")
    add_output_options(p, selector="service's labels")
    datacenters.add_options(p)
    p.set_defaults(func=cmd_tasks, read_only=True)

    p = sub.add_parser("hosts", parents=[common],
                       help="hosts: capacity as scheduled, tasks, attributes")
    add_output_options(p, selector="attributes")
    datacenters.add_options(p)
    p.set_defaults(func=cmd_hosts, read_only=True)

    p = sub.add_parser("schema", help="JSON Schema of the stored objects (for schedulers "
                                      "in other languages)")
    p.add_argument("kind", nargs="?", metavar="KIND",
                   help=f"one of {', '.join(SCHEMA_KINDS)} (default: every kind)")
    p.set_defaults(func=cmd_schema, needs_backend=False)

    p = sub.add_parser("version", help="versions of skedlib, Python and installed plugins")
    p.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table",
                   metavar="FORMAT", help="table (default), json or yaml")
    p.set_defaults(func=cmd_version, needs_backend=False)

    example.add_parser(sub)

    ops.add_parsers(sub, common)
    doctor.add_parser(sub, common)
    up.add_parser(sub, common)
    envs.add_parsers(sub, common)
    jobs.add_parsers(sub, common)
    describe.add_parser(sub, common)
    tasklogs.add_parser(sub, common)
    sim.add_parsers(sub, common)
    config.add_parsers(sub, common)
    datacenters.add_parser(sub, common)
    completion.add_parser(sub)
    parser.epilog = _grouped_help(sub)
    # set after the subcommands were added: their usage lines start with the parent's
    parser.usage = "sked [OPTIONS] COMMAND ..."
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
    """``sked get KIND [NAME] [-o FORMAT] [-l K=V] [--sort-by F] [-w]``."""
    return show(client, args, lambda: _get_listing(client, args.kind, args.name))


def _get_listing(client: Client, kind: str, name: str | None) -> Listing[Any]:
    """What ``sked get KIND [NAME]`` shows (read now); raises NotFound for a NAME that
    names nothing."""
    listing: Listing[Any]
    if kind == "cluster":
        listing = Listing[Cluster](
            "cluster", [c for c in client.clusters() if name in (None, c.name)],
            [Column("name", lambda c: c.name), Column("datacenter", lambda c: c.datacenter),
             Column("services", lambda c: c.services),
             Column("hosts", lambda c: c.hosts or "all")],
            name=lambda c: c.name, single=name is not None)
    elif kind == "service":
        listing = service_listing(read_view(client), name)  # JSON: the stored Service
    elif kind == "task_definition":
        base, _, version = (name or "").partition(":")
        listing = Listing[TaskDefinition](
            "task_definition", [t for t in client.task_definitions(base or None)
                                if not version or str(t.version) == version],
            columns(["name", "version", "executors", "port", "memory", "cpu", "grace"],
                    _td_row),
            name=lambda t: f"{t.name}:{t.version}")
    elif kind == "host":
        view = read_view(client)
        listing = host_listing(view, name)
        snap = view.snapshot
        # the table is sked hosts'; the JSON form is the stored Host (or its HostConfig
        # when no agent is live there), from the same reading
        listing.data = lambda r: to_builtins(
            snap.hosts[r.name].host if r.name in snap.hosts else snap.host_configs[r.name])
    else:
        view = read_view(client)
        tasks = {t.id: t for t in view.tasks() if name in (None, t.id)}
        listing = task_listing(view, list(tasks.values()), single=name is not None)
        listing.data = lambda r: to_builtins(tasks[r.id])  # the stored Task
    if name is not None and not listing.objects:
        raise NotFound(f"{kind.replace('_', ' ')} {name!r} not found")
    return listing


def cmd_delete(client: Client, args: argparse.Namespace) -> int:
    """``sked delete KIND NAME``."""
    if args.kind == "task":
        raise ValidationError("tasks are issued state; delete or scale their service instead")
    client.delete(args.kind, args.name)
    print(f"{args.kind} {args.name} deleted")
    return 0


def cmd_tasks(client: Client, args: argparse.Namespace) -> int:
    """``sked tasks [--by-host] [-o FORMAT] [-l K=V] [-w]``: Sked's table, with the
    agent's view of each task (``state``); ``-o json`` is a list of
    :class:`~skedlib.views.TaskRow`."""
    return show(client, args, lambda: task_listing(read_view(client), by_host=args.by_host))


def cmd_hosts(client: Client, args: argparse.Namespace) -> int:
    """``sked hosts [-o FORMAT] [-l K=V] [-w]``: memory and CPU are allocated/total as
    scheduled; ``-o json`` is a list of :class:`~skedlib.views.HostRow`."""
    return show(client, args, lambda: host_listing(read_view(client)))


def cmd_schema(client: Client | None, args: argparse.Namespace) -> int:
    """``sked schema [KIND]``: JSON Schema of the stored objects."""
    del client
    print(render_schema(args.kind))
    return 0


def version_info() -> dict[str, Any]:
    """skedlib's version, Python's, and each plugin distribution registered in the
    ``skedlib`` entry-point group with its version and what it registers."""
    return {"skedlib": __version__,
            "python": platform.python_version(),
            "plugins": [{"name": name, "version": version, "entry_points": eps}
                        for name, version, eps in plugin_distributions()]}


def version_text() -> str:
    """What ``sked version`` and ``sked --version`` print."""
    info = version_info()
    lines = [f"skedlib {info['skedlib']}", f"python {info['python']}"]
    lines += [f"{p['name']} {p['version']} (plugin: {', '.join(p['entry_points'])})"
              for p in info["plugins"]]
    return "\n".join(lines)


def cmd_version(client: Client | None, args: argparse.Namespace) -> int:
    """``sked version [-o table|json|yaml]``."""
    del client
    if args.output == "table":
        print(version_text())
    elif args.output == "json":
        print(json.dumps(version_info(), indent=2))
    else:
        print(to_yaml(version_info()).rstrip())
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
    completion.complete(parser)  # answers the shell and exits, when it asks
    args = parser.parse_args(argv)
    try:
        if getattr(args, "all_datacenters", False):
            with _skipped_records_shown():
                return datacenters.cmd_all_datacenters(args)
        if not getattr(args, "needs_backend", True):
            code: int = args.func(None, args)
            return code
        settings = config.resolve(args)
        url = settings.backend
        read_only = getattr(args, "read_only", False)
        if read_only:
            url = _read_only_url(url)
        with (_skipped_records_shown() if read_only else contextlib.nullcontext(),
              Client.open(url, settings.prefix) as client):
            code = args.func(client, args)
            return code
    except SkedError as exc:
        print(f"sked: error: {one_line(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
