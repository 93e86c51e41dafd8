"""``sked config``: contexts in ``~/.config/skedlib/config.yaml`` and the precedence of
flag > environment > context > default, on real SQLite stores."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from skedlib.cli.config import config_path
from skedlib.cli.main import main
from skedlib.client import Client
from skedlib.codecs import parse_manifest

Run = Callable[..., tuple[int, str, str]]

ONE = """
services: [{name: %s, task_name: t, task_version: 1}]
task_definitions:
  - {name: t, version: 1, containers: [{name: x, type: process, executor: {argv: ["true"]}}]}
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh configuration directory; no SKED_* variable set."""
    for name in ("SKED_BACKEND", "SKED_PREFIX", "SKED_CONFIG", "SKED_CONTEXT", "SKED_API"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return tmp_path


@pytest.fixture
def sked(home: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err
    return run


def _store(path: Path, service: str, prefix: str = "sked/") -> str:
    """A SQLite store at ``path`` holding one service named ``service``."""
    url = f"sqlite://{path}"
    with Client.open(url, prefix) as c:
        c.apply(parse_manifest(ONE % service, "m.yml"))
    return url


def test_config_file_lives_in_xdg_config_home_or_sked_config(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert config_path() == home / "config" / "skedlib" / "config.yaml"
    monkeypatch.setenv("SKED_CONFIG", str(home / "elsewhere.yaml"))
    assert config_path() == home / "elsewhere.yaml"


def test_contexts_choose_the_store(home: Path, sked: Run) -> None:
    a = _store(home / "a.db", "from-a")
    b = _store(home / "b.db", "from-b", prefix="other/")
    assert sked("config", "set-context", "a", "--backend", a)[:2] == (
        0, "context a created (current)\n")
    assert sked("config", "set-context", "b", "--backend", b, "--prefix", "other/",
                "--api", "https://127.0.0.1:8443",
                "--token-file", str(home / "b.token"))[1] == "context b created\n"
    path = home / "config" / "skedlib" / "config.yaml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    saved = yaml.safe_load(path.read_text())
    assert saved["current-context"] == "a"
    assert saved["contexts"]["b"] == {"backend": b, "prefix": "other/",
                                      "api": "https://127.0.0.1:8443",
                                      "token-file": str(home / "b.token")}
    # the current context
    assert sked("get", "services", "-o", "name")[1] == "service/from-a\n"
    # --context, before or after the command
    assert sked("--context", "b", "get", "services", "-o", "name")[1] == "service/from-b\n"
    assert sked("get", "services", "-o", "name", "--context", "b")[1] == "service/from-b\n"
    assert sked("config", "use-context", "b")[1] == "current context: b\n"
    assert sked("get", "services", "-o", "name")[1] == "service/from-b\n"
    assert sked("config", "current-context")[1] == "b\n"
    code, out, _ = sked("config", "get-contexts")
    lines = out.splitlines()
    assert lines[0].split() == ["current", "name", "backend", "prefix", "api"]
    assert lines[2].split()[:2] == ["-", "a"] and lines[3].split()[:2] == ["*", "b"]
    rows = json.loads(sked("config", "get-contexts", "-o", "json")[1])
    assert [(r["name"], r["current"]) for r in rows] == [("a", False), ("b", True)]
    assert sked("config", "get-contexts", "-o", "name")[1] == "context/a\ncontext/b\n"
    assert sked("config", "delete-context", "b")[1] == "context b deleted\n"
    code, _, err = sked("config", "current-context")
    assert code == 1 and err.startswith("sked: error: no current context in ")


def test_precedence_flag_then_environment_then_context(
        home: Path, sked: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = _store(home / "ctx.db", "from-context")
    env = _store(home / "env.db", "from-env")
    flag = _store(home / "flag.db", "from-flag")
    sked("config", "set-context", "c", "--backend", ctx)
    assert sked("get", "services", "-o", "name")[1] == "service/from-context\n"
    monkeypatch.setenv("SKED_BACKEND", env)
    assert sked("get", "services", "-o", "name")[1] == "service/from-env\n"
    assert sked("--backend", flag, "get", "services", "-o", "name")[1] == \
        "service/from-flag\n"
    # the prefix too: the context's, unless $SKED_PREFIX or --prefix says otherwise
    pre = _store(home / "pre.db", "prefixed", prefix="p2/")
    monkeypatch.delenv("SKED_BACKEND")
    sked("config", "set-context", "c", "--backend", pre, "--prefix", "p2/")
    assert sked("get", "services", "-o", "name")[1] == "service/prefixed\n"
    monkeypatch.setenv("SKED_PREFIX", "sked/")
    assert sked("get", "services", "-o", "name")[1] == ""  # nothing under sked/ there
    assert sked("--prefix", "p2/", "get", "services", "-o", "name")[1] == \
        "service/prefixed\n"
    # $SKED_CONTEXT picks a context, --context wins over it
    monkeypatch.delenv("SKED_PREFIX")
    sked("config", "set-context", "other", "--backend", ctx)
    monkeypatch.setenv("SKED_CONTEXT", "other")
    assert sked("get", "services", "-o", "name")[1] == "service/from-context\n"
    assert sked("--context", "c", "get", "services", "-o", "name")[1] == "service/prefixed\n"


def test_default_without_a_file_is_the_embedded_store(home: Path, sked: Run) -> None:
    _store(home / "data" / "skedlib" / "sked.db", "default-store")
    assert sked("get", "services", "-o", "name")[1] == "service/default-store\n"


def test_no_secret_in_the_file_and_errors_are_one_line(home: Path, sked: Run) -> None:
    code, _, err = sked("config", "set-context", "x",
                        "--backend", "etcd://user:hunter2@127.0.0.1:2379")
    assert code == 1 and "field backend: the URL holds a secret" in err
    assert "hunter2" not in err and err.count("\n") == 1
    assert not config_path().exists()  # nothing written
    code, _, err = sked("--context", "nope", "get", "services")
    assert code == 1 and err.startswith("sked: error: context 'nope' not found in ")
    code, _, err = sked("config", "use-context", "nope")
    assert code == 1 and "context 'nope' not found" in err
    config_path().parent.mkdir(parents=True)
    config_path().write_text("contexts: {a: {backend: x, colour: red}}\n")
    code, _, err = sked("get", "services")
    assert code == 1 and str(config_path()) in err and "colour" in err
    assert err.count("\n") == 1
