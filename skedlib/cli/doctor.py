"""``sked doctor``: the stored records every reader skips, and how to remove them.

A record that does not decode, or whose id does not match its key (written by hand or
by a buggy scheduler), is quarantined by every reader (see
:func:`skedlib.codecs.decode_record`): skipped with one warning, its key never planned
onto. This command lists them all, each with why and the command that removes it, and
exits 1 when it found any (0 otherwise), so scripts and health checks can use it.
"""

from __future__ import annotations

import argparse
import json
import shlex
from typing import Any

from skedlib.client import Client
from skedlib.codecs import InvalidRecord, find_invalid_records, to_builtins
from skedlib.errors import ValidationError, one_line
from skedlib.keys import ClusterKey, HostConfigKey, ServiceKey, TaskDefinitionKey

__all__ = ["add_parser", "cmd_doctor", "removal_command"]


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``sked doctor``."""
    p = sub.add_parser("doctor", parents=[common],
                       help="list stored records that do not decode or do not match their "
                            "key, and how to remove them (exit 1 if any)")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table",
                   metavar="FORMAT", help="table (default) or json: a list of the records")
    p.add_argument("--delete", metavar="KEY",
                   help="delete one invalid record, its key as doctor prints it")
    p.set_defaults(func=cmd_doctor, read_only=True)


def removal_command(client: Client, record: InvalidRecord) -> str:
    """The command that removes ``record``: ``sked delete …`` for desired state with a
    valid name, else the store-level ``sked doctor --delete KEY`` (any key, NUL too)."""
    try:
        parsed = client.keys.parse(record.key)
    except ValidationError:
        parsed = None
    match parsed:
        case ServiceKey(name=name):
            return f"sked delete service {shlex.quote(name)}"
        case ClusterKey(name=name):
            return f"sked delete cluster {shlex.quote(name)}"
        case TaskDefinitionKey(name=name, version=version):
            return f"sked delete task_definition {shlex.quote(f'{name}:{version}')}"
        case HostConfigKey(name=name):
            return f"sked delete host {shlex.quote(name)}"
    return f"sked doctor --delete {shlex.quote(one_line(record.key))}"


def cmd_doctor(client: Client, args: argparse.Namespace) -> int:
    """``sked doctor [--delete KEY] [-o table|json]``."""
    if getattr(args, "delete", None):
        return _delete(client, args.delete)
    found = find_invalid_records(client.backend.list(client.keys.prefix).items, client.keys)
    if args.output == "json":
        print(json.dumps([{**to_builtins(r), "key": one_line(r.key),
                           "remove": removal_command(client, r)} for r in found],
                         indent=2, ensure_ascii=False))
    elif not found:
        print("no invalid records")
    else:
        print(f"{len(found)} invalid record(s) (every reader skips them):")
        for r in found:
            print(f"{one_line(r.key)}\n  why: {one_line(r.reason)}\n"
                  f"  remove: {removal_command(client, r)}")
    return 1 if found else 0


def _delete(client: Client, spelled: str) -> int:
    """Delete the invalid record whose key is spelled ``spelled`` (as doctor prints it:
    unprintable characters escaped). Only invalid records: valid ones are removed with
    ``sked delete`` or by their owner."""
    found = find_invalid_records(client.backend.list(client.keys.prefix).items, client.keys)
    match = [r for r in found if one_line(r.key) == spelled or r.key == spelled]
    if not match:
        raise ValidationError(f"{spelled}: not an invalid record (sked doctor lists them)")
    for r in match:
        client.backend.delete(r.key)
        print(f"{one_line(r.key)} deleted")
    return 0
