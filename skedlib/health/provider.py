"""Health providers: who runs a task's checks, and what the agent asks of them.

The agent does not run checks itself; it asks a :class:`HealthProvider`, chosen by name
(``--health-provider``, default ``local``) from the ``skedlib_health_providers`` hook. A
factory is called with a :class:`HealthContext` and returns a provider. The contract:

- ``validate(task, port)`` raises :class:`~skedlib.executors.base.TaskRejected` for a check
  that can never run (bad URL, unparsable interval …), before the task is started.
- ``watch(task, port)`` starts checking every check of every container of ``task`` (with
  ``$PROVIDED_PORT`` = ``port``) once the task runs; watching a task again replaces the
  earlier watch and its results.
- ``unwatch(task_id)`` stops checking. Idempotent.
- ``health(task_id)`` returns what the provider knows now, as a
  :class:`~skedlib.models.TaskHealth` whose ``checks`` hold the latest result of each
  check and whose ``state`` is one of:

  ``starting``   a check has no result yet;
  ``healthy``    every check is passing or warning (``healthy`` is True);
  ``running``    a check is critical, fewer than ``failure_threshold`` times in a row;
  ``unhealthy``  a check was critical ``failure_threshold`` times in a row: the agent
                 counts a failed attempt and restarts the task.

  None when the task is not watched. A task without checks is ``healthy``.
- ``context.on_change(task_id)`` is called (from any thread) whenever a check's status
  changes or a check reaches the threshold; the agent then calls ``health``. Outputs
  that change without a status change do not call it.
- ``close()`` stops every check and thread.

Every method must be thread-safe and return quickly (checks run in the provider's own
threads). The ``local`` provider here runs http, tcp and script checks from a small thread
pool and reads ttl checks from the task's health record; a Consul provider registers the
same checks with the local Consul agent instead.

:func:`pass_ttl_check` is how a task (or ``sked``) reports a ttl check passing.
"""

from __future__ import annotations

import abc
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from skedlib.codecs import decode, encode
from skedlib.errors import BackendError, NotFound, ValidationError
from skedlib.executors.base import ContainerRef
from skedlib.health.checks import ResolvedCheck, resolve_checks, run_check
from skedlib.keys import Keyspace
from skedlib.metrics import METRICS
from skedlib.models import CheckStatus, Task, TaskHealth
from skedlib.runtime import RETRY, Retry, Store, retry_on_conflict
from skedlib.store.base import Backend, Compare, Put

__all__ = [
    "DEFAULT_FAILURE_THRESHOLD",
    "ExecCheck",
    "HealthContext",
    "HealthProvider",
    "LocalHealthProvider",
    "check_env",
    "pass_ttl_check",
]

log = logging.getLogger(__name__)

DEFAULT_FAILURE_THRESHOLD = 3

ExecCheck = Callable[[str, ContainerRef, str, float], tuple[int, str]]
"""``(executor, container, command, timeout)`` → ``(exit status, output)``."""


@dataclass(frozen=True, kw_only=True)
class HealthContext:
    """What the agent gives a health provider factory."""

    host: str
    backend: Backend
    keyspace: Keyspace
    on_change: Callable[[str], None]
    """Call with a task id when that task's check statuses changed."""
    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD
    """Consecutive critical results of one check that make a task ``unhealthy``."""
    workers: int = 8
    """Threads the provider may use to run checks."""
    options: dict[str, str] = field(default_factory=dict)
    """Provider options from the agent's command line."""
    exec_check: ExecCheck | None = None
    """Runs a ``docker`` check's command inside a task's container: ``(executor,
    ContainerRef, command, timeout)`` → ``(exit status, output)`` (the agent's executors;
    None: docker checks are critical)."""


class HealthProvider(abc.ABC):
    """Runs (or registers) a task's checks and reports their results (see the module)."""

    #: the name the provider is registered under
    name: str = ""

    def validate(self, task: Task, port: int) -> None:  # noqa: B027 - optional
        """Raise :class:`~skedlib.executors.base.TaskRejected` for a check that cannot run."""

    @abc.abstractmethod
    def watch(self, task: Task, port: int) -> None:
        """Start checking ``task`` (replacing an earlier watch of it)."""

    @abc.abstractmethod
    def unwatch(self, task_id: str) -> None:
        """Stop checking ``task_id``. Idempotent."""

    @abc.abstractmethod
    def health(self, task_id: str) -> TaskHealth | None:
        """The latest check results and provider state of ``task_id``, or None."""

    def close(self) -> None:  # noqa: B027 - optional
        """Stop every check."""


