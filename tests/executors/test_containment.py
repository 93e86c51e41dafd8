"""Containment of service tasks with real processes, real cgroups and a real memory hog.

The ``process`` and ``bash`` executors run each container in a cgroup of its own, made by
the limiter the batch jobs use (tests/jobs/test_limits.py covers its kinds one by one).
Where this machine offers no usable cgroup kind, the tests that need one are skipped with
the limiter's own reason, as tests/jobs/test_limits.py does for a kind the kernel cannot
offer.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from skedlib.executors.base import ContainerRef, ContainerStatus, ExecutorContext
from skedlib.executors.bash import BashRunner
from skedlib.executors.limits import Limited
from skedlib.executors.process import ProcessRunner
from skedlib.models import Container, Resources
from tests.agent.conftest import PY, AgentEnv, make_task, wait_for

CGROUP_KINDS = ("cgroup2", "cgroup1")
OOM = "killed: used more than its memory limit of 64 MiB"

# allocates and touches argv[1] MiB, then sleeps (a hog that stays when it fits)
HOG = """\
import sys, time
b = bytearray(int(sys.argv[1]) * 2**20)
for i in range(0, len(b), 4096):
    b[i] = 1
print("allocated", flush=True)
time.sleep(600)
"""

# starts up to 100 sleeping children, prints how many it could start and how many forks
# the kernel refused
FORKS = """\
import subprocess, time
started, refused = [], 0
for _ in range(100):
    try:
        started.append(subprocess.Popen(["sleep", "600"]))
    except OSError:
        refused += 1
