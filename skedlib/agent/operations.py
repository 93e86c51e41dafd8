"""The operations the agent runs on its worker pool: start, stop and reject a task.

They block (an executor starting a container, a grace period, a store write), so they
never run on the control thread. Each returns its result or raises; the control thread
turns that into the next input of the task's :mod:`~skedlib.agent.lifecycle`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from skedlib.agent import lifecycle as lc
from skedlib.agent.adoption import Ref
from skedlib.agent.issued import patch_task
from skedlib.agent.ports import PortAllocator, port_is_free
from skedlib.codecs import decode
from skedlib.errors import BackendError, ConflictError, ValidationError
from skedlib.executors.base import ContainerRef, Executor, TaskRejected
from skedlib.keys import Keyspace
from skedlib.models import CapacityRejection, Resources, Service, Task
from skedlib.store.base import Backend
from skedlib.validation import DEFAULT_GRACE_PERIOD, DEFAULT_MAX_ATTEMPTS

__all__ = ["PortBusy", "StaleTask", "StartFailed", "Started", "TaskOperations",
           "capacity_rejected", "grace", "start_failure"]

log = logging.getLogger("skedlib.agent")


class StaleTask(Exception):
    """The task changed in the store while an operation ran: wait for the new version."""


class PortBusy(TaskRejected):
    """The task's fixed port is held by a process that is not one of this agent's tasks:
    a rejection for want of room, which expires."""


class StartFailed(Exception):
    """A start failed (the cause is chained); carries the attempts limit it looked up."""

    def __init__(self, max_attempts: int) -> None:
        super().__init__(max_attempts)
        self.max_attempts = max_attempts


@dataclass(eq=False)
class Started:
    """A task whose containers all started."""

    task: Task
    port: int
    refs: list[Ref]
    max_attempts: int
    description: str
    revision: int
    """The host key's revision after the port was written back (else as read)."""


def start_failure(task_id: str, err: BaseException | None) -> lc.StartFailed:
    """The lifecycle input for a start that raised ``err``."""
    max_attempts = None
    if isinstance(err, StartFailed):
        max_attempts, err = err.max_attempts, err.__cause__
    if isinstance(err, StaleTask):
        return lc.StartFailed("stale", max_attempts=max_attempts)
    if isinstance(err, TaskRejected):
        return lc.StartFailed("rejected", str(err), max_attempts,
                              capacity=isinstance(err, PortBusy))
    if isinstance(err, BackendError | ConflictError):
        log.warning("could not start %s: %s", task_id, err)
    return lc.StartFailed("failed", str(err), max_attempts)


def grace(task: Task | None) -> float:
    """Seconds between the stop signal and the kill."""
    ns = task.task_definition.grace_period if task is not None else 0
    return (ns or DEFAULT_GRACE_PERIOD) / 1e9


