"""Rendering of objects for the terminal: tables, JSON and YAML."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from skedlib.codecs import to_builtins, to_yaml

__all__ = ["render", "table"]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned table, as in the seed's ``sked tasks``."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value)) or "-"
    if value is None or value == "":
        return "-"
    return str(value)


def render(objects: Sequence[Any], fmt: str, headers: Sequence[str],
           row: Any, single: bool = False) -> str:
    """``objects`` as a table (``row(obj)`` gives the cells), or JSON / YAML documents."""
    if fmt == "json":
        data = to_builtins(objects[0] if single and objects else list(objects))
        return json.dumps(data, indent=2, ensure_ascii=False)
    if fmt == "yaml":
        return to_yaml(objects[0] if single and objects else list(objects)).rstrip()
    return table(headers, [row(o) for o in objects])
