"""What the agent's control thread works with: its events, its timers, and the record it
keeps of each task (the stored versions, what runs, and the task's lifecycle state)."""

from __future__ import annotations

import heapq
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from skedlib.agent import lifecycle
from skedlib.agent.adoption import Ref
from skedlib.agent.lifecycle import TaskState
from skedlib.codecs import check_record, quarantine
from skedlib.errors import ValidationError
from skedlib.executors.base import ContainerRef, ContainerStatus
from skedlib.keys import TaskKey
from skedlib.models import Resources, Task, TaskHealth
from skedlib.store.base import KeyValue, ListResult, WatchEvent

__all__ = ["Call", "Changed", "Done", "Event", "Exited", "HealthChanged", "Listed",
           "Shutdown", "Timers", "Tracked"]


@dataclass
class Listed:
    """A (re)listing of the host's issued tasks."""

    listing: ListResult


@dataclass
class Changed:
    """A batch of watch events on the host's issued tasks."""

    events: list[WatchEvent]


@dataclass
class Exited:
    """An executor reports a container that exited."""

    executor: str
    ref: ContainerRef
    status: ContainerStatus


@dataclass
class HealthChanged:
    """The health provider has news of a task's checks."""

    task_id: str


@dataclass
class Done:
    """An operation of the worker pool finished (``result`` or ``error``)."""

    task_id: str
    op: str
    result: Any = None
    error: BaseException | None = None


@dataclass
class Call:
    """Run ``fn`` on the control thread."""

    fn: Callable[[], None]


@dataclass
class Shutdown:
    """Stop the control thread (stopping the tasks first when ``stop_tasks``)."""

    stop_tasks: bool


Event = Listed | Changed | Exited | HealthChanged | Done | Call | Shutdown


@dataclass(eq=False)
class Tracked:
    """Everything the control thread knows of one task."""

    task_id: str
    lc: TaskState = field(init=False)
    """The task's lifecycle state (changed only through :func:`~skedlib.agent.lifecycle.step`)."""
    issued: Task | None = None
    raw: bytes = b""
    revision: int = 0
    bad_record: str = ""
    """Why the stored value is not a runnable task (undecodable, wrong id)."""
    op_revision: int = 0
    """``revision`` when the operation in flight was decided."""
    running: Task | None = None
    port: int = 0
    refs: list[Ref] = field(default_factory=list)
    admitted: bool = False
    demand: Resources = field(default_factory=Resources)
    reject_revision: int = 0
    """The revision our rejection was written at: older versions are not wanted."""
    health: TaskHealth | None = None
    written: tuple[Any, ...] | None = None
    """What the last health record written said (to skip identical writes)."""

    def __post_init__(self) -> None:
        self.lc = TaskState(self.task_id)

    def put(self, kv: KeyValue) -> None:
        """Record a new stored version of the task's key (which may not decode)."""
        self.raw, self.revision, self.bad_record = kv.value, kv.revision, ""
        try:  # the one decode-and-match-the-key check every reader uses
            self.issued = check_record(kv, Task, TaskKey(self.task_id))
        except ValidationError as exc:
            quarantine(kv, exc)
            self.issued = None
            self.bad_record = str(exc)

    def view(self, active: bool, fenced: bool = False) -> lifecycle.View:
        """What the store holds for the task, as its lifecycle sees it (``active``: the
        agent has adopted and is not shutting down; ``fenced``: see
        :attr:`~skedlib.agent.lifecycle.View.fenced`)."""
        wanted = (self.issued is not None and not self.issued.rejected
                  and self.revision > self.reject_revision)
        invalid = unwritable = ""
        if not wanted and self.bad_record and self.raw:
            obj = _json_object(self.raw)
            if obj is None:
                unwritable = self.bad_record
            elif obj.get("rejected") is not True:
                invalid = self.bad_record
        changed = False
        if wanted and self.running is not None and self.issued is not None:
            moved = bool(self.issued.port and self.issued.port != self.port)
            changed = moved or _spec(self.issued) != _spec(self.running)
        return lifecycle.View(present=bool(self.raw), wanted=wanted, invalid=invalid,
                       unwritable=unwritable, changed=changed,
                       reject_reason=self.issued.reject_reason if self.issued else "",
                       newer=not (self.revision == self.op_revision and self.raw),
                       active=active, fenced=fenced)

    def exited(self, executor: str, ref: ContainerRef, status: ContainerStatus) -> lifecycle.Exited:
        """The lifecycle input for one of the task's containers that exited."""
        task = self.running or self.issued
        container = None if task is None else next(
            (c for c in task.task_definition.containers if c.name == ref.container), None)
        return lifecycle.Exited(ref.container, status.message or status.state,
                         essential=container is None or container.essential,
                         known=(executor, ref) in self.refs)


def _spec(task: Task) -> bytes:
    """What makes two issued versions of a task run differently (the port aside)."""
    return msgspec.json.encode((task.cluster.name, task.service, task.instance,
                                task.task_definition))


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


class Timers:
    """A heap of callbacks due at monotonic times, run by the control thread."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def add(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` in ``delay`` seconds."""
        heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), fn))

    def delay(self) -> float | None:
        """Seconds until the next callback is due (None: none armed)."""
        if not self._heap:
            return None
        return max(0.0, self._heap[0][0] - time.monotonic())

    def due(self) -> list[Callable[[], None]]:
        """The callbacks due now, removed from the heap."""
        now = time.monotonic()
        out = []
        while self._heap and self._heap[0][0] <= now:
            out.append(heapq.heappop(self._heap)[2])
        return out