class TaskOperations:
    """Start, stop and reject tasks with the host's executors (thread-safe)."""

    def __init__(self, backend: Backend, keys: Keyspace, host: str,
                 executors: Mapping[str, Executor], ports: PortAllocator) -> None:
        self.backend = backend
        self.keys = keys
        self.host = host
        self.executors = executors
        self.ports = ports

    def start(self, task_id: str, task: Task, revision: int, claim: bool = False) -> Started:
        """Provide the port, then start every container (stops them on failure).

        With ``claim`` the host key is first written back unchanged at ``revision``: a
        task that was fenced may have been moved while the agent was cut off, and this
        write either finds it moved or makes a scheduler's commit that moves it from an
        older snapshot fail (the commit compares ``state/tasks/<id>``, written too).

        Raises :class:`StaleTask` when the key changed, else :class:`StartFailed` with
        the cause chained."""
        max_attempts = self.max_attempts(task)
        try:
            if claim:
                revision = self._claim(task_id, revision)
            return self._start(task_id, task, revision, max_attempts)
        except StaleTask:
            raise
        except BaseException as exc:
            raise StartFailed(max_attempts) from exc

    def _claim(self, task_id: str, revision: int) -> int:
        written = patch_task(self.backend, self.keys, self.host, task_id, revision,
                             lambda obj: None)
        if not written:
            raise StaleTask()
        return written

    def _start(self, task_id: str, task: Task, revision: int, max_attempts: int) -> Started:
        td = task.task_definition
        port = task.port or td.port
        if td.provide_port and not task.port:
            port = self.ports.pick(task_id)
            try:
                written = patch_task(self.backend, self.keys, self.host, task_id, revision,
                                     lambda obj: obj.__setitem__("port", port))
            except BaseException:
                self.ports.release(task_id)
                raise
            if not written:
                self.ports.release(task_id)
                raise StaleTask()
            task, revision = msgspec.structs.replace(task, port=port), written
        elif port:
            if not port_is_free(port):
                raise PortBusy(f"port {port} is in use on host {self.host} by a process "
                               "that is not one of this agent's tasks")
            self.ports.hold(task_id, port)
        self.ports.reserve(task_id, td.executor_ports())
        env = {"SKED_TASK_ID": task_id, "SKED_HOST": self.host}
        if port:
            env["PROVIDED_PORT"] = str(port)
        refs: list[Ref] = []
        try:
            for c in td.containers:
                executor = self.executors[c.type]
                executor.start(task, c, env)
                refs.append((c.type, ContainerRef(task_id, c.name)))
        except BaseException:
            for name, ref in reversed(refs):
                self.stop_quietly(name, ref, task)
            raise
        return Started(task, port, refs, max_attempts, self.describe(refs, port), revision)

    def stop(self, task_id: str, refs: list[Ref], task: Task | None,
             kill_by: float | None = None) -> None:
        """Stop and clean up containers (in reverse start order); with ``kill_by`` (a
        monotonic time: a fencing stop) every grace period ends by then at the latest."""
        del task_id
        for name, ref in reversed(refs):
            self.stop_quietly(name, ref, task, kill_by)

    def reject(self, task_id: str, refs: list[Ref], task: Task | None, revision: int,
               reason: str, free: Resources | None = None) -> int:
        """Stop the containers, then write the rejection back (0: the key changed).

        With ``free`` (what the host has free) the rejection is for want of room: it goes
        to ``capacity_rejections``, which expire; else this host joins ``rejected_hosts``
        for good."""
        self.stop(task_id, refs, task)
        host = self.host
        now = time.time()

        def patch(obj: dict[str, Any]) -> None:
            obj["rejected"] = True
            obj["reject_reason"] = reason
            if free is not None:
                obj["capacity_rejections"] = capacity_rejected(
                    obj.get("capacity_rejections"), host, reason, now, free)
                return
            hosts = obj.get("rejected_hosts")
            hosts = list(hosts) if isinstance(hosts, list) else []
            if host not in hosts:
                hosts.append(host)
            obj["rejected_hosts"] = hosts

        return patch_task(self.backend, self.keys, self.host, task_id, revision, patch)

    def stop_quietly(self, name: str, ref: ContainerRef, task: Task | None,
                     kill_by: float | None = None) -> None:
        """Stop and clean up one container (its grace period ending by ``kill_by`` when
        given); a failure is logged, not raised."""
        executor = self.executors.get(name)
        if executor is None:
            return
        seconds = grace(task)
        if kill_by is not None:
            seconds = min(seconds, max(0.0, kill_by - time.monotonic()))
        try:
            executor.stop(ref, seconds)
            executor.cleanup(ref)
        except Exception:
            log.exception("stopping %s/%s failed", ref.task_id, ref.container)

    def max_attempts(self, task: Task) -> int:
        """The service's ``max_attempts``, else the task definition's, else the default."""
        try:
            kv = self.backend.get(self.keys.service(task.service))
            service = decode(kv.value, Service, where=kv.key) if kv else None
        except (BackendError, ValidationError):
            service = None
        if service is not None and service.max_attempts > 0:
            return service.max_attempts
        return task.task_definition.max_attempts or DEFAULT_MAX_ATTEMPTS

    def describe(self, refs: list[Ref], port: int) -> str:
        """``process pid 123, port 20001``: for the log."""
        parts = []
        for name, ref in refs:
            status = self.executors[name].status(ref)
            if status.pid:
                parts.append(f"{name} pid {status.pid}")
            else:
                parts.append(f"{name} {status.state}")
        if port:
            parts.append(f"port {port}")
        return ", ".join(parts)


def capacity_rejected(stored: object, host: str, reason: str, now: float,
                      free: Resources) -> list[Any]:
    """The stored ``capacity_rejections`` list with ``host``'s entry added or renewed
    (its count grows, so the backoff does). Entries it cannot read are kept as they are."""
    entries = list(stored) if isinstance(stored, list) else []
    count = 1
    for i, entry in enumerate(entries):
        if isinstance(entry, dict) and entry.get("host") == host:
            old = entry.get("count")
            count = old + 1 if isinstance(old, int) and old > 0 else 1
            del entries[i]
            break
    entries.append(msgspec.to_builtins(CapacityRejection(
        host=host, reason=reason, at=now, count=count, free=free)))
    return entries
