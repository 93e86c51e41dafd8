"""Self-fencing: an agent cut off from the store stops the tasks that must not run twice.

A scheduler replaces the tasks of a host whose lease *expired*. An agent that is alive but
cannot reach the store (a partition, a store outage) keeps its tasks running meanwhile,
so a task may run on two hosts at once. A task opts into fencing, as Nomad's
``stop_after_client_disconnect``, with its task definition's ``stop_after_disconnect``,
or every task on a host with ``skedlib-agent --stop-after-disconnect`` (the task
definition wins; 0 on both: never fenced, today's behaviour).

**The clock.** Silence is measured on the monotonic clock from the moment the last
successful renewal of the host lease was *sent* (:attr:`~skedlib.locks.KeptLease.renewed_at`;
a new lease counts once the host record was written under it): the store keeps the
lease at least its TTL from then, whenever the answer arrived. When the silence reaches a
task's fence, the task is fenced: stopped (SIGTERM), its grace period cut so that it is
killed by the time the lease could expire, on a pool of its own so it never waits behind
another operation, or kept from starting. One log line and
``skedlib_agent_fenced_tasks_total`` per stop.

**The guarantee.** With a fence at most the lease TTL, a fenced task is gone no later
than the TTL after the last renewal the store granted, so before the lease can expire
and thus before any scheduler can place it elsewhere: at most one copy runs across a
partition (assuming the two clocks advance at the same rate over one TTL). A
``--stop-after-disconnect`` longer than the TTL is refused; a task definition's is
honoured with a warning (the window is then bounded by ``fence - TTL`` plus its grace
period). A fence shorter than half the TTL is raised to half (the lease is renewed every
third of it: shorter would fence between two renewals).

**Lifting the fence.** Once a renewal sent after the fencing succeeds (or a new lease
carries the host record again), the fenced tasks are judged again; each re-claims its
key before it starts (:meth:`~skedlib.agent.operations.TaskOperations.start` with
``claim``), so a task moved elsewhere meanwhile is not started here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from skedlib.durations import SECOND, format_duration
from skedlib.models import Task

__all__ = ["CHECK_EVERY", "Fencing", "check_host_fence"]

log = logging.getLogger("skedlib.agent")

CHECK_EVERY = 1.0
"""Seconds between two looks at the lease at most (new tasks, a lifted fence); a fence
due sooner is checked exactly when due."""

_RESUME_EVERY = 0.25
"""While tasks are fenced: seconds between two looks for a renewal."""


def check_host_fence(fence: float, ttl: float) -> None:
    """Refuse a host-wide ``--stop-after-disconnect`` (seconds; 0: off) that cannot keep
    its promise with lease TTL ``ttl``: longer than the TTL, or shorter than half of it."""
    if not fence:
        return
    if fence < 0:
        raise ValueError(f"stop_after_disconnect must be >= 0 seconds, got {fence:g}")
    if fence > ttl:
        raise ValueError(f"stop_after_disconnect ({fence:g}s) is longer than the lease TTL "
                         f"({ttl:g}s): a replacement could start before the fenced tasks "
                         "stop; lower it or raise --lease-ttl")
    if fence < ttl / 2:
        raise ValueError(f"stop_after_disconnect ({fence:g}s) is shorter than half the "
                         f"lease TTL ({ttl:g}s): tasks would be fenced between two "
                         "renewals; raise it or lower --lease-ttl")


class Fencing:
    """Which tasks are fenced, when the next one is due, and when the fence is lifted.

    Used by the agent's control thread only. ``renewed_at`` returns the monotonic time
    the last successful renewal of the host lease was sent; ``ttl`` is the lease's TTL
    in seconds; ``default`` the host's fence in seconds (0: none).
    """

    def __init__(self, host: str, default: float, ttl: float,
                 renewed_at: Callable[[], float]) -> None:
        self.host = host
        self.default = default
        self.ttl = ttl
        self.renewed_at = renewed_at
        self.fenced: set[str] = set()
        """Tasks fenced since the fence went up."""
        self.since: float | None = None
        """Monotonic time the first task was fenced (None: no fence up)."""
        self._warned: set[tuple[str, int]] = set()

    def fence_of(self, task: Task | None) -> float:
        """Seconds of silence after which ``task`` is fenced; 0: never."""
        if task is None:
            return 0.0
        td = task.task_definition
        own = td.stop_after_disconnect / SECOND
        fence = own or self.default
        if fence <= 0:
            return 0.0
        if own and (own > self.ttl or own < self.ttl / 2):
            self._warn(task, own)
        return max(fence, self.ttl / 2)

    def _warn(self, task: Task, own: float) -> None:
        td = task.task_definition
        key = (td.name, td.version)
        if key in self._warned:
            return
        self._warned.add(key)
        fence = format_duration(td.stop_after_disconnect)
        if own > self.ttl:
            log.warning("task definition %s version %d: stop_after_disconnect %s is longer "
                        "than the lease TTL %gs of host %s: a replacement may run beside it "
                        "for up to %.1fs", td.name, td.version, fence, self.ttl, self.host,
                        own - self.ttl)
        else:
            log.warning("task definition %s version %d: stop_after_disconnect %s is shorter "
                        "than half the lease TTL %gs of host %s: fenced after %gs instead",
                        td.name, td.version, fence, self.ttl, self.host, self.ttl / 2)

    def silence(self, now: float) -> float:
        """Seconds since the last successful renewal was sent."""
        return now - self.renewed_at()

    def holds(self, task_id: str, task: Task | None, now: float) -> bool:
        """True when ``task`` must not run: fenced already, or its fence is due now (it
        is then fenced)."""
        if task_id in self.fenced:
            return True
        fence = self.fence_of(task)
        if not fence or self.silence(now) < fence:
            return False
        self.fenced.add(task_id)
        if self.since is None:
            self.since = now
        return True

    def next_check(self, tasks: list[Task | None], now: float) -> float:
        """Seconds until the earliest fence of ``tasks`` (not fenced yet) is due, at most
        :data:`CHECK_EVERY` (:data:`_RESUME_EVERY` while a fence is up)."""
        wait = _RESUME_EVERY if self.fenced else CHECK_EVERY
        silence = self.silence(now)
        for task in tasks:
            fence = self.fence_of(task)
            if fence:
                wait = min(wait, fence - silence)
        return max(wait, 0.005)

    def kill_by(self, task: Task | None) -> float | None:
        """The monotonic time by which a fencing stop of ``task`` must have killed it:
        when the lease could expire (None: its fence is past the TTL, no promise to keep,
        its own grace period applies)."""
        if self.fence_of(task) > self.ttl:
            return None
        return self.renewed_at() + self.ttl

    def lift(self) -> set[str] | None:
        """When a renewal sent after the fence went up has succeeded: take the fence down
        and return the tasks it held (None: it stays up, or none is up)."""
        if self.since is None or self.renewed_at() <= self.since:
            return None
        fenced, self.fenced, self.since = self.fenced, set(), None
        return fenced
