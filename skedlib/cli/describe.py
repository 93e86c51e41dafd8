"""``sked describe task|service|host|job NAME``: an object, its status and its events.

The object and its status are printed as YAML, as stored but for two things made for
reading: durations (stored as nanoseconds) as Go-style strings (``1m30s``), and times
(stored as seconds since the epoch) in UTC with how long ago (``2026-12-03T07:41:02Z
(3m ago)``). The events (:mod:`skedlib.events`) follow as a table, newest last, each
with how long ago it happened. ``-o json`` prints the three as one JSON document, as
stored. An object that is gone but
has events left (a task just replaced, a finished job) is still described by them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
import typing
from typing import Any

import msgspec

from skedlib.cli.args import kind_of
from skedlib.cli.output import table
from skedlib.client import Client
from skedlib.codecs import decode, to_builtins, to_yaml
from skedlib.durations import format_duration
from skedlib.errors import NotFound
from skedlib.events import Event, ObjectKind, describe_details, read_events
from skedlib.jobs.client import JobClient
from skedlib.models import Task, TaskHealth

__all__ = ["add_parser", "age", "cmd_describe", "readable"]

_KINDS: dict[str, ObjectKind] = {
    "task": "task", "tasks": "task",
    "service": "service", "services": "service", "svc": "service",
    "host": "host", "hosts": "host",
    "job": "job", "jobs": "job",
}


_kind = kind_of(_KINDS, "cannot describe {value!r}: expected task, service, host or job")


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``describe`` to ``sked``'s subcommands."""
    p = sub.add_parser("describe", parents=[common],
                       help="show a task, service, host or job with its status and its "
                            "recent events")
    p.add_argument("kind", type=_kind, metavar="KIND", help="task, service, host or job")
    p.add_argument("name", metavar="NAME", help="the task id, service, host or job id")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text",
                   help="text (default) or json: {object, status, events}")
    p.set_defaults(func=cmd_describe, read_only=True)


def age(seconds: float) -> str:
    """A relative time, short: ``4s``, ``3m12s``, ``2h5m``, ``3d4h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s" if s < 600 and s % 60 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60}m" if (s % 3600) // 60 else f"{s // 3600}h"
    return f"{s // 86400}d{(s % 86400) // 3600}h"


def readable(obj: Any, now: float) -> Any:
    """``obj`` as builtins (as :func:`~skedlib.codecs.to_builtins` gives it), with the
    fields typed :data:`~skedlib.models.Duration` as Go-style strings and the times
    (``*_at``, ``since``, ``at``: seconds since the epoch) as UTC with their age."""
    if isinstance(obj, msgspec.Struct):
        hints = typing.get_type_hints(type(obj), include_extras=True)
        out: dict[str, Any] = {}
        for field in msgspec.structs.fields(obj):
            value = getattr(obj, field.name)
            if _is_duration(hints.get(field.name)) and isinstance(value, int):
                out[field.encode_name] = format_duration(value)
            elif _is_time(field.name) and isinstance(value, float) and value > 0:
                out[field.encode_name] = _when(value, now)
            else:
                out[field.encode_name] = readable(value, now)
        return out
    if isinstance(obj, (list, tuple)):
        return [readable(v, now) for v in obj]
    if isinstance(obj, dict):
        return {k: readable(v, now) for k, v in obj.items()}
    return to_builtins(obj)


def _is_duration(hint: Any) -> bool:
    if typing.get_origin(hint) is not typing.Annotated:
        return False
    return any(isinstance(m, msgspec.Meta) and (m.extra or {}).get("duration")
               for m in typing.get_args(hint)[1:])


def _is_time(name: str) -> bool:
    return name.endswith("_at") or name in ("since", "at")


def _when(epoch: float, now: float) -> str:
    stamp = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    text = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{text} ({age(now - epoch)} ago)" if now >= epoch else text


def _read(client: Client, kind: ObjectKind, name: str) -> tuple[Any, Any]:
    """The object and its status (either None when there is none)."""
    if kind == "task":
        kv = client.store.get(client.keys.task(name))
        task = decode(kv.value, Task, where=kv.key) if kv is not None else None
        health = client.store.get(client.keys.task_health(name))
        return task, decode(health.value, TaskHealth, where=health.key) if health else None
    if kind == "service":
        statuses = [s for c in client.clusters_of(name)
                    if (s := client.service_status(c, name)) is not None]
        return client.service(name), statuses or None
    if kind == "host":
        return client.host(name), client.host_config(name)
    try:
        return JobClient(client.store).status(name), None
    except NotFound:
        return None, None


def cmd_describe(client: Client, args: argparse.Namespace) -> int:
    """``sked describe KIND NAME``."""
    kind: ObjectKind = args.kind
    name: str = args.name
    obj, status = _read(client, kind, name)
    events = read_events(client.store, kind, name)
    if obj is None and not events:
        raise NotFound(f"{kind} {name} not found (and no event of it is kept)")
    if args.output == "json":
        print(json.dumps({"kind": kind, "name": name, "object": to_builtins(obj),
                          "status": to_builtins(status),
                          "events": to_builtins(events)}, indent=2, ensure_ascii=False))
        return 0
    now = time.time()
    print(f"{kind} {name}" + ("" if obj is not None else " (gone)"))
    if obj is not None:
        print(_indented(to_yaml(readable(obj, now))))
    if status is not None:
        print("status:" if kind != "host" else "config:")
        print(_indented(to_yaml(readable(status, now))))
    print(f"events ({len(events)}, newest last):" if events else "events: none")
    if events:
        print(_indented(render_events(events, now)))
    return 0


def render_events(events: list[Event], now: float) -> str:
    """The events as a table: AGE, REASON, FROM, MESSAGE (details appended)."""
    rows = [[age(now - e.time), e.reason, e.source,
             " ".join(p for p in (e.message, _details(e)) if p)] for e in events]
    return table(["AGE", "REASON", "FROM", "MESSAGE"], rows)


def _details(event: Event) -> str:
    text = describe_details(event.details)
    return f"[{text}]" if text else ""


def _indented(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.rstrip().splitlines())

