"""The command-line programs: ``sked`` (:mod:`skedlib.cli.main`), ``skedlib-agent``
(:mod:`skedlib.cli.agent`) and ``skedlib-scheduler`` (:mod:`skedlib.cli.scheduler`).

Only this package (and :mod:`skedlib.api`) parses arguments; the daemons it starts know
nothing of it.
"""
