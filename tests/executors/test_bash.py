"""The ``bash`` executor through the agent: setup, foreground and detached starts, stop
commands, artifacts and failures."""

from __future__ import annotations

from pathlib import Path

import psutil

from skedlib.models import Check, Container
from tests.agent.conftest import PY, AgentEnv, make_task, wait_for


def _workdir(env: AgentEnv, task_id: str, container: str) -> Path:
    return env.state_dir / "executors" / "bash" / task_id / container


def test_foreground_start_after_setup_is_supervised(env: AgentEnv) -> None:
    env.start_agent()
    container = Container(
        name="web", type="bash",
        setup=["echo one > setup.txt", "echo two >> setup.txt"],
        executor={"start": f'echo "$GREETING $SKED_TASK_ID" > env.txt; exec {PY} -m '
                           "http.server $PROVIDED_PORT --bind 127.0.0.1",
                  "env": ["GREETING=hello"]},
        checks=[Check(http="http://127.0.0.1:$PROVIDED_PORT/", interval="300ms")])
    task = make_task(0, containers=[container])
    env.put_task(task)
    env.wait_healthy(task.id)
    work = _workdir(env, task.id, "web")
    assert (work / "setup.txt").read_text() == "one\ntwo\n"
    assert (work / "env.txt").read_text() == f"hello {task.id}\n"
    pid = env.pid(task.id)
    psutil.Process(pid).kill()  # the start command is the task's process
    wait_for(lambda: [p for p in env.processes(task.id) if p.pid != pid], 10, "a restart")
    assert env.wait_healthy(task.id).attempts == 1


def test_detached_start_is_stopped_with_its_stop_command_even_after_restart(
        env: AgentEnv) -> None:
    agent = env.start_agent()
    container = Container(name="daemon", type="bash", executor={
        "start": "nohup sleep 300 >/dev/null 2>&1 & echo $! > daemon.pid",
        "stop": "kill $(cat daemon.pid) && echo stopped > stopped.txt"})
    task = make_task(0, containers=[container], provide_port=False)
    env.put_task(task)
    health = env.wait_healthy(task.id)  # no checks: healthy while detached
    assert health.state == "healthy"
    work = _workdir(env, task.id, "daemon")
    daemon = int(wait_for(lambda: (work / "daemon.pid").read_text().strip(), 5, "the pid"))
    assert psutil.pid_exists(daemon)
    env.kill9(agent)
    env.start_agent()
    wait_for(lambda: "adopted " + task.id in env.log_text(), 10, "the adoption")
    env.delete_task(task.id)
    wait_for(lambda: (work / "stopped.txt").exists(), 10, "the stop command")
    wait_for(lambda: not psutil.pid_exists(daemon) or
             psutil.Process(daemon).status() == psutil.STATUS_ZOMBIE, 10, "the daemon to stop")


def test_failing_setup_is_a_failed_attempt(env: AgentEnv) -> None:
    env.start_agent()
    container = Container(name="app", type="bash", setup=["echo preparing", "exit 3"],
                          executor={"start": "sleep 300"})
    task = make_task(0, containers=[container], provide_port=False, max_attempts=2)
    env.put_task(task)
    rejected = env.wait_rejected(task.id)
    assert "failed 2 times" in rejected.reject_reason
    assert "setup command 2 of 2 ('exit 3') exited with code 3" in rejected.reject_reason


def test_start_command_not_found_is_rejected_at_once(env: AgentEnv) -> None:
    env.start_agent()
    container = Container(name="app", type="bash", executor={"start": "no-such-cmd-xyz"})
    task = make_task(0, containers=[container], provide_port=False)
    env.put_task(task)
    reason = env.wait_rejected(task.id).reject_reason
    assert reason.startswith("container app: start command not found:")
    assert "no-such-cmd-xyz" in reason and "failed" not in reason


