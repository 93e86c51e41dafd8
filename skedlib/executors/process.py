"""The ``process`` executor: one supervised long-running command per container.

Blob (:class:`skedlib.models.ProcessExecutor`)::

    {"argv": ["python3", "-m", "http.server", "$PROVIDED_PORT"],
     "env": {"LOG_LEVEL": "info"}, "cwd": "/srv/app"}

- The command runs in its own session and process group (``start_new_session``), so the
  agent can signal the whole group and the task outlives an agent restart.
- stdout and stderr are appended to ``<log_dir>/<task_id>/<container>.out.log`` and
  ``.err.log``; a file larger than ``log_max_bytes`` (executor option, default 10 MiB)
  is rotated by copy-and-truncate into ``.1`` … ``.<log_backups>`` (default 3). The
  command keeps writing to the same file, which is why the rotation copies.
- Exit is seen at once: a reaper thread waits on a ``pidfd`` of every process (Linux
  5.3+; elsewhere one waiting thread per process) and tells the agent (see
  :mod:`skedlib.executors.supervision`, shared with the ``bash`` executor).
- The pid, process group and process start time (``psutil`` ``create_time``) are recorded
  in ``<state_dir>/<task_id>/<container>.json``. After an agent restart a recorded process
  is adopted only if a process with that pid still exists *and* started at that time, so
  a recycled pid is never mistaken for the task.
- Stopping sends SIGTERM to the process group, waits the grace period, then SIGKILL.
- The process runs in a cgroup of its own, held to the container's memory, CPU and the
  host's pids limit (see "Containment" in :mod:`skedlib.executors.supervision`); the
  limits are recorded too, so a restarted agent takes the cgroup over.

The host policy (:class:`~skedlib.executors.policy.HostPolicy`) is asked first, at
admission and again at start: the command must match its ``commands`` patterns, and the
process runs as its ``run_as`` user, or as the blob's ``user`` when the policy lists it in
``users``. The log files are opened by the agent and handed over, so they stay the
agent's (0640 in 0700 directories) whoever the task runs as.

``$PROVIDED_PORT`` (and ``${PROVIDED_PORT}``) is substituted in ``argv``, ``env`` and
``cwd``; the environment is the agent's, plus the blob's ``env``, plus ``PROVIDED_PORT``,
``SKED_TASK_ID``, ``SKED_HOST`` and ``SKED_CONTAINER``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from skedlib.executors.base import (
    PROVIDED_PORT_VAR,
    ContainerRef,
    ContainerStatus,
    ExecutorContext,
    TaskRejected,
    convert_blob,
    substitute_port,
)
from skedlib.executors.supervision import (
    SupervisedExecutor,
    read_record,
    write_record,
)
from skedlib.models import Container, ProcessExecutor, Resources, Task

__all__ = ["ProcessRunner", "resolve_command"]

log = logging.getLogger(__name__)


# -- the executor ---------------------------------------------------------------------------
def resolve_command(argv0: str, env: Mapping[str, str], cwd: str) -> str:
    """The path of ``argv0`` as ``exec`` would find it; raises :class:`TaskRejected`."""
    if "/" in argv0:
        path = Path(cwd or ".", argv0) if not os.path.isabs(argv0) else Path(argv0)
        if not path.exists():
            raise TaskRejected(f"command {argv0!r} does not exist")
        if path.is_dir() or not os.access(path, os.X_OK):
            raise TaskRejected(f"command {argv0!r} is not an executable file")
        return str(path)
    found = shutil.which(argv0, path=env.get("PATH", os.defpath))
    if found is None:
        raise TaskRejected(f"command {argv0!r} not found on PATH "
                           f"({env.get('PATH', os.defpath)})")
    return found


class ProcessRunner(SupervisedExecutor):
    """The ``process`` executor (see the module docstring)."""

    name = "process"

    def __init__(self, ctx: ExecutorContext) -> None:
        super().__init__(ctx)
        self._adopt_recorded()

    # -- adoption ---------------------------------------------------------------------
    def _adopt_recorded(self) -> None:
        for path in sorted(self.state_dir.glob("*/*.json")):
            ref = ContainerRef(path.parent.name, path.stem)
            data = read_record(path)
            proc = None
            if data is not None:
                try:
                    limits = (Resources(memory=int(data["memory"]),
                                        cpu_units=int(data.get("cpu_units", 0)))
                              if "memory" in data else None)
                    proc = self.supervisor.adopt(ref, int(data["pid"]), int(data["pgid"]),
                                                 float(data["create_time"]),
                                                 float(data.get("started_at", 0.0)),
                                                 limits)
                except (KeyError, TypeError, ValueError):
                    proc = None
            if proc is None:
                log.debug("%s: recorded process is gone", path)
                path.unlink(missing_ok=True)
                self.supervisor.release(ref)
                continue
            self.rotator.add(*self.log_paths(ref))

    # -- the interface ----------------------------------------------------------------
    def admit(self, task: Task, container: Container) -> None:
        """The blob decodes, and the host policy allows its command and user (with the
        task's port, or a stand-in when it is yet to be provided)."""
        port = task.port or task.task_definition.port or (
            1 if task.task_definition.provide_port else 0)
        self._checked(container, {"PROVIDED_PORT": str(port)} if port else {})

    def _checked(self, container: Container, env: Mapping[str, str]
                 ) -> tuple[ProcessExecutor, list[str], dict[str, str], str]:
        """Decode and check the blob against this host and its policy: the blob, the argv
        (substituted), the full environment and the working directory."""
        config = convert_blob(container, ProcessExecutor)
        if not config.argv:
            raise TaskRejected(f"container {container.name}: process executor: field argv "
                               "is empty")
        full_env = self._environment(container, config, env)
        argv = [self._substitute(a, env, container, "argv") for a in config.argv]
        cwd = self._substitute(config.cwd, env, container, "cwd")
        try:
            self.ctx.policy.identity(config.user)
            resolved = resolve_command(argv[0], full_env, cwd)
            self.ctx.policy.check_argv(argv, resolved)
        except TaskRejected as exc:
            raise exc.within(f"container {container.name}") from None
        return config, argv, full_env, cwd

    def start(self, task: Task, container: Container, env: Mapping[str, str]) -> None:
        """Start ``argv`` supervised, as the policy's user; rejects a bad blob, a command
        that cannot run or one the host policy refuses."""
        config, argv, full_env, cwd = self._checked(container, env)
        ref = ContainerRef(task.id, container.name)
        if cwd and not os.path.isdir(cwd):
            raise TaskRejected(f"container {container.name}: cwd {cwd!r} is not a directory")
        identity = self.ctx.policy.identity(config.user)
        if identity is not None and not cwd:
            # not the agent's working directory, which the user may not even enter
            cwd = identity.home if os.path.isdir(identity.home) else "/"
        self._stop_leftover(ref)
        out, err = self.log_paths(ref)
        limits = task.task_definition.container_limits(container)
        try:
            proc = self.supervisor.spawn(ref, argv, full_env, cwd, out, err,
                                         identity=identity, limits=limits)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EACCES, errno.ENOEXEC, errno.ENOTDIR):
                raise TaskRejected(f"container {container.name}: cannot execute "
                                   f"{argv[0]!r}: {exc.strerror}") from None
            raise
        self.rotator.add(out, err)
        write_record(self._record_path(ref), {
            "pid": proc.pid, "pgid": proc.pgid, "create_time": proc.create_time,
            "started_at": proc.started_at, "argv": argv,
            "memory": limits.memory, "cpu_units": limits.cpu_units})

    def _environment(self, container: Container, config: ProcessExecutor,
                     env: Mapping[str, str]) -> dict[str, str]:
        full = dict(os.environ)
        for key, value in config.env.items():
            full[key] = self._substitute(value, env, container, f"env.{key}")
        full.update(env)
        full["SKED_CONTAINER"] = container.name
        return full

    @staticmethod
    def _substitute(text: str, env: Mapping[str, str], container: Container,
                    where: str) -> str:
        port = env.get("PROVIDED_PORT", "")
        if not port and PROVIDED_PORT_VAR.search(text):
            raise TaskRejected(f"container {container.name}: field {where} uses "
                               "$PROVIDED_PORT but the task has no port (set provide_port "
                               "or port in the task definition)")
        return substitute_port(text, port)

    def _stop_leftover(self, ref: ContainerRef) -> None:
        proc = self.supervisor.get(ref)
        if proc is not None:
            if not proc.exited.is_set():
                log.warning("%s/%s was still running (pid %d): stopping it before starting "
                            "again", ref.task_id, ref.container, proc.pid)
                self.supervisor.stop(ref, 5.0)
            self.supervisor.forget(ref)

    def stop(self, ref: ContainerRef, grace: float) -> None:
        """SIGTERM the process group, wait ``grace``, SIGKILL; forget the record and
        remove the cgroup."""
        self.supervisor.stop(ref, grace)
        self.supervisor.forget(ref)
        self.supervisor.release(ref)
        self._record_path(ref).unlink(missing_ok=True)
        self.rotator.discard(*self.log_paths(ref))

    def status(self, ref: ContainerRef) -> ContainerStatus:
        """``running``/``exited`` with pid, exit code and resident memory; else ``missing``."""
        proc = self.supervisor.get(ref)
        if proc is None:
            return ContainerStatus(state="missing")
        return proc.status()

    def running(self) -> list[ContainerRef]:
        """Every container whose process is alive."""
        return self.supervisor.refs()

    def cleanup(self, ref: ContainerRef) -> None:
        """Forget an exited container's record and remove its cgroup (its logs are kept)."""
        self.supervisor.forget(ref)
        if self.supervisor.get(ref) is None:
            self.supervisor.release(ref)
            self._record_path(ref).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self._record_path(ref).parent.rmdir()
