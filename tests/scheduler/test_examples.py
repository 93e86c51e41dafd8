"""The examples work: a hand-rolled scheduler script, and a third-party plugin package
installed with pip and named by a service."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from skedlib.client import Client
from skedlib.codecs import encode, load_manifest
from skedlib.models import Host, Resources
from skedlib.scheduler.daemon import SchedulerDaemon
from tests.scheduler.conftest import Loop, wait_for, web_manifest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def test_hand_rolled_scheduler_script(sqlite_loop: Loop) -> None:
    """No scheduler daemon: the script writes the issued state; a real agent runs it."""
    loop = sqlite_loop
    loop.start_agent(1)
    loop.start_agent(2)
    loop.apply(web_manifest("hello", 1))
    script = EXAMPLES / "hand_rolled_scheduler.py"
    assert len(script.read_text().splitlines()) <= 40
    run = subprocess.run([sys.executable, str(script), loop.url, "default", "hello", "2"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["wrote", "default-hello-1-0", "wrote", "default-hello-1-1"]
    tasks = loop.wait_healthy("hello", 2)
    assert sorted(t.host for t in tasks) == sorted([loop.host(1), loop.host(2)])  # round-robin
    again = subprocess.run([sys.executable, str(script), loop.url, "default", "hello", "2"],
                           capture_output=True, text=True, timeout=60)
    assert again.stdout.strip() == "nothing to do"


@pytest.fixture(scope="module")
def plugin_installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``pip install --target DIR examples/plugin-package``, with DIR on ``PYTHONPATH`` for
    the processes this module starts: the scheduler is found through its entry point as
    from any installed package, and the venv the suite runs in is left as it was (a
    package installed into it would show up in other tests' processes, and on several
    pytest workers would appear to them half-installed)."""
    target = tmp_path_factory.mktemp("plugin-package")
    run = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "--no-deps", "--target", str(target), str(EXAMPLES / "plugin-package")],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(
            p for p in (str(target), os.environ.get("PYTHONPATH", "")) if p))
        listed = subprocess.run(
            [sys.executable, "-c", "from skedlib.plugins import get_registry; "
                                   "print(get_registry().names('schedulers'))"],
            capture_output=True, text=True, timeout=60)
        assert "most-free-cpu" in listed.stdout, listed.stdout + listed.stderr
        yield


def test_plugin_package_scheduler_by_name(plugin_installed: None, sqlite_loop: Loop) -> None:
    loop = sqlite_loop
    loop.start_agent(1, "--cpu-units", "1024")
    loop.start_agent(2, "--cpu-units", "8192")
    loop.start_scheduler()
    loop.apply(web_manifest("web", 3, scheduler="most-free-cpu"))
    tasks = loop.wait_healthy("web", 3)
    # binpack would fill the smaller host first; most-free-cpu picks the one with most room
    assert {t.host for t in tasks} == {loop.host(2)}
    st = wait_for(lambda: (s := loop.status("web")) and s.state == "ok" and s, 15, "ok")
    assert st.scheduler == "most-free-cpu"
    assert "schedulers installed: binpack, daemon, most-free-cpu, spread" in \
        loop.log_text("scheduler")


# the example manifests are package data (sked example): skedlib/examples/*.yml
@pytest.mark.parametrize("manifest", sorted((ROOT / "skedlib" / "examples").glob("*.yml")),
                         ids=lambda p: p.name)
def test_example_manifests_schedule(manifest: Path) -> None:
    """Every example manifest applies and is fully placed by the reference schedulers."""
    with Client.open(f"memory://{uuid.uuid4().hex}") as c:
        for i, zone in enumerate("aab"):
            c.backend.put(c.keys.agent(f"h{i}"), encode(Host(
                name=f"h{i}", attributes={"zone": zone},
                total=Resources(memory=4096, cpu_units=4096))))
        c.apply(load_manifest(manifest))
        daemon = SchedulerDaemon(c.store)
        for cluster in c.clusters():
            for service in cluster.services:
                out = daemon.run_once((cluster.name, service))
                assert out.status is not None and out.status.unschedulable == 0, out
                assert out.status.placed == out.status.desired > 0, out
