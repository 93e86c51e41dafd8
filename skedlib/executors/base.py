"""The executor interface (Sked's StartTask / StopTask / ReservedPorts, plus status
and adoption).

An executor runs one kind of container (a container's ``type``: ``bash``, ``process``,
``docker`` …). It is registered by a plugin through the ``skedlib_executors`` hook as a
factory ``(ExecutorContext) -> Executor``, and the msgspec Struct its container blob
decodes as through the ``skedlib_executor_configs`` hook, so ``sked apply`` checks blobs
without creating the executor (see docs/executors/writing-an-executor.md). The agent
calls it from worker threads, so every method must be thread-safe, and none may block
longer than its timeout.

Contracts:

- ``start`` either returns with the container running (or, for a detached start,
  launched), or raises. :class:`TaskRejected` means "this host can never run it as
  configured" (bad executor blob, missing image, command not found, port taken): the
  agent rejects the task at once with the message as the reason. Any other exception is
  a failed attempt, retried with backoff up to ``max_attempts``.
- ``admit`` (optional) refuses, with :class:`TaskRejected`, what ``start`` would refuse
  and can be known without starting (the blob, the host policy in ``ExecutorContext.policy``),
  so the agent rejects a task before any of its containers starts.
- ``stop`` is idempotent: stopping a container that is not running is not an error.
  It sends a polite signal, waits up to ``grace`` seconds, then kills.
- ``status`` never raises for a container it does not know: it returns ``state="missing"``.
- ``running`` lists what this executor runs on this host for the agent's ``ContainerRef``
  labels (pids recorded in the state dir, docker labels …), so a restarted agent adopts
  running containers instead of starting them twice.
- ``reserved_ports`` lists host ports the executor's containers hold (the agent publishes
  them in the host record so schedulers avoid conflicts).
- ``containment`` and ``memory_usage`` (optional) say how the executor contains its
  containers and what they use, for the task status and the host record.
- ``notify_exits`` (optional) lets the agent learn at once that a container exited on
  its own; an executor that does not support it returns False and the agent polls
  ``status``.
"""

from __future__ import annotations

import abc
import copy
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

import msgspec

from skedlib.codecs import convert_blob_data
from skedlib.errors import SkedError
from skedlib.models import Container, Task

if TYPE_CHECKING:
    from skedlib.executors.policy import HostPolicy

__all__ = [
    "PROVIDED_PORT_VAR",
    "ContainerRef",
    "ContainerStatus",
    "Executor",
    "ExecutorContext",
    "ExitCallback",
    "TaskRejected",
    "convert_blob",
    "substitute_port",
]

T = TypeVar("T")


class TaskRejected(SkedError):
    """This host cannot run the task as configured; the message is the reason shown."""

    def within(self, where: str) -> TaskRejected:
        """The same rejection (same class and attributes) with ``where: `` in front of
        its message (``container web: …``)."""
        placed = copy.copy(self)
        placed.args = (f"{where}: {self}",)
        return placed


PROVIDED_PORT_VAR = re.compile(r"\$(?:\{PROVIDED_PORT\}|PROVIDED_PORT(?![A-Za-z0-9_]))")
"""``$PROVIDED_PORT`` or ``${PROVIDED_PORT}`` (not ``$PROVIDED_PORTS``)."""


def substitute_port(text: str, port: int | str) -> str:
    """``text`` with ``$PROVIDED_PORT`` and ``${PROVIDED_PORT}`` replaced by ``port`` (by
    nothing when the task has none: ``0`` or ``""``). Executors, checks and plugins use
    this one function, so the variable means the same everywhere."""
    value = str(port) if port else ""
    return PROVIDED_PORT_VAR.sub(lambda _m: value, text)


def convert_blob(container: Container, type_: type[T]) -> T:
    """Decode ``container.executor`` as ``type_`` (the Struct the executor declares through
    ``skedlib_executor_configs``), or raise :class:`TaskRejected` saying which field is
    wrong (``container web: process executor: field argv: Expected …``)."""
    try:
        return convert_blob_data(container.executor, type_)
    except msgspec.ValidationError as exc:
        text = str(exc)
        message, sep, at = text.rpartition(" - at `")
        if sep:
            path = at.rstrip("`").removeprefix("$").lstrip(".")
            text = f"field {path}: {message}" if path else message
        raise TaskRejected(f"container {container.name}: {container.type} executor: "
                           f"{text}") from None


