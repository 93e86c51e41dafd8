"""Memory pressure: an agent whose host is short of memory gives up one task (the lowest
priority, then the newest), and the scheduler places it on another host."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import psutil
import pytest

from skedlib.agent.agent import Agent, AgentConfig
from skedlib.agent.pressure import (
    PressureCandidate,
    choose_task_to_give_up,
    memory_in_use,
    pressure_reason,
)
from skedlib.cli.agent import build_parser, config_from_args
from skedlib.plugins import open_backend
from tests.scheduler.conftest import (
    PY,
    Loop,
    sqlite_loop,  # noqa: F401  (the fixture)
    wait_for,
)

# -- choosing the task to give up ---------------------------------------------------------


def test_the_lowest_priority_is_given_up_first_then_the_newest() -> None:
    old_low = PressureCandidate("default-batch-1-0", priority=0, started=10.0)
    new_low = PressureCandidate("default-batch-1-1", priority=0, started=20.0)
    newest_high = PressureCandidate("default-web-1-0", priority=5, started=30.0)
    negative = PressureCandidate("default-spare-1-0", priority=-1, started=1.0)
    assert choose_task_to_give_up([newest_high, old_low, new_low]) == new_low
    assert choose_task_to_give_up([new_low, newest_high, old_low]) == new_low
    assert choose_task_to_give_up([newest_high, old_low, negative]) == negative
    assert choose_task_to_give_up([newest_high]) == newest_high
    assert choose_task_to_give_up([]) is None
    # a full tie never depends on the order the tasks come in
    a = PressureCandidate("default-a-1-0", priority=0, started=5.0)
    b = PressureCandidate("default-b-1-0", priority=0, started=5.0)
    assert choose_task_to_give_up([a, b]) == choose_task_to_give_up([b, a]) == a


def test_memory_in_use_and_the_reason() -> None:
    assert 0 < memory_in_use() <= 100
    assert pressure_reason(93.14, 90.0) == "memory pressure: host memory 93.1% in use >= 90%"
    assert pressure_reason(71.0, 70.5) == "memory pressure: host memory 71.0% in use >= 70.5%"


# -- options ------------------------------------------------------------------------------


def test_options(tmp_path: Path) -> None:
    args = build_parser().parse_args(["--host", "h1", "--state-dir", str(tmp_path)])
    config = config_from_args(args)
    assert (config.memory_pressure, config.pressure_cooldown) == (0.0, 60.0)
    args = build_parser().parse_args(["--host", "h1", "--state-dir", str(tmp_path),
                                      "--memory-pressure", "90.5",
                                      "--pressure-cooldown", "300"])
    config = config_from_args(args)
    assert (config.memory_pressure, config.pressure_cooldown) == (90.5, 300.0)


@pytest.mark.parametrize("argv, message", [
    (["--memory-pressure", "0"], "greater than 0 and less than 100, got '0'"),
    (["--memory-pressure", "100"], "greater than 0 and less than 100, got '100'"),
    (["--memory-pressure", "-5"], "greater than 0 and less than 100, got '-5'"),
    (["--memory-pressure", "nan"], "greater than 0 and less than 100, got 'nan'"),
    (["--memory-pressure", "lots"], "expected a percentage, got 'lots'"),
    (["--pressure-cooldown", "-1"], "must be >= 0, got '-1'"),
    (["--pressure-cooldown", "soon"], "expected a number of seconds, got 'soon'"),
])
def test_bad_options_are_usage_errors(argv: list[str], message: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {argv[0]}" in err and message in err


@pytest.mark.parametrize("fields", [{"memory_pressure": 100.0}, {"memory_pressure": -1.0},
                                    {"pressure_cooldown": -1.0}])
def test_bad_config_is_refused(tmp_path: Path, fields: dict[str, float]) -> None:
    backend = open_backend(f"sqlite://{tmp_path}/store.db")
    try:
        with pytest.raises(ValueError, match=r"memory_pressure|pressure_cooldown"):
            Agent(backend, AgentConfig(host="h1", state_dir=tmp_path / "state",
                                       **fields))  # type: ignore[arg-type]
    finally:
        backend.close()


# -- with real processes ------------------------------------------------------------------

HOG = '''\
import http.server, os, pathlib, sys, threading, time

class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(
    ("127.0.0.1", int(os.environ["PROVIDED_PORT"])), Ok)
threading.Thread(target=server.serve_forever, daemon=True).start()
trigger = pathlib.Path(sys.argv[1])
while not trigger.exists() or not trigger.read_text().strip():
    time.sleep(0.1)
# written, so really in use; 4 MiB at a time, so the server keeps answering its checks
hog = [bytearray(b"\\x01") * (4 << 20) for _ in range(int(trigger.read_text()) // 4)]
(trigger.parent / ("allocated-" + os.environ["SKED_HOST"])).write_text(str(len(hog)))
while True:
    time.sleep(3600)
'''


def _manifest(hog: Path, trigger: Path, vip_desired: int) -> str:
    check = """        checks:
          - http: http://127.0.0.1:$PROVIDED_PORT/
            interval: 300ms
            timeout: 250ms"""
    return f"""
