"""Host ports: whether one is free, and the ports the agent hands out to tasks.

A task with ``provide_port`` gets ``task.port`` when the scheduler chose one, else a port
the agent picks: a random starting point in the range (default 20000-32000), then the
first port that no task of this agent holds and that can be bound on every interface
right now. Picking and holding happen under one lock, so tasks started in parallel never
get the same port.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading

from skedlib.executors.base import TaskRejected, substitute_port

__all__ = ["DEFAULT_PORT_RANGE", "PortAllocator", "port_is_free", "substitute_port"]

DEFAULT_PORT_RANGE = (20000, 32000)


def port_is_free(port: int, *, reuse: bool = True) -> bool:
    """True when a TCP listener could bind ``port`` on all interfaces now.

    ``reuse`` sets ``SO_REUSEADDR`` first, so connections lingering in TIME_WAIT from a
    process that just exited do not count as "in use" (a listener still does).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


class PortAllocator:
    """The ports this agent's tasks hold, and picking free ones in a range."""

    def __init__(self, low: int = DEFAULT_PORT_RANGE[0],
                 high: int = DEFAULT_PORT_RANGE[1]) -> None:
        if not 0 < low <= high <= 65535:
            raise ValueError(f"bad port range {low}-{high}")
        self.low = low
        self.high = high
        self._by_task: dict[str, int] = {}
        self._reserved: dict[str, frozenset[int]] = {}
        """Ports a task's executors reserve beyond its own (bash ``ports``)."""
        self._lock = threading.Lock()
        self._rng = random.Random()

    def held(self) -> dict[int, str]:
        """Held ports and the task holding each."""
        with self._lock:
            out = {port: task for task, ports in self._reserved.items() for port in ports}
            out.update({port: task for task, port in self._by_task.items()})
            return out

    def owner(self, port: int) -> str | None:
        """The task holding ``port`` (as its port or a reserved one), if any."""
        with self._lock:
            for task, held in self._by_task.items():
                if held == port:
                    return task
            for task, reserved in self._reserved.items():
                if port in reserved:
                    return task
        return None

    def reserve(self, task_id: str, ports: list[int]) -> None:
        """Record the ports ``task_id``'s executors reserve beyond its own port
        (:meth:`skedlib.TaskDefinition.executor_ports`), replacing earlier ones."""
        with self._lock:
            if ports:
                self._reserved[task_id] = frozenset(ports)
            else:
                self._reserved.pop(task_id, None)

    def hold(self, task_id: str, port: int) -> None:
        """Record that ``task_id`` uses ``port`` (replacing its earlier port)."""
        with self._lock:
            self._by_task[task_id] = port

    def release(self, task_id: str) -> None:
        """Forget the ports of ``task_id``. Idempotent."""
        with self._lock:
            self._by_task.pop(task_id, None)
            self._reserved.pop(task_id, None)

    def pick(self, task_id: str) -> int:
        """Choose, hold and return a free port for ``task_id``.

        Raises :class:`TaskRejected` when every port of the range is taken.
        """
        with self._lock:
            taken = set(self._by_task.values()).union(*self._reserved.values())
            size = self.high - self.low + 1
            start = self._rng.randrange(size)
            for i in range(size):
                port = self.low + (start + i) % size
                if port in taken:
                    continue
                with contextlib.suppress(OSError):
                    if port_is_free(port, reuse=False):
                        self._by_task[task_id] = port
                        return port
        raise TaskRejected(f"no free port left in {self.low}-{self.high}")
