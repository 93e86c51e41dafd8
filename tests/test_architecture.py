"""The import contract (docs/architecture.md), checked on every run.

- skedlib's layers import only downward: the contract in pyproject.toml
  (``[tool.importlinter]``), checked with import-linter;
- plugins/, reference_schedulers/ and examples/ use only the public API: the front door
  ``skedlib`` and the public subpackages (``skedlib.testing``, ``skedlib.agent``,
  ``skedlib.scheduler``), never a module inside skedlib. The plugins' own
  tests (``plugins/*/tests/``) are the project's tests and, like ``tests/``, may reach
  inside.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = {"skedlib", "skedlib.testing", "skedlib.agent", "skedlib.scheduler"}
"""The public modules (the docstring of skedlib/__init__.py says why each)."""


def test_layers_import_only_downward() -> None:
    pytest.importorskip("importlinter.cli")
    # in a process of its own: import-linter configures logging with dictConfig, which
    # disables every logger that exists (skedlib's included) for the tests that follow.
    # It exits 0 when every contract in pyproject.toml is kept and prints the broken
    # imports (module, line) otherwise.
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
         "sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True))",
         str(ROOT / "pyproject.toml")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def _skedlib_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return [(line, m) for line, m in found if m == "skedlib" or m.startswith("skedlib.")]


def _third_party_sources() -> list[Path]:
    files: list[Path] = []
    for top in ("plugins", "reference_schedulers", "examples"):
        files += [p for p in (ROOT / top).rglob("*.py")
                  if not {".venv", "build", "tests"} & set(p.relative_to(ROOT).parts)]
    return sorted(files)


def test_plugins_reference_schedulers_and_examples_use_only_the_public_api() -> None:
    files = _third_party_sources()
    assert len(files) > 10, "the sources to check were not found"
    internal = [f"{p.relative_to(ROOT)}:{line}: imports {module}"
                for p in files for line, module in _skedlib_imports(p) if module not in PUBLIC]
    assert internal == [], "\n".join(internal)


def test_every_public_name_is_importable_and_documented() -> None:
    import skedlib

    # (the order of __all__ is ruff's RUF022: constants, classes, then functions, each sorted)
    assert all(hasattr(skedlib, name) for name in skedlib.__all__)
    missing_doc = [name for name in skedlib.__all__
                   if (inspect.isclass(obj := getattr(skedlib, name)) or inspect.isfunction(obj))
                   and not inspect.getdoc(obj)]
    assert missing_doc == []


def _type_checking_imports(path: Path) -> dict[str, str]:
    """Each name the ``if TYPE_CHECKING:`` block of ``path`` imports, by its module."""
    names: dict[str, str] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.module is not None
                names.update({alias.name: imp.module for alias in imp.names})
    return names


@pytest.mark.parametrize("package", ["skedlib", "skedlib.agent", "skedlib.api"])
def test_lazy_public_names_are_the_objects_their_modules_define(package: str) -> None:
    """``import skedlib`` (and the ``agent`` and ``api`` packages) import a public name on
    first use; type checkers read the ``TYPE_CHECKING`` imports. Both must name the same
    module for every name of ``__all__``, and the name must be that module's object."""
    module = importlib.import_module(package)
    path = Path(module.__file__ or "")
    typed = _type_checking_imports(path)
    assert sorted(typed) == sorted(module.__all__), "TYPE_CHECKING imports and __all__"
    for name, source in typed.items():
        assert getattr(module, name) is getattr(importlib.import_module(source), name), name
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        module.not_a_name  # noqa: B018
    assert set(module.__all__) <= set(dir(module))


def test_a_job_worker_does_not_import_the_rest_of_the_api() -> None:
    """``skedlib-agent --jobs-only`` imports what a job worker needs: not the scheduling
    framework, the agent, the REST API, the simulator or the reference schedulers (its
    start-up counts in every batch of jobs)."""
    code = ("import sys, skedlib.cli.agent, skedlib.plugins as p; p.get_registry(); "
            "print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.split()
    heavy = {"skedlib.scheduling", "skedlib.agent.agent", "skedlib.api.app",
             "skedlib.api.server", "skedlib.sim", "skedlib.client", "skedlib.federation",
             "skedlib_reference.schedulers", "yaml"} & set(out)
    assert "skedlib.jobs.worker" in out and not heavy, heavy
