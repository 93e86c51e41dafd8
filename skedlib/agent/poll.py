"""The safety-net poll of container status.

Executors that can call back report an exited container at once; for them the agent
still asks every ``status_poll`` seconds (default 5) in case a report was lost. Executors
that cannot call back are asked every second. The questions run on the worker pool; the
answers come back to the control thread as :class:`~skedlib.agent.control.Exited` events.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future
from typing import Any

from skedlib.agent.adoption import Ref
from skedlib.agent.control import Call, Event, Exited
from skedlib.executors.base import Executor

__all__ = ["StatusPoll"]


class StatusPoll:
    """One poll at a time over the running tasks' containers."""

    def __init__(self, executors: Mapping[str, Executor], callbacks: Collection[str],
                 every: float, submit: Callable[[Callable[[], None]], Future[Any]],
                 report: Callable[[Event], None]) -> None:
        self.executors = executors
        self.callbacks = callbacks
        self.every = every
        self.submit = submit
        self.report = report
        self._polling = False

    def interval(self) -> float:
        """Seconds to the next poll (at most 1 s when an executor cannot call back)."""
        if set(self.executors) - set(self.callbacks):
            return min(self.every, 1.0)
        return self.every

    def poll(self, running: list[list[Ref]]) -> None:
        """Ask for the status of ``running`` containers (skipped while a poll runs)."""
        if self._polling or not running:
            return
        self._polling = True

        def poll() -> None:
            try:
                for refs in running:
                    for name, ref in refs:
                        status = self.executors[name].status(ref)
                        if status.state in ("exited", "missing"):
                            self.report(Exited(name, ref, status))
            finally:
                self.report(Call(self._done))

        self.submit(poll)

    def _done(self) -> None:
        self._polling = False
