"""docs/tutorial.md works as written: its files, its commands, real processes, SQLite.

The page marks what this test uses with HTML comments (invisible on the site) before a
fenced block:

- ``<!-- file: PATH -->``: the block is a file; it is written at PATH in the tutorial's
  working directory, exactly as shown (so the files cannot drift from the page);
- ``<!-- run -->``: a shell block run with ``bash -eu`` in the working directory; it must
  exit 0;
- ``<!-- run: background -->``: a long-running command (an agent, a daemon), started in
  its own process group and stopped when the tutorial ends.

Other blocks (installing, commands for a second terminal) are shown, not run. The
tutorial's ``pip install -e ./sked-tutorial`` is done here as ``pip install --target``
into a temporary directory on ``PYTHONPATH``: the plugin is found through its entry point
as an installed package is, without registering it in the test venv for good (other
tests list the installed schedulers).

Every step runs against a fresh embedded store (``$SKED_BACKEND``) in a temporary
directory, with ``$HOME`` there too, so nothing outside it is touched. The steps are run
in order, in one test, as a reader would; each check waits for the store to say what
the page says the reader sees.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.common import skip_or_fail, wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "tutorial.md"
BIN = Path(sys.executable).parent
_MARK = re.compile(r"^<!--\s*(file:\s*(?P<path>\S+)|run(?P<bg>:\s*background)?)\s*-->$")


@dataclass(frozen=True)
class Step:
    """One marked block: a file to write, or a command to run (in the background)."""

    kind: str  # "file", "run" or "background"
    line: int
    text: str
    path: str = ""


def steps(page: Path = PAGE) -> list[Step]:
    """The marked blocks of ``page``, in order."""
    out: list[Step] = []
    lines = page.read_text().split("\n")
    for i, line in enumerate(lines):
        m = _MARK.match(line.strip())
        if not m:
            continue
        assert lines[i + 1].startswith("```"), \
            f"{page.name}:{i + 1}: a marker must be followed by a fenced block"
        end = next(j for j in range(i + 2, len(lines)) if lines[j].strip() == "```")
        text = "\n".join(lines[i + 2:end]) + "\n"
        if m.group("path"):
            out.append(Step("file", i + 1, text, m.group("path")))
        else:
            out.append(Step("background" if m.group("bg") else "run", i + 1, text))
    return out


def test_the_tutorial_marks_its_files_and_commands() -> None:
    kinds = [s.kind for s in steps()]
    assert kinds.count("file") >= 7 and kinds.count("run") >= 4 and "background" in kinds
    for s in steps():
        if s.kind == "file" and s.path.endswith(".py"):
            # the same block is type-checked by tests/test_docs_snippets.py under the module
            # path its first line names: both must agree
            first = s.text.split("\n", 1)[0]
            assert s.path.endswith(first.removeprefix("# ").strip()), \
                f"tutorial.md:{s.line}: file {s.path} but the block says {first}"


@pytest.fixture
def work(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The tutorial's working directory and environment; background commands stopped."""
    if shutil.which("jq") is None:
        skip_or_fail("jq is not installed (scripts/install-exec-tools.sh)")
    (tmp_path / "home").mkdir()
    (tmp_path / "site").mkdir()
    env = {
        **os.environ,
        "HOME": str(tmp_path / "home"),
        "XDG_DATA_HOME": str(tmp_path / "home" / "data"),
        "XDG_STATE_HOME": str(tmp_path / "home" / "state"),
        "XDG_CONFIG_HOME": str(tmp_path / "home" / "config"),
        "SKED_BACKEND": f"sqlite://{tmp_path}/sked.db",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(tmp_path / "site"),
        "WORK": str(tmp_path / "work"),
        "NO_COLOR": "1",
    }
    env.pop("SKED_PREFIX", None)
    env.pop("SKED_CONTEXT", None)
    (tmp_path / "work").mkdir()
    yield env


def _sked_json(env: dict[str, str], *args: str) -> object:
    proc = subprocess.run([str(BIN / "sked"), *args, "-o", "json"], env=env,
                          capture_output=True, text=True, timeout=60, cwd=env["WORK"])
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def _healthy_hosts(env: dict[str, str], service: str) -> list[str] | None:
    tasks = _sked_json(env, "tasks")
    if not isinstance(tasks, list):
        return None
    mine = [t for t in tasks if t.get("service") == service]
    if not mine or not all(t.get("healthy") for t in mine):
        return None
    return sorted(t["host"] for t in mine)


