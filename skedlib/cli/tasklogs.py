"""``sked logs TASK [-f] [--container NAME] [--stderr]``: a task's output, from its host.

The output is fetched from the agent of the task's host (:func:`skedlib.agent.logs.task_logs`)
with the token that agent publishes in the store: whoever can read the store can read the
output, as with ``sked job logs``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from skedlib.agent.logs import task_logs
from skedlib.client import Client

__all__ = ["add_parser", "cmd_logs"]


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``logs`` to ``sked``'s subcommands."""
    p = sub.add_parser("logs", parents=[common],
                       help="print a task's output, fetched from the agent of its host")
    p.add_argument("task", metavar="TASK", help="the task id")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing new output until the task stops or moves")
    p.add_argument("-c", "--container", default="", metavar="NAME",
                   help="the container (required when the task has several)")
    p.add_argument("--stderr", action="store_true",
                   help="the container's standard error rather than its output (the "
                        "docker executor keeps both in one)")
    p.set_defaults(func=cmd_logs, read_only=True)


def cmd_logs(client: Client, args: argparse.Namespace) -> int:
    """``sked logs TASK``."""
    out = sys.stdout.buffer
    for chunk in task_logs(client.store, args.task, container=args.container,
                           stream="err" if args.stderr else "out", follow=args.follow):
        out.write(chunk)
        out.flush()
    return 0
