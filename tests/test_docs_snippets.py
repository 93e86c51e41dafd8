"""Every ```python block of README.md and docs/ compiles, type-checks and, if marked, runs.

The documentation teaches the public API, so its examples must stay true to it. Each
block is written to a temporary directory as a module and:

- compiled;
- type-checked with ``mypy --strict`` (one run over all blocks, with the project's mypy
  configuration), unless its first line is ``# not typed``;
- executed in a fresh interpreter from the repository root when its first line is
  ``# run``.

A block whose first line is ``# not run`` is a fragment that cannot stand alone (it
needs a live etcd, say) and is skipped entirely. Keep the ``# not run`` and
``# not typed`` blocks few: a block that is checked cannot go stale.

A deliberately **partial** block (a method without its class, a step that uses names an
earlier paragraph set up) is preceded by a hidden prelude, an HTML comment that the site
does not show::

    <!-- snippet: partial
    from skedlib import HostPolicy

    class MineExecutor:
        policy: HostPolicy

        {snippet}
    -->

The ```python examples in skedlib's docstrings (rendered by the site's API reference)
are checked the same way, each completed by :data:`DOCSTRING_PRELUDE`: the names such an
example takes as given (a ``store``, a ``snap``, a ``plan``…), declared with their types.

The block is checked in its completed form: the prelude with the line ``{snippet}``
replaced by the block (indented as that line is), or followed by the block when there is
no such line. mypy's complaints about the block carry the page's lines; those about the
prelude name the comment's line.

A comment naming a module path as the block's first line after the marker (e.g.
``# sked_most_free_cpu/plugin.py``) writes the block at that path, so a later block can
import it, as a plugin's registration imports its scheduler. Other blocks become
top-level modules named after their page and line.

Blocks import skedlib through its front door (``from skedlib import Client``) and
:mod:`skedlib.testing`, never an internal module: the docs teach the public API, which
``skedlib.__all__`` lists (mypy's strict re-export check refuses a name it lacks).

Executed blocks must not touch the machine: in a ``# run`` block, every
``sqlite:///tmp/`` URL is pointed at a fresh temporary directory instead, so the README
can show ``Client.open("sqlite:///tmp/demo.db")`` and the test still writes nowhere
shared.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.test_architecture import PUBLIC

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SQLITE_TMP = "sqlite:///tmp/"
_PATH_COMMENT = re.compile(r"#\s*([A-Za-z_][\w/]*\.py)\b")
_PARTIAL = "<!-- snippet: partial"
_PLACEHOLDER = "{snippet}"


PUBLIC_MODULES = PUBLIC
INTERNAL_IMPORTS_ALLOWED: dict[str, set[str]] = {}
"""Pages allowed an internal import, with the module (none today: keep it that way)."""


@dataclass(frozen=True)
class Block:
    """One ```python block: its page, the line of its opening fence, and its code."""

    page: Path
    line: int
    code: str
    prelude: str = ""
    """The hidden prelude of a partial block (see the module docstring), else empty."""
    prelude_line: int = 0
    """The page line of the prelude's comment."""

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def marker(self) -> str:
        first = self.code.split("\n", 1)[0].strip()
        return first if first in ("# run", "# not run", "# not typed") else ""

    @property
    def relpath(self) -> str:
        """Where the block is written in the temporary tree."""
        lines = self.code.split("\n")
        head = lines[1] if self.marker and len(lines) > 1 else lines[0]
        m = _PATH_COMMENT.match(head.strip())
        if m:
            return m.group(1)
        stem = re.sub(r"\W", "_", str(self.page.relative_to(ROOT).with_suffix("")))
        return f"snippet_{stem.lower()}_l{self.line}.py"

    @property
    def module(self) -> str:
        return self.relpath.removesuffix(".py").replace("/", ".")

    @property
    def completed(self) -> tuple[str, int]:
        """The code checked: the block in its prelude, and how many lines come before it."""
        if not self.prelude:
            return self.code, 0
        lines = self.prelude.split("\n")
        at = next((i for i, line in enumerate(lines) if line.strip() == _PLACEHOLDER), None)
        if at is None:
            return self.prelude.rstrip("\n") + "\n" + self.code, len(lines)
        indent = lines[at][:len(lines[at]) - len(lines[at].lstrip())]
        body = [indent + line if line.strip() else line for line in self.code.split("\n")]
        return "\n".join([*lines[:at], *body, *lines[at + 1:]]) + "\n", at

    def doc_line(self, n: int) -> int:
        """The page line of the completed code's line ``n`` (1-based): the block's line, or
        the prelude comment's line for a line of the prelude."""
        before = self.completed[1]
        if before < n <= before + self.code.count("\n"):
            return self.line + n - before
        return self.prelude_line


def _blocks(page: Path) -> list[Block]:
    out: list[Block] = []
    lines = page.read_text().split("\n")
    prelude, prelude_line = "", 0
    i = 0
    while i < len(lines):
        if lines[i].strip() == _PARTIAL:
            prelude_line = i + 1
            end = next(j for j in range(i, len(lines)) if lines[j].strip() == "-->")
            prelude = "\n".join(lines[i + 1:end]) + "\n"
            i = end + 1
            assert i < len(lines) and lines[i].strip() == "```python", \
                f"{page.relative_to(ROOT)}:{prelude_line}: a partial snippet's prelude " \
                "must be followed by its ```python block"
            continue
        if lines[i].strip() == "```python":
            start = i
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                i += 1
            out.append(Block(page, start + 1, "\n".join(lines[start + 1:i]) + "\n",
                             prelude, prelude_line))
            prelude, prelude_line = "", 0
        i += 1
    return out


