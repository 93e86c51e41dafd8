"""The plugin needs no ``consul`` module, so it installs beside python-consul or py-consul.

Both of those distributions install a module named ``consul`` (whichever came last wins);
the plugin speaks plain HTTP to Consul's API through its own client instead
(docs/decisions.md, "Packaging"). The behaviour against a real Consul is what the other
tests of this folder check; these check that nothing brings the clash back.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
from pathlib import Path

import skedlib_consul

PACKAGE = Path(skedlib_consul.__file__).resolve().parent
CLASHING = {"python-consul", "python-consul2", "py-consul"}


def _imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_no_module_of_the_plugin_imports_a_consul_module() -> None:
    sources = sorted(PACKAGE.glob("*.py"))
    assert len(sources) > 5, "the plugin's sources were not found"
    offending = [f"{p.name}: imports {m}" for p in sources for m in sorted(_imported_modules(p))
                 if m == "consul" or m.startswith("consul.")]
    assert offending == []


def test_the_distribution_requires_no_consul_client_library() -> None:
    requirements = importlib.metadata.requires("skedlib-consul") or []
    names = {re.split(r"[\s;<>=!~\[(]", r, maxsplit=1)[0].lower() for r in requirements}
    assert "skedlib" in names and not names & CLASHING, requirements
