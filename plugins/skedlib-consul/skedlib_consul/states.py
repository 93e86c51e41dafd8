"""What the Consul health provider makes of Consul's check results: pure bookkeeping.

No threads and no I/O here: :class:`~skedlib_consul.provider.ConsulHealthProvider`
feeds in what it read from the Consul agent, with the (monotonic) time it read it, and
reads states out.

A check has *no result* (``starting``) until Consul reports it non-critical or with an
output, or until it cannot not have run: one interval plus its timeout (plus 1 s) after
registration (for a TTL check: its TTL plus 1 s, when Consul marks it "TTL expired").
Consul does not report individual runs, only the current status, so consecutive
critical results are counted in time: a check seen critical since ``t`` (the first
observation after its status turned critical) and still seen critical at
``t + (failure_threshold - 0.5) x interval`` counts as critical ``failure_threshold``
times in a row: Consul ran it at every interval in between, and a pass in between would
have been seen as a status change (a pass and a new failure both between two
observations can go unseen). The half interval is slack for Consul's run jitter; the
confirming observation must be a fresh read of the agent (:meth:`TrackedTask.deadline`
says when one would decide something), so while Consul cannot be reached no check
reaches the threshold. Consul runs no check more often than once a second; the interval
counted for a TTL check is a quarter of its TTL (between 0.25 s and 2 s), as the local
provider reads it. A threshold of 1 makes the first critical result count.

A check with a ``start_period`` that has never passed counts a critical streak from the
end of that period (after its registration), and is ``starting`` until then.

A task is ``unhealthy`` when Consul refused its registration or a check reached the
threshold, else ``starting`` while a check has no result or is in its start period,
``running`` while one is critical below the threshold, ``healthy`` otherwise (a task
without checks is healthy).
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from skedlib import CheckStatus, ResolvedCheck, Task
from skedlib_consul.checks import consul_status

__all__ = ["CONSUL_MIN_INTERVAL", "FIRST_RESULT_SLACK", "TrackedCheck", "TrackedTask"]

#: Consul runs no check more often than once a second
CONSUL_MIN_INTERVAL = 1.0
#: slack, after the longest time a check can take to run first, before "no result" ends
FIRST_RESULT_SLACK = 1.0
_PRODUCED_KEPT = 64

Status = Literal["passing", "warning", "critical"]
TaskState = Literal["starting", "healthy", "running", "unhealthy"]


@dataclass(eq=False)
class TrackedCheck:
    """One check of a watched task, as the provider follows it."""

    resolved: ResolvedCheck
    check_id: str
    every: float
    """Seconds between two runs by Consul (what one consecutive result is worth)."""
    first_by: float
    """Seconds after registration by which Consul has surely run the check once."""
    status: CheckStatus
    has_result: bool = False
    critical_since: float | None = None
    """Monotonic time of the first observation of the current critical streak."""
    last_seen: float = 0.0
    """Monotonic time of the latest observation of the check."""
    produced: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=_PRODUCED_KEPT))
    """``updated_at`` of the statuses this provider reported (ttl: not to forward back)."""
    forwarded_at: float = 0.0
    """``updated_at`` of the last report forwarded to Consul (ttl)."""
    passed: bool = False
    """Consul has reported the check non-critical at least once (its start period, if
    any, is over then)."""

    @classmethod
    def registering(cls, resolved: ResolvedCheck, check_id: str) -> TrackedCheck:
        """A check about to be registered: critical, "registering with Consul"."""
        if resolved.kind == "ttl":
            every, first_by = resolved.interval, resolved.ttl + FIRST_RESULT_SLACK
        else:
            every = max(resolved.interval, CONSUL_MIN_INTERVAL)
            first_by = every + resolved.timeout + FIRST_RESULT_SLACK
        c = cls(resolved=resolved, check_id=check_id, every=every, first_by=first_by,
                status=CheckStatus(name=resolved.name, status="critical", output=""))
        c.set_status("critical", "registering with Consul")
        c.forwarded_at = time.time() - resolved.ttl  # a report within the ttl before counts
        return c

    def set_status(self, status: Status, output: str) -> None:
        """Record a status, stamped later than every status recorded before."""
        now = time.time()
        if self.produced and now <= self.produced[-1]:
            now = math.nextafter(self.produced[-1], math.inf)
        self.status = CheckStatus(name=self.resolved.name, status=status, output=output,
                                  updated_at=now)
        self.produced.append(now)

    def reset(self) -> None:
        """Forget every result: the check is being registered again."""
        self.has_result, self.critical_since, self.last_seen = False, None, 0.0
        self.set_status("critical", "registering with Consul")

    def reached(self, threshold: int) -> bool:
        """True when the check counts critical ``threshold`` times in a row."""
        if not self.has_result or self.status.status != "critical" or \
                self.critical_since is None:
            return False
        if threshold <= 1:
            return self.last_seen >= self.critical_since
        return self.last_seen >= self.critical_since + (threshold - 0.5) * self.every

    def starting(self) -> bool:
        """True while the check has no result, or is critical within its start period
        without having passed (nothing counts yet)."""
        return not self.has_result or (
            self.status.status == "critical" and self.critical_since is not None
            and self.last_seen < self.critical_since)

    def observe(self, status: Status, output: str, t: float, registered_at: float) -> None:
        """Apply the status and output Consul reported, read at monotonic time ``t``."""
        if not self.has_result:
            ran = status != "critical" or output != "" or t >= registered_at + self.first_by
            if not ran:
                return
            self.has_result = True
            self.passed = status != "critical"
            self.critical_since = self._streak_from(t, registered_at) \
                if status == "critical" else None
            self.last_seen = t
            self.set_status(status, output or f"{status} (Consul gave no output)")
            return
        if status == "critical" and self.status.status != "critical":
            self.critical_since = self._streak_from(t, registered_at)
        elif status != "critical":
            self.critical_since = None
            self.passed = True
        self.last_seen = max(self.last_seen, t)
        if not output and status == "critical":
            output = self.status.output if self.status.status == "critical" else \
                "critical (Consul gave no output)"
        if (status, output) != (self.status.status, self.status.output):
            self.set_status(status, output)

    def _streak_from(self, t: float, registered_at: float) -> float:
        """Where a critical streak seen first at ``t`` starts counting: at ``t``, or at
        the end of the start period while the check has never passed."""
        if self.passed:
            return t
        return max(t, registered_at + self.resolved.start_period)

    def due(self, registered_at: float, threshold: int) -> float | None:
        """When a fresh read of the agent would decide something about this check."""
        if not self.has_result:
            return registered_at + self.first_by
        if (self.status.status == "critical" and self.critical_since is not None
                and not self.reached(threshold)):
            if self.last_seen < self.critical_since:  # in the start period
                return self.critical_since
            if threshold > 1:
                return self.critical_since + (threshold - 0.5) * self.every
        return None


@dataclass(eq=False)
class TrackedTask:
    """A watched task: its registration and its checks."""

    task: Task
    port: int
    generation: int
    payload: dict[str, Any]
    checks: list[TrackedCheck]
    registered: bool = False
    registered_at: float = 0.0
    """Monotonic time the current registration was confirmed by Consul."""
    refused: str = ""
    """Why Consul refused the registration (the task is then unhealthy)."""
    next_ttl_poll: float = 0.0
    notified: tuple[Any, ...] = ()
    """The :meth:`fingerprint` last notified to the skedlib agent."""

    def state(self, threshold: int) -> TaskState:
        """The task's state (see the module docstring)."""
        if not self.checks:
            return "healthy"
        if self.refused or any(c.reached(threshold) for c in self.checks):
            return "unhealthy"
        if any(c.starting() for c in self.checks):
            return "starting"
        if any(c.status.status == "critical" for c in self.checks):
            return "running"
        return "healthy"

    def fingerprint(self, threshold: int) -> tuple[Any, ...]:
        """What the skedlib agent is notified about when it changes."""
        return (self.registered, self.refused,
                tuple((c.status.status if c.has_result else None, c.reached(threshold),
                       c.starting()) for c in self.checks))

    def reset(self) -> None:
        """The registration vanished from the agent: register again, results forgotten."""
        self.registered = False
        for c in self.checks:
            c.reset()

    def observe(self, checks: Mapping[str, Any], t: float) -> None:
        """Apply the agent's checks (``/v1/agent/checks``), read at monotonic time ``t``."""
        for c in self.checks:
            info = checks.get(c.check_id)
            if not isinstance(info, Mapping):
                continue
            c.observe(consul_status(info.get("Status")), str(info.get("Output") or ""), t,
                      self.registered_at)

    def deadline(self, threshold: int, after: float) -> float | None:
        """The earliest time after ``after`` when a fresh read of the agent would decide
        something about one of the task's checks; None when none would."""
        if not self.registered:
            return None
        dues = [d for c in self.checks
                if (d := c.due(self.registered_at, threshold)) is not None and d > after]
        return min(dues, default=None)