DOCSTRING_PRELUDE = """\
import msgspec

from skedlib import (BestFit, Cluster, HostPool, LeastLoaded, Lock, Placement, Placer, Plan,
                     Scheduler, Service, Snapshot, SnapshotCache, Store, Task, TaskDefinition,
                     TaskRequest, commit_plan, read_snapshot, stock_filters)

url = "memory://"
store: Store
snap: Snapshot
snapshot: Snapshot
plan: Plan
cluster: Cluster
service: Service
td: TaskDefinition
task: Task
pool: HostPool
lock: Lock
scheduler: Scheduler
cache: SnapshotCache
"""
"""What a docstring's example may use without defining it."""

SOURCES = [p for p in sorted((ROOT / "skedlib").rglob("*.py")) if "```python" in p.read_text()]


def _docstring_blocks(source: Path) -> list[Block]:
    """The ```python examples of a module's docstrings, dedented, with the prelude."""
    return [Block(b.page, b.line, textwrap.dedent(b.code), DOCSTRING_PRELUDE, b.line)
            for b in _blocks(source)]


BLOCKS = [b for page in PAGES for b in _blocks(page) if b.marker != "# not run"] \
    + [b for source in SOURCES for b in _docstring_blocks(source)]
TYPED = [b for b in BLOCKS if b.marker != "# not typed"]
RUN = [b for b in BLOCKS if b.marker == "# run"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every block written as a module (packages get an ``__init__.py``)."""
    root = tmp_path_factory.mktemp("snippets").resolve()
    data = tmp_path_factory.mktemp("data")
    seen: dict[str, str] = {}
    for b in BLOCKS:
        assert b.relpath not in seen, f"{b.where}: {b.relpath} is also {seen[b.relpath]}"
        seen[b.relpath] = b.where
        path = root / b.relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        for pkg in path.relative_to(root).parents:
            if pkg != Path("."):
                (root / pkg / "__init__.py").touch()
        code = b.completed[0]
        if b.marker == "# run":
            code = code.replace(SQLITE_TMP, f"sqlite://{data}/")
        path.write_text(code)
    return root


@pytest.fixture(scope="module")
def mypy_errors(tree: Path) -> dict[str, list[str]]:
    """mypy's complaints, per block, with the page's line numbers."""
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--config-file",
         str(ROOT / "pyproject.toml"), "--no-error-summary", "--show-error-codes",
         *(str(tree / b.relpath) for b in TYPED)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "MYPYPATH": str(tree)})
    errors: dict[str, list[str]] = {b.where: [] for b in TYPED}
    unmatched: list[str] = []
    for line in proc.stdout.splitlines():
        m = re.match(r"(.+?\.py):(\d+): (error|note): (.*)", line)
        # matched on the path below the tree: mypy's cache may replay the errors of an
        # unchanged module under the temporary directory of an earlier run
        block = next((b for b in TYPED if m and Path(m.group(1)).as_posix().endswith(
            "/" + b.relpath)), None)
        if m is None or block is None:
            if line.strip() and (m is None or m.group(3) == "error"):
                unmatched.append(line)
            continue
        if m.group(3) == "error":
            errors[block.where].append(
                f"{block.page.relative_to(ROOT)}:{block.doc_line(int(m.group(2)))}: "
                f"{m.group(4)}")
    assert not unmatched and proc.returncode in (0, 1), \
        f"mypy failed outside the snippets (exit {proc.returncode}): " \
        + "; ".join(unmatched or [proc.stderr.strip()])
    return errors


def test_python_blocks_are_fenced_as_python() -> None:
    """A block fenced ```py or ```python3 would escape every check above."""
    other = [f"{page.relative_to(ROOT)}:{n}" for page in PAGES
             for n, line in enumerate(page.read_text().split("\n"), 1)
             if re.fullmatch(r"\s*```\s*(py|py3|python3|pycon|ipython)\s*", line)]
    assert not other, "fence Python blocks as ```python: " + ", ".join(other)


def test_the_pages_have_checked_blocks() -> None:
    assert any(b.page.name == "README.md" and b.marker == "# run" for b in BLOCKS), \
        "README.md: its Python example should be a '# run' block"
    assert len(TYPED) >= 10
    assert {"TaskRequest", "Placer", "Lock", "commit_plan"} <= {
        name for b in BLOCKS if b.page.suffix == ".py" for name in
        re.findall(r"\b(TaskRequest|Placer|Lock|commit_plan)\b", b.code)}, \
        "the docstring examples of skedlib are not collected"


def test_a_partial_block_is_checked_in_its_prelude(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("text\n<!-- snippet: partial\nclass A:\n    {snippet}\n-->\n"
                    "```python\ndef f(self) -> int:\n    return 1\n```\n"
                    "```python\nx = 1\n```\n")
    partial, whole = _blocks(page)
    code, before = partial.completed
    assert code == "class A:\n    def f(self) -> int:\n        return 1\n\n\n"
    assert (before, partial.doc_line(2), partial.doc_line(3)) == (1, 7, 8)
    assert partial.doc_line(1) == 2  # a prelude line: the comment's line
    assert whole.completed == ("x = 1\n", 0) and not whole.prelude


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.where)
def test_block_compiles(block: Block) -> None:
    try:
        compile(block.completed[0], block.where, "exec")
    except SyntaxError as e:
        pytest.fail(f"{block.page.relative_to(ROOT)}:{block.doc_line(e.lineno or 0)}: "
                    f"{e.msg}")


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.where)
def test_block_imports_only_the_public_api(block: Block) -> None:
    allowed = PUBLIC_MODULES | INTERNAL_IMPORTS_ALLOWED.get(
        str(block.page.relative_to(ROOT)), set())
    internal: list[str] = []
    for node in ast.walk(ast.parse(block.completed[0])):
        names = ([node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                 else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        internal += [f"{block.page.relative_to(ROOT)}:{block.doc_line(node.lineno)}: {name}"
                     for name in names
                     if name.split(".")[0] == "skedlib" and name not in allowed]
    assert not internal, "internal modules imported (use `from skedlib import …`): " \
        + "; ".join(internal)


@pytest.mark.parametrize("block", TYPED, ids=lambda b: b.where)
def test_block_type_checks(block: Block, mypy_errors: dict[str, list[str]]) -> None:
    assert not mypy_errors[block.where], \
        f"{block.where}: mypy --strict: " + "; ".join(mypy_errors[block.where])


@pytest.mark.parametrize("block", RUN, ids=lambda b: b.where)
def test_block_runs(block: Block, tree: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tree), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, "-m", block.module], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    where = block.where
    frames = re.findall(rf'File "{re.escape(str(tree / block.relpath))}", line (\d+)',
                        proc.stderr)
    if frames:  # the block's line the error came through
        where = f"{block.page.relative_to(ROOT)}:{block.doc_line(int(frames[-1]))}"
    tail = (proc.stderr.strip().splitlines() or [""])[-1]
    assert proc.returncode == 0, f"{where}: exit {proc.returncode}: {tail}"
