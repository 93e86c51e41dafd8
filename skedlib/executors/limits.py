"""Containment: enforcing a batch job's or a service task's memory, cpu and pids limits.

One mechanism serves both: the job worker (:mod:`skedlib.jobs`) and the ``process`` and
``bash`` executors (:mod:`skedlib.executors.supervision`). Each asks :func:`detect_limiter`
once for the best mechanism this machine offers (``noun="job"`` or ``noun="task"``: it
names the cgroups, ``skedlib-<noun>s-<node>/<noun>-<id>``, and the messages), then for
every job or task::

    limited = limiter.wrap(job.id, job.spec.requirements, argv)   # SkedError: cannot start
    proc = limited.popen(start_new_session=True, ...)   # subprocess.Popen's arguments
    limited.attach(proc.pid)
    ...                                  # on timeout / cancel: limited.kill_all()
    returncode = proc.wait()
    reason = limited.exceeded(returncode) # "killed: used more than its memory limit of …"
    hint = limited.hint(returncode)       # for a failure that may be the rlimit's doing
    limited.cleanup()

The kinds, best first (``prefer="auto"`` takes the first usable one):

``cgroup2``
    A cgroup per job (``skedlib-jobs-<node>/job-<id>``; with ``reuse``, a pooled
    ``job-pool-<n>`` that jobs take in turn) in the unified hierarchy with
    ``memory.max`` (and ``memory.swap.max`` 0), ``cpu.max`` and ``pids.max``. The kernel
    kills the job when it uses more memory than its requirement, throttles it to its cpu
    share and refuses its forks beyond the pids limit.
``cgroup1``
    The same with the legacy hierarchies: ``memory.limit_in_bytes`` (and
    ``memory.memsw.limit_in_bytes``, so swap does not hide the excess) in the memory
    hierarchy, ``cpu.cfs_quota_us`` in the cpu hierarchy, ``pids.max`` in the pids
    hierarchy. The job cgroups live below the worker's own cgroup of each hierarchy.
``rlimit``
    ``RLIMIT_AS`` (``prlimit --as``, or ``ulimit -v``) of the memory requirement. The job is
    not killed: allocations beyond the limit fail, and the program usually exits with an
    error (:meth:`Limited.hint` says so). A cpu *rate* cannot be enforced with rlimits, so
    ``cpu_units`` is not enforced by this kind.
``none``
    Nothing is enforced.

The job enters its cgroup *before* its program runs, so not a single allocation escapes
the limit. :attr:`Limited.argv` starts with a small ``/bin/sh`` wrapper that writes its
own pid into the cgroup and then execs the program; the chain is ``sh`` (cgroups) →
``setpriv`` (only to run as another user) → ``prlimit`` (rlimit) → program, all one
process. :meth:`Limited.popen` starts the same, except where the starting thread can
enter the cgroups itself: cgroup v1 places threads one by one, and a process is born in
the cgroups of the thread that forks it, so for a job whose cgroups are memory (and pids)
only the thread moves into them, forks the program itself, and moves back — one program
start per job instead of two (the wrapper's start cost as much as a short job's). A cpu
cgroup keeps the wrapper: a thread of the worker under a job's exhausted cpu quota would
be held there with the interpreter's lock. While a thread is inside, the worker's pid is
listed in the job's ``cgroup.procs``; every signalling of a job's cgroups leaves the
worker's own pid out, and the kernel's OOM killer chooses among the processes whose
leading thread is in the cgroup, so only a thread other than the main one moves (from the
main thread the wrapper is used).

A job dies with the process that started it (``wrap(..., pdeathsig=True)``, the
default): the limiter's *reaper* (:mod:`skedlib.executors._reaper`), a small process of
its own started with the first such job, holds the read end of a pipe whose write end
only the worker has. When the pipe ends — the worker exited or was killed, whatever the
signal — the reaper SIGKILLs every process in the job cgroups (their children too) or,
for the kinds without cgroups, every job's process group, and removes the cgroups. A
cgroup is known to the reaper before any job runs in it, so there is no window at a
job's start. A reaper that died is started again at the next job, and told every cgroup
and group in force.

``cpu="quota"`` (jobs) caps the cpu at ``cpu_units``; ``cpu="weight"`` (service tasks)
gives them instead a share under contention (``cpu.weight``, v1 ``cpu.shares``) and lets
them use idle cpu, as ``docker --cpu-shares`` does: a quota of a small ``cpu_units``
slows a service's start and its checks by tens of times.

When a cpu or pids controller is missing (but memory is available), the cgroup kinds
still enforce memory and leave the other unenforced; :attr:`Limiter.detail` says so.

The job worker asks for ``detect_limiter(..., reuse=True)``: a job's cgroups are not
removed at its end but emptied — every process killed and waited for — and handed to the
next job, whose :meth:`Limiter.wrap` writes exactly the control files whose value differs
from what it needs (so a limit of the last job is reset to the kernel's default), and
whose OOM evidence counts only what the kernel's counters grew by during it. A cgroup that
does not empty, or cannot be reset, is removed and replaced by a fresh one. Creating and
removing a cgroup per job cost more than a short job itself.

Service tasks differ from jobs in four ways, chosen by the caller: each keeps a cgroup
of its own, named by the task (no ``reuse``); they must outlive the agent that started
them (``wrap(..., pdeathsig=False)``: no reaper); a restarted agent takes their cgroups over
(:meth:`Limiter.find`); and the agent reports what they use
(:meth:`Limited.memory_current`).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from typing import Any, NamedTuple, NoReturn, Protocol

from skedlib.errors import SkedError
from skedlib.executors.policy import Identity

__all__ = ["LIMITER_KINDS", "Limited", "Limiter", "Requirements", "detect_limiter"]


class Requirements(Protocol):
    """What a limiter enforces (a job's ``Requirements``, a container's ``Resources``):
    ``memory`` in MiB and ``cpu_units`` (1024 per core); 0 means no limit."""

    @property
    def memory(self) -> int:
        """MiB of memory; the process is killed when it uses more."""

    @property
    def cpu_units(self) -> int:
        """CPU, 1024 per core; the process is throttled to it."""

LIMITER_KINDS: tuple[str, ...] = ("cgroup2", "cgroup1", "rlimit", "none")
"""The kinds of :class:`Limiter`, best first."""

_MIB = 1 << 20
_CPU_PERIOD_US = 100_000
_MIN_CPU_QUOTA_US = 1000  # the kernel refuses smaller quotas
_CGROUP_FS = "/sys/fs/cgroup"
_SH = "/bin/sh"
_HOME_SECONDS = 10.0
"""How long the cgroup1 kind trusts what it read of the process's own cgroups (where a
thread that started a job goes back to: an operator who moves the worker is followed
within this time)."""


# --------------------------------------------------------------------------- helpers


def _safe(name: str) -> str:
    """``name`` made into a single, harmless path component."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip(".")
    return cleaned[:200] or "_"