def test_artifact_is_downloaded_and_bad_artifacts_are_rejected(env: AgentEnv,
                                                               tmp_path: Path) -> None:
    tool = tmp_path / "tool.sh"
    tool.write_text("#!/bin/sh\nexec sleep 300\n")
    env.start_agent()
    dest = tmp_path / "downloads"
    good = make_task(0, provide_port=False, containers=[Container(
        name="app", type="bash", executor={"artifact": f"file://{tool}",
                                           "download_dir": str(dest),
                                           "start": "exec $SKED_ARTIFACT"})])
    env.put_task(good)
    env.wait_healthy(good.id)
    assert (dest / "tool.sh").read_text() == tool.read_text()
    assert psutil.Process(env.pid(good.id)).name() == "sleep"
    missing = make_task(1, provide_port=False, containers=[Container(
        name="app", type="bash", executor={"artifact": f"file://{tmp_path}/nope.sh",
                                           "start": "true"})])
    ftp = make_task(2, provide_port=False, containers=[Container(
        name="app", type="bash", executor={"artifact": "ftp://example.com/x",
                                           "start": "true"})])
    env.put_task(missing)
    env.put_task(ftp)
    assert env.wait_rejected(missing.id).reject_reason.endswith("nope.sh': no such file")
    assert "only http://, https:// and file:// URLs" in env.wait_rejected(ftp.id).reject_reason


def test_a_detached_task_is_restarted_when_its_check_fails(env: AgentEnv) -> None:
    env.start_agent()
    container = Container(name="daemon", type="bash", executor={
        "start": f"nohup {PY} -m http.server $PROVIDED_PORT --bind 127.0.0.1 "
                 ">/dev/null 2>&1 & echo $! > daemon.pid",
        "stop": "kill $(cat daemon.pid)"},
        checks=[Check(http="http://127.0.0.1:$PROVIDED_PORT/", interval="300ms",
                      timeout="250ms")])
    task = make_task(0, containers=[container])
    env.put_task(task)
    env.wait_healthy(task.id)
    pidfile = _workdir(env, task.id, "daemon") / "daemon.pid"
    first = int(pidfile.read_text())
    psutil.Process(first).kill()  # nothing supervises it: only the check can tell
    second = wait_for(lambda: (pid := int(pidfile.read_text() or 0)) != first and pid, 15,
                      "a new daemon")
    assert env.wait_healthy(task.id).attempts == 1
    assert psutil.pid_exists(second)
    assert "failed (attempt 1 of 10): check daemon.checks[0] critical" in env.log_text()


def test_starts_run_in_parallel_up_to_the_workers_bound(env: AgentEnv, tmp_path: Path) -> None:
    """Each setup command waits until three setups run at once (so starts that ran one at
    a time would fail), and notes how many run as it begins (never more than --workers)."""
    shared = tmp_path / "setups"
    shared.mkdir()
    barrier = (
        'touch "$D/in.$SKED_TASK_ID"; ls "$D" | grep -c "^in\\." >> "$D/counts"; i=0; '
        'while [ "$(ls "$D" | grep -c "^in\\.")" -lt 3 ] && [ ! -e "$D/go" ]; do '
        'sleep 0.05; i=$((i+1)); [ $i -gt 300 ] && exit 1; done; '
        'touch "$D/go"; sleep 0.5; rm "$D/in.$SKED_TASK_ID"')
    env.start_agent("--workers", "3")
    tasks = [make_task(i, provide_port=False, containers=[Container(
        name="app", type="bash", setup=[barrier],
        executor={"start": "sleep 300", "env": [f"D={shared}"]})]) for i in range(6)]
    for task in tasks:
        env.put_task(task)
    for task in tasks:
        assert env.wait_healthy(task.id, 30).attempts == 0  # no setup gave up waiting
    counts = [int(n) for n in (shared / "counts").read_text().split()]
    assert len(counts) == 6 and max(counts) <= 3, counts
