"""Memory pressure: which task an agent gives up when its host runs short of memory.

With ``AgentConfig.memory_pressure`` set, the agent reads :func:`memory_in_use` every
:data:`PRESSURE_INTERVAL` seconds. When it is at or above the threshold (and the last
give-up is at least ``pressure_cooldown`` seconds ago) it gives up one running task,
the one :func:`choose_task_to_give_up` picks, by rejecting it: a scheduler then places
the task on another host.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import psutil

__all__ = ["PRESSURE_INTERVAL", "PressureCandidate", "PressureGuard",
           "choose_task_to_give_up", "memory_in_use", "pressure_reason"]

log = logging.getLogger("skedlib.agent")

PRESSURE_INTERVAL = 2.0
"""Seconds between two readings of the host's memory use."""


def memory_in_use() -> float:
    """Percent of the host's memory in use (``psutil.virtual_memory().percent``)."""
    return float(psutil.virtual_memory().percent)


@dataclass(frozen=True)
class PressureCandidate:
    """A task the agent runs, as far as choosing one to give up is concerned."""

    task_id: str
    priority: int
    """The task definition's ``priority``: higher is more important."""
    started: float
    """When it started (or was adopted) on this host; larger is newer."""


def choose_task_to_give_up(candidates: Iterable[PressureCandidate]
                           ) -> PressureCandidate | None:
    """The task to give up: the lowest priority, then the newest, then the first task id
    (so the choice never depends on the order of ``candidates``); None when there is
    none."""
    return min(candidates, key=lambda c: (c.priority, -c.started, c.task_id), default=None)


def pressure_reason(in_use: float, threshold: float) -> str:
    """The ``reject_reason`` of a task given up under memory pressure."""
    return f"memory pressure: host memory {in_use:.1f}% in use >= {threshold:g}%"


class PressureGuard:
    """Decides at each reading whether to give up a task now, and logs why.

    At most one task is given up per ``cooldown`` seconds; while the host is under
    pressure but runs nothing to give up, that is logged once."""

    def __init__(self, threshold: float, cooldown: float) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.gave_up_at: float | None = None
        """Monotonic time of the last give-up."""
        self._warned = False

    def choose(self, candidates: Sequence[PressureCandidate], now: float
               ) -> tuple[PressureCandidate, str] | None:
        """The task to give up now and the reason to reject it with, or None."""
        if self.gave_up_at is not None and now - self.gave_up_at < self.cooldown:
            return None
        in_use = memory_in_use()
        if in_use < self.threshold:
            self._warned = False
            return None
        chosen = choose_task_to_give_up(candidates)
        if chosen is None:
            if not self._warned:
                self._warned = True
                log.warning("memory pressure: host memory in use >= %g%%, but this agent "
                            "runs no task it could give up", self.threshold)
            return None
        reason = pressure_reason(in_use, self.threshold)
        log.warning("giving up %s (priority %d, of %d running task(s)): %s; no other task "
                    "is given up for %gs", chosen.task_id, chosen.priority, len(candidates),
                    reason, self.cooldown)
        self.gave_up_at = now
        return chosen, reason