def check_env(task: Task, port: int, host: str) -> dict[str, str]:
    """The environment of script checks: ``PROVIDED_PORT``, ``SKED_TASK_ID``, ``SKED_HOST``."""
    env = {"SKED_TASK_ID": task.id, "SKED_HOST": host}
    if port:
        env["PROVIDED_PORT"] = str(port)
    return env


# -- the local provider ---------------------------------------------------------------------
#: how often a check that has not passed yet since the task was watched is retried
STARTUP_RETRY = 0.25


@dataclass(eq=False)
class _CheckState:
    check: ResolvedCheck
    status: CheckStatus
    has_result: bool = False
    criticals: int = 0
    counted_at: float | None = None
    """Monotonic time of the last result that counted toward ``criticals``."""
    passed: bool = False
    running: bool = False


@dataclass(eq=False)
class _Watched:
    task_id: str
    generation: int
    checks: list[_CheckState]
    env: dict[str, str]
    started: float = field(default_factory=time.monotonic)
    """When the task was watched (its start period counts from here)."""


class LocalHealthProvider(HealthProvider):
    """Runs http, tcp and script checks on this host; reads ttl checks from the store.

    One scheduling thread keeps every check's next due time in a heap and hands due checks
    to a thread pool; a check never runs twice at once. The first run of each check is
    due as soon as the task is watched, and until a check first passes it is retried
    every 250 ms (so a task is seen healthy as soon as it serves, not an interval later);
    critical results count toward the threshold only once per interval either way, and
    not at all before the check first passes within its ``start_period``.
    """

    name = "local"

    def __init__(self, ctx: HealthContext) -> None:
        self.ctx = ctx
        self._tasks: dict[str, _Watched] = {}
        self._heap: list[tuple[float, int, str, int, int]] = []
        self._seq = itertools.count()
        self._generations = itertools.count(1)
        self._cond = threading.Condition()
        self._closed = False
        self._pool = ThreadPoolExecutor(max_workers=max(1, ctx.workers),
                                        thread_name_prefix="check")
        self._thread = threading.Thread(target=self._schedule_loop, name="health-scheduler",
                                        daemon=True)
        self._thread.start()

    # -- the interface ----------------------------------------------------------------
    def validate(self, task: Task, port: int) -> None:
        """Resolve every check; raises TaskRejected naming the container and the check."""
        resolve_checks(task, port)

    def watch(self, task: Task, port: int) -> None:
        """Start checking ``task``; the first run of each check is due now."""
        checks = resolve_checks(task, port)
        now = time.time()
        with self._cond:
            generation = next(self._generations)
            states = [_CheckState(c, CheckStatus(name=c.name, status="critical",
                                                 output="not checked yet", updated_at=now))
                      for c in checks]
            self._tasks[task.id] = _Watched(task.id, generation, states,
                                            check_env(task, port, self.ctx.host))
            due = time.monotonic()
            for i in range(len(states)):
                heapq.heappush(self._heap, (due, next(self._seq), task.id, generation, i))
            self._cond.notify()

    def unwatch(self, task_id: str) -> None:
        """Stop checking; queued runs of the task are dropped when they come due."""
        with self._cond:
            self._tasks.pop(task_id, None)

    def health(self, task_id: str) -> TaskHealth | None:
        """The latest results and the provider's state (see the module docstring)."""
        with self._cond:
            watched = self._tasks.get(task_id)
            if watched is None:
                return None
            checks = [msgspec.structs.replace(s.status) for s in watched.checks]
            state: Literal["starting", "healthy", "running", "unhealthy"] = "healthy"
            if any(s.criticals >= self.ctx.failure_threshold for s in watched.checks):
                state = "unhealthy"
            elif any(not s.has_result for s in watched.checks):
                state = "starting"
            elif any(s.status.status == "critical" for s in watched.checks):
                state = "running"
        return TaskHealth(task_id=task_id, host=self.ctx.host, state=state,
                          healthy=state == "healthy", checks=checks, updated_at=time.time())

    def close(self) -> None:
        """Stop the scheduler and the check threads."""
        with self._cond:
            self._closed = True
            self._tasks.clear()
            self._cond.notify()
        self._thread.join(timeout=2)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- scheduling -------------------------------------------------------------------
    def _schedule_loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    if self._heap and self._heap[0][0] <= time.monotonic():
                        break
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                if self._closed:
                    return
                _, _, task_id, generation, index = heapq.heappop(self._heap)
                watched = self._tasks.get(task_id)
                if watched is None or watched.generation != generation:
                    continue
                state = watched.checks[index]
                if state.running:
                    continue
                state.running = True
                env = watched.env
            try:
                self._pool.submit(self._run, task_id, generation, index, state, env)
            except RuntimeError:  # the pool was shut down
                return

    def _run(self, task_id: str, generation: int, index: int, state: _CheckState,
             env: dict[str, str]) -> None:
        started = time.monotonic()
        check = state.check
        status: str
        if check.kind == "ttl":
            result = self._ttl(task_id, check)
            if result is None:  # the store could not be read: no verdict this time
                status, output, at = state.status.status, state.status.output, \
                    state.status.updated_at
                counts = False
            else:
                status, output, at = result
                counts = True
        else:
            with METRICS.check_seconds.labels(check.kind).time():
                res = run_check(check, env, self.ctx.exec_check)
            if res.status == "critical":
                METRICS.check_failures.labels(check.kind).inc()
            status, output, at, counts = res.status, res.output, time.time(), True
        changed = False
        with self._cond:
            state.running = False
            watched = self._tasks.get(task_id)
            if watched is None or watched.generation != generation:
                return
            previous = state.status.status if state.has_result else None
            if counts and status == "critical" and not state.passed and \
                    time.monotonic() - watched.started < check.start_period:
                counts = False  # still starting: the task stays "starting", the check
                # shows its critical output, and nothing counts toward the threshold
            if counts:
                state.has_result = True
                now = time.monotonic()
                if status != "critical":
                    state.criticals, state.counted_at, state.passed = 0, now, True
                elif (state.counted_at is None
                      or now - state.counted_at >= check.interval * 0.95):
                    state.criticals += 1
                    state.counted_at = now
                changed = previous != status or (
                    status == "critical" and state.criticals == self.ctx.failure_threshold
                    and state.counted_at == now)
            state.status = CheckStatus(name=check.name, status=status,  # type: ignore[arg-type]
                                       output=output, updated_at=at)
            due = started + (check.interval if state.passed
                             else min(check.interval, STARTUP_RETRY))
            heapq.heappush(self._heap, (max(due, time.monotonic()), next(self._seq), task_id,
                                        generation, index))
            self._cond.notify()
        if changed:
            try:
                self.ctx.on_change(task_id)
            except Exception:
                log.exception("health change callback failed for %s", task_id)

    def _ttl(self, task_id: str, check: ResolvedCheck) -> tuple[str, str, float] | None:
        try:
            kv = self.ctx.backend.get(self.ctx.keyspace.task_health(task_id))
        except BackendError as exc:
            log.debug("ttl check %s of %s: cannot read health: %s", check.name, task_id, exc)
            return None
        now = time.time()
        reported = None
        if kv is not None:
            try:
                record = decode(kv.value, TaskHealth, where=kv.key)
            except ValidationError:
                record = None
            if record is not None:
                reported = next((c for c in record.checks if c.name == check.name), None)
        if (reported is not None and reported.status in ("passing", "warning")
                and now - reported.updated_at <= check.ttl):
            return reported.status, reported.output, reported.updated_at
        return ("critical", f"TTL expired: not reported passing within {check.ttl:g}s", now)