def _cpu_quota_us(cpu_units: int) -> int:
    """CFS quota (µs per 100 ms period) for ``cpu_units`` (1024 per core)."""
    return max(_MIN_CPU_QUOTA_US, cpu_units * _CPU_PERIOD_US // 1024)


def _cpu_shares(cpu_units: int) -> int:
    """cgroup v1 ``cpu.shares`` for ``cpu_units``: the same scale (1024 = one core's
    worth under contention), within the kernel's bounds."""
    return min(max(cpu_units, 2), 262144)


def _cpu_weight(cpu_units: int) -> int:
    """cgroup v2 ``cpu.weight`` (1-10000) for ``cpu_units``: one core's worth (1024) is
    the default weight, 100, as 1024 is the default of v1's ``cpu.shares``."""
    return min(max(cpu_units * 100 // 1024, 1), 10000)


def _parent_cpu_units() -> int:
    """What the parent of the service tasks' cgroups weighs against its siblings (the
    host's other cgroups and processes): a core's worth per core, so that the tasks
    together count under contention as much as one busy process per core would, rather
    than as one process."""
    return 1024 * (os.cpu_count() or 1)


def _weigh_parent(parent: str, kind: str) -> None:
    """Give ``parent`` the weight of :func:`_parent_cpu_units` (best effort: a cgroup
    without cpu controller has no such file)."""
    units = _parent_cpu_units()
    name, value = (("cpu.weight", _cpu_weight(units)) if kind == "cgroup2"
                   else ("cpu.shares", _cpu_shares(units)))
    path = os.path.join(parent, name)
    if os.path.exists(path):
        with contextlib.suppress(OSError):
            _write(path, str(value))


def _read(path: str) -> str:
    # os.read rather than open(): three system calls instead of eight, for files read
    # for every job (cgroup.procs)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("ascii", errors="replace")


def _write(path: str, value: str) -> None:
    """Write a cgroup control file in one ``write(2)``, so the kernel's error surfaces."""
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror} (writing {value!r})", path) from None


def _keyed(path: str) -> dict[str, int]:
    """A flat-keyed cgroup file (``key value`` per line); {} when unreadable."""
    out: dict[str, int] = {}
    try:
        text = _read(path)
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _read_int(path: str) -> int | None:
    try:
        return int(_read(path).strip())
    except (OSError, ValueError):
        return None


def _pids(cgroup: str) -> list[int]:
    """The processes in a cgroup but this one (listed while one of its threads starts a
    job there, see :meth:`_Cgroup1Limited.popen`); [] when it is gone or unreadable."""
    try:
        text = _read(os.path.join(cgroup, "cgroup.procs"))
    except OSError:
        return []
    own = os.getpid()
    return [pid for pid in map(int, filter(str.isdigit, text.split())) if pid != own]


def _signal_cgroups(cgroups: list[str], sig: int, settle: float) -> bool:
    """Signal every process in ``cgroups``; with SIGKILL repeat (for processes forked
    meanwhile) until they are empty or ``settle`` seconds have passed. True when they
    were seen empty."""
    deadline = time.monotonic() + settle
    while True:
        pids = [pid for cg in cgroups for pid in _pids(cg)]
        if not pids:
            return True
        for pid in set(pids):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        if sig != signal.SIGKILL or time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def _rmdir(path: str, timeout: float) -> None:
    """Remove a cgroup directory, retrying while the kernel still counts exiting tasks."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                return
        _signal_cgroups([path], signal.SIGKILL, 0.0)
        time.sleep(0.02)


def _enter_cgroups_argv(cgroups: list[str], argv: list[str]) -> list[str]:
    """``sh -c`` that writes its pid into each cgroup's ``cgroup.procs``, then execs argv.

    ``sh -c SCRIPT a0 a1 …`` sets ``$0`` = a0 and ``$1…`` = a1…; the cgroup directories are
    ``$0 … $n-1``, shifted away (``$0`` is not part of ``"$@"``) before the exec.
    """
    steps = [f'echo $$ > "{"$0" if i == 0 else f"${i}"}/cgroup.procs"'
             for i in range(len(cgroups))]
    if len(cgroups) > 1:
        steps.append(f"shift {len(cgroups) - 1}")
    steps.append('exec "$@"')
    return [_SH, "-c", " && ".join(steps), *cgroups, *argv]


def _start_prefix(label: str, user: Identity | None) -> list[str]:
    """What a program is started through: ``setpriv`` that drops to ``user`` when given,
    else nothing. ``label`` (``job 42``) names the job or task in the error."""
    if user is None:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise SkedError(f"{label}: running as user {user.name} needs setpriv "
                        "(util-linux), which is not installed")
    groups = (["--groups", ",".join(str(g) for g in user.groups)] if user.groups
              else ["--clear-groups"])
    return [setpriv, f"--reuid={user.uid}", f"--regid={user.gid}", *groups, "--"]


_REAPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_reaper.py")


class _Reaper:
    """The parent's side of :mod:`skedlib.executors._reaper`: starts it (again, when it
    died) and tells it what to kill should this process go. Thread-safe."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._pipe = -1
        self._held: dict[str, None] = {}
        """The lines in force (``+c <dir>``, ``+g <pid>``), told again to a new reaper."""
        self._closed = False
        self._finalizer: weakref.finalize[[int, subprocess.Popen[bytes]], _Reaper] | None = None

    def _start(self) -> None:
        """Start a reaper (lock held) and tell it everything in force."""
        self._drop()
        read, write = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [sys.executable or "python3", "-I", "-S", _REAPER, self.label], stdin=read,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True, close_fds=True)
        except OSError as exc:
            os.close(write)
            raise SkedError(f"{self.label}: cannot start the process that stops them "
                            f"should this one die: {exc}") from None
        finally:
            os.close(read)
        self._pipe = write
        # dropped without close() (a limiter nobody holds, nor any of its jobs): the
        # pipe ends, the reaper kills what it holds and exits, and is waited for
        self._finalizer = weakref.finalize(self, _Reaper._end, write, self._proc)
        self._finalizer.atexit = False  # at exit the system closes the pipe
        if self._held:
            try:
                self._write("".join(f"{line}\n" for line in self._held))
            except OSError as exc:  # it died at once
                raise SkedError(f"{self.label}: the process that stops them should this "
                                f"one die exited at its start: {exc}") from None

    @staticmethod
    def _end(pipe: int, proc: subprocess.Popen[bytes]) -> None:
        """Close the pipe, so the reaper reaps and exits; wait for it (10 s at most)."""
        with contextlib.suppress(OSError):
            os.close(pipe)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)

    def _drop(self) -> None:
        """Forget the current reaper (lock held): its pipe is closed, so it reaps and
        exits."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self._pipe = -1
        self._proc = None

    def _write(self, text: str) -> None:
        data = os.fsencode(text)
        while data:
            data = data[os.write(self._pipe, data):]

    def ensure(self) -> None:
        """A reaper is running (started, or started again after it died)."""
        with self._lock:
            if not self._closed and (self._proc is None or self._proc.poll() is not None):
                self._start()

    def tell(self, line: str) -> None:
        """``+c <dir>`` / ``+g <pid>`` (kill these should this process go) or ``-c`` /
        ``-g`` (no longer)."""
        if "\n" in line:  # not a name the kernel gives, nor one this module makes
            raise SkedError(f"{self.label}: {line[3:]!r}: a newline in a cgroup path")
        with self._lock:
            if self._closed:
                return
            if line[0] == "+":
                self._held[line] = None
            else:
                self._held.pop(f"+{line[1:]}", None)
            for attempt in (1, 2):
                if self._proc is None or self._proc.poll() is not None:
                    self._start()  # tells it everything held, this line included
                    return
                try:
                    self._write(f"{line}\n")
                    return
                except BrokenPipeError:  # it died just now: once more, a new one
                    if attempt == 2:
                        raise SkedError(f"{self.label}: the reaper keeps dying") from None
                    self._drop()

    def close(self) -> None:
        """End the reaper: it kills what is still held, then exits (waited for up to
        10 seconds)."""
        with self._lock:
            self._closed = True
            self._drop()


class _Mount(NamedTuple):
    root: str
    point: str
    fstype: str
    options: frozenset[str]


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mounts() -> list[_Mount]:
    """The cgroup file systems in ``/proc/self/mountinfo``."""
    out: list[_Mount] = []
    try:
        text = _read("/proc/self/mountinfo")
    except OSError:
        return out
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        head, tail = left.split(), right.split()
        if not sep or len(head) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        out.append(_Mount(_unescape(head[3]), _unescape(head[4]), tail[0],
                          frozenset(tail[2].split(","))))
    return out


def _own_cgroups() -> dict[str, str]:
    """Our cgroup per v1 controller, and under ``""`` our cgroup2 path."""
    out: dict[str, str] = {}
    try:
        text = _read("/proc/self/cgroup")
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            out[""] = parts[2]
        for controller in parts[1].split(","):
            if controller:
                out.setdefault(controller, parts[2])
    return out


def _move_thread(cgroups: list[str]) -> int:
    """Move the calling thread into each of ``cgroups`` in turn (v1 ``tasks``: ``0`` is
    the writer itself, which spares the kernel the lock a move of another task takes);
    how many it entered (it stops at the first it cannot)."""
    for entered, cgroup in enumerate(cgroups):
        try:
            _write(os.path.join(cgroup, "tasks"), "0")
        except OSError:
            return entered
    return len(cgroups)


def _cgroup_dir(mount: _Mount, path: str) -> str:
    """The directory of cgroup ``path`` (as in /proc/self/cgroup) under ``mount``."""
    root = mount.root.rstrip("/")
    # Our cgroup may lie outside what is mounted: then use the mount's top.
    rel = path[len(root):] if path == root or path.startswith(root + "/") else ""
    return os.path.normpath(mount.point + "/" + rel.lstrip("/"))


def _controllers(cgroup: str, name: str = "cgroup.controllers") -> set[str]:
    try:
        return set(_read(os.path.join(cgroup, name)).split())
    except OSError:
        return set()


def _memory_message(memory: int, returncode: int | None, kills: int | None,
                    noun: str) -> str:
    msg = f"killed: used more than its memory limit of {memory} MiB"
    if returncode is not None and returncode != -signal.SIGKILL:
        n = f"{kills} of its processes" if kills else "one of its processes"
        msg += f" (the kernel killed {n}; the {noun} exited with status {returncode})"
    return msg


class _Unusable(Exception):
    """A limiter kind cannot be used here (the message says why)."""


# --------------------------------------------------------------------------- Limited


class Limited:
    """One job's or task's limits: the command line to start, and what to do while and
    after it runs.

    This base class is also the ``none`` kind: nothing is enforced, ``kill_all`` signals
    the process group.
    """

    kind: str = "none"
    """The :attr:`Limiter.kind` that made this."""

    def __init__(self, job_id: str, requirements: Requirements, argv: list[str],
                 noun: str = "job") -> None:
        self.job_id = job_id
        """The job (or task) this is for."""
        self.requirements = requirements
        """The requirements being enforced."""
        self.argv: list[str] = argv
        """The command line the caller must start instead of the program's own."""
        self.noun = noun
        """``job`` or ``task``: what the messages call it."""
        self.pid: int | None = None
        """The pid given to :meth:`attach`."""
        self._reaper: _Reaper | None = None
        """Told the job's process group (kinds without cgroups, dying with the worker)."""

    def popen(self, **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start the job: ``subprocess.Popen(self.argv, **kwargs)``, or, for a kind whose
        limits the starting thread can enter itself, the program without the wrapper
        (see the module's docstring). Raises what ``Popen`` raises (``OSError``: the
        program cannot be started). Then :meth:`attach` the pid."""
        return subprocess.Popen(self.argv, **kwargs)

    def attach(self, pid: int) -> None:
        """Remember the started process (``Popen(..., start_new_session=True).pid``)."""
        self.pid = pid
        if self._reaper is not None:
            self._reaper.tell(f"+g {pid}")

    def exceeded(self, returncode: int | None = None) -> str | None:
        """After the process exited: why the kernel killed it for exceeding its limits
        (``"killed: used more than its memory limit of 64 MiB"``), else None.

        ``returncode`` (``Popen.returncode``) sharpens the answer: a process that exited 0
        was not killed; a SIGKILL (-9) is needed where the kernel keeps no OOM-kill count.
        Call it before :meth:`cleanup` or after, both work.
        """
        return None

    def hint(self, returncode: int | None) -> str | None:
        """A note for a failure when a limit may explain it without being proven to (the
        rlimit kind: allocations fail instead of a kill); else None."""
        return None

    def memory_current(self) -> int | None:
        """Bytes of memory the processes of the cgroup use now (page cache included, as
        the kernel charges it); None where the kind does not measure it."""
        return None

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        """Signal every process still in the job: its process group (the attached pid is
        the group's id, as the job runs in a new session) and, for the cgroup kinds, every
        process in the job's cgroup, including children that left the group.

        Call it before the job is reaped, or soon after: once the group is empty and the
        leader reaped, its number could (after a pid wrap-around) belong to a new group.
        """
        if self.pid is not None and self.pid > 0:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)

    @property
    def emptied(self) -> bool:
        """True once :meth:`kill_all` saw every process of the job gone: the cgroup kinds
        (a cgroup seen empty after a SIGKILL, which nothing enters again); False for the
        others, which cannot tell (a process may have left the job's process group)."""
        return False

    def cleanup(self) -> None:
        """Remove what was set up for the job (its cgroups, killing leftovers first).
        Idempotent; never raises.

        With a reusing limiter (``detect_limiter(..., reuse=True)``) the cgroups are
        kept for the next job instead, but only once every process in them is gone
        (killed, then waited for up to a second; a cgroup that does not empty is removed
        and the next job gets a fresh one), and the next job's :meth:`Limiter.wrap`
        resets every limit this job had to the kernel's default or to its own value.
        What the memory counters say about the next job is only what they grew by
        during it, so this job's OOM kill is never taken for the next one's."""
        if self._reaper is not None and self.pid is not None:
            self._reaper.tell(f"-g {self.pid}")
            self._reaper = None


class _RlimitLimited(Limited):
    kind = "rlimit"

    def hint(self, returncode: int | None) -> str | None:
        memory = self.requirements.memory
        if memory > 0 and returncode is not None and returncode != 0:
            return (f"memory rlimit of {memory} MiB was in force "
                    "(allocations beyond it fail)")
        return None


class _CgroupSet:
    """The cgroups one job runs in, one per hierarchy role (``memory`` always; the
    cgroup1 kind also ``cpu`` and ``pids`` when a job needs them), and every control-file
    value written into them (a file never written holds the kernel's default).

    A pooled set (``Limiter(reuse=True)``) outlives its job: the next job gets it once it
    is empty, and :meth:`_CgroupLimiter._apply` then writes exactly the files whose value
    differs from what that job needs — resetting to the default every limit the previous
    job had and this one has not."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dirs: dict[str, str] = {}
        self.written: dict[str, str] = {}
        self.jobs = 0
        """Jobs that ran in it so far (0: freshly made)."""
        self.reaped: set[str] = set()
        """Its directories the limiter's reaper holds (its jobs die with the worker)."""


class _CgroupLimited(Limited):
    """A job in one cgroup per hierarchy; ``cgroups[0]`` carries the memory limit."""

    def __init__(self, job_id: str, requirements: Requirements, argv: list[str],
                 cgroups: list[str], noun: str = "job") -> None:
        super().__init__(job_id, requirements, argv, noun)
        self.cgroups = cgroups
        """The job's cgroup directories (the memory one first)."""
        self._evidence: tuple[int | None, bool] | None = None
        self._baseline: dict[str, int] = {}
        """The OOM counters as they were when the job got a reused cgroup (the kernel
        keeps counting across jobs): the evidence is what they grew by since."""
        self._set: _CgroupSet | None = None
        self._limiter: _CgroupLimiter | None = None
        """The limiter that made the set (its reaper lets go of it on :meth:`cleanup`)."""
        self._pool: _CgroupLimiter | None = None
        """The limiter to give a pooled set back to, on :meth:`cleanup`."""
        self._released = False
        self._emptied = False

    def _counters(self) -> dict[str, int]:
        """The memory cgroup's OOM counters as the kernel keeps them (cumulative)."""
        raise NotImplementedError

    def _oom_evidence(self) -> tuple[int | None, bool]:
        """(kernel count of OOM kills or None if not kept, other signs of hitting the limit)."""
        raise NotImplementedError

    def _grown(self, counters: dict[str, int], name: str) -> int | None:
        """How much counter ``name`` grew during this job; None when it is not kept."""
        if name not in counters:
            return None
        return counters[name] - self._baseline.get(name, 0)

    def _start_counting(self) -> None:
        """Take the baseline of a reused cgroup's counters (only a memory limit reads
        them: :meth:`exceeded` needs no evidence without one)."""
        if self.requirements.memory > 0:
            self._baseline = self._counters()

    def exceeded(self, returncode: int | None = None) -> str | None:
        memory = self.requirements.memory
        if memory <= 0 or returncode == 0:
            return None
        kills, hit = (self._evidence if self._evidence is not None
                      else self._oom_evidence())
        if kills is not None:
            return (_memory_message(memory, returncode, kills, self.noun) if kills > 0
                    else None)
        if hit and returncode == -signal.SIGKILL:
            return _memory_message(memory, returncode, None, self.noun)
        return None

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        super().kill_all(sig)
        # seen empty after a SIGKILL: nothing enters the job's cgroups any more (only
        # the worker starts processes in them), so cleanup() need not look again
        self._emptied = _signal_cgroups(self.cgroups, sig, 1.0) and sig == signal.SIGKILL

    @property
    def emptied(self) -> bool:
        return self._emptied

    def cleanup(self) -> None:
        if self._released:
            return
        self._released = True
        try:
            if self._evidence is None and self.requirements.memory > 0 \
                    and os.path.isdir(self.cgroups[0]):
                self._evidence = self._oom_evidence()
            # A pooled cgroup goes back only empty: every process of this job killed
            # (the next job must not share it with anything left behind).
            empty = self._emptied or _signal_cgroups(self.cgroups, signal.SIGKILL, 1.0)
            if self._pool is not None and self._set is not None:
                self._pool._give_back(self._set, empty)
                return
            for cgroup in self.cgroups:
                _rmdir(cgroup, 2.0)
            if self._limiter is not None and self._set is not None:
                self._limiter._reap(self._set, False)
        except Exception:  # never raises: best effort by contract
            pass


class _Cgroup2Limited(_CgroupLimited):
    kind = "cgroup2"

    def _counters(self) -> dict[str, int]:
        return _keyed(os.path.join(self.cgroups[0], "memory.events"))

    def _oom_evidence(self) -> tuple[int | None, bool]:
        events = self._counters()
        return self._grown(events, "oom_kill"), (self._grown(events, "max") or 0) > 0

    def memory_current(self) -> int | None:
        return _read_int(os.path.join(self.cgroups[0], "memory.current"))

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        kill_file = os.path.join(self.cgroups[0], "cgroup.kill")
        if sig == signal.SIGKILL and os.path.exists(kill_file):
            with contextlib.suppress(OSError):
                _write(kill_file, "1")
        super().kill_all(sig)


class _Cgroup1Limited(_CgroupLimited):
    kind = "cgroup1"

    _direct: tuple[list[str], list[str], _Cgroup1Limiter] | None = None
    """The program's own command line, its cgroups' roles and the limiter, when
    :meth:`popen` may start it from a thread moved into its cgroups (set by the
    limiter)."""

    def popen(self, **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start the program from the calling thread moved into the job's cgroups for
        the fork (the child is born in them) and back; the wrapper of :attr:`argv` when
        the job has a cpu cgroup, the caller is the main thread, or the thread's cgroups
        cannot be read or entered."""
        # the main thread leads the process: inside a job's memory cgroup it would make
        # the whole worker a candidate for that cgroup's OOM killer
        if self._direct is None or threading.get_native_id() == os.getpid():
            return super().popen(**kwargs)
        argv, roles, limiter = self._direct
        homes = limiter._homes(roles)
        if homes is None:
            return super().popen(**kwargs)
        moved = back = 0
        proc: subprocess.Popen[bytes] | None = None
        try:
            moved = _move_thread(self.cgroups)  # not all entered: the wrapper, below
            if moved == len(self.cgroups):
                proc = subprocess.Popen(argv, **kwargs)
        finally:
            back = _move_thread(homes[:moved])
            if back < moved:
                limiter.direct = False  # this thread's home is unknown from now on
        if back < moved:
            if proc is not None:
                proc.kill()
                proc.wait()
            raise OSError(f"cannot move the starting thread back to {homes[back]}")
        return proc if proc is not None else super().popen(**kwargs)

    def _counters(self) -> dict[str, int]:
        memdir = self.cgroups[0]
        out = {k: v for k, v in _keyed(os.path.join(memdir, "memory.oom_control")).items()
               if k == "oom_kill"}
        for name in ("failcnt", "memsw.failcnt"):
            value = _read_int(os.path.join(memdir, f"memory.{name}"))
            if value is not None:
                out[name] = value
        return out

    def _start_counting(self) -> None:
        super()._start_counting()
        if self.requirements.memory > 0:  # the peak starts again from what is used now
            with contextlib.suppress(OSError):
                _write(os.path.join(self.cgroups[0], "memory.max_usage_in_bytes"), "0")

    def _oom_evidence(self) -> tuple[int | None, bool]:
        counters = self._counters()
        failcnt = [self._grown(counters, f) or 0 for f in ("failcnt", "memsw.failcnt")]
        peak = _read_int(os.path.join(self.cgroups[0], "memory.max_usage_in_bytes")) or 0
        limit = self.requirements.memory * _MIB
        return self._grown(counters, "oom_kill"), any(failcnt) or peak >= limit - _MIB

    def memory_current(self) -> int | None:
        return _read_int(os.path.join(self.cgroups[0], "memory.usage_in_bytes"))


# --------------------------------------------------------------------------- Limiter


class Limiter:
    """Makes :class:`Limited` jobs of one kind; this base class is the ``none`` kind."""

    kind: str = "none"
    """``"cgroup2"``, ``"cgroup1"``, ``"rlimit"`` or ``"none"``."""

    def __init__(self, node: str, detail: str = "", noun: str = "job",
                 cpu: str = "quota") -> None:
        self.cpu = cpu
        """``quota`` (a cap) or ``weight`` (a share under contention) for ``cpu_units``."""
        self.node = node
        """The node the jobs run on (part of the cgroup name)."""
        self.detail = detail or self.kind
        """One line for the worker's log: what is enforced and how."""
        self.noun = noun
        """``job`` or ``task``: names the cgroups and what the messages call it."""
        self.reuse = False
        """Keep each job's cgroups, emptied, for the next job (the cgroup kinds; set by
        :func:`detect_limiter`): see :meth:`Limited.cleanup`."""
        self._reaper = _Reaper(f"{noun}s of {node}")
        """Kills the jobs that die with this process, should it go (started with the
        first of them)."""

    def _label(self, job_id: str) -> str:
        return f"{self.noun} {job_id}"

    def wrap(self, job_id: str, requirements: Requirements, argv: list[str],
             user: Identity | None = None, *, pids: int = 0,
             pdeathsig: bool = True) -> Limited:
        """Set up the limits of one job and give the command line to start it with (as
        ``user`` when given: the program runs with that uid, gid and groups; the limits
        are set up as the worker's user first).

        ``pids`` (> 0) limits how many processes and threads it may have at once (the
        cgroup kinds). With ``pdeathsig`` the job is killed, with what it forked, when
        the process that started it goes (the limiter's reaper, see the module's
        docstring: no per-job parent-death signal); a service task must outlive its
        agent, so it passes False.

        Raises :class:`~skedlib.errors.SkedError` (with a one-line message to fail the job
        with) when the limits cannot be set up.
        """
        if not argv:
            raise SkedError(f"{self._label(job_id)}: empty command line")
        prefix = _start_prefix(self._label(job_id), user)
        return self._reaped(Limited(job_id, requirements, [*prefix, *argv], self.noun),
                            pdeathsig)

    def _reaped(self, limited: Limited, pdeathsig: bool) -> Limited:
        """``limited``, its process group told to the reaper at :meth:`Limited.attach`
        when it dies with this process (the kinds without cgroups)."""
        if pdeathsig:
            self._reaper.ensure()
            limited._reaper = self._reaper
        return limited

    def find(self, job_id: str, requirements: Requirements) -> Limited | None:
        """The limits :meth:`wrap` set up for ``job_id`` by an earlier process (an agent
        before its restart), when they are still there: its cgroups, found by the id.
        None when there is nothing to take over (kinds without cgroups)."""
        del job_id, requirements
        return None

    def close(self) -> None:
        """Remove the node's parent cgroups if no job uses them (the worker may call this
        when it stops), and end the reaper: a job that should die with this process and
        still runs is killed. Never raises."""
        self._reaper.close()


class _RlimitLimiter(Limiter):
    kind = "rlimit"

    def __init__(self, node: str, noun: str = "job", cpu: str = "quota") -> None:
        self._prlimit = shutil.which("prlimit")
        how = "prlimit --as" if self._prlimit else "ulimit -v"
        super().__init__(node, f"rlimit: memory as RLIMIT_AS ({how}); cpu and pids not "
                         "enforced", noun, cpu)

    def wrap(self, job_id: str, requirements: Requirements, argv: list[str],
             user: Identity | None = None, *, pids: int = 0,
             pdeathsig: bool = True) -> Limited:
        """Start the job under ``RLIMIT_AS`` of its memory requirement (cpu and pids:
        unenforced; ``RLIMIT_NPROC`` counts every process of the user, not the job's)."""
        if not argv:
            raise SkedError(f"{self._label(job_id)}: empty command line")
        cmd = list(argv)
        if requirements.memory > 0:
            if self._prlimit:
                cmd = [self._prlimit, f"--as={requirements.memory * _MIB}", "--", *cmd]
            else:
                cmd = [_SH, "-c", 'ulimit -v "$0" && exec "$@"',
                       str(requirements.memory * 1024), *cmd]
        prefix = _start_prefix(self._label(job_id), user)
        return self._reaped(_RlimitLimited(job_id, requirements, [*prefix, *cmd],
                                           self.noun), pdeathsig)


class _CgroupLimiter(Limiter):
    """Shared by the two cgroup kinds: a parent cgroup per hierarchy, a child per job —
    or, with ``reuse``, a pool of children (``<noun>-pool-<n>``) that jobs take in turn."""

    def __init__(self, node: str, parents: list[str], detail: str, noun: str = "job",
                 cpu: str = "quota") -> None:
        super().__init__(node, detail, noun, cpu)
        self.parents = parents
        """The node's parent cgroup directories (``…/skedlib-<noun>s-<node>``)."""
        self._pool_lock = threading.Lock()
        self._free: list[_CgroupSet] = []
        self._pooled = 0
        self._closed = False
        self._has: dict[str, bool] = {}
        """Whether the optional control files exist (``memory.swap.max`` …), seen once."""

    def _ensure_parents(self) -> None:
        for parent in self.parents:
            os.makedirs(parent, exist_ok=True)

    def _roles(self, requirements: Requirements, pids: int) -> list[str]:
        """The hierarchies a job with these requirements enters, ``memory`` first."""
        raise NotImplementedError

    def _parent(self, role: str) -> str:
        return self.parents[0]

    def _settings(self, cgroups: _CgroupSet, requirements: Requirements,
                  pids: int) -> list[tuple[str, str, str, str]]:
        """Every control file a job with these requirements needs set, in the order to
        write them: (role, file, value, the kernel's default)."""
        raise NotImplementedError

    def _dirs(self, job_id: str, requirements: Requirements) -> list[str]:
        """The job's cgroup directories, the memory one first (whether they exist or not)."""
        raise NotImplementedError

    def _limited(self, job_id: str, requirements: Requirements, argv: list[str],
                 cgroups: list[str]) -> _CgroupLimited:
        raise NotImplementedError

    def _child(self, parent: str, job_id: str) -> str:
        return os.path.join(parent, f"{self.noun}-{_safe(job_id)}")

    def _job_dir(self, parent: str, job_id: str) -> str:
        path = self._child(parent, job_id)
        if os.path.isdir(path):  # left over from an earlier attempt (or worker run)
            _signal_cgroups([path], signal.SIGKILL, 1.0)
            _rmdir(path, 2.0)
        os.mkdir(path)
        return path

    def _has_file(self, directory: str, name: str) -> bool:
        if name not in self._has:
            self._has[name] = os.path.exists(os.path.join(directory, name))
        return self._has[name]

    def _apply(self, cgroups: _CgroupSet, requirements: Requirements, pids: int) -> None:
        """Write every control file whose value is not yet what the job needs: in a
        fresh set only the limits it has; in a reused one also the resets to the
        default of the limits the previous job had."""
        for role, name, value, default in self._settings(cgroups, requirements, pids):
            path = os.path.join(cgroups.dirs[role], name)
            if cgroups.written.get(path, default) != value:
                cgroups.written.pop(path, None)  # unknown until the write succeeds
                _write(path, value)
                cgroups.written[path] = value

    def _set_up(self, job_id: str, requirements: Requirements, pids: int,
                roles: list[str]) -> _CgroupSet:
        """The job's cgroups with its limits: a free pooled set (reset to them) or a
        fresh one; a reused set that cannot be reset is removed for a fresh one."""
        for attempt in (1, 2):
            cgroups = self._take() if self.reuse else None
            reused = cgroups is not None
            if cgroups is None:
                cgroups = _CgroupSet(self._pool_name() if self.reuse else job_id)
            try:
                if not reused:
                    self._ensure_parents()
                for role in roles:
                    if role not in cgroups.dirs:
                        cgroups.dirs[role] = self._job_dir(self._parent(role), cgroups.name)
                self._apply(cgroups, requirements, pids)
                return cgroups
            except (OSError, _Unusable) as exc:
                self._remove(cgroups)
                # A reused set that would not reset, or a parent removed by another
                # limiter's close() meanwhile: once more, fresh.
                if attempt == 1 and (reused or isinstance(exc, FileNotFoundError)):
                    continue
                self._fail(job_id, exc)
        raise AssertionError("unreachable")  # pragma: no cover

    def wrap(self, job_id: str, requirements: Requirements, argv: list[str],
             user: Identity | None = None, *, pids: int = 0,
             pdeathsig: bool = True) -> Limited:
        """Create the job's cgroups with its limits (or reset a pooled one to them); the
        returned argv enters them first (as the worker's user: a job's own user could
        not move itself into them)."""
        if not argv:
            raise SkedError(f"{self._label(job_id)}: empty command line")
        prefix = _start_prefix(self._label(job_id), user)
        roles = self._roles(requirements, pids)
        cgroups = self._set_up(job_id, requirements, pids, roles)
        try:
            self._reap(cgroups, pdeathsig)
        except SkedError:
            self._remove(cgroups)
            raise
        dirs = [cgroups.dirs[role] for role in roles]
        limited = self._limited(job_id, requirements,
                                _enter_cgroups_argv(dirs, [*prefix, *argv]), dirs)
        limited._set, limited._limiter = cgroups, self
        self._start_directly(limited, roles, pids, [*prefix, *argv])
        if self.reuse:
            limited._pool = self
            if cgroups.jobs:
                limited._start_counting()
            cgroups.jobs += 1
        return limited

    def _start_directly(self, limited: _CgroupLimited, roles: list[str], pids: int,
                        argv: list[str]) -> None:
        """Let ``limited.popen`` start ``argv`` without the wrapper where this kind can
        (cgroup1)."""

    def _reap(self, cgroups: _CgroupSet, on: bool) -> None:
        """Have the reaper hold every directory of the set (its job dies with this
        process) or none. Before the job starts: there is no window."""
        if on:
            self._reaper.ensure()
            for cgroup in cgroups.dirs.values():
                if cgroup not in cgroups.reaped:
                    self._reaper.tell(f"+c {cgroup}")
                    cgroups.reaped.add(cgroup)
        else:
            for cgroup in cgroups.reaped:
                self._reaper.tell(f"-c {cgroup}")
            cgroups.reaped.clear()

    # -- the pool ------------------------------------------------------------------------
    def _pool_name(self) -> str:
        with self._pool_lock:
            self._pooled += 1
            return f"pool-{self._pooled}"

    def _take(self) -> _CgroupSet | None:
        """A free pooled set whose cgroups are all still there (one removed behind our
        back, say by an administrator, is dropped)."""
        while True:
            with self._pool_lock:
                if not self._free:
                    return None
                cgroups = self._free.pop()
            if all(os.path.isdir(d) for d in cgroups.dirs.values()):
                return cgroups
            self._remove(cgroups)

    def _give_back(self, cgroups: _CgroupSet, empty: bool) -> None:
        """A job's pooled set after its end: kept for the next job when it is empty,
        else removed (its processes killed first)."""
        with self._pool_lock:
            if empty and not self._closed:
                self._free.append(cgroups)
                return
        self._remove(cgroups)

    def _remove(self, cgroups: _CgroupSet) -> None:
        dirs = list(cgroups.dirs.values())
        cgroups.dirs.clear()
        cgroups.written.clear()
        _signal_cgroups(dirs, signal.SIGKILL, 1.0)
        for cgroup in dirs:
            _rmdir(cgroup, 2.0)
        self._reap(cgroups, False)

    def find(self, job_id: str, requirements: Requirements) -> Limited | None:
        """The job's cgroups when its memory cgroup still exists (the others that exist)."""
        dirs = self._dirs(job_id, requirements)
        if not os.path.isdir(dirs[0]):
            return None
        return self._limited(job_id, requirements, [],
                             [dirs[0], *(d for d in dirs[1:] if os.path.isdir(d))])

    def _fail(self, job_id: str, exc: OSError | _Unusable) -> NoReturn:
        """Raise the SkedError a failed set-up becomes (never a raw OSError)."""
        if isinstance(exc, OSError):
            why = f"{exc.filename or self.parents[0]}: {exc.strerror or exc}"
        else:
            why = str(exc)
        raise SkedError(f"{self._label(job_id)}: cannot create its {self.kind} cgroup "
                        f"({why})") from None

    def close(self) -> None:
        with self._pool_lock:
            self._closed = True
            free, self._free = self._free, []
        for cgroups in free:
            with contextlib.suppress(Exception):
                self._remove(cgroups)
        super().close()  # the reaper kills and removes what still runs
        for parent in self.parents:
            with contextlib.suppress(OSError):
                os.rmdir(parent)


class _Cgroup2Limiter(_CgroupLimiter):
    kind = "cgroup2"

    def __init__(self, node: str, parent: str, cpu: bool, pids: bool = False,
                 noun: str = "job", cpu_mode: str = "quota") -> None:
        self._cpu = cpu
        self._pids = pids
        cpu_file = "cpu.weight" if cpu_mode == "weight" else "cpu.max"
        cpu_note = cpu_file if cpu else "cpu not enforced (no cpu controller)"
        pids_note = "pids.max" if pids else "pids not enforced (no pids controller)"
        super().__init__(node, [parent],
                         f"cgroup2 at {parent}: memory.max, {cpu_note}, {pids_note}", noun,
                         cpu_mode)

    def _ensure_parents(self) -> None:
        parent = self.parents[0]
        if not os.path.isdir(parent):  # removed by close() meanwhile
            _setup_cgroup2_parent(os.path.dirname(parent), os.path.basename(parent))
            if self.cpu == "weight":
                _weigh_parent(parent, self.kind)

    def _dirs(self, job_id: str, requirements: Requirements) -> list[str]:
        return [self._child(self.parents[0], job_id)]

    def _roles(self, requirements: Requirements, pids: int) -> list[str]:
        return ["memory"]  # one cgroup holds every controller

    def _settings(self, cgroups: _CgroupSet, requirements: Requirements,
                  pids: int) -> list[tuple[str, str, str, str]]:
        memory, cpu_units = requirements.memory, requirements.cpu_units
        out = [("memory", "memory.max", str(memory * _MIB) if memory > 0 else "max", "max")]
        if self._has_file(cgroups.dirs["memory"], "memory.swap.max"):
            out.append(("memory", "memory.swap.max", "0" if memory > 0 else "max", "max"))
        if self._cpu and self.cpu == "weight":
            out.append(("memory", "cpu.weight",
                        str(_cpu_weight(cpu_units)) if cpu_units > 0 else "100", "100"))
        elif self._cpu:
            quota = str(_cpu_quota_us(cpu_units)) if cpu_units > 0 else "max"
            out.append(("memory", "cpu.max", f"{quota} {_CPU_PERIOD_US}",
                        f"max {_CPU_PERIOD_US}"))
        if self._pids:
            out.append(("memory", "pids.max", str(pids) if pids > 0 else "max", "max"))
        return out

    def _limited(self, job_id: str, requirements: Requirements, argv: list[str],
                 cgroups: list[str]) -> _CgroupLimited:
        return _Cgroup2Limited(job_id, requirements, argv, cgroups, self.noun)


_UNLIMITED_V1 = "-1"


def _v1_bytes(value: str) -> float:
    return math.inf if value == _UNLIMITED_V1 else int(value)


class _Cgroup1Limiter(_CgroupLimiter):
    kind = "cgroup1"

    def __init__(self, node: str, memory_parent: str, cpu_parent: str | None,
                 pids_parent: str | None = None, noun: str = "job",
                 cpu_mode: str = "quota") -> None:
        self._memory_parent = memory_parent
        self._cpu_parent = cpu_parent
        self._pids_parent = pids_parent
        cpu_file = "cpu.shares" if cpu_mode == "weight" else "cpu.cfs_quota_us"
        cpu_note = (f"{cpu_file} at {cpu_parent}" if cpu_parent
                    else "cpu not enforced (no usable cpu hierarchy)")
        pids_note = (f"pids.max at {pids_parent}" if pids_parent
                     else "pids not enforced (no usable pids hierarchy)")
        parents = [memory_parent, *(p for p in (cpu_parent, pids_parent) if p)]
        super().__init__(node, parents, f"cgroup1: memory.limit_in_bytes at "
                         f"{memory_parent}, {cpu_note}, {pids_note}", noun, cpu_mode)
        self._thread_mounts: dict[str, _Mount] = {}
        """The hierarchies a starting thread may enter for a job (memory, pids)."""
        for mount in _mounts():
            for role in ("memory", "pids"):
                if mount.fstype == "cgroup" and role in mount.options:
                    self._thread_mounts.setdefault(role, mount)
        self._home: tuple[float, dict[str, str]] | None = None
        """When the process's own cgroups were read, and its directory per role."""
        self.direct = True
        """Whether jobs may be started without the wrapper (:meth:`Limited.popen`; off
        once a starting thread could not move back)."""

    def _start_directly(self, limited: _CgroupLimited, roles: list[str], pids: int,
                        argv: list[str]) -> None:
        # a thread counts in pids.max while it forks: one more than a limit of 1
        if self.direct and pids != 1 and isinstance(limited, _Cgroup1Limited) \
                and all(role in self._thread_mounts for role in roles):
            limited._direct = (argv, roles, self)

    def _homes(self, roles: list[str]) -> list[str] | None:
        """Where a thread that started a job goes back to, per role: the process's own
        cgroup there (``/proc/self/cgroup``, read again after ``_HOME_SECONDS``: the
        read waits for the kernel's cgroup lock, which every job start takes). None
        when it cannot be told."""
        now = time.monotonic()
        home = self._home
        if home is None or now - home[0] > _HOME_SECONDS:
            own = _own_cgroups()
            dirs = {role: _cgroup_dir(mount, own[role])
                    for role, mount in self._thread_mounts.items() if role in own}
            self._home = home = (now, dirs)
        dirs = home[1]
        return [dirs[role] for role in roles] if all(r in dirs for r in roles) else None

    def _dirs(self, job_id: str, requirements: Requirements) -> list[str]:
        return [self._child(p, job_id) for p in self.parents]

    def _ensure_parents(self) -> None:
        cpu_gone = self._cpu_parent is not None and not os.path.isdir(self._cpu_parent)
        super()._ensure_parents()
        if cpu_gone and self._cpu_parent and self.cpu == "weight":  # removed by close()
            _weigh_parent(self._cpu_parent, self.kind)

    def _roles(self, requirements: Requirements, pids: int) -> list[str]:
        roles = ["memory"]
        if requirements.cpu_units > 0 and self._cpu_parent:
            roles.append("cpu")
        if pids > 0 and self._pids_parent:
            roles.append("pids")
        return roles

    def _parent(self, role: str) -> str:
        parent = {"memory": self._memory_parent, "cpu": self._cpu_parent,
                  "pids": self._pids_parent}[role]
        assert parent is not None  # _roles names only the hierarchies there are
        return parent

    def _settings(self, cgroups: _CgroupSet, requirements: Requirements,
                  pids: int) -> list[tuple[str, str, str, str]]:
        memdir = cgroups.dirs["memory"]
        limit = str(requirements.memory * _MIB) if requirements.memory > 0 \
            else _UNLIMITED_V1
        out = [("memory", "memory.limit_in_bytes", limit, _UNLIMITED_V1)]
        if self._has_file(memdir, "memory.memsw.limit_in_bytes"):  # so swap hides nothing
            out.append(("memory", "memory.memsw.limit_in_bytes", limit, _UNLIMITED_V1))
            # memsw must never be below the limit: raise it first, lower it last
            now = cgroups.written.get(os.path.join(memdir, "memory.limit_in_bytes"),
                                      _UNLIMITED_V1)
            if _v1_bytes(limit) > _v1_bytes(now):
                out.reverse()
        if "cpu" in cgroups.dirs and requirements.cpu_units > 0:
            if self.cpu == "weight":
                out.append(("cpu", "cpu.shares", str(_cpu_shares(requirements.cpu_units)),
                            "1024"))
            else:
                out.append(("cpu", "cpu.cfs_period_us", str(_CPU_PERIOD_US),
                            str(_CPU_PERIOD_US)))
                out.append(("cpu", "cpu.cfs_quota_us",
                            str(_cpu_quota_us(requirements.cpu_units)), _UNLIMITED_V1))
        if "pids" in cgroups.dirs and pids > 0:
            out.append(("pids", "pids.max", str(pids), "max"))
        return out

    def _limited(self, job_id: str, requirements: Requirements, argv: list[str],
                 cgroups: list[str]) -> _CgroupLimited:
        return _Cgroup1Limited(job_id, requirements, argv, cgroups, self.noun)


# --------------------------------------------------------------------------- detection


def _parent_name(node: str, noun: str = "job") -> str:
    return f"skedlib-{noun}s-{_safe(node)}"


def _enable(cgroup: str, controllers: list[str]) -> None:
    missing = [c for c in controllers if c not in _controllers(cgroup, "cgroup.subtree_control")]
    if missing:
        _write(os.path.join(cgroup, "cgroup.subtree_control"),
               " ".join(f"+{c}" for c in missing))


def _setup_cgroup2_parent(base: str, name: str) -> tuple[str, bool, bool]:
    """Create ``base/name`` with memory (and cpu, pids) for its children; (path, cpu
    enabled, pids enabled)."""
    wanted: list[str] = [c for c in ("memory", "cpu", "pids") if c in _controllers(base)]
    if "memory" not in wanted:
        raise _Unusable(f"{base} has no memory controller")
    try:
        _enable(base, wanted)
    except OSError as exc:
        raise _Unusable(f"cannot enable {'+'.join(wanted)} in {base}: {exc.strerror}") from None
    parent = os.path.join(base, name)
    try:
        os.makedirs(parent, exist_ok=True)
        _enable(parent, [c for c in wanted if c in _controllers(parent)])
    except OSError as exc:
        raise _Unusable(f"cannot set up {parent}: {exc.strerror}") from None
    enabled = _controllers(parent, "cgroup.subtree_control")
    if "memory" not in enabled:
        raise _Unusable(f"{parent} cannot hand the memory controller to its children")
    return parent, "cpu" in enabled, "pids" in enabled


def _detect_cgroup2(node: str, noun: str, cpu_mode: str) -> Limiter:
    mounts = [m for m in _mounts() if m.fstype == "cgroup2"]
    if not mounts:
        raise _Unusable("no cgroup2 hierarchy is mounted")
    mounts.sort(key=lambda m: m.point != _CGROUP_FS)
    mount = mounts[0]
    available = _controllers(mount.point)
    if "memory" not in available:
        raise _Unusable(f"the cgroup2 hierarchy at {mount.point} has no memory controller "
                        f"(it has: {', '.join(sorted(available)) or 'none'})")
    own = _cgroup_dir(mount, _own_cgroups().get("", "/"))
    # "No internal processes": our own cgroup holds processes (us), so it cannot hand
    # controllers to children. Put the parent beside it, else at the top.
    bases = [] if own == mount.point else [os.path.dirname(own)]
    bases.append(mount.point)
    reasons: list[str] = []
    for base in dict.fromkeys(bases):
        try:
            parent, cpu, pids = _setup_cgroup2_parent(base, _parent_name(node, noun))
        except _Unusable as exc:
            reasons.append(str(exc))
            continue
        if cpu_mode == "weight":
            _weigh_parent(parent, "cgroup2")
        return _Cgroup2Limiter(node, parent, cpu, pids, noun, cpu_mode)
    raise _Unusable("; ".join(reasons))


def _v1_parent(controller: str, node: str, required_file: str, noun: str) -> str:
    mounts = [m for m in _mounts() if m.fstype == "cgroup" and controller in m.options]
    if not mounts:
        raise _Unusable(f"no cgroup v1 {controller} hierarchy is mounted")
    own = _cgroup_dir(mounts[0], _own_cgroups().get(controller, "/"))
    if not os.path.exists(os.path.join(own, required_file)):
        raise _Unusable(f"{own} has no {required_file}")
    parent = os.path.join(own, _parent_name(node, noun))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise _Unusable(f"cannot create {parent}: {exc.strerror}") from None
    return parent


def _detect_cgroup1(node: str, noun: str, cpu_mode: str) -> Limiter:
    memory_parent = _v1_parent("memory", node, "memory.limit_in_bytes", noun)
    optional: list[str | None] = []
    # the root cgroup of a hierarchy has no cpu.cfs_quota_us or pids.max: ask for a file
    # every cgroup has, and find pids.max in the children
    for controller, required in (("cpu", "cpu.shares" if cpu_mode == "weight"
                                  else "cpu.cfs_quota_us"), ("pids", "cgroup.procs")):
        try:
            optional.append(_v1_parent(controller, node, required, noun))
        except _Unusable:
            optional.append(None)
    if cpu_mode == "weight" and optional[0]:
        _weigh_parent(optional[0], "cgroup1")
    return _Cgroup1Limiter(node, memory_parent, optional[0], optional[1], noun, cpu_mode)


def _detect_rlimit(node: str, noun: str, cpu_mode: str) -> Limiter:
    if not shutil.which("prlimit") and not os.access(_SH, os.X_OK):
        raise _Unusable(f"neither prlimit nor {_SH} is available")
    return _RlimitLimiter(node, noun, cpu_mode)


def _detect_none(node: str, noun: str, cpu_mode: str) -> Limiter:
    return Limiter(node, "none: no limits enforced", noun, cpu_mode)


_DETECT = {"cgroup2": _detect_cgroup2, "cgroup1": _detect_cgroup1,
           "rlimit": _detect_rlimit, "none": _detect_none}


def detect_limiter(node: str, prefer: str = "auto", noun: str = "job",
                   cpu: str = "quota", *, reuse: bool = False) -> Limiter:
    """The limiter for jobs (or, with ``noun="task"``, service tasks) on ``node``;
    ``cpu`` is ``quota`` (a cap at ``cpu_units``) or ``weight`` (a share).

    ``prefer="auto"`` takes the first usable of cgroup2, cgroup1 and rlimit (its
    :attr:`Limiter.detail` names why better kinds were passed over); a kind forces it and
    raises :class:`~skedlib.errors.SkedError` when it is not usable here. Creates the
    node's parent cgroup (``skedlib-<noun>s-<node>``) for the cgroup kinds.

    With ``reuse`` (the job worker) a job's cgroups are not removed at its end but kept,
    emptied, for the next job (``<noun>-pool-<n>``; see :meth:`Limited.cleanup`), which
    saves creating and removing cgroups per job. :meth:`Limiter.find` cannot find those
    by the job's id, so service tasks, which a restarted agent adopts, do not reuse.
    """
    limiter = _detect(node, prefer, noun, cpu)
    limiter.reuse = reuse
    return limiter


def _detect(node: str, prefer: str, noun: str, cpu: str) -> Limiter:
    if cpu not in ("quota", "weight"):
        raise SkedError(f"unknown cpu limit {cpu!r} (expected quota or weight)")
    if prefer != "auto" and prefer not in LIMITER_KINDS:
        raise SkedError(f"unknown {noun} limiter {prefer!r} "
                        f"(expected auto, {', '.join(LIMITER_KINDS)})")
    if prefer != "auto":
        try:
            return _DETECT[prefer](node, noun, cpu)
        except (_Unusable, OSError) as exc:
            raise SkedError(f"{noun} limiter {prefer} is not usable here: {exc}") from None
    passed: list[str] = []
    for kind in ("cgroup2", "cgroup1", "rlimit"):
        try:
            limiter = _DETECT[kind](node, noun, cpu)
        except (_Unusable, OSError) as exc:
            passed.append(f"{kind}: {exc}")
            continue
        if passed:
            limiter.detail += f" (passed over {'; '.join(passed)})"
        return limiter
    return _detect_none(node, noun, cpu)