print(f"started {len(started)} refused {refused}", flush=True)
time.sleep(600)
"""


def _ctx(tmp_path: Path, **options: str) -> ExecutorContext:
    return ExecutorContext(host=f"contain-{os.getpid()}", state_dir=tmp_path / "state",
                           log_dir=tmp_path / "logs", options=dict(options))


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[ProcessRunner]:
    r = _open(_ctx(tmp_path))
    try:
        yield r
    finally:
        _close(r)


def _open(ctx: ExecutorContext) -> ProcessRunner:
    r = ProcessRunner(ctx)
    if r.containment() not in CGROUP_KINDS:
        r.close()
        pytest.skip(f"no cgroup kind is usable here: {r.limiter.detail}")
    return r


def _close(r: ProcessRunner) -> None:
    for ref in r.running():
        r.stop(ref, 1.0)
    for ref in list(r.supervisor._cgroups):  # exited, not cleaned up by the test
        r.cleanup(ref)
    r.close()
    r.limiter.close()


def _start(runner: ProcessRunner, argv: list[str], *, memory: int = 0,
           task_memory: int = 0, instance: int = 0, cpu_units: int = 0) -> ContainerRef:
    container = Container(name="main", type="process", executor={"argv": argv},
                          memory=memory, cpu_units=cpu_units)
    task = make_task(instance, containers=[container], memory=task_memory)
    runner.start(task, container, {"SKED_TASK_ID": task.id, "SKED_HOST": "h",
                                   "PROVIDED_PORT": "1"})
    return ContainerRef(task.id, "main")


def _cgroups(runner: ProcessRunner, ref: ContainerRef) -> list[str]:
    limited = runner.supervisor._cgroups.get(ref)
    assert limited is not None, f"{ref} has no cgroup"
    dirs: list[str] = getattr(limited, "cgroups")  # noqa: B009 - the cgroup kinds' list
    return dirs


def _procs(cgroup: str) -> list[int]:
    with open(os.path.join(cgroup, "cgroup.procs")) as f:
        return [int(p) for p in f.read().split()]


def test_memory_hog_is_oom_killed_and_the_exit_says_so(runner: ProcessRunner) -> None:
    seen: list[ContainerStatus] = []
    exited = threading.Event()

    def on_exit(ref: ContainerRef, status: ContainerStatus) -> None:
        seen.append(status)
        exited.set()

    runner.notify_exits(on_exit)
    ref = _start(runner, [PY, "-c", HOG, "200"], memory=64)
    assert exited.wait(30), "the hog was not stopped"
    assert seen[0].state == "exited" and seen[0].exit_code == -9
    assert seen[0].message == OOM, seen[0].message
    assert runner.status(ref).message == OOM
    cgroups = _cgroups(runner, ref)
    runner.cleanup(ref)
    assert not any(os.path.exists(c) for c in cgroups), "the cgroup outlived the cleanup"


def test_the_task_memory_applies_to_its_only_container(runner: ProcessRunner) -> None:
    ref = _start(runner, [PY, "-c", HOG, "200"], task_memory=64)
    wait_for(lambda: runner.status(ref).state == "exited", 30, "the hog to be killed")
    assert runner.status(ref).message == OOM


def test_well_behaved_task_runs_in_its_cgroup_until_stopped(runner: ProcessRunner) -> None:
    ref = _start(runner, [PY, "-c", HOG, "16"], memory=64)
    out, _ = runner.log_paths(ref)
    wait_for(lambda: out.exists() and "allocated" in out.read_text(), 20, "the allocation")
    status = runner.status(ref)
    assert status.state == "running"
    cgroups = _cgroups(runner, ref)
    assert cgroups and all(os.path.isdir(c) for c in cgroups)
    assert status.pid in _procs(cgroups[0])
    # the cgroup's figure: the 16 MiB and the interpreter, well below the limit
    assert 16 << 20 <= status.memory_bytes < 64 << 20
    assert runner.memory_usage()[ref.task_id] >= 16 << 20
    runner.stop(ref, 2.0)
    assert not any(os.path.exists(c) for c in cgroups), "the cgroup outlived the stop"
    assert ref.task_id not in runner.memory_usage()


def test_cpu_units_become_a_share(runner: ProcessRunner) -> None:
    """A service's cpu_units is its share under contention (a quota of a small figure
    would slow its start and its checks many times over)."""
    if "cpu not enforced" in runner.limiter.detail:
        pytest.skip(runner.limiter.detail)
    ref = _start(runner, ["sleep", "600"], cpu_units=512)
    files = [os.path.join(c, f) for c in _cgroups(runner, ref)
             for f in ("cpu.weight", "cpu.shares", "cpu.max", "cpu.cfs_quota_us")
             if os.path.exists(os.path.join(c, f))]
    values = {os.path.basename(f): Path(f).read_text().split()[0] for f in files}
    if runner.containment() == "cgroup2":
        assert values["cpu.weight"] == "50"  # half the default, as 512 is half a core
        assert values["cpu.max"] == "max"
    else:
        assert values["cpu.shares"] == "512" and values["cpu.cfs_quota_us"] == "-1"
    # the tasks together weigh a core's worth per core against the host's other work
    name = "cpu.weight" if runner.containment() == "cgroup2" else "cpu.shares"
    weight = Path(next(f for f in files if f.endswith(name))).parent.parent / name
    expected = 100 * (os.cpu_count() or 1) if runner.containment() == "cgroup2" \
        else 1024 * (os.cpu_count() or 1)
    assert weight.read_text().strip() == str(expected)


def test_pids_limit_stops_a_fork_loop(tmp_path: Path) -> None:
    r = _open(_ctx(tmp_path, pids_max="10"))
    try:
        if "pids not enforced" in r.limiter.detail:
            pytest.skip(r.limiter.detail)
        ref = _start(r, [PY, "-c", FORKS])
        out, err = r.log_paths(ref)
        line = wait_for(lambda: out.exists() and out.read_text().strip(), 30,
                        f"the fork loop to report (stderr: {err.read_text()[-500:]})"
                        if err.exists() else "the fork loop to report")
        started, refused = int(line.split()[1]), int(line.split()[3])
        assert refused > 0 and started < 10, line
        cgroups = _cgroups(r, ref)
        r.stop(ref, 2.0)
        assert not any(os.path.exists(c) for c in cgroups)
    finally:
        _close(r)


def test_adopted_task_keeps_its_cgroup(tmp_path: Path) -> None:
    first = _open(_ctx(tmp_path))
    ref = _start(first, [PY, "-c", HOG, "200"], memory=64, instance=1)
    wait_for(lambda: first.status(ref).state == "exited", 30, "the first hog to be killed")
    first.cleanup(ref)
    ref = _start(first, ["sleep", "600"], memory=64, instance=2)
    cgroups = _cgroups(first, ref)
    pid = first.status(ref).pid
    wait_for(lambda: pid in _procs(cgroups[0]), 10, "the task to enter its cgroup")
    first.close()  # the agent goes; the task and its cgroup stay

    second = _open(_ctx(tmp_path))
    try:
        assert second.running() == [ref]
        adopted = second.supervisor._cgroups.get(ref)
        assert isinstance(adopted, Limited) and _cgroups(second, ref) == cgroups
        assert second.status(ref).memory_bytes > 0
        second.stop(ref, 2.0)
        assert not any(os.path.exists(c) for c in cgroups)
    finally:
        _close(second)


def test_none_runs_uncontained(tmp_path: Path) -> None:
    r = ProcessRunner(_ctx(tmp_path, limits="none"))
    try:
        assert r.containment() == "none"
        ref = _start(r, ["sleep", "600"], memory=64)
        assert r.status(ref).state == "running" and r.memory_usage() == {}
    finally:
        _close(r)


def test_bash_daemon_stays_contained_and_goes_with_its_cgroup(tmp_path: Path) -> None:
    """A ``start`` that launches a daemon and returns at once (detached): the daemon is in
    the container's cgroup, held to its limit, and stopping the container ends it even
    though it left the process group (setsid)."""
    ctx = _ctx(tmp_path, detach_window="0.3")
    bash = BashRunner(ctx)
    try:
        if bash.containment() not in CGROUP_KINDS:
            pytest.skip(f"no cgroup kind is usable here: {bash.limiter.detail}")
        container = Container(name="sh", type="bash", memory=64, executor={
            "start": "setsid sleep 600 < /dev/null > /dev/null 2>&1 &"})
        task = make_task(7, containers=[container])
        bash.start(task, container, {"SKED_TASK_ID": task.id, "PROVIDED_PORT": "1"})
        ref = ContainerRef(task.id, "sh")
        assert bash.status(ref).state == "detached"
        limited = bash.supervisor._cgroups[ref]
        cgroups: list[str] = getattr(limited, "cgroups")  # noqa: B009
        daemon = wait_for(lambda: _procs(cgroups[0]), 10, "the daemon in the cgroup")[0]
        bash.stop(ref, 1.0)
        assert not any(os.path.exists(c) for c in cgroups)
        wait_for(lambda: not os.path.exists(f"/proc/{daemon}") or
                 Path(f"/proc/{daemon}/stat").read_text().split()[2] == "Z", 10,
                 "the daemon to be killed")
    finally:
        for ref in bash.running():
            bash.stop(ref, 1.0)
        bash.close()


# -- through a real agent -------------------------------------------------------------------
def _hog(name: str, allocate: int, memory: int) -> Container:
    return Container(name=name, type="process", executor={"argv": [PY, "-c", HOG,
                                                                   str(allocate)]},
                     memory=memory)


def _agent_contains(env: AgentEnv) -> str:
    probe = _open(ExecutorContext(host=env.host, state_dir=env.tmp / "probe",
                                  log_dir=env.tmp / "probe-logs"))
    kind = probe.containment()
    _close(probe)
    return kind


def test_agent_counts_an_oom_kill_as_a_failure(env: AgentEnv) -> None:
    kind = _agent_contains(env)
    env.start_agent()
    task = make_task(containers=[_hog("main", 200, 64)], max_attempts=2)
    env.put_task(task)

    def failed_with_oom() -> object:
        h = env.health(task.id)
        return h if h is not None and h.attempts >= 1 and OOM in h.message else None

    health = wait_for(failed_with_oom, 60, "an OOM failure in the task's status")
    assert health.limits == kind
    # counted as failures: after max_attempts the agent gives the task up
    rejected = env.wait_rejected(task.id, timeout=90)
    assert OOM in rejected.reject_reason, rejected.reject_reason


def test_host_record_reports_use_and_admission_counts_it(env: AgentEnv) -> None:
    _agent_contains(env)
    env.start_agent("--memory", "400")
    # declares 8 MiB for the task, uses about 290 (its container's limit, 350, lets it)
    greedy = make_task(containers=[_hog("main", 280, 350)], memory=8)
    env.put_task(greedy)
    env.wait_healthy(greedy.id, timeout=30)

    def used() -> Resources | None:
        record = env.host_record()
        return record.used if record is not None and record.used.memory >= 270 else None

    assert wait_for(used, 30, "the host record to show the hog's memory").memory < 350
    record = env.host_record()
    assert record is not None and record.allocated.memory == 8
    # by demand 392 MiB are free, by use about 110: a task needing 150 does not fit
    second = make_task(1, containers=[Container(name="main", type="process",
                                                executor={"argv": ["sleep", "600"]},
                                                memory=150)])
    env.put_task(second)
    rejected = env.wait_rejected(second.id, timeout=30)
    assert "needs 150 MiB of memory" in rejected.reject_reason, rejected.reject_reason
