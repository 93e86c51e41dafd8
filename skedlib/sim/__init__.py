"""``skedlib.sim``: try any scheduler against a trace in virtual time.

A deterministic discrete-event simulator (:class:`Simulator`) runs the registered
Scheduler plugins, unchanged, on the ``memory://`` store: plan, validate, commit, with
virtual hosts that fail, recover and drain. Traces are JSONL (:mod:`skedlib.sim.trace`,
docs/simulator.md); :mod:`skedlib.sim.importers` reads public cluster traces and
:mod:`skedlib.sim.report` turns runs into ``report.json`` and plots.
"""

from skedlib.sim.engine import SimEvent, SimStats, Simulator
from skedlib.sim.trace import (
           Batch,
           HostEvent,
           TraceRecord,
           read_trace,
           synthetic_trace,
           write_trace,
)

__all__ = ["Batch", "HostEvent", "SimEvent", "SimStats", "Simulator", "TraceRecord",
           "read_trace", "synthetic_trace", "write_trace"]