def test_the_tutorial_runs(work: dict[str, str]) -> None:
    cwd = Path(work["WORK"])
    background: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    try:
        for step in steps():
            where = f"tutorial.md:{step.line}"
            if step.kind == "file":
                path = cwd / step.path
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(step.text)
                if step.path == "sked-tutorial/pyproject.toml":
                    _install_plugin(cwd / "sked-tutorial", work)
                continue
            if step.kind == "background":
                log = cwd.parent / f"background-{len(logs)}.log"
                logs.append(log)
                with log.open("wb") as out:
                    background.append(subprocess.Popen(
                        ["bash", "-euc", f"exec {step.text.strip()}"], cwd=cwd, env=work,
                        stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
                _started(step, work)
                continue
            proc = subprocess.run(["bash", "-euc", step.text], cwd=cwd, env=work,
                                  capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, \
                f"{where}: exit {proc.returncode}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            _check(step, proc.stdout, work)
        # step 6: the exec scheduler's service, placed round robin over the live hosts
        # (only the agent of step 5 is live: sked up --once stopped its own)
        _wait(lambda: _healthy_hosts(work, "api") == ["tut-2", "tut-2"], 60,
              "the api tasks healthy on tut-2 (placed by the round-robin program)")
        api = _sked_json(work, "get", "services", "api")
        assert isinstance(api, dict) and api.get("scheduler") == "round-robin", api
    except BaseException:
        for log in logs:
            print(f"--- {log.name}\n{log.read_text()[-4000:]}")
        raise
    finally:
        for p in background:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in background:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        _kill_leftovers(cwd)


def _kill_leftovers(cwd: Path) -> None:
    """Kill what the tutorial started and did not stop (the tasks of an agent that was
    killed): the processes running in its working directory. The agent is told to stop
    its tasks on exit, so after a passing run there are none."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            inside = Path(os.readlink(proc / "cwd")).is_relative_to(cwd)
        except OSError:
            continue
        if inside:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)


def _wait(ready: Callable[[], bool], timeout: float, what: str) -> None:
    wait_until(ready, timeout, lambda: AssertionError(f"timed out waiting for {what}"),
               interval=0.5)


def _install_plugin(package: Path, env: dict[str, str]) -> None:
    """``pip install -e ./sked-tutorial``, but into the temporary ``site`` directory."""
    (package / "sked_tutorial").mkdir(parents=True, exist_ok=True)
    (package / "sked_tutorial" / "__init__.py").touch()
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "--no-deps", "--target", env["PYTHONPATH"], str(package)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _started(step: Step, env: dict[str, str]) -> None:
    """Wait until a background agent is live, as a reader would before the next step."""
    m = re.search(r"skedlib-agent .*--host (\S+)", step.text)
    if m:
        host = m.group(1)
        _wait(lambda: any(h.get("name") == host for h in _sked_json(env, "hosts") or []
                             if isinstance(h, dict)), 60, f"agent {host} live")


def _check(step: Step, stdout: str, env: dict[str, str]) -> None:
    """What the page says the reader sees after this command block."""
    if "sked up --once" in step.text:
        # sked up exited 0: both tasks were healthy; they were placed by our plugin
        assert "fewest-tasks" in stdout, stdout
        assert stdout.count("default-web-1-") >= 2, stdout
    if "place.py" in step.text:
        placed = [line.split() for line in stdout.splitlines() if "->" in line]
        assert placed == [["default-hello-1-0", "->", "tut-2"],
                          ["default-hello-1-1", "->", "tut-2"]], stdout
        _wait(lambda: _healthy_hosts(env, "hello") == ["tut-2", "tut-2"], 60,
              "the hello tasks healthy on tut-2 (placed by place.py)")
    if "schedulers/round-robin" in step.text and "echo" in step.text:
        assert json.loads(stdout.split("\n")[0]) == {
            "stop": [], "place": [{"instance": 0, "host": "a"},
                                  {"instance": 1, "host": "b"}]}, stdout
