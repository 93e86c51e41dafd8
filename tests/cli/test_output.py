"""The output conventions of every get and list command (``skedlib.cli.output``):
``-o table|wide|json|yaml|name``, ``--no-headers``, ``--sort-by``, ``-l``, ``-w`` and colour,
on a real SQLite store, ``sked``'s ``main`` in-process (the installed ``sked`` where a
terminal or a signal is needed)."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from skedlib.cli.main import main
from skedlib.client import Client
from skedlib.codecs import encode, parse_manifest
from skedlib.errors import ValidationError
from skedlib.keys import Keyspace
from skedlib.models import Host, Resources, TaskHealth
from skedlib.scheduler.daemon import SchedulerDaemon
from tests.harness.cli import sked_script

MANIFEST = """
clusters: [{name: default, services: [web, api]}]
services:
  - {name: web, task_name: web, task_version: 1, desired: 2, labels: {team: shop, tier: front}}
  - {name: api, task_name: web, task_version: 1, desired: 1, labels: {team: core}}
task_definitions:
  - {name: web, version: 1, memory: 100, cpu_units: 10,
     containers: [{name: x, type: process, executor: {argv: [sleep, "60"]}}]}
"""

Run = Callable[..., tuple[int, str, str]]


def _host_of(c: Client, task_id: str) -> str:
    return next(t.host for t in c.tasks() if t.id == task_id)


@pytest.fixture
def url(tmp_path: Path) -> str:
    """Two hosts (zone a, zone b), services web (2 tasks) and api (1), one task healthy."""
    url = f"sqlite://{tmp_path}/out.db"
    with Client.open(url) as c:
        ks = Keyspace()
        c.backend.put(ks.agent("h1"), encode(Host(
            name="h1", address="10.0.0.1", attributes={"zone": "a", "disk": "ssd"},
            total=Resources(memory=1000, cpu_units=1000))))
        c.backend.put(ks.agent("h2"), encode(Host(
            name="h2", address="10.0.0.2", attributes={"zone": "b"},
            total=Resources(memory=500, cpu_units=1000))))
        c.apply(parse_manifest(MANIFEST, "m.yml"))
        daemon = SchedulerDaemon(c.store)
        daemon.run_once(("default", "web"))
        daemon.run_once(("default", "api"))
        c.backend.put(ks.task_health("default-web-1-0"), encode(TaskHealth(
            task_id="default-web-1-0", host=_host_of(c, "default-web-1-0"),
            state="healthy", healthy=True)))
    return url


@pytest.fixture
def sked(url: str, capsys: pytest.CaptureFixture[str]) -> Run:
    """``sked(*argv) -> (exit status, stdout, stderr)``, in-process, on the test's store."""
    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main(["--backend", url, *argv])
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err
    return run


# -- -o name, wide, json, yaml ---------------------------------------------------------------
@pytest.mark.parametrize(("argv", "names"), [
    (["get", "services"], ["service/api", "service/web"]),
    (["get", "hosts"], ["host/h1", "host/h2"]),
    (["hosts"], ["host/h1", "host/h2"]),
    (["get", "tasks"], ["task/default-api-1-0", "task/default-web-1-0",
                        "task/default-web-1-1"]),
    (["tasks"], ["task/default-api-1-0", "task/default-web-1-0", "task/default-web-1-1"]),
    (["get", "clusters"], ["cluster/default"]),
    (["get", "td"], ["task_definition/web:1"]),
])
def test_output_name(sked: Run, argv: list[str], names: list[str]) -> None:
    code, out, err = sked(*argv, "-o", "name")
    assert (code, err) == (0, "")
    assert out.splitlines() == names


def test_wide_adds_columns(sked: Run) -> None:
    _, narrow, _ = sked("tasks")
    _, wide, _ = sked("tasks", "-o", "wide")
    assert narrow.splitlines()[0].split()[-1] == "state"
    assert wide.splitlines()[0].split()[-2:] == ["port", "message"]
    _, wide, _ = sked("get", "services", "-o", "wide")
    header, _, *rows = wide.splitlines()
    assert header.split()[-1] == "labels"
    assert rows[1].endswith("team=shop,tier=front")  # web, after api


@pytest.mark.parametrize("argv", [["hosts"], ["tasks"], ["get", "services"],
                                  ["get", "hosts"], ["get", "tasks"], ["tasks", "--by-host"],
                                  ["get", "clusters"], ["get", "td"]])
@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_structured_output_is_data_never_a_table(sked: Run, argv: list[str],
                                                 fmt: str) -> None:
    code, out, _ = sked(*argv, "-o", fmt)
    data = json.loads(out) if fmt == "json" else yaml.safe_load(out)
    assert code == 0 and isinstance(data, list) and data
    assert all(isinstance(item, dict) for item in data)
    # name, or id: any field of the JSON form sorts (the first of text or a number)
    first = next(k for k, v in data[0].items() if isinstance(v, str | int))
    code, out, _ = sked(*argv, "-o", fmt, "--sort-by", first)
    again = json.loads(out) if fmt == "json" else yaml.safe_load(out)
    assert code == 0 and sorted(again, key=lambda d: d[first]) == again
    assert sorted(map(json.dumps, again)) == sorted(map(json.dumps, data))


