"""Schedulers as executables, in any language: the protocol and the :class:`Scheduler`
that speaks it.

``skedlib-scheduler --exec-schedulers DIR`` registers each executable ``DIR/NAME`` as the
scheduler ``NAME`` (:class:`ExecSchedulers`, a plugin registered like any other). For a
run, :class:`ExecScheduler` writes one :class:`ExecRequest` as JSON to the program's
stdin and reads one :class:`ExecResponse` from its stdout; the response becomes a
:class:`~skedlib.scheduling.Plan`, which the daemon validates, commits under the
service's lock and reports exactly as a plugin's. These Structs are the one definition of
both documents: the encoder, the decoder and ``sked schema exec_request`` /
``exec_response`` all use them.

The program runs without a shell (``argv = [path]``), in the program's directory, with a
minimal environment, in a process group of its own that is killed when it runs out of
time (and after it exits, so nothing it started lives on); its stdout is capped and only
the tail of its stderr is kept. A program is run only when it and its directory are
owned by root or by the daemon's user and writable by nobody else, checked before every
run. Anything that goes wrong — refused, timed out, a non-zero exit (with the last line of
its stderr), output that is not the document — is an :class:`ExecSchedulerError` with a
one-line reason naming the program and the field, which the daemon puts in the service's
status.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import select
import signal
import stat
import subprocess
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import msgspec

from skedlib.errors import SkedError, ValidationError, one_line
from skedlib.executors.supervision import describe_exit, signal_group
from skedlib.hookspecs import hookimpl
from skedlib.keys import validate_name
from skedlib.models import Cluster, Resources, Service, Task, TaskDefinition, TaskId
from skedlib.scheduling.plan import Plan
from skedlib.scheduling.scheduler import (
    MAX_REPORTED,
    Scheduler,
    SchedulingResult,
    without_definition,
)
from skedlib.scheduling.snapshot import HostState, Snapshot, demand_of

__all__ = [
    "DEFAULT_MAX_OUTPUT",
    "DEFAULT_TIMEOUT",
    "PROTOCOL_VERSION",
    "ClusterRef",
    "ExecHost",
    "ExecPlacement",
    "ExecRequest",
    "ExecResponse",
    "ExecRun",
    "ExecScheduler",
    "ExecSchedulerError",
    "ExecSchedulers",
    "TaskDefinitionRef",
    "check_private",
]

log = logging.getLogger("skedlib.scheduler")

PROTOCOL_VERSION = 1
"""The version of the request and response documents (``protocol`` in the request)."""

DEFAULT_TIMEOUT = 10.0
"""Seconds a program may run for one plan before it is killed."""

DEFAULT_MAX_OUTPUT = 64 << 20
"""Bytes of stdout read at most; a program that writes more is killed."""

STDERR_TAIL = 8192
"""Bytes of stderr kept (the end): its last line goes into the reason of a failure."""

ENVIRONMENT_PATH = "/usr/local/bin:/usr/bin:/bin"
"""``PATH`` of a program (its whole environment is this, ``LANG`` and ``SKED_SCHEDULER``)."""


# -- the documents ---------------------------------------------------------------------------
class ExecHost(msgspec.Struct, kw_only=True):
    """One live host the service's cluster may use, as the planner sees it."""

    name: str
    total: Resources
    allocated: Resources
    """What the issued tasks on it reserve."""
    free: Resources
    """``total - allocated``."""
    ports: list[int]
    """Host ports in use (the agent's and its tasks' fixed ports)."""
    attributes: dict[str, str]
    draining: bool
    """A draining host takes no new tasks (a plan that places one there is refused)."""
    tasks: list[str]
    """Ids of the tasks issued to it, of every service."""

    @classmethod
    def of(cls, host: HostState) -> ExecHost:
        """The document of one host of a snapshot."""
        return cls(name=host.name, total=host.total, allocated=host.allocated,
                   free=host.free, ports=sorted(host.ports), attributes=dict(host.attributes),
                   draining=host.draining, tasks=sorted(host.tasks))


