"""The scheduler daemon (``skedlib-scheduler``): runs registered Scheduler plugins over the
desired state.

- :mod:`skedlib.scheduler.daemon`: :class:`~skedlib.scheduler.daemon.SchedulerDaemon`;
- :mod:`skedlib.scheduler.queue`: the de-duplicating work queue it uses;
- :mod:`skedlib.scheduler.status`: service status records;
- :mod:`skedlib.cli.scheduler`: the ``skedlib-scheduler`` command.
"""
