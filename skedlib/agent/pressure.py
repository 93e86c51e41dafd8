"""Memory pressure: which task an agent gives up when its host runs short of memory.

With ``AgentConfig.memory_pressure`` set, the agent reads :func:`memory_in_use` every
:data:`PRESSURE_INTERVAL` seconds. When it is at or above the threshold (and the last
give-up is at least ``pressure_cooldown`` seconds ago) it gives up one running task,
the one :func:`choose_task_to_give_up` picks, by rejecting it: a scheduler then places
the task on another host.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import psutil

__all__ = ["PRESSURE_INTERVAL", "PressureCandidate", "choose_task_to_give_up",
           "memory_in_use", "pressure_reason"]

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