def test_hosts_json_holds_numbers_not_display_strings(sked: Run) -> None:
    _, out, _ = sked("hosts", "-o", "json")
    h1 = json.loads(out)[0]
    assert h1 == {"name": "h1", "address": "10.0.0.1", "live": True, "draining": False,
                  "memory_allocated": h1["memory_allocated"], "memory_total": 1000,
                  "cpu_allocated": h1["cpu_allocated"], "cpu_total": 1000,
                  "tasks": h1["tasks"], "attributes": {"disk": "ssd", "zone": "a"}}
    assert isinstance(h1["memory_allocated"], int) and h1["memory_allocated"] % 100 == 0


def test_one_named_object_is_an_object(sked: Run) -> None:
    _, out, _ = sked("get", "services", "web", "-o", "json")
    assert json.loads(out)["labels"] == {"team": "shop", "tier": "front"}
    _, out, _ = sked("get", "hosts", "h2", "-o", "json")
    assert json.loads(out)["attributes"] == {"zone": "b"}  # the stored Host
    _, out, _ = sked("get", "tasks", "default-api-1-0", "-o", "yaml")
    assert yaml.safe_load(out)["service"] == "api"  # the stored Task


# -- --no-headers, --sort-by ------------------------------------------------------------------
def test_no_headers(sked: Run) -> None:
    _, out, _ = sked("get", "services", "--no-headers")
    assert [line.split()[0] for line in out.splitlines()] == ["api", "web"]
    _, out, _ = sked("hosts", "--no-headers")
    assert [line.split()[0] for line in out.splitlines()] == ["h1", "h2"]


def test_sort_by_a_dotted_field_of_the_json_form(sked: Run) -> None:
    _, out, _ = sked("get", "services", "--sort-by", "desired", "-o", "name")
    assert out.splitlines() == ["service/api", "service/web"]  # 1, then 2
    _, out, _ = sked("hosts", "--sort-by", "memory_total", "--no-headers")
    assert [line.split()[0] for line in out.splitlines()] == ["h2", "h1"]
    _, out, _ = sked("get", "hosts", "--sort-by", "attributes.zone", "-o", "name")
    assert out.splitlines() == ["host/h1", "host/h2"]
    _, out, _ = sked("get", "services", "--sort-by", "labels.team", "-o", "name")
    assert out.splitlines() == ["service/api", "service/web"]  # core < shop
    _, out, _ = sked("tasks", "--sort-by", "healthy", "-o", "name")
    assert out.splitlines()[-1] == "task/default-web-1-0"  # false (0) before true (1)
    code, _, err = sked("get", "services", "--sort-by", "nope.field")
    assert code == 1 and err.startswith("sked: error: --sort-by nope.field: no service")


# -- -l selectors ------------------------------------------------------------------------------
def test_selectors(sked: Run) -> None:
    _, out, _ = sked("get", "services", "-l", "team=shop", "-o", "name")
    assert out.splitlines() == ["service/web"]
    _, out, _ = sked("get", "services", "-l", "team=shop,tier=back", "-o", "name")
    assert out == ""  # every pair must match
    _, out, _ = sked("get", "services", "-l", "team=shop", "-l", "tier=front", "-o", "name")
    assert out.splitlines() == ["service/web"]
    _, out, _ = sked("tasks", "-l", "team=core", "-o", "name")
    assert out.splitlines() == ["task/default-api-1-0"]  # by its service's labels
    _, out, _ = sked("get", "tasks", "-l", "team=shop", "-o", "json")
    assert [t["service"] for t in json.loads(out)] == ["web", "web"]
    _, out, _ = sked("hosts", "-l", "zone=b", "-o", "name")
    assert out.splitlines() == ["host/h2"]  # hosts: by their attributes
    _, out, _ = sked("get", "hosts", "-l", "disk=ssd", "-o", "name")
    assert out.splitlines() == ["host/h1"]
    code, _, err = sked("get", "clusters", "-l", "a=b")
    assert code == 1 and "cluster: -l: this kind has no labels" in err


@pytest.mark.parametrize("bad", ["team", "team=a b", "te/am=x", "=x", "x="])
def test_bad_selectors_are_usage_errors(sked: Run, bad: str) -> None:
    code, _, err = sked("get", "services", "-l", bad)
    assert code == 2 and err.startswith("sked: error: argument -l/--selector: bad selector")
    assert err.count("\n") == 1