class ExecRequest(msgspec.Struct, kw_only=True):
    """What an exec scheduler reads on stdin: one service of one cluster to plan."""

    protocol: int = PROTOCOL_VERSION
    cluster: Cluster
    service: Service
    task_definition: TaskDefinition
    """The definition of the service's current version (``service.task_version``); a
    service whose definition does not exist is reported without running the program."""
    demand: Resources
    """What one task of ``task_definition`` reserves on its host (its containers'
    memory, CPU units and disk summed)."""
    hosts: list[ExecHost]
    tasks: list[Task]
    """The service's issued tasks (every version), by instance. A task's id is
    ``<cluster.name>-<service>-<task_definition.version>-<instance>``."""
    healthy: list[str]
    """Ids of those tasks that are healthy on their current, live host."""


class TaskDefinitionRef(msgspec.Struct, kw_only=True):
    """A task definition named by name and version (other fields are ignored)."""

    name: str
    version: int


class ClusterRef(msgspec.Struct, kw_only=True):
    """A cluster named by name (other fields are ignored)."""

    name: str


class ExecPlacement(msgspec.Struct, kw_only=True):
    """Place instance ``instance`` of the service on ``host``.

    A whole task (the JSON of ``sked schema task``) has this shape too, and is read as
    one: its ``task_definition`` names the version, its ``cluster`` and ``service`` must
    be the request's, and its other fields are ignored — the daemon writes the task from
    the stored definition, keeping the hosts that rejected it before.
    """

    instance: int
    host: str
    version: int | None = None
    """The task definition version (default: the service's ``task_version``)."""
    task_definition: TaskDefinitionRef | None = None
    cluster: ClusterRef | str | None = None
    service: str | None = None


class ExecResponse(msgspec.Struct, kw_only=True):
    """What an exec scheduler writes on stdout."""

    place: list[ExecPlacement] = msgspec.field(default_factory=list)
    """Tasks to place (new ones, or existing ones moved; one already on that host, not
    rejected, of that version, is left as it is)."""
    stop: list[str] = msgspec.field(default_factory=list)
    """Ids of the service's tasks to stop (ids no longer issued are ignored)."""
    unschedulable: dict[str, str] = msgspec.field(default_factory=dict)
    """Task id → why it could not be placed: shown in the service's status."""
    retry_after: float | None = None
    """Plan again after this many seconds even if nothing changes."""


# -- running a program -----------------------------------------------------------------------
class ExecSchedulerError(SkedError):
    """An exec scheduler was refused, failed, or wrote something that is not a plan."""


def check_private(path: Path, what: str) -> os.stat_result:
    """Refuse ``path`` unless it is owned by root or by this process's user and writable
    by nobody else (its group and others may not write it); return its stat."""
    try:
        st = path.stat()
    except OSError as exc:
        raise ExecSchedulerError(f"{path}: {exc.strerror or exc}") from None
    me = os.geteuid()
    if st.st_uid not in (0, me):
        raise ExecSchedulerError(f"{path}: {what} is owned by uid {st.st_uid}, not by root "
                                 f"or the daemon's user (uid {me}): refused")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ExecSchedulerError(f"{path}: {what} is writable by its group or others "
                                 f"(mode {stat.S_IMODE(st.st_mode):o}): refused")
    return st


def _check_program(path: Path) -> None:
    check_private(path.parent, "the directory")
    st = check_private(path, "the program")
    if not stat.S_ISREG(st.st_mode):
        raise ExecSchedulerError(f"{path}: not a regular file: refused")
    if not os.access(path, os.X_OK):
        raise ExecSchedulerError(f"{path}: not executable by the daemon's user")


def _pump(src: IO[bytes], limit: int, keep_tail: bool, out: bytearray,
          overflow: threading.Event, pgid: int) -> None:
    """Read ``src`` to its end into ``out``: at most ``limit`` bytes (more kills the
    group), or with ``keep_tail`` only the last ``limit`` bytes."""
    read1 = getattr(src, "read1", src.read)
    while chunk := read1(65536):
        out += chunk
        if len(out) > limit:
            if keep_tail:
                del out[:-limit]
            else:
                overflow.set()
                signal_group(pgid, signal.SIGKILL)
                return


def _feed(dst: IO[bytes], data: bytes) -> None:
    try:
        dst.write(data)
    except OSError:  # the program exited (or closed stdin) without reading it all
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.close()


