"""``sked tasks``, ``sked hosts``, ``sked schema`` and ``sked get services``' status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from pathlib import Path

import msgspec
import pytest

from skedlib.cli.main import main
from skedlib.client import Client
from skedlib.codecs import encode, parse_manifest
from skedlib.keys import Keyspace
from skedlib.models import Host, Resources, Task, TaskHealth
from skedlib.scheduler.daemon import SchedulerDaemon
from tests.harness.cli import sked_script

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = """
clusters: [{name: default, services: [web]}]
services: [{name: web, task_name: web, task_version: 3, desired: 3}]
task_definitions:
  - {name: web, version: 3, memory: 100, cpu_units: 10,
     containers: [{name: x, type: process, executor: {argv: [sleep, "60"]}}]}
"""


@pytest.fixture
def url(tmp_path: Path) -> str:
    """A SQLite store with two hosts, three tasks placed, one of them healthy."""
    url = f"sqlite://{tmp_path}/views.db"
    with Client.open(url) as c:
        ks = Keyspace()
        c.backend.put(ks.agent("h1"), encode(Host(
            name="h1", address="10.0.0.1", attributes={"zone": "a"},
            total=Resources(memory=250, cpu_units=1000))))
        c.backend.put(ks.agent("h2"), encode(Host(name="h2", total=Resources(
            memory=1000, cpu_units=1000))))
        c.apply(parse_manifest(MANIFEST, "m.yml"))
        SchedulerDaemon(c.store).run_once(("default", "web"))
        on_h1 = sorted(t.id for t in c.tasks() if t.host == "h1")
        c.backend.put(ks.task_health(on_h1[0]), encode(TaskHealth(
            task_id=on_h1[0], host="h1", state="healthy", healthy=True)))
    return url


def test_tasks_table_is_skeds(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--backend", url, "tasks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["id", "host", "rejected", "cluster", "service", "task", "def",
                                "version", "healthy", "state"]
    assert set(lines[1]) == {"-"}
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["default-web-3-0", "default-web-3-1", "default-web-3-2"]
    assert [r[1] for r in rows] == ["h1", "h1", "h2"]  # binpack: h1 (250 MiB) holds two
    assert rows[0][2:] == ["false", "default", "web", "web", "3", "true", "healthy"]
    assert rows[1][-2:] == ["false", "pending"]


def test_tasks_by_host_and_json(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--backend", url, "tasks", "--by-host"]) == 0
    out = capsys.readouterr().out
    assert "h1: live, 2 task(s), memory 200/250 MiB, cpu 20/1000" in out
    assert "h2: live, 1 task(s), memory 100/1000 MiB" in out
    assert main(["--backend", url, "tasks", "-o", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["host"], r["healthy"], r["state"]) for r in rows] == [
        ("default-web-3-0", "h1", True, "healthy"), ("default-web-3-1", "h1", False, "pending"),
        ("default-web-3-2", "h2", False, "pending")]


def test_hosts(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--backend", url, "hosts"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "address", "live", "draining", "memory", "cpu",
                                "tasks", "attributes"]
    assert lines[2].split() == ["h1", "10.0.0.1", "true", "false", "200/250", "20/1000", "2",
                                "zone=a"]
    assert lines[3].split() == ["h2", "-", "true", "false", "100/1000", "10/1000", "1", "-"]


def test_get_services_shows_placed_healthy_status(url: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--backend", url, "get", "services"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "task", "version", "scheduler", "desired", "placed",
                                "healthy", "status"]
    assert lines[2].split()[:7] == ["web", "web", "3", "binpack", "3", "3", "1"]
    assert "progressing (0/3 healthy)" in lines[2]  # as the scheduler last saw it


def test_schema_describes_every_stored_object(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"Cluster", "Service", "TaskDefinition", "Task", "Host", "TaskHealth",
            "ServiceStatus", "HostConfig"} <= set(doc["$defs"])
    assert doc["x-skedlib-keys"]["task"]["key"].startswith("state/tasks/<task_id>")
    assert main(["schema", "task"]) == 0
    task = json.loads(capsys.readouterr().out)
    assert task["$ref"] == "#/$defs/Task"
    props = task["$defs"]["Task"]["properties"]
    # Sked's task JSON uses exactly these names
    sked = json.loads((ROOT / "tests" / "data" / "sked_task.json").read_text())
    assert set(sked) <= set(props)
    assert main(["schema", "nope"]) == 1
    assert "unknown kind 'nope'" in capsys.readouterr().err


def test_schema_matches_msgspec(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "service_status"]) == 0
    doc = json.loads(capsys.readouterr().out)
    from skedlib.models import ServiceStatus

    assert doc["$defs"] == msgspec.json.schema(ServiceStatus)["$defs"]


def test_tasks_watch_redraws_on_change(url: str) -> None:
    proc = subprocess.Popen([sked_script(), "--backend", url, "tasks", "--watch"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        frames: list[str] = []

        def read_frame() -> str:
            assert proc.stdout is not None
            lines = []
            while (line := proc.stdout.readline()) != "\n":
                assert line, f"sked exited: {proc.stderr.read() if proc.stderr else ''}"
                lines.append(line)
            return "".join(lines)

        frames.append(read_frame())
        assert "(watching; Ctrl-C exits)" in frames[0]
        assert frames[0].count("default-web-3-") == 3
        with Client.open(url) as c:
            ks = Keyspace()
            tid = "default-web-3-2"
            c.backend.put(ks.task_health(tid), encode(TaskHealth(
                task_id=tid, host="h2", state="healthy", healthy=True)))
        frames.append(read_frame())
        assert [line.split()[-2:] for line in frames[1].splitlines() if tid in line] == [
            ["true", "healthy"]]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def test_sked_tasks_shows_a_hand_written_task(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Any writer of the issued state shows up: a task with no service and no health."""
    url = f"sqlite://{tmp_path}/{uuid.uuid4().hex}.db"
    with Client.open(url) as c:
        task = msgspec.json.decode(
            (ROOT / "tests" / "data" / "sked_task.json").read_bytes(), type=Task)
        c.backend.put(Keyspace().task(task.id), encode(task))
    assert main(["--backend", url, "tasks"]) == 0
    row = capsys.readouterr().out.splitlines()[2]
    assert row.startswith(task.id) and row.endswith("false     host down")
