"""Exponential backoff: the one place that decides how long to wait before trying again.

Every loop that retries (a watch that failed, a restart of a crashed task, a scheduler
planning again after a conflict, a lease renewal) asks a :class:`Backoff` for its delay::

    backoff = Backoff(initial=0.2, maximum=5.0)
    while not stop.is_set():
        try:
            work()
            backoff.reset()
        except BackendError:
            stop.wait(backoff.next())

:meth:`Backoff.delay` is the pure form (the delay before attempt ``n``), for callers that
keep their own attempt count, such as the agent's per-task restart counter.
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delays of ``initial · factor^(n-1)`` seconds, capped at ``maximum``.

    ``jitter`` (0 to 1) spreads each delay uniformly over ``[d·(1-jitter), d]`` so that
    many processes failing together do not retry in step.
    """

    __slots__ = ("_attempts", "factor", "initial", "jitter", "maximum")

    def __init__(self, initial: float = 0.2, maximum: float = 5.0, factor: float = 2.0,
                 jitter: float = 0.0) -> None:
        if initial <= 0 or maximum < initial or factor < 1 or not 0 <= jitter <= 1:
            raise ValueError(f"bad backoff: initial={initial} maximum={maximum} "
                             f"factor={factor} jitter={jitter}")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self._attempts = 0

    @property
    def attempts(self) -> int:
        """How many delays :meth:`next` has handed out since the last :meth:`reset`."""
        return self._attempts

    def delay(self, attempt: int) -> float:
        """The delay before retry number ``attempt`` (1 is the first), without jitter."""
        exponent = min(max(attempt, 1) - 1, 64)  # bounded: no overflow after many failures
        return float(min(self.initial * self.factor ** exponent, self.maximum))

    def next(self) -> float:
        """The next delay (growing with every call until :meth:`reset`)."""
        self._attempts += 1
        d = self.delay(self._attempts)
        if self.jitter:
            d *= 1 - self.jitter * random.random()
        return d

    def reset(self) -> None:
        """Start again from ``initial`` (call it after a success)."""
        self._attempts = 0