def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait until ``proc`` exits, without reaping it; False when ``timeout`` passed."""
    try:
        fd = os.pidfd_open(proc.pid)
    except OSError:  # no pidfd (an old kernel, a sandbox): wait and reap
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(max(0, int(timeout * 1000))))
    finally:
        os.close(fd)


def run_program(path: Path, data: bytes, *, timeout: float, max_output: int,
                env: Mapping[str, str]) -> bytes:
    """Run ``path`` with ``data`` on stdin; its stdout, or :class:`ExecSchedulerError`."""
    try:
        proc = subprocess.Popen([str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=dict(env), cwd=path.parent,
                                start_new_session=True, close_fds=True)
    except OSError as exc:
        why = exc.strerror or str(exc)
        if isinstance(exc, FileNotFoundError) and path.exists():
            why = "its interpreter (the #! line) was not found"
        raise ExecSchedulerError(f"{path}: cannot run it: {why}") from None
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    out, err, overflow = bytearray(), bytearray(), threading.Event()
    threads = [
        threading.Thread(target=_feed, args=(proc.stdin, data), daemon=True),
        threading.Thread(target=_pump, args=(proc.stdout, max_output, False, out, overflow,
                                             proc.pid), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, STDERR_TAIL, True, err, overflow,
                                             proc.pid), daemon=True),
    ]
    for t in threads:
        t.start()
    try:
        timed_out = not _wait_exit(proc, timeout)
    finally:
        # it and whatever it started go (the latter stop holding the pipes open); the
        # leader is not reaped yet, so its pid still names this group and no other
        signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
        for t in threads:
            t.join(5.0)
        for f in (proc.stdout, proc.stderr):
            f.close()
    if timed_out:
        raise ExecSchedulerError(f"{path}: timed out after {timeout:g}s: killed")
    if overflow.is_set():
        raise ExecSchedulerError(f"{path}: wrote more than {max_output} bytes: killed")
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        last = f": {one_line(lines[-1])[:500]}" if lines else ""
        raise ExecSchedulerError(f"{path}: {describe_exit(proc.returncode)}{last}")
    return bytes(out)


# -- the scheduler ---------------------------------------------------------------------------
_request_encoder = msgspec.json.Encoder()
_response_decoder = msgspec.json.Decoder(ExecResponse)


class ExecScheduler(Scheduler):
    """The scheduler that runs the program at ``path`` for each plan."""

    def __init__(self, path: Path, *, name: str = "", timeout: float = DEFAULT_TIMEOUT,
                 max_output: int = DEFAULT_MAX_OUTPUT) -> None:
        self.path = path.absolute()
        self.name = name or path.name
        self.timeout = timeout
        self.max_output = max_output

    def request(self, snapshot: Snapshot, cluster: Cluster, service: Service,
                td: TaskDefinition) -> ExecRequest:
        """The document the program reads."""
        tasks = snapshot.service_tasks(cluster.name, service.name)
        return ExecRequest(
            cluster=cluster, service=service, task_definition=td, demand=demand_of(td),
            hosts=[ExecHost.of(h) for h in snapshot.live_hosts(cluster)], tasks=tasks,
            healthy=[t.id for t in tasks if snapshot.is_healthy(t.id)])

    def prepare(self, snapshot: Snapshot, cluster: Cluster, service: Service
                ) -> bytes | SchedulingResult:
        """The request to write to the program, or the result when there is nothing to
        ask it (the service's task definition does not exist). Raises
        :class:`ExecSchedulerError` when the program is refused."""
        version = service.task_version
        td = snapshot.task_definitions.get((service.task_name, version))
        if td is None:  # nothing the program could place; said as ServiceScheduler says it
            return SchedulingResult(unschedulable=without_definition(cluster, service))
        _check_program(self.path)
        return _request_encoder.encode(self.request(snapshot, cluster, service, td))

    def execute(self, request: bytes) -> ExecResponse:
        """Run the program on ``request`` (needs no snapshot: the daemon runs it without
        holding one) and decode what it wrote, or :class:`ExecSchedulerError`."""
        env = {"PATH": ENVIRONMENT_PATH, "LANG": "C.UTF-8", "SKED_SCHEDULER": self.name}
        output = run_program(self.path, request, timeout=self.timeout,
                             max_output=self.max_output, env=env)
        try:
            return _response_decoder.decode(output)
        except msgspec.DecodeError as exc:
            raise ExecSchedulerError(f"{self.path}: its output is not a plan: "
                                     f"{one_line(str(exc))}") from None

    def plan(self, snapshot: Snapshot, cluster: Cluster, service: Service) -> SchedulingResult:
        request = self.prepare(snapshot, cluster, service)
        if isinstance(request, SchedulingResult):
            return request
        return self.result(snapshot, cluster, service, self.execute(request))

    def result(self, snapshot: Snapshot, cluster: Cluster, service: Service,
               response: ExecResponse) -> SchedulingResult:
        """The :class:`SchedulingResult` a response stands for, or
        :class:`ExecSchedulerError` naming the field at fault."""
        plan = Plan()
        for i, p in enumerate(response.place):
            task = self._task(snapshot, cluster, service, p, f"$.place[{i}]")
            old = snapshot.tasks.get(task.id)
            if old is not None and old.host == task.host and not old.rejected \
                    and old.task_definition == task.task_definition:
                continue  # already there
            plan.place.append(task)
        for i, task_id in enumerate(response.stop):
            self._own(cluster, service, task_id, f"$.stop[{i}]")
            if task_id in snapshot.tasks:
                plan.stop.append(task_id)
        result = SchedulingResult(plan=plan, unschedulable={
            task_id: one_line(reason)[:500] for task_id, reason in
            list(response.unschedulable.items())[:MAX_REPORTED]})
        if response.retry_after is not None:
            result.wake_in(response.retry_after)
        return result

    def _fail(self, where: str, message: str) -> ExecSchedulerError:
        return ExecSchedulerError(f"{self.path}: its output is not a plan: {message} - "
                                  f"at `{where}`")

    def _own(self, cluster: Cluster, service: Service, task_id: str, where: str) -> None:
        try:
            parsed = TaskId.parse(task_id)
        except ValueError:
            raise self._fail(where, f"{task_id!r} is not a task id") from None
        if (parsed.cluster, parsed.service) != (cluster.name, service.name):
            raise self._fail(where, f"{task_id!r} is not a task of service "
                                    f"{service.name!r} in cluster {cluster.name!r}")

    def _task(self, snapshot: Snapshot, cluster: Cluster, service: Service,
              p: ExecPlacement, where: str) -> Task:
        named = p.cluster.name if isinstance(p.cluster, ClusterRef) else p.cluster
        if named not in (None, cluster.name):
            raise self._fail(f"{where}.cluster", f"{named!r} is not cluster {cluster.name!r}")
        if p.service not in (None, service.name):
            raise self._fail(f"{where}.service", f"{p.service!r} is not service "
                                                 f"{service.name!r}")
        version = p.version
        if p.task_definition is not None:
            ref = p.task_definition
            if ref.name != service.task_name:
                raise self._fail(f"{where}.task_definition.name",
                                 f"{ref.name!r} is not the service's task "
                                 f"{service.task_name!r}")
            if version not in (None, ref.version):
                raise self._fail(f"{where}.version", f"{version} differs from "
                                                     f"task_definition.version {ref.version}")
            version = ref.version
        if version is None:
            version = service.task_version
        td = snapshot.task_definitions.get((service.task_name, version))
        if td is None:
            raise self._fail(f"{where}.version", f"task definition {service.task_name!r} "
                                                 f"version {version} does not exist")
        if p.instance < 0:
            raise self._fail(f"{where}.instance", f"{p.instance} is negative")
        if not p.host:
            raise self._fail(f"{where}.host", "empty")
        task = Task(cluster=cluster, task_definition=td, service=service.name,
                    instance=p.instance, port=td.port, host=p.host, scheduled=True)
        old = snapshot.tasks.get(task.id)
        if old is not None:  # keep what the agents said about it
            task.rejected_hosts = list(old.rejected_hosts)
            task.capacity_rejections = list(old.capacity_rejections)
        return task


class ExecRun:
    """One run of an :class:`ExecScheduler` in three steps, so that the program runs
    while nothing is held: :meth:`start` on the snapshot (builds the request),
    :meth:`execute` on nothing (runs the program), :meth:`plan` on the snapshot as it is
    then (turns the response into a plan). The daemon does this; :meth:`ExecScheduler.plan`
    does the same in one call."""

    def __init__(self, scheduler: ExecScheduler, cluster: Cluster, service: Service,
                 request: bytes | SchedulingResult | ExecSchedulerError) -> None:
        self.scheduler = scheduler
        self.cluster = cluster
        self.service = service
        self._outcome: bytes | SchedulingResult | ExecSchedulerError | ExecResponse = request

    @classmethod
    def start(cls, scheduler: ExecScheduler, snapshot: Snapshot, cluster: Cluster,
              service: Service) -> ExecRun:
        """Build the request from ``snapshot`` (a refusal is kept for :meth:`plan`)."""
        try:
            request = scheduler.prepare(snapshot, cluster, service)
        except ExecSchedulerError as exc:
            return cls(scheduler, cluster, service, exc)
        return cls(scheduler, cluster, service, request)

    def execute(self) -> None:
        """Run the program, if there is one to run (its failure is kept for :meth:`plan`)."""
        if isinstance(self._outcome, bytes):
            try:
                self._outcome = self.scheduler.execute(self._outcome)
            except ExecSchedulerError as exc:
                self._outcome = exc

    def stale(self, cluster: Cluster, service: Service) -> bool:
        """True when the cluster or the service changed since :meth:`start`: the
        response answers a question that is no longer asked."""
        return cluster != self.cluster or service != self.service

    def plan(self, snapshot: Snapshot) -> SchedulingResult:
        """The result, checked against ``snapshot``; raises the run's
        :class:`ExecSchedulerError`."""
        outcome = self._outcome
        if isinstance(outcome, ExecSchedulerError):
            raise outcome
        if isinstance(outcome, SchedulingResult):
            return outcome
        if isinstance(outcome, bytes):
            raise RuntimeError("ExecRun.plan() before execute()")
        return self.scheduler.result(snapshot, self.cluster, self.service, outcome)


# -- registration ----------------------------------------------------------------------------
class ExecSchedulers:
    """A plugin offering each executable ``directory/NAME`` as the scheduler ``NAME``.

    The directory is listed once, here: restart the daemon to add or remove a program
    (a program's content is read at each run). Names that are not valid scheduler names
    and hidden files are left out (listed in :attr:`skipped`). The directory itself must
    pass :func:`check_private`, else :class:`ExecSchedulerError`.
    """

    def __init__(self, directory: Path, *, timeout: float = DEFAULT_TIMEOUT,
                 max_output: int = DEFAULT_MAX_OUTPUT) -> None:
        self.directory = directory.absolute()
        st = check_private(self.directory, "the directory")
        if not stat.S_ISDIR(st.st_mode):
            raise ExecSchedulerError(f"{self.directory}: not a directory")
        self.timeout = timeout
        self.max_output = max_output
        self.programs: dict[str, Path] = {}
        """Scheduler name → program."""
        self.skipped: dict[str, str] = {}
        """File name → why it is not offered."""
        for entry in sorted(self.directory.iterdir()):
            if entry.name.startswith("."):
                continue
            try:
                mode = entry.stat().st_mode
            except OSError as exc:
                self.skipped[entry.name] = exc.strerror or str(exc)
                continue
            if not stat.S_ISREG(mode) or not mode & 0o111:
                continue  # a README, a library the programs share …
            try:
                validate_name(entry.name, "scheduler name")
            except ValidationError as exc:
                self.skipped[entry.name] = str(exc)
                continue
            self.programs[entry.name] = entry

    def refused(self) -> dict[str, str]:
        """Name → why its program would be refused now (ownership, mode)."""
        out = {}
        for name, path in self.programs.items():
            try:
                _check_program(path)
            except ExecSchedulerError as exc:
                out[name] = str(exc)
        return out

    @hookimpl
    def skedlib_schedulers(self) -> Mapping[str, Callable[..., Any]]:
        """Each program, as a no-argument factory of its :class:`ExecScheduler`."""
        return {name: functools.partial(ExecScheduler, path, name=name, timeout=self.timeout,
                                        max_output=self.max_output)
                for name, path in self.programs.items()}
