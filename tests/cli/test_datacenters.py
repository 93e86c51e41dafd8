"""Datacenters of a context (``sked config set-datacenter``), ``sked --all-datacenters``
and ``sked federate`` over SQLite stores, with one datacenter that does not answer (an
etcd URL whose port nobody listens on); ``sked serve --datacenters`` reading them;
:mod:`skedlib.federation`'s expansion."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from skedlib.cli.config import config_path
from skedlib.cli.datacenters import PARTIAL
from skedlib.cli.main import main
from skedlib.client import Client
from skedlib.errors import ValidationError
from skedlib.federation import expand, parse_global, spread
from tests.harness.common import free_ports

Run = Callable[..., tuple[int, str, str]]

GLOBAL = """
clusters: [{name: default, services: [web, cron]}]
services:
  - {name: web, task_name: web, task_version: 1, desired: 1}
  - {name: cron, task_name: web, task_version: 1, desired: 1}
task_definitions:
  - name: web
    version: 1
    containers: [{name: w, type: bash, executor: {start: sleep 100}}]
placement:
  web: %s
"""


@pytest.fixture
def sked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
         capsys: pytest.CaptureFixture[str]) -> Run:
    for name in ("SKED_BACKEND", "SKED_PREFIX", "SKED_CONFIG", "SKED_CONTEXT", "SKED_API"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err
    return run


def _global(tmp_path: Path, placement: str) -> str:
    path = tmp_path / "global.yml"
    path.write_text(GLOBAL % placement)
    return str(path)


def test_datacenters_of_a_context_hold_no_secret_and_the_file_is_private(
        tmp_path: Path, sked: Run) -> None:
    code, _, err = sked("config", "set-datacenter", "prod", "east",
                        "--backend", "etcd://root:hunter2@127.0.0.1:2379")
    assert code == 1 and "field datacenters.east.backend: the URL holds a secret" in err
    assert "hunter2" not in err and not config_path().exists()
    code, _, err = sked("config", "set-datacenter", "prod", "bad/name", "--backend", "x://")
    assert code == 1 and "datacenter name" in err and err.count("\n") == 1
    code, out, _ = sked("config", "set-datacenter", "prod", "east",
                        "--backend", f"sqlite://{tmp_path}/east.db", "--prefix", "e/")
    assert code == 0 and out == "datacenter east of context prod added\n"
    assert stat.S_IMODE(config_path().stat().st_mode) == 0o600
    code, out, _ = sked("config", "get-contexts", "-o", "wide")
    assert "east" in out.splitlines()[2]
    code, _, err = sked("config", "delete-datacenter", "prod", "west")
    assert code == 1 and "datacenter 'west' not found in context 'prod'" in err
    assert sked("config", "delete-datacenter", "prod", "east")[0] == 0
    code, _, err = sked("--all-datacenters", "tasks")
    assert code == 1 and "context 'prod' lists no datacenters" in err


def test_federate_and_the_aggregate_view_report_a_datacenter_that_does_not_answer(
        tmp_path: Path, sked: Run) -> None:
    dead = f"etcd://127.0.0.1:{free_ports(1)[0]}?timeout=1"
    for dc, url in (("east", f"sqlite://{tmp_path}/east.db"),
                    ("west", f"sqlite://{tmp_path}/west.db"), ("dead", dead)):
        assert sked("config", "set-datacenter", "prod", dc, "--backend", url)[0] == 0
    code, out, err = sked("federate", "-f",
                          _global(tmp_path, "{total: 5, weights: {east: 2, west: 1}}"))
    assert code == PARTIAL
    assert "east: services/web created" in out and "west: services/web created" in out
    assert err.startswith("sked: datacenter dead: not written: etcd://") and \
        err.count("\n") == 1
    with Client.open(f"sqlite://{tmp_path}/east.db") as c:
        assert {s.name: s.desired for s in c.services()} == {"web": 3, "cron": 1}
        assert [cl.datacenter for cl in c.clusters()] == ["east"]

    code, out, err = sked("--all-datacenters", "get", "services", "-o", "json")
    assert code == PARTIAL
    assert err.startswith("sked: datacenter dead: unreachable: ")
    shown = json.loads(out)
    assert sorted((s["datacenter"], s["name"], s["desired"]) for s in shown["items"]) == [
        ("east", "cron", 1), ("east", "web", 3), ("west", "cron", 1), ("west", "web", 2)]
    assert [u["datacenter"] for u in shown["unreachable"]] == ["dead"]
    code, out, _ = sked("get", "services", "--all-datacenters", "-o", "name")
    assert sorted(out.split()) == ["service/east/cron", "service/east/web",
                                   "service/west/cron", "service/west/web"]
    code, out, _ = sked("--all-datacenters", "hosts")
    assert code == PARTIAL and out == "no hosts\n"

    assert sked("config", "delete-datacenter", "prod", "dead")[0] == 0
    code, out, err = sked("--all-datacenters", "tasks", "-o", "yaml")
    assert (code, err) == (0, "") and "unreachable: []" in out
    code, _, err = sked("--all-datacenters", "get", "clusters")
    assert code == 1 and "only tasks, hosts and get services" in err
    code, _, err = sked("--all-datacenters", "--backend", "sqlite:///x", "tasks")
    assert code == 1 and "the datacenters come from the context" in err


def test_nothing_is_written_when_no_datacenter_answers(tmp_path: Path, sked: Run) -> None:
    dead = f"etcd://127.0.0.1:{free_ports(1)[0]}?timeout=1"
    assert sked("config", "set-datacenter", "prod", "east", "--backend", dead)[0] == 0
    code, _, err = sked("federate", "-f", _global(tmp_path, "{per_datacenter: {east: 1}}"))
    assert code == 1 and err.startswith("sked: datacenter east: not written: ")


def test_spread_and_expand() -> None:
    assert spread(5, {"east": 2, "west": 1}) == {"east": 3, "west": 2}
    assert spread(4, {"a": 1, "b": 1, "c": 1}) == {"a": 2, "b": 1, "c": 1}
    assert spread(0, {"a": 1}) == {"a": 0}
    assert sum(spread(7, {"a": 3, "b": 3, "c": 1}).values()) == 7
    with pytest.raises(ValidationError, match="weights must add up"):
        spread(3, {"a": 0})
    doc = parse_global(GLOBAL % "{per_datacenter: {east: 2}}", "g.yml")
    assert doc.document.warnings == ()
    out = expand(doc, ["east", "west"])
    assert {dc: [(s.name, s.desired) for s in m.services] for dc, m in out.items()} == {
        "east": [("web", 2), ("cron", 1)], "west": [("web", 0), ("cron", 1)]}
    with pytest.raises(ValidationError, match="unknown datacenter 'east'"):
        expand(doc, ["north"])


@pytest.mark.parametrize(("placement", "error"), [
    ("{total: 3}", "total needs weights"),
    ("{per_datacenter: {a: 1}, total: 2, weights: {a: 1}}", "give per_datacenter, or"),
    ("{per_datacenter: {a: -1}}", "must not be negative"),
    ("{per_datacenter: {a: 1}, colour: red}", "colour"),
])
def test_bad_placements_are_one_line_errors(placement: str, error: str) -> None:
    with pytest.raises(ValidationError, match=error) as info:
        parse_global(GLOBAL % placement, "g.yml")
    assert str(info.value).startswith("g.yml: ") and "\n" not in str(info.value)


def test_a_global_cluster_may_not_name_its_datacenter() -> None:
    text = GLOBAL.replace("{name: default,", "{name: default, datacenter: east,")
    with pytest.raises(ValidationError, match="field datacenter: set by the federation"):
        parse_global(text % "{per_datacenter: {east: 1}}", "g.yml")
    with pytest.raises(ValidationError, match=r"placement\.api: no service 'api'"):
        parse_global(GLOBAL.replace("  web: %s", "  api: {per_datacenter: {a: 1}}"), "g.yml")


def test_serve_reads_the_datacenters_of_its_context(tmp_path: Path, sked: Run) -> None:
    """``sked serve --datacenters``, a real process: the context's datacenters (no
    secret on its command line), one of them not answering."""
    dead = f"etcd://127.0.0.1:{free_ports(1)[0]}?timeout=1"
    for dc, url in (("east", f"sqlite://{tmp_path}/east.db"), ("dead", dead)):
        assert sked("config", "set-datacenter", "prod", dc, "--backend", url)[0] == 0
    assert sked("federate", "-f", _global(tmp_path, "{per_datacenter: {east: 2}}"))[0] \
        == PARTIAL
    code, _, err = sked("serve", "--datacenters", "--context", "nope")
    assert code == 1 and "context 'nope' not found" in err
    binary = shutil.which("sked", path=str(Path(sys.executable).parent))
    assert binary is not None
    env = {**os.environ, "SKED_API_TOKEN": "t0ken"}
    with subprocess.Popen([binary, "--backend", f"sqlite://{tmp_path}/own.db", "serve",
                           "--listen", "127.0.0.1:0", "--datacenters", "--dc-timeout", "3"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                          env=env) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().split("listening on ")[1].split()[0]
            assert "reading datacenters dead, east" in proc.stdout.readline() + \
                proc.stdout.readline()
            assert requests.get(f"{url}/all-datacenters/services",
                                timeout=10).status_code == 401
            auth = {"Authorization": "Bearer t0ken"}
            assert requests.get(f"{url}/datacenters", headers=auth, timeout=10).json() == {
                "items": ["dead", "east"], "timeout": 3.0}
            got = requests.get(f"{url}/all-datacenters/services", headers=auth,
                               timeout=10).json()
            assert sorted((s["datacenter"], s["name"], s["desired"]) for s in got["items"]) \
                == [("east", "cron", 1), ("east", "web", 2)]
            assert [u["datacenter"] for u in got["unreachable"]] == ["dead"]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=10)
    assert proc.returncode == 0
