"""The scheduler daemon (``skedlib-scheduler``): runs registered Scheduler plugins over the
desired state.

- :mod:`skedlib.scheduler.daemon`: :class:`~skedlib.scheduler.daemon.SchedulerDaemon`
  (threads, the watch-fed snapshot cache, the work queue, resync);
- :mod:`skedlib.scheduler.affected`: which ``(cluster, service)`` pairs a change affects;
- :mod:`skedlib.scheduler.run`: one run for a pair (lock, plan, validate, commit);
- :mod:`skedlib.scheduler.rollouts`: rollout history, ``auto_revert``, rollout status text;
- :mod:`skedlib.scheduler.status`: service status records;
- :mod:`skedlib.scheduler.queue`: the de-duplicating work queue;
- :mod:`skedlib.cli.scheduler`: the ``skedlib-scheduler`` command.
"""
