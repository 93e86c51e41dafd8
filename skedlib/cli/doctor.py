"""``sked doctor``: the stored records every reader skips, and how to remove them.

A record that does not decode, or whose id does not match its key (written by hand or
by a buggy scheduler), is quarantined by every reader (see
:func:`skedlib.codecs.decode_record`): skipped with one warning, its key never planned
onto. This command lists them all, each with why and the command that removes it, and
exits 1 when it found any (0 otherwise), so scripts and health checks can use it.

It also reports where the by-host index (``state/hosts/<host>/<task_id>``, what agents
run) and the task records (``state/tasks/<task_id>``, what schedulers and views read)
disagree (:func:`skedlib.cli.views.index_problems`), each with the command that makes
them agree: ``sked doctor --fix-index TASK_ID`` rewrites the index from the task record,
or, for a task present only in the index, writes its task record from the index entry.
"""

from __future__ import annotations

import argparse
import json
import shlex
from typing import Any

from skedlib.client import Client
from skedlib.codecs import (
    InvalidRecord,
    decode_record,
    encode,
    find_invalid_records,
    to_builtins,
)
from skedlib.errors import ConflictError, ValidationError, one_line
from skedlib.keys import ClusterKey, HostConfigKey, ServiceKey, TaskDefinitionKey
from skedlib.models import Task
from skedlib.store.base import Compare, Delete, Put
from skedlib.views import IndexProblem, index_problems, read_view

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
    p.add_argument("--fix-index", metavar="TASK_ID",
                   help="make the by-host index and the task record of TASK_ID agree "
                        "(the task record wins; an index-only task gets one)")
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
    if getattr(args, "fix_index", None):
        return _fix_index(client, args.fix_index)
    view = read_view(client)
    found = find_invalid_records(client.backend.list(client.keys.prefix).items, client.keys)
    problems = index_problems(view)
    if args.output == "json":
        print(json.dumps([{**to_builtins(r), "key": one_line(r.key),
                           "remove": removal_command(client, r)} for r in found]
                         + [{**to_builtins(p), "key": one_line(p.key),
                             "fix": fix_command(p)} for p in problems],
                         indent=2, ensure_ascii=False))
    elif not found and not problems:
        print("no invalid records")
    else:
        if found:
            print(f"{len(found)} invalid record(s) (every reader skips them):")
        for r in found:
            print(f"{one_line(r.key)}\n  why: {one_line(r.reason)}\n"
                  f"  remove: {removal_command(client, r)}")
        if problems:
            print(f"{len(problems)} index disagreement(s) (state/hosts/… against "
                  "state/tasks/…):")
        for p in problems:
            print(f"{one_line(p.key)}: {p.kind}\n  why: {one_line(p.reason)}\n"
                  f"  fix: {fix_command(p)}")
    return 1 if found or problems else 0


def fix_command(problem: IndexProblem) -> str:
    """The command that makes the index and the task record of ``problem`` agree."""
    return f"sked doctor --fix-index {shlex.quote(problem.task_id)}"


def _fix_index(client: Client, task_id: str) -> int:
    """Make ``task_id``'s index entries and task record agree, in one transaction that
    fails (and is retried by running again) if either changed meanwhile."""
    view = read_view(client)
    keys = client.keys
    on = view.index.get(task_id, {})
    task = view.snapshot.tasks.get(task_id)
    compares = [Compare(keys.task(task_id), view.snapshot.task_revisions.get(task_id, 0))]
    ops: list[Put | Delete] = []
    if task is None:
        if not on:
            raise ValidationError(f"{task_id}: no task record and no index entry")
        task = view.index_only[task_id]
        ops.append(Put(keys.task(task_id), encode(task)))
        done = f"{keys.task(task_id)} written from the index entry on {task.host}"
    else:
        placed = bool(task.host)  # a rejected task keeps its entry, as commits write it
        for host in sorted(on):
            if not (placed and host == task.host):
                ops.append(Delete(keys.host_task(host, task_id)))
        if placed and (task.host not in on or _entry(client, task) != task):
            ops.append(Put(keys.host_task(task.host, task_id), encode(task)))
        done = (f"index of {task_id}: {len(ops)} change(s)" if ops
                else f"{task_id}: already agrees")
    if ops:
        res = client.backend.txn(compares, ops)
        if not res.succeeded:
            raise ConflictError(f"{task_id}: changed while fixing; run the command again")
    print(done)
    return 0


def _entry(client: Client, task: Task) -> Task | None:
    """The task stored in ``task``'s index entry on its host (None: none, or bad)."""
    kv = client.backend.get(client.keys.host_task(task.host, task.id))
    return decode_record(kv, Task) if kv is not None else None


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