clusters:
  - name: default
    services: [hog, vip]
services:
  - name: hog
    task_name: hog
    task_version: 1
    desired: 1
    scheduler: binpack
  - name: vip
    task_name: vip
    task_version: 1
    desired: {vip_desired}
    scheduler: binpack
task_definitions:
  - name: hog
    version: 1
    provide_port: true
    memory: 64
    cpu_units: 64
    priority: 0
    grace_period: 2s
    containers:
      - name: main
        type: process
        executor:
          argv: [{PY}, {hog}, {trigger}]
{check}
  - name: vip
    version: 1
    provide_port: true
    memory: 64
    cpu_units: 64
    priority: 10
    grace_period: 2s
    containers:
      - name: web
        type: process
        executor:
          argv: [{PY}, -m, http.server, --bind, 127.0.0.1, $PROVIDED_PORT]
{check}
"""


def _hosts_running(loop: Loop, task_id: str) -> set[str]:
    hosts = set()
    for p in loop.processes(task_id):
        with contextlib.suppress(psutil.Error):
            hosts.add(p.environ().get("SKED_HOST", ""))
    return hosts


@pytest.mark.slow
def test_short_of_memory_the_agent_gives_up_its_lowest_priority_task(
        sqlite_loop: Loop) -> None:  # noqa: F811
    loop = sqlite_loop
    hog, trigger = loop.tmp / "hog.py", loop.tmp / "allocate"
    hog.write_text(HOG)
    total_mib = psutil.virtual_memory().total >> 20

    # host 1 gives up a task once its host's memory use grows by about 5% of the total
    # (wide enough that other programs on a shared machine do not cross it by themselves)
    loop.start_scheduler()
    threshold = round(min(memory_in_use() + 5.0, 99.0), 1)
    # the hog uses far more than the 64 MiB it declares: only an uncontained host lets it
    # (containment would OOM-kill it, see tests/executors/test_containment.py)
    uncontained = ("--executor-opt", "process.limits=none")
    loop.start_agent(1, "--memory-pressure", str(threshold), "--pressure-cooldown", "300",
                     *uncontained)
    h1, h2 = loop.host(1), loop.host(2)

    # the low-priority hog first, then the important task: the newest but not the lowest
    loop.apply(_manifest(hog, trigger, vip_desired=0))
    (hog_task,) = loop.wait_healthy("hog", 1)
    loop.apply(_manifest(hog, trigger, vip_desired=1))
    (vip,) = loop.wait_healthy("vip", 1)
    assert hog_task.host == vip.host == h1
    vip_pids = {p.pid for p in loop.processes(vip.id)}
    assert vip_pids

    loop.start_agent(2, *uncontained)  # room for the hog to go to; no memory-pressure watch
    in_use = memory_in_use()
    print(f"memory in use: {in_use}%, threshold {threshold}%")
    assert in_use < threshold - 2.0, (
        f"the machine's memory use moved by itself: {in_use}% (threshold {threshold}%)")
    assert not loop.tasks("hog")[0].rejected_hosts, loop.log_text()

    # the hog allocates 8% of the host's memory, and at least 3% more than the threshold
    # needs
    mib = int(max(8.0, threshold - in_use + 3.0) * total_mib / 100)
    trigger.write_text(str(mib))

    def moved() -> bool:
        tasks = loop.tasks("hog")
        return (len(tasks) == 1 and tasks[0].host == h2 and h1 in tasks[0].rejected_hosts
                and bool(loop.healthy("hog")))
    try:
        wait_for(moved, 60, "the hog given up by host 1 and healthy on host 2")
    except AssertionError:
        raise AssertionError(f"{loop.sked('tasks')[1]}\n{loop.log_text()}") from None

    (moved_hog,) = loop.tasks("hog")
    assert not moved_hog.rejected
    agent_log = loop.log_text(f"agent-{h1}")
    assert "memory pressure: host memory" in agent_log
    assert f"giving up {moved_hog.id} (priority 0, of 2 running task(s))" in agent_log
    assert not _hosts_running(loop, moved_hog.id) - {h2}  # stopped on host 1

    # the hog allocates on host 2 as well, so the pressure lasts; host 1 is cooling down
    # and gives up nothing else for a few more readings
    wait_for(lambda: (loop.tmp / f"allocated-{h2}").exists(), 30, "the moved hog to allocate")
    time.sleep(5)
    assert memory_in_use() >= threshold
    (still,) = loop.healthy("vip")
    assert still.host == h1 and not still.rejected_hosts
    assert {p.pid for p in loop.processes(vip.id)} == vip_pids
    assert loop.log_text(f"agent-{h1}").count("giving up ") == 1
