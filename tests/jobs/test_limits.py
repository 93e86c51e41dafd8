"""skedlib.executors.limits with real processes and real cgroups (no mocks).

Every test runs for ``auto`` and for each kind; a kind this machine cannot use is skipped
with the reason detect_limiter gives.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

from skedlib.errors import SkedError
from skedlib.executors import limits
from skedlib.executors.limits import LIMITER_KINDS, Limited, Limiter, detect_limiter
from skedlib.jobs.models import JobRequirements

CGROUP_KINDS = ("cgroup2", "cgroup1")
NODE = f"pytest-{os.getpid()}"

ALLOC = """\
import sys
b = bytearray(int(sys.argv[1]) * 2**20)
for i in range(0, len(b), 4096):
    b[i] = 1
"""

BUSY = """\
import sys, time
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    pass
"""

# A worker in miniature: a limiter of the kind (reused cgroups or not) in a process of its
# own starts one job (a shell that forks a sleep and execs another), publishes its pid,
# then waits to be killed.
WORKER = """\
import json, os, subprocess, sys, time
from skedlib.executors.limits import detect_limiter
from skedlib.jobs.models import JobRequirements
node, kind, reuse, out = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
limiter = detect_limiter(node, kind, reuse=reuse)
limited = limiter.wrap("j", JobRequirements(memory=64),
                       ["/bin/sh", "-c", "sleep 60 & exec sleep 60"])
proc = subprocess.Popen(limited.argv, start_new_session=True, stdin=subprocess.DEVNULL)
limited.attach(proc.pid)
with open(out + ".tmp", "w") as f:
    f.write(str(proc.pid))
