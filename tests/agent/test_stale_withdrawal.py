"""A restarted agent withdraws the stale copies of tasks moved away while it was down, all
at once, whatever its worker pool."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

import psutil

from skedlib.executors.supervision import kill_group_members
from skedlib.models import Container
from tests.agent.conftest import PY, AgentEnv, make_task, wait_for

SLOW_TO_STOP = """\
import os, pathlib, signal, sys, time
out = pathlib.Path(sys.argv[1])
def term(*_):
    (out / (os.environ["SKED_TASK_ID"] + ".term")).write_text(str(time.time()))
    time.sleep(1.0)  # a clean shutdown that takes a while
    (out / (os.environ["SKED_TASK_ID"] + ".exit")).write_text(str(time.time()))
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
while True:
    time.sleep(3600)
"""


def test_stale_copies_are_all_signalled_before_the_first_one_exits(
        env: AgentEnv, tmp_path: Path) -> None:
    script, out = tmp_path / "slow.py", tmp_path / "out"
    script.write_text(SLOW_TO_STOP)
    out.mkdir()
    agent = env.start_agent("--workers", "1")
    tasks = [make_task(i, containers=[Container(
        name="main", type="process", executor={"argv": [PY, str(script), str(out)]})],
        provide_port=False, grace=30.0) for i in range(6)]
    for t in tasks:
        env.put_task(t)
    for t in tasks:
        env.wait_healthy(t.id)
    env.kill9(agent)
    for t in tasks:  # moved to another host while the agent was down
        env.delete_task(t.id)
    env.start_agent("--workers", "1")
    wait_for(lambda: not env.processes(), 60, "the stale copies to be stopped")
    terms = [float((out / f"{t.id}.term").read_text()) for t in tasks]
    exits = [float((out / f"{t.id}.exit").read_text()) for t in tasks]
    # one worker, stopping them one by one, would signal the next only after one exited
    assert max(terms) < min(exits)


def test_a_zombie_left_in_the_group_is_not_waited_for() -> None:
    # an adopted task's process is not our child: once it exits it stays a zombie until
    # its parent (init) reaps it, which can take seconds; stopping must not wait for that
    parent = subprocess.Popen(
        [PY, "-c", "import subprocess, time; p = subprocess.Popen(['sleep', '3600'], "
                   "start_new_session=True); print(p.pid, flush=True); time.sleep(3600)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 10,
                 "the zombie")
        done = threading.Event()
        worker = threading.Thread(target=lambda: (kill_group_members(pid, 600.0),
                                                  done.set()), daemon=True)
        worker.start()
        assert done.wait(60), "kill_group_members waited for a zombie"
        assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    finally:
        parent.kill()
        parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()