def test_service_labels_are_validated_and_old_records_decode(url: str) -> None:
    bad = MANIFEST.replace("team: core", "'bad key': core")
    with Client.open(url) as c, pytest.raises(ValidationError,
                                              match="field labels: invalid label key"):
        c.apply(parse_manifest(bad, "m.yml"))
    # a service stored before labels existed decodes with none
    with Client.open(url) as c:
        c.backend.put(Keyspace().service("old"), json.dumps(
            {"name": "old", "task_name": "web", "task_version": 1}).encode())
        old = c.service("old")
        assert old is not None and old.labels == {}


# -- colour -------------------------------------------------------------------------------------
def _on_a_terminal(argv: list[str], env: dict[str, str] | None = None) -> str:
    """Run the installed ``sked`` with stdout on a pseudo-terminal; return what it wrote."""
    leader, follower = pty.openpty()
    environ = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    proc = subprocess.Popen([sked_script(), *argv], stdout=follower, stderr=subprocess.PIPE,
                            env={**environ, **(env or {})})
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        assert ready, "sked wrote nothing in 60 s"
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: sked exited
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    return b"".join(chunks).decode()


def test_colour_only_on_a_terminal(url: str, sked: Run) -> None:
    coloured = _on_a_terminal(["--backend", url, "tasks"])
    assert "\x1b[32mhealthy\x1b[0m" in coloured  # healthy green
    assert "\x1b[33mpending\x1b[0m" in coloured
    assert "\x1b[31mfalse\x1b[0m" in coloured  # not healthy: red
    # the columns stay aligned: the same table as without colour
    plain = coloured.replace("\x1b[32m", "").replace("\x1b[33m", "").replace(
        "\x1b[31m", "").replace("\x1b[0m", "")
    _, piped, _ = sked("tasks")
    assert plain.replace("\r\n", "\n") == piped
    assert "\x1b[" not in piped  # not a terminal: no colour
    assert "\x1b[" not in _on_a_terminal(["--backend", url, "--no-color", "tasks"])
    assert "\x1b[" not in _on_a_terminal(["--backend", url, "tasks", "--no-color"])
    assert "\x1b[" not in _on_a_terminal(["--backend", url, "tasks"], {"NO_COLOR": "1"})


# -- --watch --------------------------------------------------------------------------------------
@pytest.fixture
def watching(url: str) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(*argv: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sked_script(), "--backend", url, *argv], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        started.append(proc)
        return proc
    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def _frame(proc: subprocess.Popen[str]) -> list[str]:
    """The next frame (lines up to a blank line), without its first line (time and
    revision)."""
    assert proc.stdout is not None
    lines = []
    while (line := proc.stdout.readline()) != "\n":
        assert line, f"sked exited: {proc.stderr.read() if proc.stderr else ''}"
        lines.append(line.rstrip("\n"))
    assert lines[0].endswith("(watching; Ctrl-C exits)")
    return lines[1:]


@pytest.mark.parametrize("argv", [["get", "services", "-o", "name"],
                                  ["get", "services", "-o", "json"]])
def test_watch_redraws_only_when_what_is_shown_changes(url: str, argv: list[str],
                                                      watching: Callable[..., Any]) -> None:
    proc = watching(*argv, "-w", "--sort-by", "name")
    first = _frame(proc)
    assert "api" in "\n".join(first) and "extra" not in "\n".join(first)
    with Client.open(url) as c:
        # a change the listing does not show: a task's health; no frame for it
        c.backend.put(Keyspace().task_health("default-web-1-1"), encode(TaskHealth(
            task_id="default-web-1-1", host=_host_of(c, "default-web-1-1"),
            state="healthy", healthy=True)))
        time.sleep(1)  # let the watcher see it (it must not draw: checked below)
        c.apply(parse_manifest(MANIFEST.replace(
            "  - {name: api,", "  - {name: extra, task_name: web, task_version: 1}\n"
            "  - {name: api,"), "m.yml"))
    second = _frame(proc)
    assert second != first and "extra" in "\n".join(second)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    assert proc.stderr is not None and proc.stderr.read() == ""  # Ctrl-C: quiet


@pytest.mark.parametrize("argv", [["hosts"], ["get", "hosts"], ["tasks"],
                                  ["get", "tasks"], ["get", "clusters"], ["get", "td"],
                                  ["job", "ls"], ["env", "ls"]])
def test_every_get_and_list_watches(argv: list[str], watching: Callable[..., Any]) -> None:
    proc = watching(*argv, "--watch")
    assert _frame(proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0



def test_tasks_by_host_takes_the_same_options(sked: Run) -> None:
    _, out, _ = sked("tasks", "--by-host", "-l", "team=core")
    sections = out.strip().split("\n\n")
    assert len(sections) == 1 and "default-api-1-0" in sections[0]
    assert "default-web" not in out
    _, out, _ = sked("tasks", "--by-host", "--no-headers")
    assert "-----" not in out and " id " not in out and "default-web-1-0" in out
    _, out, _ = sked("tasks", "--by-host", "-o", "name")
    assert out.splitlines() == ["task/default-api-1-0", "task/default-web-1-0",
                                "task/default-web-1-1"]
