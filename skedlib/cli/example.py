"""``sked example [NAME]``: the example manifests that ship with skedlib.

They are package data (``skedlib/examples/*.yml``), so a ``pip install skedlib`` has them
too: ``sked example`` lists them, each with the first paragraph of its leading comment;
``sked example hello-world > hello.yml`` writes one out, byte for byte, for
``sked up --once -f hello.yml`` (or ``sked apply -f``).
"""

from __future__ import annotations

import argparse
import sys
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

from skedlib.cli.output import table
from skedlib.errors import NotFound

__all__ = ["add_parser", "cmd_example", "describe", "examples"]


def examples() -> dict[str, Traversable]:
    """Name (the file name without ``.yml``) → the shipped manifest, sorted by name."""
    found = [p for p in (files("skedlib") / "examples").iterdir() if p.name.endswith(".yml")]
    return {p.name.removesuffix(".yml"): p for p in sorted(found, key=lambda p: p.name)}


def describe(text: str) -> str:
    """The first paragraph of a manifest's leading ``#`` comment, on one line."""
    words: list[str] = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        comment = line.lstrip("#").strip()
        if not comment:
            if words:
                break
            continue
        words += comment.split()
    return " ".join(words) or "-"


def add_parser(sub: Any) -> None:
    """Add ``example`` to the ``sked`` subcommands."""
    p = sub.add_parser("example", help="print an example manifest that ships with skedlib "
                                       "(without NAME: list them)")
    p.add_argument("name", nargs="?", metavar="NAME",
                   help="the example to print, e.g. hello-world (sked example hello-world "
                        "> hello.yml)")
    p.set_defaults(func=cmd_example, needs_backend=False)


def cmd_example(client: object, args: argparse.Namespace) -> int:
    """``sked example [NAME]``: list the shipped manifests, or print one."""
    del client
    shipped = examples()
    if args.name is None:
        rows = [[name, describe(path.read_text(encoding="utf-8"))]
                for name, path in shipped.items()]
        print(table(["name", "description"], rows))
        print("\nsked example NAME > NAME.yml writes one out; sked up --once -f NAME.yml "
              "runs it on this machine")
        return 0
    path = shipped.get(args.name.removesuffix(".yml"))
    if path is None:
        raise NotFound(f"no example named {args.name!r} (examples: {', '.join(shipped)})")
    sys.stdout.write(path.read_text(encoding="utf-8"))
    return 0
