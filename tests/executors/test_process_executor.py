"""The ``process`` executor on its own: process groups, exit notification, grace, log
rotation and adoption that is not fooled by a recycled pid."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from skedlib.executors.base import ContainerRef, ContainerStatus, ExecutorContext, TaskRejected
from skedlib.executors.process import ProcessRunner
from skedlib.executors.supervision import LogRotator
from skedlib.models import Container
from tests.agent.conftest import PY, make_task, wait_for


@pytest.fixture
def ctx(tmp_path: Path) -> ExecutorContext:
    return ExecutorContext(host="h1", state_dir=tmp_path / "state", log_dir=tmp_path / "logs")


@pytest.fixture
def runner(ctx: ExecutorContext) -> Iterator[ProcessRunner]:
    r = ProcessRunner(ctx)
    try:
        yield r
    finally:
        for ref in r.running():
            r.stop(ref, 1.0)
        for ref in list(r.supervisor._cgroups):  # exited ones keep theirs until cleaned up
            r.cleanup(ref)
        r.close()


def _container(argv: list[str], **blob: object) -> Container:
    return Container(name="main", type="process", executor={"argv": argv, **blob})


def _start(runner: ProcessRunner, argv: list[str], instance: int = 0,
           **blob: object) -> ContainerRef:
    task = make_task(instance, containers=[_container(argv, **blob)])
    runner.start(task, task.task_definition.containers[0],
                 {"SKED_TASK_ID": task.id, "SKED_HOST": "h1", "PROVIDED_PORT": "12345"})
    return ContainerRef(task.id, "main")


def test_start_in_own_group_with_env_and_substitution(runner: ProcessRunner,
                                                      tmp_path: Path) -> None:
    ref = _start(runner, [PY, "-c", "import os,sys; print(os.environ['X'], sys.argv[1]); "
                          "import time; time.sleep(60)", "$PROVIDED_PORT"],
                 env={"X": "port=${PROVIDED_PORT} $PROVIDED_PORTS"}, cwd=str(tmp_path))
    status = runner.status(ref)
    assert status.state == "running" and status.pid
    assert os.getpgid(status.pid) == status.pid != os.getpgid(0)
    assert psutil.Process(status.pid).cwd() == str(tmp_path)
    out, _ = runner.log_paths(ref)
    # another variable that merely starts with the name is left alone
    wait_for(lambda: out.exists() and out.read_text() == "port=12345 $PROVIDED_PORTS 12345\n",
             5, "output")
    assert runner.running() == [ref]


def test_exit_is_reported_at_once(runner: ProcessRunner) -> None:
    """The reaper calls back on its own: nothing here polls the runner before the call."""
    seen: list[tuple[ContainerRef, ContainerStatus]] = []
    done = threading.Event()

    def exited(ref: ContainerRef, status: ContainerStatus) -> None:
        seen.append((ref, status))
        done.set()

    assert runner.notify_exits(exited)
    ref = _start(runner, ["sleep", "60"])
    pid = runner.status(ref).pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert done.wait(30)
    (got, status), = seen
    assert got == ref and status.state == "exited" and status.exit_code == -9
    assert status.message == "killed by SIGKILL"
    assert runner.status(ref).state == "exited" and runner.running() == []


def test_stop_terms_the_group_then_kills_after_grace(runner: ProcessRunner) -> None:
    stubborn = "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \
               "print('ready', flush=True); time.sleep(60)"
    ref = _start(runner, ["sh", "-c", f"{PY} -c \"{stubborn}\" & {PY} -c \"{stubborn}\""])
    out, _ = runner.log_paths(ref)
    wait_for(lambda: out.exists() and out.read_text().count("ready") == 2, 10, "children")
    pgid = runner.status(ref).pid
    assert pgid is not None
    members = [p for p in psutil.process_iter() if _pgid(p.pid) == pgid]
    assert len(members) >= 2
    started = time.monotonic()
    runner.stop(ref, 0.5)
    assert time.monotonic() - started > 0.4  # the grace period was given
    assert not [p for p in members if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert runner.status(ref).state == "missing"
    runner.stop(ref, 0.5)  # idempotent


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def test_rejects_bad_blobs_and_missing_commands(runner: ProcessRunner, tmp_path: Path) -> None:
    task = make_task(0, containers=[_container(["x"])])
    env = {"SKED_TASK_ID": task.id, "SKED_HOST": "h1"}
    cases = {
        "container c: process executor: field argv: Expected `array`, got `int`":
            Container(name="c", type="process", executor={"argv": 5}),
        "container c: process executor: Object missing required field `argv`":
            Container(name="c", type="process", executor={"cmd": ["x"]}),
        "container c: process executor: field argv is empty":
            Container(name="c", type="process", executor={"argv": []}),
        "container c: command 'nope-xyz' not found on PATH":
            Container(name="c", type="process", executor={"argv": ["nope-xyz"]}),
        f"container c: command '{tmp_path}' is not an executable file":
            Container(name="c", type="process", executor={"argv": [str(tmp_path)]}),
        "container c: cwd '/no/such/dir' is not a directory":
            Container(name="c", type="process", executor={"argv": ["true"],
                                                          "cwd": "/no/such/dir"}),
    }
    for expected, container in cases.items():
        with pytest.raises(TaskRejected) as info:
            runner.start(task, container, env)
        assert str(info.value).startswith(expected), str(info.value)


def test_adoption_recognises_the_process_and_not_a_recycled_pid(
        ctx: ExecutorContext) -> None:
    first = ProcessRunner(ctx)
    ref = _start(first, ["sleep", "60"])
    pid = first.status(ref).pid
    first.close()  # the agent goes away; the process stays
    assert pid is not None and psutil.pid_exists(pid)

    # a record whose pid now belongs to another process (same pid, other start time)
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    fake = ContainerRef("default-web-1-7", "main")
    record = Path(ctx.state_dir) / fake.task_id / "main.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"pid": other.pid, "pgid": other.pid,
                                  "create_time": psutil.Process(other.pid).create_time() - 5,
                                  "started_at": time.time() - 5}))
    second = ProcessRunner(ctx)
    try:
        assert second.running() == [ref]
        assert second.status(ref).pid == pid
        assert second.status(fake).state == "missing" and not record.exists()
        seen = threading.Event()
        second.notify_exits(lambda r, s: seen.set())
        os.kill(pid, signal.SIGKILL)  # an adopted process's exit is noticed too
        assert seen.wait(5)
        assert second.status(ref).state == "exited" and other.poll() is None
    finally:
        other.kill()
        other.wait()
        second.cleanup(ref)  # its cgroup goes with it
        second.close()


def test_log_rotation_by_size(tmp_path: Path) -> None:
    log = tmp_path / "x.out.log"
    with log.open("ab") as f:  # the writer keeps its descriptor, as a task does
        rotator = LogRotator(max_bytes=100, backups=2, every=3600)
        rotator.add(log)
        for round_ in range(4):
            f.write(f"{round_}".encode() * 150)
            f.flush()
            rotator.rotate_now()
            assert log.stat().st_size == 0
        f.write(b"tail")
        f.flush()
    assert log.read_bytes() == b"tail"
    assert (tmp_path / "x.out.log.1").read_bytes() == b"3" * 150
    assert (tmp_path / "x.out.log.2").read_bytes() == b"2" * 150
    assert not (tmp_path / "x.out.log.3").exists()
    rotator.close()