os.rename(out + ".tmp", out)
time.sleep(60)
"""


def gone(pid: int) -> bool:
    """The process no longer runs (a zombie waiting for some reaper counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


class Jobs:
    """A limiter under test, remembering every job it wrapped and started for teardown."""

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self.kind = limiter.kind
        self.wrapped: list[Limited] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def wrap(self, argv: list[str], memory: int = 0, cpu_units: int = 0) -> Limited:
        req = JobRequirements(memory=memory, cpu_units=cpu_units)
        limited = self.limiter.wrap(f"t{len(self.wrapped)}", req, argv)
        self.wrapped.append(limited)
        return limited

    def start(self, limited: Limited) -> subprocess.Popen[bytes]:
        proc = limited.popen(start_new_session=True, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        limited.attach(proc.pid)
        self.procs.append(proc)
        return proc

    def run(self, limited: Limited) -> tuple[int, float, float]:
        """Run to the end: (returncode, CPU seconds of the job, wall seconds)."""
        start = time.monotonic()
        proc = self.start(limited)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        return proc.returncode, usage.ru_utime + usage.ru_stime, wall

    def close(self) -> None:
        for limited in self.wrapped:
            limited.kill_all()
        for proc in self.procs:
            if proc.returncode is None:
                proc.kill()
                proc.wait(5)
        for limited in self.wrapped:
            limited.cleanup()
        self.limiter.close()


def _jobs(kind: str, reuse: bool = False) -> Iterator[Jobs]:
    """The limiter of ``kind`` (skipped where this machine cannot use it); at the end
    every job is killed and cleaned up and the node's parent cgroups must be gone."""
    try:
        limiter = detect_limiter(NODE, kind, reuse=reuse)
    except SkedError as exc:
        pytest.skip(str(exc))
    j = Jobs(limiter)
    try:
        yield j
    finally:
        j.close()
        for parent in getattr(limiter, "parents", []):
            assert not os.path.exists(parent), f"left over: {parent}"


@pytest.fixture(params=["auto", *LIMITER_KINDS])
def jobs(request: pytest.FixtureRequest) -> Iterator[Jobs]:
    yield from _jobs(request.param)


def test_over_memory_limit_is_stopped(jobs: Jobs) -> None:
    if jobs.kind == "none":
        pytest.skip("the none kind enforces nothing")
    limited = jobs.wrap([sys.executable, "-c", ALLOC, "200"], memory=64)
    returncode, _, _ = jobs.run(limited)
    if jobs.kind in CGROUP_KINDS:
        assert returncode == -signal.SIGKILL
        reason = limited.exceeded(returncode)
        assert reason is not None and reason.startswith("killed:") and "64 MiB" in reason
        assert limited.exceeded() == reason  # without the returncode too
        assert limited.hint(returncode) is None
        limited.cleanup()
        assert limited.exceeded(returncode) == reason  # remembered across cleanup
    else:
        assert returncode != 0
        assert limited.exceeded(returncode) is None
        hint = limited.hint(returncode)
        assert hint is not None and "rlimit" in hint and "64 MiB" in hint


def test_within_memory_limit_runs(jobs: Jobs) -> None:
    limited = jobs.wrap([sys.executable, "-c", ALLOC, "10"], memory=64)
    returncode, _, _ = jobs.run(limited)
    assert returncode == 0
    assert limited.exceeded(returncode) is None
    assert limited.exceeded() is None
    assert limited.hint(returncode) is None


def test_cpu_is_throttled(jobs: Jobs) -> None:
    if jobs.kind not in CGROUP_KINDS:
        pytest.skip(f"the {jobs.kind} kind cannot enforce a cpu rate")
    if "cpu not enforced" in jobs.limiter.detail:
        pytest.skip(jobs.limiter.detail)
    limited = jobs.wrap([sys.executable, "-c", BUSY, "1.2"], cpu_units=256)
    returncode, cpu, wall = jobs.run(limited)
    assert returncode == 0
    assert wall >= 1.2
    assert cpu < 0.6 * wall, f"used {cpu:.2f} s of CPU in {wall:.2f} s with a quarter core"
    assert limited.exceeded(returncode) is None


def test_kill_all_kills_grandchildren(jobs: Jobs) -> None:
    limited = jobs.wrap(["/bin/sh", "-c", "sleep 60 & sleep 60"], memory=64, cpu_units=512)
    proc = jobs.start(limited)

    def sleepers() -> list[int]:
        try:
            top = psutil.Process(proc.pid)
            family = [top, *top.children(recursive=True)]
            return [p.pid for p in family if p.name() == "sleep"]
        except psutil.NoSuchProcess:
            return []

    wait_for(lambda: len(sleepers()) == 2, 5, "both sleeps to start")
    pids = sleepers()
    limited.kill_all()
    assert proc.wait(5) == -signal.SIGKILL
    wait_for(lambda: all(gone(pid) for pid in pids), 20, f"{pids} to die")
    assert limited.exceeded(proc.returncode) is None


def _sleeps(pid: int) -> list[int]:
    """The ``sleep`` processes of the job ``pid`` (itself, once it exec'd, and its child)."""
    try:
        top = psutil.Process(pid)
        return [p.pid for p in [top, *top.children(recursive=True)] if p.name() == "sleep"]
    except psutil.NoSuchProcess:
        return []


@pytest.mark.parametrize("reuse", [False, True])
def test_jobs_die_with_the_process_that_started_them(jobs: Jobs, tmp_path,
                                                     reuse: bool) -> None:
    """SIGKILL the process that started a job (nothing of it runs any more): the job and
    the process it forked die, and the job's cgroups go."""
    node = f"{NODE}-w{int(reuse)}"
    pidfile = tmp_path / "pid"
    worker = subprocess.Popen([sys.executable, "-c", WORKER, node, jobs.kind,
                               str(int(reuse)), str(pidfile)], start_new_session=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    jobs.procs.append(worker)
    pids: list[int] = []
    try:
        wait_for(pidfile.exists, 20, "the worker to start the job")
        job_pid = int(pidfile.read_text())
        wait_for(lambda: len(_sleeps(job_pid)) == 2, 10, "both sleeps to run")
        pids = _sleeps(job_pid)
        worker.kill()
        worker.wait(5)
        wait_for(lambda: all(gone(pid) for pid in pids), 20, f"{pids} to die with the worker")
        limiter = detect_limiter(node, jobs.kind)
        for parent in getattr(limiter, "parents", []):
            wait_for(lambda p=parent: not any(os.path.isdir(os.path.join(p, n))
                                              for n in os.listdir(p)), 20,
                     f"the job cgroups under {parent} to go")
        limiter.close()
    finally:
        for pid in pids:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_reaper_that_died_is_started_again_and_told_everything(jobs: Jobs) -> None:
    """The reaper is killed while a job runs; the next job starts a new one, which
    holds the first job too: closing the limiter (as a stopping worker does) kills both."""
    first = jobs.wrap(["sleep", "60"])
    proc1 = jobs.start(first)
    reaper = jobs.limiter._reaper._proc
    assert reaper is not None and reaper.poll() is None
    reaper.kill()
    reaper.wait(5)
    second = jobs.wrap(["sleep", "60"])
    proc2 = jobs.start(second)
    again = jobs.limiter._reaper._proc
    assert again is not None and again.pid != reaper.pid and again.poll() is None
    jobs.limiter.close()
    assert proc1.wait(20) == -signal.SIGKILL
    assert proc2.wait(20) == -signal.SIGKILL


def test_a_task_that_outlives_its_agent_has_no_reaper(jobs: Jobs) -> None:
    limited = jobs.limiter.wrap("t", JobRequirements(), ["sleep", "60"], pdeathsig=False)
    jobs.wrapped.append(limited)
    proc = jobs.start(limited)
    assert jobs.limiter._reaper._proc is None
    jobs.limiter.close()
    assert proc.poll() is None, "closing the limiter left the task running"
    limited.kill_all()
    assert proc.wait(5) == -signal.SIGKILL


def test_cleanup_removes_the_cgroup_and_is_idempotent(jobs: Jobs) -> None:
    limited = jobs.wrap(["true"], memory=64, cpu_units=512)
    cgroups: list[str] = getattr(limited, "cgroups", [])
    if jobs.kind in CGROUP_KINDS:
        assert cgroups and all(os.path.isdir(cg) for cg in cgroups)
    else:
        assert not cgroups
    returncode, _, _ = jobs.run(limited)
    assert returncode == 0
    limited.cleanup()
    assert not any(os.path.exists(cg) for cg in cgroups)
    limited.cleanup()


def test_argv_order(jobs: Jobs) -> None:
    argv = ["prog", "a b", "$HOME"]
    limited = jobs.wrap(argv, memory=64, cpu_units=512)
    assert limited.argv[-3:] == argv
    assert limited.kind == jobs.kind
    names = [os.path.basename(a) for a in limited.argv]
    assert "setpriv" not in names, "only a job run as another user goes through setpriv"
    if jobs.kind in CGROUP_KINDS:
        assert limited.argv[:2] == ["/bin/sh", "-c"]
        assert len(limited.argv) == 3 + len(getattr(limited, "cgroups", [])) + len(argv)
    if jobs.kind == "rlimit" and "prlimit" in names:
        assert names[0] == "prlimit"
        assert f"--as={64 * 2**20}" in limited.argv
    if jobs.kind == "none":
        assert limited.argv == argv


def test_wrap_errors_are_sked_errors(jobs: Jobs) -> None:
    with pytest.raises(SkedError, match="empty command line"):
        jobs.wrap([])
    if jobs.kind not in CGROUP_KINDS or "cpu not enforced" in jobs.limiter.detail:
        return
    parents: list[str] = getattr(jobs.limiter, "parents", [])
    with pytest.raises(SkedError, match="cannot create its cgroup"):
        jobs.wrap(["true"], cpu_units=10**15)  # a cpu quota the kernel refuses
    assert [n for p in parents for n in os.listdir(p) if n.startswith("job-")] == []


@pytest.fixture
def cgroup1() -> Iterator[Jobs]:
    yield from _jobs("cgroup1")


def _own_cgroups_of_thread() -> str:
    with open("/proc/thread-self/cgroup") as f:
        return f.read()


def _cgroup_lines(text: str) -> dict[str, str]:
    return {c: line.split(":", 2)[2] for line in text.splitlines()
            for c in line.split(":", 2)[1].split(",") if c}


def _in_a_thread(call: Callable[[], object]) -> object:
    """``call()``'s result or exception, from a thread other than the main one (a
    runner thread, as in the worker)."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(call())
        except Exception as exc:
            out.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    runner.join(30)
    return out[0]


def test_cgroup1_starts_the_program_itself_born_in_its_cgroup(cgroup1: Jobs) -> None:
    """No wrapper: the program is the process started, and the first thing it reads is
    that it is in the job's memory cgroup; the starting thread is back where it was and
    the worker is not listed in the job's cgroup."""
    limited = cgroup1.wrap(["cat", "/proc/self/cgroup"], memory=64)
    started = _in_a_thread(lambda: (
        _own_cgroups_of_thread(),
        limited.popen(stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                      start_new_session=True),
        _own_cgroups_of_thread()))
    assert isinstance(started, tuple)
    before, proc, after = started
    assert isinstance(proc, subprocess.Popen)
    cgroup1.procs.append(proc)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert proc.args == ["cat", "/proc/self/cgroup"]
    memory_dir = limited.cgroups[0]  # type: ignore[attr-defined]
    assert memory_dir.endswith(_cgroup_lines(out.decode())["memory"])
    assert after == before
    with open(os.path.join(memory_dir, "cgroup.procs")) as f:
        assert str(os.getpid()) not in f.read().split()
    # from the main thread, which leads the process, the wrapper
    again = cgroup1.wrap(["cat", "/proc/self/cgroup"], memory=64)
    main = again.popen(stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    cgroup1.procs.append(main)
    out, _ = main.communicate(timeout=10)
    assert main.args[:2] == ["/bin/sh", "-c"]
    assert again.cgroups[0].endswith(_cgroup_lines(out.decode())["memory"])  # type: ignore[attr-defined]


def test_cgroup1_a_cpu_cgroup_or_a_one_process_limit_keeps_the_wrapper(cgroup1: Jobs) -> None:
    """A thread under a job's cpu quota could be held with the interpreter's lock, and
    counts in pids.max: those jobs enter their cgroups through the wrapper, as before."""
    if "cpu not enforced" in cgroup1.limiter.detail:
        pytest.skip(cgroup1.limiter.detail)
    limited = cgroup1.wrap(["cat", "/proc/self/cgroup"], memory=64, cpu_units=512)
    proc = limited.popen(stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    cgroup1.procs.append(proc)
    out, _ = proc.communicate(timeout=10)
    assert proc.args[:2] == ["/bin/sh", "-c"]
    seen = _cgroup_lines(out.decode())
    cpu_dir = limited.cgroups[1]  # type: ignore[attr-defined]
    assert cpu_dir.endswith(seen["cpu"]) and limited.cgroups[0].endswith(seen["memory"])  # type: ignore[attr-defined]
    one = cgroup1.limiter.wrap("one", JobRequirements(memory=64), ["true"], pids=1)
    cgroup1.wrapped.append(one)
    if "pids not enforced" not in cgroup1.limiter.detail:
        started = one.popen()
        cgroup1.procs.append(started)
        assert started.wait(10) == 0
        assert started.args[:2] == ["/bin/sh", "-c"]


def test_cgroup1_a_thread_that_cannot_enter_uses_the_wrapper_one_that_cannot_leave_stops_it(
        cgroup1: Jobs) -> None:
    gone = cgroup1.wrap(["true"], memory=64)
    os.rmdir(gone.cgroups[0])  # type: ignore[attr-defined]  # removed behind our back
    proc = _in_a_thread(lambda: gone.popen(stderr=subprocess.DEVNULL))
    assert isinstance(proc, subprocess.Popen)
    cgroup1.procs.append(proc)
    assert proc.args[:2] == ["/bin/sh", "-c"]
    assert proc.wait(10) != 0, "the wrapper runs no program outside its cgroup"

    limiter = cgroup1.limiter
    limiter._home = (time.monotonic(), {"memory": "/nonexistent"})  # type: ignore[attr-defined]
    stuck = cgroup1.wrap(["sleep", "60"], memory=64)
    raised = _in_a_thread(lambda: stuck.popen())
    assert isinstance(raised, OSError) and "cannot move the starting thread back" in str(raised)
    assert limiter.direct is False  # type: ignore[attr-defined]
    limiter._home = None  # type: ignore[attr-defined]
    after = cgroup1.wrap(["true"], memory=64)
    proc = _in_a_thread(lambda: after.popen())
    assert isinstance(proc, subprocess.Popen)
    cgroup1.procs.append(proc)
    assert proc.args[:2] == ["/bin/sh", "-c"] and proc.wait(10) == 0


# A worker whose thread is inside a job's cgroups (as while it starts a job) signals the
# job's cgroups, then closes its limiter (its reaper kills what still runs there): the
# jobs die, the worker does not.
SIGNAL_FROM_INSIDE = """import os, subprocess, sys, threading
from skedlib.executors.limits import detect_limiter
from skedlib.jobs.models import JobRequirements
limiter = detect_limiter(sys.argv[1], "cgroup1")
limited = limiter.wrap("j", JobRequirements(memory=64), ["sleep", "60"])
proc = limited.popen(start_new_session=True)
limited.attach(proc.pid)
with open(os.path.join(limited.cgroups[0], "tasks"), "w") as f:
    f.write(str(threading.get_native_id()))
home = os.path.join(os.path.dirname(limiter.parents[0]), "tasks")
limited.kill_all()
print("alive", proc.wait(5))
with open(home, "w") as f:
    f.write(str(threading.get_native_id()))
limited.cleanup()
# the limiter closed while a thread is inside: its reaper kills the job, not the worker
second = limiter.wrap("k", JobRequirements(memory=64), ["sleep", "60"])
started = []
starter = threading.Thread(target=lambda: started.append(second.popen(start_new_session=True)))
starter.start()  # from a runner thread: born in its cgroup (no wrapper still on its way)
starter.join()
proc = started[0]
second.attach(proc.pid)
with open(os.path.join(second.cgroups[0], "tasks"), "w") as f:
    f.write(str(threading.get_native_id()))
limiter.close()
print("alive", proc.wait(20))
with open(home, "w") as f:
    f.write(str(threading.get_native_id()))
for path in [*second.cgroups, *limiter.parents]:
    if os.path.isdir(path):
        os.rmdir(path)
"""


def test_cgroup1_signalling_a_job_never_signals_the_worker(cgroup1: Jobs) -> None:
    proc = subprocess.run([sys.executable, "-c", SIGNAL_FROM_INSIDE, f"{NODE}-inside"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["alive", str(-signal.SIGKILL)] * 2
    for parent in cgroup1.limiter.parents:  # type: ignore[attr-defined]
        assert not os.path.exists(parent.replace(NODE, f"{NODE}-inside"))


# A worker (a process larger than the job may grow) holds one of its threads in a job's
# memory cgroup while the job goes over its limit: the kernel kills the job.
OOM_WITH_A_THREAD_INSIDE = """\
import os, subprocess, sys, threading
from skedlib.executors.limits import detect_limiter
from skedlib.jobs.models import JobRequirements
ballast = bytearray(256 * 2**20)
for i in range(0, len(ballast), 4096):
    ballast[i] = 1
limiter = detect_limiter(sys.argv[1], "cgroup1")
limited = limiter.wrap("j", JobRequirements(memory=64), [sys.executable, "-c", sys.argv[2], "200"])
result = []

def inside():
    tasks = os.path.join(limited.cgroups[0], "tasks")
    with open(tasks, "w") as f:
        f.write(str(threading.get_native_id()))
    proc = limited.popen(start_new_session=True)  # this thread stays inside
    result.append(proc.wait(30))

runner = threading.Thread(target=inside)
runner.start()
runner.join(60)
print("alive", result[0], limited.exceeded(result[0]) is not None)
limited.cleanup()
limiter.close()
"""


def test_cgroup1_the_oom_killer_takes_the_job_not_a_worker_thread_inside(cgroup1: Jobs) -> None:
    """Why a runner thread may enter a job's memory cgroup: the OOM killer chooses among
    processes whose leading thread is there."""
    proc = subprocess.run([sys.executable, "-c", OOM_WITH_A_THREAD_INSIDE, f"{NODE}-oom",
                           ALLOC], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["alive", str(-signal.SIGKILL), "True"]
    for parent in cgroup1.limiter.parents:  # type: ignore[attr-defined]
        assert not os.path.exists(parent.replace(NODE, f"{NODE}-oom"))


def test_forced_unknown_kind() -> None:
    with pytest.raises(SkedError, match="unknown job limiter"):
        detect_limiter(NODE, "bogus")


def test_none_leaves_argv_alone() -> None:
    limiter = detect_limiter(NODE, "none")
    limited = limiter.wrap("j", JobRequirements(memory=64, cpu_units=1024), ["prog", "x"])
    assert limited.argv == ["prog", "x"]
    assert limited.exceeded(-9) is None and limited.hint(1) is None
    limited.kill_all()  # nothing attached: a no-op
    limited.cleanup()
    limiter.close()


def test_cgroup2_mechanics_without_controllers() -> None:
    """Where a cgroup2 hierarchy is mounted but has no memory controller (hybrid mode, as
    here), the cgroup2 kind's entering, kill_all and cleanup still run on it."""
    mounts = [m for m in limits._mounts() if m.fstype == "cgroup2"]
    if not mounts:
        pytest.skip("no cgroup2 hierarchy is mounted")
    parent = os.path.join(mounts[0].point, f"skedlib-jobs-{NODE}")
    try:
        os.mkdir(parent)
    except OSError as exc:
        pytest.skip(f"cannot create {parent}: {exc.strerror}")
    jobs = Jobs(limits._Cgroup2Limiter(NODE, parent, cpu=False))
    try:
        limited = jobs.wrap(["/bin/sh", "-c", "sleep 60 & sleep 60"])
        assert isinstance(limited, limits._CgroupLimited)
        (cgroup,) = limited.cgroups
        proc = jobs.start(limited)

        def sleepers() -> list[int]:
            return [pid for pid in limits._pids(cgroup) if not gone(pid)
                    and psutil.Process(pid).name() == "sleep"]

        wait_for(lambda: len(sleepers()) == 2, 5, "both sleeps in the cgroup")
        assert proc.pid in limits._pids(cgroup)
        limited.kill_all()
        assert proc.wait(5) == -signal.SIGKILL
        assert limits._pids(cgroup) == []
        assert limited.exceeded(proc.returncode) is None
        limited.cleanup()
        assert not os.path.exists(cgroup)
        limited.cleanup()
    finally:
        jobs.close()
    assert not os.path.exists(parent)


# -- reused cgroups (the job worker's pool) -------------------------------------------------


@pytest.fixture(params=CGROUP_KINDS)
def pooled(request: pytest.FixtureRequest) -> Iterator[Jobs]:
    """A limiter of a cgroup kind that reuses its jobs' cgroups."""
    yield from _jobs(request.param, reuse=True)


def _memory_limit(cgroup: str, kind: str) -> int | None:
    name = "memory.max" if kind == "cgroup2" else "memory.limit_in_bytes"
    text = limits._read(os.path.join(cgroup, name)).strip()
    return None if text == "max" or int(text) >= 2**62 else int(text)


def test_a_reused_cgroup_holds_nothing_of_the_last_job(pooled: Jobs) -> None:
    first = pooled.wrap(["/bin/sh", "-c", "sleep 60 & exit 0"], memory=64, cpu_units=512)
    assert isinstance(first, limits._CgroupLimited)
    cgroup = first.cgroups[0]
    assert pooled.run(first)[0] == 0
    left = limits._pids(cgroup)
    assert left, "the background sleep is still in the cgroup"
    assert _memory_limit(cgroup, pooled.kind) == 64 * 2**20
    first.kill_all()
    first.cleanup()
    first.cleanup()  # idempotent: given back once
    wait_for(lambda: all(gone(pid) for pid in left), 20, f"{left} to die")
    assert os.path.isdir(cgroup), "kept for the next job"

    second = pooled.wrap(["sleep", "60"])
    assert isinstance(second, limits._CgroupLimited)
    assert second.cgroups[0] == cgroup, "the same cgroup, reused"
    assert limits._pids(cgroup) == []
    assert _memory_limit(cgroup, pooled.kind) is None, "the memory limit was reset"
    if pooled.kind == "cgroup2" and "cpu.max" in pooled.limiter.detail:
        assert limits._read(os.path.join(cgroup, "cpu.max")).split()[0] == "max"
    proc = pooled.start(second)
    wait_for(lambda: proc.pid in limits._pids(cgroup), 5, "the job in the cgroup")
    third = pooled.wrap(["true"], memory=32)
    assert isinstance(third, limits._CgroupLimited)
    assert third.cgroups[0] != cgroup, "a cgroup in use is not handed out"
    second.kill_all()
    assert proc.wait(5) == -signal.SIGKILL
    assert second.exceeded(proc.returncode) is None
    second.cleanup()
    third.cleanup()


def test_an_oom_kill_is_not_taken_for_the_next_job(pooled: Jobs) -> None:
    hog = pooled.wrap([sys.executable, "-c", ALLOC, "200"], memory=64)
    returncode, _, _ = pooled.run(hog)
    assert returncode == -signal.SIGKILL
    assert (hog.exceeded(returncode) or "").startswith("killed:")
    hog.cleanup()
    assert (hog.exceeded(returncode) or "").startswith("killed:")

    fits = pooled.wrap([sys.executable, "-c", ALLOC, "10"], memory=64)
    assert isinstance(fits, limits._CgroupLimited) and isinstance(hog, limits._CgroupLimited)
    assert fits.cgroups[0] == hog.cgroups[0]
    assert pooled.run(fits)[0] == 0
    assert fits.exceeded(0) is None and fits.exceeded(1) is None
    fits.cleanup()

    killed = pooled.wrap(["sleep", "60"], memory=64)
    proc = pooled.start(killed)
    killed.kill_all()
    assert proc.wait(5) == -signal.SIGKILL
    assert killed.exceeded(proc.returncode) is None, "killed by us, not for its memory"
    killed.cleanup()


def test_a_pooled_cgroup_removed_meanwhile_is_made_again(pooled: Jobs) -> None:
    first = pooled.wrap(["true"], memory=64)
    assert isinstance(first, limits._CgroupLimited)
    assert pooled.run(first)[0] == 0
    first.cleanup()
    os.rmdir(first.cgroups[0])  # as an administrator might
    second = pooled.wrap([sys.executable, "-c", ALLOC, "10"], memory=64)
    assert pooled.run(second)[0] == 0
    assert isinstance(second, limits._CgroupLimited) and os.path.isdir(second.cgroups[0])
    second.cleanup()


def test_a_pooled_wrap_that_fails_leaves_no_cgroup(pooled: Jobs) -> None:
    if "cpu not enforced" in pooled.limiter.detail:
        pytest.skip(pooled.limiter.detail)
    parents: list[str] = getattr(pooled.limiter, "parents", [])
    ok = pooled.wrap(["true"], cpu_units=512)
    assert pooled.run(ok)[0] == 0
    ok.cleanup()
    with pytest.raises(SkedError, match="cannot create its cgroup"):
        pooled.wrap(["true"], cpu_units=10**15)  # a cpu quota the kernel refuses
    assert [n for p in parents for n in os.listdir(p) if n.startswith("job-")] == []
    again = pooled.wrap(["true"], cpu_units=512)
    assert pooled.run(again)[0] == 0
    again.cleanup()
