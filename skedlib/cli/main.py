"""``sked``: the operator CLI.

Every command takes ``--backend URL`` (default ``$SKED_BACKEND``, else the embedded
SQLite store, see :func:`skedlib.client.default_backend_url`). Errors are one line on
stderr and a non-zero exit: 1 for a failed operation, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from skedlib.cli.output import render
from skedlib.client import Client, default_backend_url
from skedlib.codecs import load_manifest, parse_manifest
from skedlib.durations import format_duration
from skedlib.errors import NotFound, SkedError, ValidationError
from skedlib.models import Cluster, HostConfig, Service, TaskDefinition

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
    parser = argparse.ArgumentParser(prog="sked", description="Operate a skedlib cluster.")
    parser.add_argument("--backend", default=None, metavar="URL",
                        help="storage backend URL (default: $SKED_BACKEND or "
                             f"{default_backend_url()})")
    parser.add_argument("--prefix", default=None, help="key prefix (default sked/)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("apply", help="write a manifest's desired state (all or nothing)")
    p.add_argument("-f", "--file", required=True, action="append", metavar="FILE",
                   help="manifest YAML file; - reads stdin; repeatable")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("get", help="show objects")
    p.add_argument("kind", type=_kind, help="clusters, services, task_definitions, hosts, "
                                            "tasks")
    p.add_argument("name", nargs="?", help="one object (task definitions: NAME[:VERSION])")
    p.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("delete", help="delete an object of desired state")
    p.add_argument("kind", type=_kind)
    p.add_argument("name", help="task definitions: NAME (every version) or NAME:VERSION")
    p.set_defaults(func=cmd_delete)
    return parser


def cmd_apply(client: Client, args: argparse.Namespace) -> int:
    """``sked apply -f FILE``."""
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
        print(f"warning: {w}", file=sys.stderr)
    from skedlib.codecs import ManifestDocument

    result = client.apply(ManifestDocument(merged, source, warnings))
    for verb, labels in (("created", result.created), ("configured", result.configured),
                         ("unchanged", result.unchanged)):
        for label in labels:
            print(f"{label} {verb}")
    return 0


def _service_row(s: Service) -> list[Any]:
    return [s.name, s.task_name, s.task_version, s.scheduler, s.desired, s.min, s.max]


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
        headers = ["name", "task", "version", "scheduler", "desired", "min", "max"]
        row = _service_row
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
        headers = ["name", "address", "live", "draining", "memory", "cpu", "attributes"]

        def row(h: Any) -> list[Any]:
            cfg = configs.get(h.name)
            is_live = not isinstance(h, HostConfig)
            return [h.name, getattr(h, "address", ""), is_live,
                    (cfg.draining if cfg else False) or getattr(h, "draining", False),
                    f"{h.allocated.memory}/{h.total.memory}" if is_live else "-",
                    f"{h.allocated.cpu_units}/{h.total.cpu_units}" if is_live else "-",
                    [f"{k}={v}" for k, v in sorted(h.attributes.items())]]
    else:
        health = client.health()
        objects = [t for t in client.tasks() if name in (None, t.id)]
        headers = ["id", "host", "rejected", "cluster", "service", "task def", "version",
                   "healthy"]

        def row(t: Any) -> list[Any]:
            h = health.get(t.id)
            return [t.id, t.host, t.rejected, t.cluster.name, t.service,
                    t.task_definition.name, t.task_definition.version,
                    bool(h and h.healthy)]
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sked``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with Client.open(args.backend, args.prefix) as client:
            code: int = args.func(client, args)
            return code
    except SkedError as exc:
        print(f"sked: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