# -- reporting a ttl check ------------------------------------------------------------------
def pass_ttl_check(store: Store, task_id: str, check: str, *,
                   status: Literal["passing", "warning", "critical"] = "passing",
                   output: str = "", retries: int = 8) -> None:
    """Report the ttl check ``check`` of ``task_id`` as ``status`` now.

    Writes the check's entry in the task's health record (``state/health/<task_id>``)
    with a compare on the record's revision, retrying when the agent wrote in between.
    The agent's local provider reads it back; the check stays passing for ``ttl`` after
    this call. Raises :class:`~skedlib.errors.NotFound` when the task has no health
    record (it is not running) or no check of that name.
    """
    backend = store.backend
    key = store.keys.task_health(task_id)

    def attempt() -> Literal[Retry.RETRY] | None:
        kv = backend.get(key)
        if kv is None:
            raise NotFound(f"task {task_id!r} has no health record: is it running?")
        record = decode(kv.value, TaskHealth, where=kv.key)
        names = [c.name for c in record.checks]
        if check not in names:
            raise NotFound(f"task {task_id!r} has no check named {check!r} (checks: "
                           f"{', '.join(names) or 'none'})")
        now = time.time()
        record.checks = [CheckStatus(name=c.name, status=status,
                                     output=output or f"reported {status}", updated_at=now)
                         if c.name == check else c for c in record.checks]
        if backend.txn([Compare(key, kv.revision)], [Put(key, encode(record))]).succeeded:
            return None
        return RETRY

    retry_on_conflict(attempt, what=f"{key} (reporting check {check!r} of {task_id!r})",
                      attempts=retries)
