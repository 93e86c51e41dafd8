"""The ``bash`` executor (as in Sked): shell commands to start and stop a task.

Blob (:class:`skedlib.models.BashExecutor`)::

    {"start": "./server --port $PROVIDED_PORT",   # required
     "stop": "./server --shutdown",               # optional
     "env": ["MODE=prod"],                        # K=V strings
     "artifact": "https://example.com/server",   # http(s):// or file:// (optional)
     "download_dir": "/opt/app",                  # where the artifact goes (optional)
     "ports": [8125]}                             # host ports reserved (optional)

Every command runs with ``bash -c`` (``sh -c`` where bash is missing) in the container's
work directory ``<state_dir>/<task_id>/<container>/``, with the agent's environment plus
``env``, ``PROVIDED_PORT``, ``SKED_TASK_ID``, ``SKED_HOST``, ``SKED_CONTAINER``,
``SKED_WORKDIR`` and, when there is one, ``SKED_ARTIFACT`` (the downloaded file's path).

Starting:

1. the artifact is downloaded (into ``download_dir``, default the work directory) and
   made executable; a URL that cannot work (bad scheme, missing file, HTTP 404) rejects
   the task, a network failure is a failed attempt;
2. the container's ``setup`` commands run in order; one that fails is a failed attempt;
3. ``start`` runs in its own process group. If it is still running after the detach
   window (executor option ``detach_window``, default 1 s) it is the task's process,
   supervised like the ``process`` executor's: its exit is the task's exit. If it exits
   with 0 within the window the task runs **detached** (``start`` launched a daemon):
   status ``detached``, liveness from the task's checks. A non-zero exit within the
   window is a failed attempt (127, "command not found", rejects the task).

The host policy (:class:`~skedlib.executors.policy.HostPolicy`) is asked first, at
admission and again at start: ``start``, ``stop`` and each ``setup`` command must match
its ``commands`` patterns as a whole, and every command runs as its ``run_as`` user, or
as the blob's ``user`` when the policy lists it in ``users``. Such a task's work
directory is its own (0700); the agent's directories above it let it pass (0711) but
not list; the artifact is downloaded by the agent into the work directory and handed to
the user (``download_dir`` elsewhere is refused, as the agent would write there as
itself); log files stay the agent's.

``start`` runs in a cgroup of its own, held to the container's memory, CPU and the host's
pids limit (see "Containment" in :mod:`skedlib.executors.supervision`); a daemon it
launches stays in that cgroup, so a detached task is contained and stopped whole too.
The ``setup`` commands run before it, uncontained (they are bounded by
``setup_timeout``).

Stopping runs ``stop`` (if any) within the grace period, then SIGTERM to what is left of
the process group, the rest of the grace period, and SIGKILL; then the container's
``teardown`` commands, in order (each within ``setup_timeout``; one that fails is logged
and the next still runs). ``start`` and ``stop`` may be lists (Sked's older shape): their
commands run in order, stopping at the first that fails. The blob's ``ports`` are host
ports the task reserves: schedulers keep two tasks reserving one port apart, and the
agent publishes them with its host's ports while the container lives. What stop needs (mode,
process group, stop command, environment additions, work directory) is recorded in
``<state_dir>/<task_id>/<container>.json`` at start, so a restarted agent can stop it.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import msgspec

from skedlib._files import open_append, private_dirs
from skedlib.executors.base import (
    ContainerRef,
    ContainerStatus,
    ExecutorContext,
    TaskRejected,
    convert_blob,
    substitute_port,
)
from skedlib.executors.policy import Identity
from skedlib.executors.supervision import (
    SupervisedExecutor,
    describe_exit,
    kill_group_members,
    log_tail,
    option,
    reachable_by,
    read_record,
    signal_group,
    user_popen_args,
    write_record,
)
from skedlib.models import BashExecutor, Container, Resources, Task

__all__ = ["BashRunner"]

log = logging.getLogger(__name__)

#: exit status of a shell whose command was not found
_NOT_FOUND = 127


def _output(out: Path, err: Path) -> str:
    """``": <the end of stderr, else of stdout>"``, or nothing when both are empty."""
    text = log_tail(err) or log_tail(out)
    return f": {text}" if text else ""


class _Record(msgspec.Struct, kw_only=True):
    """What a (restarted) agent needs to stop one container."""

    mode: str
    """``foreground`` (supervised) or ``detached``."""
    pgid: int
    pid: int = 0
    create_time: float = 0.0
    started_at: float = 0.0
    stop: str = ""
    env: dict[str, str] = msgspec.field(default_factory=dict)
    """Additions to the agent's environment (never the agent's own variables)."""
    cwd: str = ""
    user: str = ""
    """``UID:GID`` the commands run as (empty: the agent's user)."""
    teardown: list[str] = msgspec.field(default_factory=list)
    """The container's ``teardown`` commands, run in order once it has stopped."""
    ports: list[int] = msgspec.field(default_factory=list)
    """Host ports the blob reserves (its ``ports``), held while the container lives."""
    memory: int = 0
    cpu_units: int = 0
    """The limits its cgroup holds it to (``TaskDefinition.container_limits``)."""


class BashRunner(SupervisedExecutor):
    """The ``bash`` executor (see the module docstring)."""

    name = "bash"

    def __init__(self, ctx: ExecutorContext) -> None:
        self.shell = shutil.which("bash") or "/bin/sh"
        self.detach_window = option(ctx.options, "detach_window", 1.0, self.name)
        self.setup_timeout = option(ctx.options, "setup_timeout", 300.0, self.name)
        self.download_timeout = option(ctx.options, "download_timeout", 60.0, self.name)
        super().__init__(ctx)
        self._records: dict[ContainerRef, _Record] = {}
        self._lock = threading.Lock()
        self._load_records()

    # -- files ------------------------------------------------------------------------
    def workdir(self, ref: ContainerRef) -> Path:
        """The directory the container's commands run in."""
        return self.state_dir / ref.task_id / ref.container

    def _save(self, ref: ContainerRef, record: _Record) -> None:
        with self._lock:
            self._records[ref] = record
        path = self._record_path(ref)
        write_record(path, msgspec.to_builtins(record))
        path.chmod(0o600)  # the environment may hold secrets
        if record.user:  # writing the record narrowed the task's directory to 0700
            reachable_by(self.workdir(ref), self.state_dir)

    def _drop(self, ref: ContainerRef) -> None:
        with self._lock:
            self._records.pop(ref, None)
        self._record_path(ref).unlink(missing_ok=True)

    def _load_records(self) -> None:
        for path in sorted(self.state_dir.glob("*/*.json")):
            ref = ContainerRef(path.parent.name, path.stem)
            data = read_record(path)
            try:
                record = msgspec.convert(data, _Record)
            except msgspec.ValidationError:
                path.unlink(missing_ok=True)
                continue
            limits = Resources(memory=record.memory, cpu_units=record.cpu_units)
            if record.mode == "foreground":
                proc = self.supervisor.adopt(ref, record.pid, record.pgid,
                                             record.create_time, record.started_at, limits)
                if proc is None:
                    path.unlink(missing_ok=True)
                    self.supervisor.release(ref)
                    continue
            else:  # detached: what start left running is in the cgroup
                self.supervisor.take_over(ref, limits)
            self._records[ref] = record
            self.rotator.add(*self.log_paths(ref))

    # -- starting ---------------------------------------------------------------------
    def admit(self, task: Task, container: Container) -> None:
        """The blob decodes, and the host policy allows its commands and its user."""
        self._checked(container)

    def _checked(self, container: Container) -> tuple[BashExecutor, Identity | None]:
        """The blob and who runs it, once the host policy allows its commands (start,
        stop, setup, each matched as written) and its user."""
        config = convert_blob(container, BashExecutor)
        where = f"container {container.name}"
        if not config.start_command.strip():
            raise TaskRejected(f"{where}: bash executor: field start is empty")
        policy = self.ctx.policy
        try:
            policy.check_shell(config.start_command, "start command")
            if config.stop_command:
                policy.check_shell(config.stop_command, "stop command")
            for i, command in enumerate(container.setup or []):
                policy.check_shell(command, f"setup command {i + 1}")
            for i, command in enumerate(container.teardown or []):
                policy.check_shell(command, f"teardown command {i + 1}")
            identity = policy.identity(config.user)
            inside = not os.path.isabs(config.download_dir) and ".." not in Path(
                config.download_dir).parts
            if identity is not None and not inside:
                # the agent downloads: elsewhere it would write as its own user
                raise policy.refuse("run_as", f"download_dir {config.download_dir!r} must "
                                    "be inside the work directory (a relative path) when "
                                    "tasks run as another user")
        except TaskRejected as exc:
            raise exc.within(where) from None
        return config, identity

    def start(self, task: Task, container: Container, env: Mapping[str, str]) -> None:
        """Download, set up and start (see the module docstring)."""
        config, identity = self._checked(container)
        ref = ContainerRef(task.id, container.name)
        where = f"container {container.name}"
        port = env.get("PROVIDED_PORT", "")
        added: dict[str, str] = {}
        for i, item in enumerate(config.env):
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise TaskRejected(f"{where}: bash executor: field env[{i}]: {item!r} is "
                                   "not KEY=VALUE")
            added[key] = substitute_port(value, port)
        added.update(env)
        added["SKED_CONTAINER"] = container.name
        workdir = self.workdir(ref)
        private_dirs(workdir)
        if identity is not None:
            # the task's own directory, private to it; the agent's directories above it
            # only let it pass (0711), so its files are reachable by absolute path
            os.chown(workdir, identity.uid, identity.gid)
            reachable_by(workdir, self.state_dir)
        added["SKED_WORKDIR"] = str(workdir)
        self._stop_leftover(ref)
        out, err = self.log_paths(ref)
        private_dirs(out.parent)
        if config.artifact:
            dest = Path(substitute_port(config.download_dir, port) or workdir)
            if not dest.is_absolute():
                dest = workdir / dest
            artifact = self._download(where, config.artifact, dest)
            if identity is not None:
                for path in {artifact, artifact.parent} - {workdir}:
                    os.chown(path, identity.uid, identity.gid)
            added["SKED_ARTIFACT"] = str(artifact)
        full_env = {**os.environ, **added}
        for i, command in enumerate(container.setup or []):
            self._setup(where, i, len(container.setup or []), command, full_env, workdir,
                        out, err, identity)
        start = substitute_port(config.start_command, port)
        limits = task.task_definition.container_limits(container)
        proc = self.supervisor.spawn(ref, [self.shell, "-c", start], full_env, str(workdir),
                                     out, err, report_exit=False, identity=identity,
                                     limits=limits)
        self.rotator.add(out, err)
        stop = substitute_port(config.stop_command, port)
        record = _Record(mode="foreground", pgid=proc.pgid, pid=proc.pid,
                         create_time=proc.create_time, started_at=proc.started_at,
                         stop=stop, env=added, cwd=str(workdir),
                         teardown=[substitute_port(c, port) for c in container.teardown or []],
                         ports=list(config.ports),
                         user=f"{identity.uid}:{identity.gid}" if identity else "",
                         memory=limits.memory, cpu_units=limits.cpu_units)
        if proc.exited.wait(self.detach_window):
            self._started_and_exited(where, ref, record, proc.exit_code, err)
            return
        self._save(ref, record)
        proc.report_exit = True
        if proc.exited.is_set():  # exited just as the window closed: not a clean detach
            self._drop(ref)
            self.supervisor.forget(ref)
            self.supervisor.release(ref)
            raise RuntimeError(f"{where}: start {describe_exit(proc.exit_code)} after "
                               f"{time.time() - proc.started_at:.1f}s{_output(out, err)}")

    def _started_and_exited(self, where: str, ref: ContainerRef, record: _Record,
                            code: int | None, err: Path) -> None:
        self.supervisor.forget(ref)
        if code == 0:
            record.mode = "detached"
            record.pid = 0
            self._save(ref, record)
            log.debug("%s of %s: start returned at once; running detached", where,
                      ref.task_id)
            return
        kill_group_members(record.pgid, 1.0)
        self.supervisor.release(ref)
        out = self.log_paths(ref)[0]
        if code == _NOT_FOUND:
            raise TaskRejected(f"{where}: start command not found{_output(out, err)}")
        raise RuntimeError(f"{where}: start {describe_exit(code)} at once{_output(out, err)}")

    def _setup(self, where: str, index: int, count: int, command: str,
               env: Mapping[str, str], cwd: Path, out: Path, err: Path,
               identity: Identity | None) -> None:
        label = f"{where}: setup command {index + 1} of {count} ({command!r})"
        user_args, full_env = user_popen_args(identity, env)
        with open_append(out) as o, open_append(err) as e:
            proc = subprocess.Popen([self.shell, "-c", command], env=full_env, cwd=cwd,
                                    stdin=subprocess.DEVNULL, stdout=o, stderr=e,
                                    start_new_session=True, **user_args)
            try:
                code = proc.wait(self.setup_timeout)
            except subprocess.TimeoutExpired:
                signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
                raise RuntimeError(f"{label} did not finish within "
                                   f"{self.setup_timeout:g}s") from None
        kill_group_members(proc.pid, 1.0)
        if code != 0:
            raise RuntimeError(f"{label} {describe_exit(code)}{_output(out, err)}")

    def _download(self, where: str, url: str, dest_dir: Path) -> Path:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https", "file"):
            raise TaskRejected(f"{where}: artifact {url!r}: only http://, https:// and "
                               "file:// URLs can be downloaded")
        name = os.path.basename(unquote(parts.path)) or "artifact"
        try:
            dest_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TaskRejected(f"{where}: download_dir {str(dest_dir)!r}: {exc.strerror}") \
                from None
        dest = dest_dir / name
        fd, tmp_name = tempfile.mkstemp(dir=dest_dir, prefix=f".{name}.")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                if parts.scheme == "file":
                    source = Path(unquote(parts.path))
                    if not source.is_file():
                        raise TaskRejected(f"{where}: artifact {url!r}: no such file")
                    with source.open("rb") as src:
                        shutil.copyfileobj(src, f)
                else:
                    self._fetch(where, url, f)
            tmp.chmod(0o755)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    def _fetch(self, where: str, url: str, f: Any) -> None:
        try:
            with urllib.request.urlopen(url, timeout=self.download_timeout) as resp:
                shutil.copyfileobj(resp, f)
        except urllib.error.HTTPError as exc:
            message = f"{where}: artifact {url!r}: HTTP {exc.code} {exc.reason}"
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                raise TaskRejected(message) from None
            raise RuntimeError(message) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RuntimeError(f"{where}: artifact {url!r}: download failed: {reason}") \
                from None

    def _stop_leftover(self, ref: ContainerRef) -> None:
        with self._lock:
            leftover = ref in self._records
        if leftover or self.supervisor.get(ref) is not None:
            self.stop(ref, 5.0)

    # -- stopping and observing -------------------------------------------------------
    def stop(self, ref: ContainerRef, grace: float) -> None:
        """Run ``stop``, then end what is left of the process group. Idempotent."""
        with self._lock:
            record = self._records.get(ref)
        deadline = time.monotonic() + grace
        proc = self.supervisor.get(ref)
        if proc is not None:
            proc.stopping = True
        if record is not None and record.stop:
            self._run_stop(ref, record, grace)
        left = max(0.0, deadline - time.monotonic())
        if proc is not None:
            self.supervisor.stop(ref, left)
            self.supervisor.forget(ref)
        elif record is not None:
            kill_group_members(record.pgid, left)
        self.supervisor.release(ref)  # and whatever left the group
        if record is not None:
            for i, command in enumerate(record.teardown):
                self._run_stop(ref, record, self.setup_timeout, command,
                               f"teardown command {i + 1} of {len(record.teardown)}")
        self._drop(ref)
        self.rotator.discard(*self.log_paths(ref))

    def _run_stop(self, ref: ContainerRef, record: _Record, grace: float,
                  command: str = "", what: str = "stop command") -> None:
        """Run ``command`` (default: the stop command) as the container's commands run,
        within ``grace`` seconds; a failure is logged (stopping goes on)."""
        command = command or record.stop
        out, err = self.log_paths(ref)
        private_dirs(out.parent)
        identity = Identity.resolve(record.user) if record.user else None
        user_args, env = user_popen_args(identity, {**os.environ, **record.env})
        cwd = record.cwd if record.cwd and os.path.isdir(record.cwd) else None
        with open_append(out) as o, open_append(err) as e:
            proc = subprocess.Popen([self.shell, "-c", command], env=env, cwd=cwd,
                                    stdin=subprocess.DEVNULL, stdout=o, stderr=e,
                                    start_new_session=True, **user_args)
            try:
                code = proc.wait(max(grace, 0.1))
            except subprocess.TimeoutExpired:
                signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
                log.warning("%s/%s: %s did not finish within %gs", ref.task_id,
                            ref.container, what, grace)
                return
        if code != 0:
            log.warning("%s/%s: %s %s: %s", ref.task_id, ref.container, what,
                        describe_exit(code), log_tail(err))

    def status(self, ref: ContainerRef) -> ContainerStatus:
        """Foreground: the process's state; detached: ``detached``; else ``missing``."""
        with self._lock:
            record = self._records.get(ref)
        proc = self.supervisor.get(ref)
        if proc is not None:
            return proc.status()
        if record is not None and record.mode == "detached":
            return ContainerStatus(state="detached", started_at=record.started_at,
                                   message="start returned at once; liveness from checks")
        return ContainerStatus(state="missing")

    def reserved_ports(self) -> list[int]:
        """The ``ports`` of the blobs of the containers this executor runs."""
        with self._lock:
            return sorted({p for rec in self._records.values() for p in rec.ports})

    def running(self) -> list[ContainerRef]:
        """Live foreground processes and detached containers."""
        with self._lock:
            detached = [r for r, rec in self._records.items() if rec.mode == "detached"]
        return sorted(set(self.supervisor.refs()) | set(detached))

    def cleanup(self, ref: ContainerRef) -> None:
        """Forget an exited container (its work directory and logs are kept)."""
        proc = self.supervisor.get(ref)
        if proc is None or proc.exited.is_set():
            self.supervisor.forget(ref)
            self.supervisor.release(ref)
            self._drop(ref)