def _default_policy() -> HostPolicy:
    from skedlib.executors.policy import HostPolicy  # it imports TaskRejected from here

    return HostPolicy()


class ExecutorContext(msgspec.Struct, kw_only=True):
    """What the agent gives an executor factory."""

    host: str
    """The agent's host name."""
    state_dir: Path
    """A directory the executor may use for its own state (pid files, downloads)."""
    log_dir: Path
    """Per-task log files go below this directory."""
    options: dict[str, str] = msgspec.field(default_factory=dict)
    """Executor options from the agent's command line (``--executor-opt docker.url=…``)."""
    policy: HostPolicy = msgspec.field(default_factory=_default_policy)
    """This host's policy (``skedlib-agent --policy``, ``--run-as``): an executor asks it
    before it starts anything (:meth:`Executor.admit` and ``start``)."""


class ContainerRef(msgspec.Struct, frozen=True, order=True):
    """Identifies one container of one task on this host."""

    task_id: str
    container: str


class ContainerStatus(msgspec.Struct, kw_only=True):
    """What an executor knows of one container right now."""

    state: Literal["running", "exited", "missing", "detached"]
    """``detached``: launched by a start that returned at once; liveness comes from checks."""
    exit_code: int | None = None
    pid: int | None = None
    started_at: float = 0.0
    message: str = ""
    memory_bytes: int = 0
    """Resident memory now, when the executor can measure it (0 otherwise)."""


ExitCallback = Callable[[ContainerRef, ContainerStatus], None]
"""Told that a container exited on its own: its ref and its final status."""


class Executor(abc.ABC):
    """Starts, stops and observes containers of one ``type``."""

    #: the container ``type`` this executor runs
    name: str = ""

    @abc.abstractmethod
    def start(self, task: Task, container: Container, env: Mapping[str, str]) -> None:
        """Start ``container`` of ``task`` with ``env`` (which includes ``PROVIDED_PORT``).

        Raises :class:`TaskRejected` for what can never work here; any other exception
        is a failed attempt.
        """

    def admit(self, task: Task, container: Container) -> None:  # noqa: B027 - optional
        """Raise :class:`TaskRejected` if this host can never run ``container`` as
        configured (its blob, the host policy), before any container of the task starts.

        Called by the agent's admission, from its control thread: it must not block (no
        network, no engine call; a ``stat`` is fine). The task may have no port yet (a
        provided port is picked later: judge with a stand-in). The default accepts
        everything. ``start`` must check the same again.
        """

    @abc.abstractmethod
    def stop(self, ref: ContainerRef, grace: float) -> None:
        """Stop the container: polite signal, ``grace`` seconds, then kill. Idempotent."""

    @abc.abstractmethod
    def status(self, ref: ContainerRef) -> ContainerStatus:
        """The container's state now; ``missing`` when unknown."""

    @abc.abstractmethod
    def running(self) -> list[ContainerRef]:
        """Every container this executor runs for this agent (for adoption)."""

    def reserved_ports(self) -> list[int]:
        """Host ports held by this executor's containers."""
        return []

    def exec_check(self, ref: ContainerRef, command: str, timeout: float) -> tuple[int, str]:
        """Run ``command`` (a shell command) inside the container for a ``docker`` health
        check; return its exit status and (the end of) its output. Called from check
        threads. The default raises :class:`NotImplementedError`: this executor's
        containers cannot run commands inside (a check of that kind is critical)."""
        del ref, command, timeout
        raise NotImplementedError(f"the {self.name} executor cannot run a command inside "
                                  "its containers (docker checks need a docker container)")

    def notify_exits(self, callback: ExitCallback) -> bool:
        """Call ``callback`` (from any thread) as soon as a container exits on its own.

        Not called for containers ended by :meth:`stop`. Return True when supported; the
        default returns False, and the agent then polls :meth:`status` instead.
        """
        del callback
        return False

    def containment(self) -> str:
        """How this executor contains its containers' resources (``cgroup2``,
        ``cgroup1``, ``rlimit``, ``docker`` …), recorded in the tasks' status; ``""`` when
        it does not say (the default)."""
        return ""

    def memory_usage(self) -> dict[str, int]:
        """Bytes of memory the containers use now, summed per task id (the agent reports
        it and admits against it). Must be quick (a few file reads). The default measures
        nothing: ``{}``."""
        return {}

    def cleanup(self, ref: ContainerRef) -> None:  # noqa: B027 - optional
        """Remove what is left of a stopped container (files, exited docker containers)."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release clients and threads when the agent exits (containers keep running)."""
