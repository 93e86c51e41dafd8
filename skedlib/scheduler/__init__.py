"""The scheduler daemon (``skedlib-scheduler``): runs registered Scheduler plugins over the
desired state. Public: :class:`SchedulerDaemon`, to embed the daemon (or test a scheduler
end to end with :meth:`SchedulerDaemon.run_once`), and :func:`tune_gc` and
:func:`tune_switch_interval`, the garbage collector and thread switch settings of a
program that runs one; the modules below are internal.

- :mod:`skedlib.scheduler.daemon`: :class:`~skedlib.scheduler.daemon.SchedulerDaemon`
  (threads, the watch-fed snapshot cache, the work queue, resync);
- :mod:`skedlib.scheduler.affected`: which ``(cluster, service)`` pairs a change affects;
- :mod:`skedlib.scheduler.run`: one run for a pair (lock, plan, validate, commit);
- :mod:`skedlib.scheduler.rollouts`: rollout history, ``auto_revert``, rollout status text;
- :mod:`skedlib.scheduler.status`: service status records;
- :mod:`skedlib.scheduler.queue`: the de-duplicating work queue;
- :mod:`skedlib.cli.scheduler`: the ``skedlib-scheduler`` command.
"""

from skedlib.scheduler.daemon import (
    GC_THRESHOLDS,
    SWITCH_INTERVAL,
    RunOutcome,
    SchedulerDaemon,
    tune_gc,
    tune_switch_interval,
)

__all__ = ["GC_THRESHOLDS", "SWITCH_INTERVAL", "RunOutcome", "SchedulerDaemon", "tune_gc",
           "tune_switch_interval"]
