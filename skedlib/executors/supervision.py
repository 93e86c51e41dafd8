"""Supervising local processes: what the ``process`` and ``bash`` executors share.

- :class:`ProcessSupervisor` starts a command in its own session and process group, sees
  it exit at once (a reaper thread waits on a ``pidfd`` of every process, Linux 5.3+;
  elsewhere one waiting thread per process), adopts a process an earlier agent started
  only if its pid *and* start time (``psutil`` ``create_time``) match, so a recycled pid is
  never mistaken for the task, and stops a group: SIGTERM, the grace period, SIGKILL.
- :class:`LogRotator` rotates per-container log files by copy-and-truncate.
- :class:`SupervisedExecutor` is the base of both executors: a state directory for the
  records a restarted agent reads, log files under ``<log_dir>/<task_id>/``, one
  supervisor and one rotator, and the options they read (``log_max_bytes``,
  ``log_backups``, ``limits``, ``pids_max``).

Containment: every container runs in its own cgroup (``skedlib-tasks-<host>-<hash of
the state directory>/task-<task_id>.<container>``), made by the limiter the batch jobs use
(:mod:`skedlib.executors.limits`): a memory limit
(:meth:`~skedlib.models.TaskDefinition.container_limits`: the container's ``memory``, or
the task's when it is the only container), a CPU weight from ``cpu_units`` (its share
under contention; executor option ``cpu=quota`` caps it instead) and a pids limit
(executor option ``pids_max``, default :data:`DEFAULT_PIDS_MAX`). The command enters its
cgroup before it runs, and runs on when the agent stops: a restarted agent finds the
cgroup by the task id and takes it over. An OOM kill becomes the exit's message
(``killed: used more than its memory limit of 64 MiB``), a failure like any other exit.
The cgroup goes when the container is stopped or cleaned up. Option ``limits``
(``auto``, ``cgroup2``, ``cgroup1``, ``rlimit``, ``none``) picks the mechanism; ``auto``
takes the first usable cgroup kind, else none (``RLIMIT_AS``, the jobs' last resort,
breaks services whose runtime reserves address space: it is used only when asked for).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import select
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from skedlib._files import LOG_FILE_MODE, open_append, open_truncate, private_dirs, write_private
from skedlib.errors import SkedError
from skedlib.executors.base import (
    ContainerRef,
    ContainerStatus,
    Executor,
    ExecutorContext,
    ExitCallback,
    TaskRejected,
)
from skedlib.executors.limits import Limited, Limiter, Requirements, detect_limiter
from skedlib.executors.policy import Identity
from skedlib.models import Resources

__all__ = [
    "CREATE_TIME_TOLERANCE",
    "DEFAULT_PIDS_MAX",
    "LogRotator",
    "ProcessSupervisor",
    "SupervisedExecutor",
    "SupervisedProcess",
    "describe_exit",
    "kill_group_members",
    "log_tail",
    "option",
    "reachable_by",
    "read_record",
    "signal_group",
    "user_popen_args",
    "write_record",
]

log = logging.getLogger(__name__)

#: how close a recorded and a measured process start time must be to be the same process
CREATE_TIME_TOLERANCE = 0.05

#: processes and threads a container may have at once (executor option ``pids_max``)
DEFAULT_PIDS_MAX = 4096


def _cgroup_id(ref: ContainerRef) -> str:
    return f"{ref.task_id}.{ref.container}"


# -- helpers -------------------------------------------------------------------------------
def describe_exit(code: int | None) -> str:
    """``exited with code 3`` / ``killed by SIGKILL`` / ``exited``."""
    if code is None:
        return "exited"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False when it has no member left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        log.warning("not allowed to signal process group %d", pgid)
        return False
    return True


def write_record(path: Path, data: Mapping[str, Any]) -> None:
    """Write a JSON state record atomically (temp file, then rename)."""
    private_dirs(path.parent)
    write_private(path, json.dumps(data).encode())


def read_record(path: Path) -> dict[str, Any] | None:
    """A JSON state record, or None when missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def log_tail(path: Path, limit: int = 400) -> str:
    """The last ``limit`` characters of a log file, on one line."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return " ".join(text.split())


def user_popen_args(identity: Identity | None,
                    env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """``subprocess.Popen`` keyword arguments that run a command as ``identity`` (its uid,
    gid and own supplementary groups; nothing for None), and ``env`` with that user's
    ``HOME``, ``USER`` and ``LOGNAME`` (the agent's would point at root's home)."""
    if identity is None:
        return {}, dict(env)
    kwargs: dict[str, Any] = {"user": identity.uid, "group": identity.gid,
                              "extra_groups": list(identity.groups)}
    return kwargs, {**env, "HOME": identity.home, "USER": identity.name,
                    "LOGNAME": identity.name}


def reachable_by(path: Path, top: Path) -> None:
    """Let other users pass through the directories from ``path``'s parent up to ``top``
    (search permission only, ``0711``: nothing can be listed, and what is inside keeps
    its own modes), so a task running as another user reaches its work directory
    ``path`` by its absolute path. Only directories of the agent's own user are
    changed."""
    top = top.resolve()
    for parent in path.resolve().parents:
        with contextlib.suppress(OSError):
            st = os.lstat(parent)
            if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o011 != 0o011:
                os.chmod(parent, stat.S_IMODE(st.st_mode) | 0o011)
        if parent == top or parent == parent.parent:
            break


# -- log rotation ---------------------------------------------------------------------------
class LogRotator:
    """Rotates registered log files by size, from one background thread.

    Copy-and-truncate: the supervised process keeps its file descriptor (opened with
    ``O_APPEND``), so after the truncation its next write lands at the start of the same
    file. Lines written between the copy and the truncation can be lost; that is the price
    of rotating a file the agent does not own the writing end of.
    """

    def __init__(self, max_bytes: int = 10 * 1024 * 1024, backups: int = 3,
                 every: float = 5.0) -> None:
        self.max_bytes = max_bytes
        self.backups = max(1, backups)
        self.every = every
        self._files: set[Path] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, *paths: Path) -> None:
        """Watch these files from now on (starts the thread on first use)."""
        with self._lock:
            self._files.update(paths)
            if self._thread is None and self.max_bytes > 0:
                self._thread = threading.Thread(target=self._run, name="log-rotator",
                                                daemon=True)
                self._thread.start()

    def discard(self, *paths: Path) -> None:
        """Stop watching these files."""
        with self._lock:
            self._files.difference_update(paths)

    def rotate_now(self) -> None:
        """Check every file once (the thread calls this every ``every`` seconds)."""
        with self._lock:
            files = list(self._files)
        for path in files:
            try:
                if path.stat().st_size > self.max_bytes:
                    self._rotate(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("cannot rotate %s: %s", path, exc)

    def _rotate(self, path: Path) -> None:
        for i in range(self.backups - 1, 0, -1):
            older = path.with_name(f"{path.name}.{i}")
            if older.exists():
                os.replace(older, path.with_name(f"{path.name}.{i + 1}"))
        with path.open("rb") as src, \
                open_truncate(path.with_name(f"{path.name}.1"), LOG_FILE_MODE) as dst:
            shutil.copyfileobj(src, dst)
        with path.open("r+b") as f:
            f.truncate(0)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.rotate_now()

    def close(self) -> None:
        """Stop the thread."""
        self._stop.set()


# -- supervision ----------------------------------------------------------------------------
@dataclass(eq=False)
class SupervisedProcess:
    """One process group leader the supervisor started or adopted."""

    ref: ContainerRef
    pid: int
    pgid: int
    create_time: float
    started_at: float
    child: bool = False
    """True when this agent started it (it reaps it and knows the exit code); False when
    adopted from an earlier agent."""
    exited: threading.Event = field(default_factory=threading.Event)
    exit_code: int | None = None
    stopping: bool = False
    report_exit: bool = True
    """False while a starter waits for the process itself (bash's detach window)."""
    limited: Limited | None = None
    """Its cgroup (None when not contained)."""

    @property
    def adopted(self) -> bool:
        """True when the process was started by an earlier agent."""
        return not self.child

    def status(self) -> ContainerStatus:
        """The process's state now."""
        if self.exited.is_set():
            # the kernel's OOM kill is the reason, not the SIGKILL it took
            why = self.limited.exceeded(self.exit_code) if self.limited else None
            return ContainerStatus(state="exited", exit_code=self.exit_code, pid=self.pid,
                                   started_at=self.started_at,
                                   message=why or describe_exit(self.exit_code))
        used = self.limited.memory_current() if self.limited else None
        if used is None:
            used = 0
            with contextlib.suppress(psutil.Error):
                used = psutil.Process(self.pid).memory_info().rss
        return ContainerStatus(state="running", pid=self.pid, started_at=self.started_at,
                               memory_bytes=used)


def _same_process(pid: int, create_time: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return (abs(proc.create_time() - create_time) <= CREATE_TIME_TOLERANCE
                and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


class ProcessSupervisor:
    """Starts commands in their own process group, sees them exit at once, stops them.

    One reaper thread waits on a pidfd per process (epoll); where pidfds are not available
    each process gets a small waiting thread instead. ``on_exit`` is called from the reaper
    for every process that exits while not being stopped.

    With a ``limiter`` (of a kind other than ``none``) a process started or adopted with
    ``limits`` is contained in a cgroup of its own (``pids_max``: its pids limit), kept
    until :meth:`release`.
    """

    def __init__(self, name: str, limiter: Limiter | None = None,
                 pids_max: int = 0) -> None:
        self.name = name
        self.on_exit: ExitCallback | None = None
        self.limiter = limiter if limiter is not None and limiter.kind != "none" else None
        self.pids_max = pids_max
        self._procs: dict[ContainerRef, SupervisedProcess] = {}
        self._cgroups: dict[ContainerRef, Limited] = {}
        self._lock = threading.Lock()
        self._fds: dict[int, SupervisedProcess] = {}
        self._epoll: select.epoll | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._closed = False
        self._thread: threading.Thread | None = None
        if hasattr(os, "pidfd_open") and hasattr(select, "epoll"):
            self._epoll = select.epoll()
            self._epoll.register(self._wake_r, select.EPOLLIN)
            self._thread = threading.Thread(target=self._reap_loop,
                                            name=f"{name}-reaper", daemon=True)
            self._thread.start()

    # -- registry ---------------------------------------------------------------------
    def get(self, ref: ContainerRef) -> SupervisedProcess | None:
        """The process of ``ref``, alive or exited, or None."""
        with self._lock:
            return self._procs.get(ref)

    def refs(self) -> list[ContainerRef]:
        """Refs of every process still running."""
        with self._lock:
            return sorted(r for r, p in self._procs.items() if not p.exited.is_set())

    def forget(self, ref: ContainerRef) -> None:
        """Drop an exited process from the registry."""
        with self._lock:
            proc = self._procs.get(ref)
            if proc is not None and proc.exited.is_set():
                del self._procs[ref]

    # -- starting ---------------------------------------------------------------------
    def spawn(self, ref: ContainerRef, argv: Sequence[str], env: Mapping[str, str],
              cwd: str | None, stdout: Path, stderr: Path,
              report_exit: bool = True, identity: Identity | None = None,
              limits: Requirements | None = None) -> SupervisedProcess:
        """Start ``argv`` as a new session; output is appended to ``stdout``/``stderr``
        (opened by the agent: the log files stay its own, private to others), as
        ``identity`` when given (else as the agent's user), in a cgroup held to
        ``limits`` when given and the supervisor has a limiter.

        With ``report_exit=False`` an exit is not passed to ``on_exit`` until the caller
        sets :attr:`SupervisedProcess.report_exit`. Raises :class:`OSError` when the
        command cannot be executed, :class:`~skedlib.errors.SkedError` when its cgroup
        cannot be set up.
        """
        private_dirs(stdout.parent)
        user_args, full_env = user_popen_args(identity, env)
        limited = None
        if self.limiter is not None and limits is not None:
            self.release(ref)  # a cgroup left by an earlier run of the same container
            # the cgroup is entered as the agent's user, then setpriv drops to identity
            limited = self.limiter.wrap(_cgroup_id(ref), limits, list(argv), identity,
                                        pids=self.pids_max, pdeathsig=False)
            user_args = {}
        try:
            with open_append(stdout) as out, open_append(stderr) as err:
                kwargs: dict[str, Any] = dict(
                    env=full_env, cwd=cwd or None, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=err, start_new_session=True, close_fds=True, **user_args)
                popen = (limited.popen(**kwargs) if limited is not None
                         else subprocess.Popen(list(argv), **kwargs))
        except BaseException:
            if limited is not None:
                limited.cleanup()
            raise
        # The supervisor reaps its children itself (waitpid once the pidfd says so). Tell
        # the Popen object it has nothing left to do, so that it never reaps the child
        # behind our back nor warns, when collected, that the child still runs (it is
        # meant to outlive this agent).
        popen.returncode = 0
        pid = popen.pid
        try:
            create_time = psutil.Process(pid).create_time()
        except psutil.Error:  # already gone (and a zombie we will reap)
            create_time = time.time()
        proc = SupervisedProcess(ref, pid, pid, create_time, time.time(), child=True,
                                 report_exit=report_exit, limited=limited)
        if limited is not None:
            limited.attach(pid)
            with self._lock:
                self._cgroups[ref] = limited
        self._track(proc)
        return proc

    def adopt(self, ref: ContainerRef, pid: int, pgid: int, create_time: float,
              started_at: float, limits: Requirements | None = None
              ) -> SupervisedProcess | None:
        """Take over a process an earlier agent started, if it is still that process, and
        its cgroup (found by the ref) when it was started with ``limits``."""
        proc = SupervisedProcess(ref, pid, pgid, create_time, started_at)
        if limits is not None:
            proc.limited = self.take_over(ref, limits)
        if not self._track(proc, verify=True):
            return None
        return proc

    # -- cgroups ----------------------------------------------------------------------
    def take_over(self, ref: ContainerRef, limits: Requirements) -> Limited | None:
        """The cgroup an earlier agent made for ``ref`` (held to ``limits``), now this
        supervisor's to report on and release; None when there is none."""
        if self.limiter is None:
            return None
        limited = self.limiter.find(_cgroup_id(ref), limits)
        if limited is not None:
            with self._lock:
                self._cgroups[ref] = limited
        return limited

    def release(self, ref: ContainerRef) -> None:
        """Remove ``ref``'s cgroup, killing what is left in it. Idempotent."""
        with self._lock:
            limited = self._cgroups.pop(ref, None)
        if limited is None and self.limiter is not None:
            limited = self.limiter.find(_cgroup_id(ref), Resources())
        if limited is not None:
            limited.cleanup()

    def memory_usage(self) -> dict[str, int]:
        """Bytes of memory in use per task id, summed over its containers' cgroups."""
        with self._lock:
            cgroups = list(self._cgroups.items())
        used: dict[str, int] = {}
        for ref, limited in cgroups:
            used[ref.task_id] = used.get(ref.task_id, 0) + (limited.memory_current() or 0)
        return used

    def mechanism(self) -> str:
        """How containers are contained: ``cgroup2``, ``cgroup1``, ``rlimit`` or ``none``."""
        return self.limiter.kind if self.limiter is not None else "none"

    def _track(self, proc: SupervisedProcess, verify: bool = False) -> bool:
        fd: int | None = None
        if self._epoll is not None:
            try:
                fd = os.pidfd_open(proc.pid)
            except ProcessLookupError:
                if verify:
                    return False
            except OSError:  # pidfds refused (old kernel, seccomp): fall back
                fd = None
        # Verify after opening the pidfd: the pidfd pins the process we checked.
        if verify and not _same_process(proc.pid, proc.create_time):
            if fd is not None:
                os.close(fd)
            return False
        with self._lock:
            old = self._procs.get(proc.ref)
            if old is not None and not old.exited.is_set():
                raise RuntimeError(f"{proc.ref.task_id}/{proc.ref.container} is already "
                                   f"running as pid {old.pid}")
            self._procs[proc.ref] = proc
            if fd is not None:
                self._fds[fd] = proc
        if fd is not None and self._epoll is not None:
            self._epoll.register(fd, select.EPOLLIN)
        elif fd is None and not proc.child and not self._closed:
            threading.Thread(target=self._wait_adopted, args=(proc,), daemon=True,
                             name=f"wait-{proc.pid}").start()
        elif fd is None:
            threading.Thread(target=self._wait_child, args=(proc,), daemon=True,
                             name=f"wait-{proc.pid}").start()
        return True

    # -- noticing exits ---------------------------------------------------------------
    def _reap_loop(self) -> None:
        assert self._epoll is not None
        while not self._closed:
            try:
                events = self._epoll.poll()
            except InterruptedError:
                continue
            except OSError:
                return  # closed
            for fd, _ in events:
                if fd == self._wake_r:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 4096)
                    continue
                with self._lock:
                    proc = self._fds.pop(fd, None)
                with contextlib.suppress(OSError):
                    self._epoll.unregister(fd)
                os.close(fd)
                if proc is not None:
                    self._exited(proc)

    def _wait_child(self, proc: SupervisedProcess) -> None:
        self._exited(proc)  # blocks in waitpid

    def _wait_adopted(self, proc: SupervisedProcess) -> None:
        with contextlib.suppress(psutil.Error):
            psutil.Process(proc.pid).wait()
        self._exited(proc)

    def _exited(self, proc: SupervisedProcess) -> None:
        if proc.child:
            try:
                _, status = os.waitpid(proc.pid, 0)
                proc.exit_code = os.waitstatus_to_exitcode(status)
            except ChildProcessError:  # reaped elsewhere: the code is lost
                proc.exit_code = None
        proc.exited.set()
        if (proc.report_exit and not proc.stopping and not self._closed
                and self.on_exit is not None):
            try:
                self.on_exit(proc.ref, proc.status())
            except Exception:
                log.exception("exit callback failed for %s", proc.ref)

    # -- stopping ---------------------------------------------------------------------
    def stop(self, ref: ContainerRef, grace: float) -> None:
        """SIGTERM to the group, ``grace`` seconds, then SIGKILL. Idempotent."""
        proc = self.get(ref)
        if proc is None:
            return
        proc.stopping = True
        self.terminate_group(proc, grace)

    def terminate_group(self, proc: SupervisedProcess, grace: float) -> None:
        """Stop ``proc`` and whatever is left of its process group."""
        if not proc.exited.is_set():
            signal_group(proc.pgid, signal.SIGTERM)
            if not proc.exited.wait(grace):
                log.info("%s/%s did not stop within %gs of SIGTERM: killing it",
                         proc.ref.task_id, proc.ref.container, grace)
                signal_group(proc.pgid, signal.SIGKILL)
                proc.exited.wait(10)
        # The leader is gone; members it left behind would hold ports and files.
        kill_group_members(proc.pgid, grace)

    def close(self) -> None:
        """Stop noticing exits (processes keep running)."""
        self._closed = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=2)
        with self._lock:
            fds, self._fds = list(self._fds), {}
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._epoll is not None:
            self._epoll.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def kill_group_members(pgid: int, grace: float) -> None:
    """SIGTERM what is left of process group ``pgid``, wait up to ``grace``, SIGKILL the rest.

    Used when a group leader has exited: members in the same group would otherwise keep
    ports and files of the task.
    """
    if not signal_group(pgid, 0):
        return
    members = []
    for p in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            # a zombie holds nothing and cannot be waited for here: it stays until its
            # parent reaps it (init, for an adopted task: that can take seconds)
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                members.append(p)
    if not members:
        return
    signal_group(pgid, signal.SIGTERM)
    _, alive = psutil.wait_procs(members, timeout=grace)
    if alive:
        signal_group(pgid, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=5)



def option(options: Mapping[str, str], name: str, default: float, executor: str) -> float:
    """A numeric executor option (``--executor-opt process.log_max_bytes=1000000``)."""
    raw = options.get(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise TaskRejected(f"{executor} executor option {name}={raw!r} is not a number") \
            from None



def _task_limiter(host: str, prefer: str, cpu: str, executor: str) -> Limiter:
    """The limiter for service tasks: ``auto`` takes a cgroup kind or none (never rlimit,
    see the module docstring); a named kind must be usable."""
    try:
        limiter = detect_limiter(host, prefer, noun="task", cpu=cpu)
    except SkedError as exc:
        raise TaskRejected(f"{executor} executor options limits={prefer}, cpu={cpu}: "
                           f"{exc}") from None
    if prefer == "auto" and limiter.kind == "rlimit":
        return Limiter(host, "none: no usable cgroup (rlimit is used for service tasks "
                       f"only with limits=rlimit; {limiter.detail})", noun="task", cpu=cpu)
    return limiter


# -- the executors' common base -------------------------------------------------------------
class SupervisedExecutor(Executor):
    """An executor whose containers are local process groups (``process``, ``bash``).

    It owns the state directory (``<state_dir>/<task_id>/<container>.json`` records what a
    restarted agent needs), the per-container log files, one :class:`ProcessSupervisor`
    and one :class:`LogRotator` (executor options ``log_max_bytes``, default 10 MiB, and
    ``log_backups``, default 3). Exits are reported at once by the supervisor's reaper.
    """

    def __init__(self, ctx: ExecutorContext) -> None:
        # options first: a bad one refuses the executor before any thread is started
        max_bytes = int(option(ctx.options, "log_max_bytes", 10 * 1024 * 1024, self.name))
        backups = int(option(ctx.options, "log_backups", 3, self.name))
        pids_max = int(option(ctx.options, "pids_max", DEFAULT_PIDS_MAX, self.name))
        self.ctx = ctx
        self.state_dir = Path(ctx.state_dir)
        self.log_dir = Path(ctx.log_dir)
        private_dirs(self.state_dir)
        # Two agents may share a host name on one machine (tests, a staging copy): the
        # state directory tells their cgroups apart, and a restarted agent reuses it.
        where = hashlib.sha256(str(self.state_dir.resolve()).encode()).hexdigest()[:8]
        self.limiter = _task_limiter(f"{ctx.host}-{where}", ctx.options.get("limits", "auto"),
                                     ctx.options.get("cpu", "weight"), self.name)
        log.debug("%s executor: containment %s", self.name, self.limiter.detail)
        self.supervisor = ProcessSupervisor(self.name, self.limiter, pids_max)
        self.rotator = LogRotator(max_bytes=max_bytes, backups=backups)

    def _record_path(self, ref: ContainerRef) -> Path:
        return self.state_dir / ref.task_id / f"{ref.container}.json"

    def log_paths(self, ref: ContainerRef) -> tuple[Path, Path]:
        """The stdout and stderr log files of a container."""
        base = self.log_dir / ref.task_id
        return base / f"{ref.container}.out.log", base / f"{ref.container}.err.log"

    def notify_exits(self, callback: ExitCallback) -> bool:
        """Exits of supervised processes are reported at once by the reaper thread."""
        self.supervisor.on_exit = callback
        return True

    def containment(self) -> str:
        """The mechanism that contains this executor's containers (``cgroup1`` …)."""
        return self.supervisor.mechanism()

    def memory_usage(self) -> dict[str, int]:
        """Bytes in use per task id, from the containers' cgroups."""
        return self.supervisor.memory_usage()

    def close(self) -> None:
        """Stop the reaper and the rotator; processes keep running for the next agent (in
        their cgroups; the host's parent cgroups go only when no task is left in them)."""
        self.supervisor.close()
        self.rotator.close()
        self.limiter.close()
