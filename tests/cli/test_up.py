"""``sked up``: combined mode, as the README's quickstart runs it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from skedlib.cli.example import examples
from skedlib.client import Client
from tests.harness.cli import sked_script
from tests.harness.common import eventually

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
HELLO = Path(str(examples()["hello-world"]))  # as the installed package ships it


class Up:
    """Runs ``sked up`` for a host of its own; kills what is left in teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.host = f"up{uuid.uuid4().hex[:8]}"
        self.url = f"sqlite://{tmp}/up.db"
        self.env = dict(os.environ, SKED_BACKEND=self.url)

    def argv(self, *args: str) -> list[str]:
        return [sked_script(), "up", "--host", self.host, "--state-dir", str(self.tmp / "agent"),
                *args]

    def run(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), env=self.env, capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)

    def processes(self) -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if p.environ().get("SKED_HOST") == self.host and \
                        p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
        return found

    def cleanup(self) -> None:
        for p in self.processes():
            with contextlib.suppress(OSError, psutil.Error):
                os.killpg(os.getpgid(p.pid), signal.SIGKILL)


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    u = Up(tmp_path)
    try:
        yield u
    finally:
        u.cleanup()


def test_up_once_runs_hello_world_and_stops(up: Up) -> None:
    """What ``./dev up`` runs: converge, print the table, stop everything, exit 0."""
    run = up.run("--once", "-f", str(HELLO))
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "every service is healthy (1 service(s)" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("default-helloworld")]
    assert [r[0] for r in rows] == ["default-helloworld-1-0", "default-helloworld-1-1"]
    assert all(r[1] == up.host and r[-2:] == ["true", "healthy"] for r in rows), out
    assert f"placed default-helloworld-1-0 on {up.host}" in run.stderr
    assert up.processes() == []  # the tasks were stopped on exit
    with Client.open(up.url) as c:
        assert c.hosts() == []  # and the host record is gone


def test_up_once_says_why_it_did_not_converge(up: Up, tmp_path: Path) -> None:
    big = tmp_path / "big.yml"
    big.write_text(HELLO.read_text().replace("memory: 32", "memory: 9999999"))
    run = up.run("--once", "--timeout", "3", "-q", "-f", str(big))
    assert run.returncode == 1, run.stdout + run.stderr
    assert "not every service is healthy after 3s:" in run.stdout
    assert "helloworld: unschedulable: 2 task(s) unschedulable: 0/1 hosts fit: not enough " \
           "memory on 1 host" in run.stdout
    assert run.stderr == ""  # -q: no log lines


def test_up_keeps_running_until_sigterm(up: Up) -> None:
    proc = subprocess.Popen(up.argv("-f", str(HELLO), "--keep-tasks"), env=up.env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=ROOT, start_new_session=True)
    try:
        assert proc.stdout is not None
        seen: list[str] = []
        while not any(line.startswith("running:") for line in seen):
            line = proc.stdout.readline()
            assert line, "".join(seen)
            seen.append(line)
        assert "every service is healthy" in "".join(seen)
        pids = {p.pid for p in up.processes()}
        assert len(pids) == 2
        # a second one on the same state directory refuses, and touches nothing
        second = up.run("--once", "-q", "-f", str(HELLO))
        assert second.returncode == 1, second.stdout
        assert second.stderr.strip().splitlines()[-1] == (
            f"sked: error: state directory {up.tmp / 'agent'} is in use by another agent "
            f"(process {proc.pid}); give each agent its own --state-dir")
        assert {p.pid for p in up.processes()} == pids
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert "stopped" in proc.stdout.read()
        # --keep-tasks: the tasks still run, for the next agent to adopt
        assert {p.pid for p in up.processes()} == pids
        again = up.run("--once", "-q", "-f", str(HELLO))
        assert again.returncode == 0, again.stdout
        eventually(lambda: not up.processes(), 10, "the adopted tasks to stop")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_up_logs_json_lines_when_asked(up: Up) -> None:
    run = up.run("--once", "--log-format", "json", "-f", str(HELLO))
    assert run.returncode == 0, run.stdout + run.stderr
    entries = [json.loads(line) for line in run.stderr.splitlines()]
    assert entries and all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    assert any(e["logger"] == "skedlib.scheduler" and
               e["message"] == f"placed default-helloworld-1-0 on {up.host}" for e in entries)
