"""The same ``sked`` commands on sqlite, etcd and Consul: only ``--backend`` changes.

Runs the installed console script as a user would (apply a manifest, read it back,
apply it again, delete a service) against a SQLite file, a real etcd and a real Consul
agent, and checks that the outputs are the same.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from skedlib.cli.example import examples
from tests.harness import consul as consul_harness
from tests.harness import etcd as etcd_harness
from tests.harness.cli import sked_script

pytestmark = [pytest.mark.integration]

etcd_single = etcd_harness.etcd_single
consul_dev = consul_harness.consul_dev

HELLO = Path(str(examples()["hello-world"]))  # as the installed package ships it


def _sked(url: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sked_script(), "--backend", url, "--prefix", prefix, *args],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(params=["sqlite", "etcd", "consul"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'sked.db'}"
    server = request.getfixturevalue("etcd_single" if request.param == "etcd" else "consul_dev")
    url: str = server.url()
    return url


def test_the_same_commands_on_every_backend(backend_url: str) -> None:
    prefix = f"switch/{uuid.uuid4().hex[:8]}/"
    applied = _sked(backend_url, prefix, "apply", "-f", str(HELLO))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.splitlines() == ["task_definitions/helloworld:1 created",
                                           "services/helloworld created",
                                           "clusters/default created"]
    again = _sked(backend_url, prefix, "apply", "-f", str(HELLO))
    assert again.returncode == 0, again.stderr
    assert "created" not in again.stdout  # nothing changed: nothing rewritten
    got = _sked(backend_url, prefix, "get", "services", "-o", "json")
    assert got.returncode == 0, got.stderr
    services = json.loads(got.stdout)
    assert [(s["name"], s["task_name"], s["desired"]) for s in services] == [
        ("helloworld", "helloworld", 2)]
    deleted = _sked(backend_url, prefix, "delete", "service", "helloworld")
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(_sked(backend_url, prefix, "get", "services", "-o", "json").stdout) == []


def test_watch_follows_the_store_on_every_backend(backend_url: str) -> None:
    """``sked get services -w`` draws a new frame when a shown change lands, by the
    backend's own watch, and exits 0 on Ctrl-C."""
    prefix = f"watch/{uuid.uuid4().hex[:8]}/"
    assert _sked(backend_url, prefix, "apply", "-f", str(HELLO)).returncode == 0
    proc = subprocess.Popen([sked_script(), "--backend", backend_url, "--prefix", prefix,
                             "get", "services", "-o", "name", "-w"], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        def frame() -> list[str]:
            assert proc.stdout is not None
            lines = []
            while (line := proc.stdout.readline()) != "\n":
                assert line, f"sked exited: {proc.stderr.read() if proc.stderr else ''}"
                lines.append(line.rstrip("\n"))
            return lines[1:]  # after the time and revision line
        assert frame() == ["service/helloworld"]
        assert _sked(backend_url, prefix, "delete", "service", "helloworld").returncode == 0
        assert frame() == []
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
