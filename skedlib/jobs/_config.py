"""How a job worker runs (:class:`WorkerConfig`) and what it counts (:class:`WorkerStats`);
both are re-exported by :mod:`skedlib.jobs.worker`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from skedlib.executors.policy import HostPolicy
from skedlib.jobs.models import JobRequirements

__all__ = ["WorkerConfig", "WorkerStats", "spawn"]

log = logging.getLogger("skedlib.jobs.worker")


@dataclass
class WorkerConfig:
    """How a job worker runs; every field has a ``skedlib-agent`` flag."""

    node: str
    state_dir: Path
    capacity: JobRequirements | None = None
    """What jobs may use in all (None: the host's memory and cores, the state dir's disk)."""
    slots: int = 0
    """Jobs at once at most (0: the number of cores)."""
    listen: tuple[str, int] = ("127.0.0.1", 0)
    advertise: str = ""
    """Host name or address in the log URL (default: the listen address)."""
    lease_ttl: float = 10.0
    claim_delay: float = 0.02
    """Seconds waited before a claim when every slot is busy; scaled by the load."""
    claim_window: int = 16
    """A claim picks at random among this many of the oldest jobs that fit."""
    limits: str = "auto"
    retention: float = 7 * 86400.0
    """Seconds finished jobs (records and local output) are kept."""
    cleaner: bool = True
    """Stand for election as the cleaner."""
    cleanup_interval: float = 30.0
    grace_period: float = 10.0
    """Seconds between SIGTERM and SIGKILL when a job is stopped."""
    drain_timeout: float = 0.0
    """On shutdown, seconds to let running jobs finish before giving them back."""
    prefix: str = "sked/"
    policy: HostPolicy = field(default_factory=HostPolicy)
    """The host policy: the commands jobs may run (``commands``) and the user they run
    as (``run_as``); the agent's ``--policy`` and ``--run-as``. A job the policy refuses
    fails with the rule."""


class WorkerStats(msgspec.Struct):
    """Counters of one worker (read them any time)."""

    claimed: int = 0
    claimed_with_ends: int = 0
    """Of ``claimed``: jobs claimed in the transaction that wrote the ends of others."""
    conflicts: int = 0
    completed: int = 0
    failed: int = 0
    stopped: int = 0
    """Jobs stopped because their record changed (canceled, taken back)."""
    requeued_by_cleaner: int = 0
    purged: int = 0


def spawn(node: str, role: str, target: Callable[[], None], name: str) -> threading.Thread:
    """Run ``target`` on a daemon thread called ``name``; an exception that escapes it is
    logged as the ``role`` thread of job worker ``node`` failing (never lost silently)."""
    def run() -> None:
        try:
            target()
        except Exception:
            log.exception("job worker %s: %s thread failed", node, role)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread
