"""Adoption: what the executors still run when the agent starts.

An agent that restarts finds its tasks' containers still running (a graceful exit leaves
them, the executors keep their records in the state directory). A task still issued to
this host whose containers all run is *adopted*: kept as it is, not restarted. Containers
of a task whose key vanished while the agent was down, of a rejected task, or of a task
of which only some containers run are stopped. Health records this host wrote for tasks
it no longer knows are deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Container, Mapping

from skedlib.agent.records import HealthWriter
from skedlib.codecs import decode
from skedlib.errors import BackendError, ValidationError
from skedlib.executors.base import ContainerRef, Executor
from skedlib.keys import Keyspace
from skedlib.models import Task, TaskHealth
from skedlib.store.base import Backend

__all__ = ["Ref", "forget_stale_health", "is_complete", "running_containers", "verdict"]

log = logging.getLogger("skedlib.agent")

Ref = tuple[str, ContainerRef]
"""A container as the agent tracks it: the executor's name and the container's ref."""


def running_containers(executors: Mapping[str, Executor]) -> dict[str, list[Ref]]:
    """What each executor still runs, by task id. An executor that cannot list its
    containers is skipped with a warning (none of its containers are adopted)."""
    found: dict[str, list[Ref]] = {}
    for name, executor in executors.items():
        try:
            listed = executor.running()
        except Exception as exc:
            log.warning("executor %s cannot list its containers, so none are adopted "
                        "from it: %s", name, exc)
            continue
        for ref in listed:
            found.setdefault(ref.task_id, []).append((name, ref))
    return found


def verdict(issued: bool, task: Task | None, wanted: bool, refs: list[Ref]) -> str:
    """'' to adopt ``refs`` for ``task``, else why they are stopped (``issued``: the
    task's key was in the listing; ``wanted``: it holds a task to run)."""
    if not issued:
        return "its key was removed while the agent was down"
    if not wanted:
        return "it is rejected"
    if task is None or not is_complete(task, refs):
        return "only some of its containers were still running"
    return ""


def is_complete(task: Task, refs: list[Ref]) -> bool:
    """True when ``refs`` are exactly the task's containers (by executor and name)."""
    have = {(name, ref.container) for name, ref in refs}
    want = {(c.type, c.name) for c in task.task_definition.containers}
    return have == want


def forget_stale_health(backend: Backend, keys: Keyspace, host: str,
                        known: Container[str], writer: HealthWriter) -> None:
    """Delete the health records naming ``host`` of tasks not in ``known``."""
    try:
        listed = backend.list(keys.health)
    except BackendError as exc:
        log.warning("could not list health records: %s", exc)
        return
    for kv in listed.items:
        task_id = kv.key[len(keys.health):]
        if task_id in known:
            continue
        try:
            record = decode(kv.value, TaskHealth, where=kv.key)
        except ValidationError:
            continue
        if record.host == host:
            writer.delete(task_id)
