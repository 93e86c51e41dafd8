"""Upkeep of one node, and the job cleaner when this node is elected.

Every node removes its own job output older than the retention. The one node holding
the ``jobs/cleaner`` lock also follows ``jobs/nodes/`` with an
:class:`~skedlib.runtime.Informer` (started when it becomes the cleaner, stopped when it
loses the lock): a node record that goes has its jobs taken back (queued again, or
failed). Every ``cleanup_interval``, and at once after each (re)listing of the nodes, it
sweeps for nodes lost while nobody watched, removes finished jobs older than the
retention and compacts the backend's history.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from skedlib.errors import BackendError, LeaseExpired, SkedError
from skedlib.jobs._config import WorkerConfig, WorkerStats
from skedlib.jobs.store import JobStore
from skedlib.locks import Lock
from skedlib.runtime import Backoff, Informer
from skedlib.store.base import ListResult, WatchEvent

__all__ = ["Upkeep"]

log = logging.getLogger("skedlib.jobs.worker")


class Upkeep:
    """The upkeep loop of node ``config.node`` (:meth:`run` on a thread of its own)."""

    def __init__(self, store: JobStore, config: WorkerConfig, stats: WorkerStats,
                 logs_dir: Path, running_here: Callable[[str], bool],
                 stopping: threading.Event) -> None:
        self.store = store
        self.backend = store.backend
        self.keys = store.keys
        self.config = config
        self.node = config.node
        self.stats = stats
        self.logs_dir = logs_dir
        self.running_here = running_here
        self.stopping = stopping
        self._lock: Lock | None = None
        self._nodes: Informer | None = None
        self._due = threading.Event()
        """Set to sweep at once (a listing of the nodes, or stopping)."""

    def is_cleaner(self) -> bool:
        """True while this node holds the cleaner lock."""
        return self._lock is not None and self._lock.held

    def wake(self) -> None:
        """Let :meth:`run` look again now (call it after setting ``stopping``)."""
        self._due.set()

    def release(self) -> None:
        """Stop cleaning and give the lock up (on shutdown)."""
        self._unfollow()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> None:
        """Stand for election, follow the nodes while elected, clean up every interval."""
        last_cleanup = 0.0
        compact_mark = 0
        backoff = Backoff(initial=1.0, maximum=5.0)
        try:
            while not self.stopping.is_set():
                try:
                    self._elect()
                    if self._due.is_set() or \
                            time.monotonic() - last_cleanup >= self.config.cleanup_interval:
                        self._due.clear()
                        last_cleanup = time.monotonic()
                        self._purge_local_logs()
                        if self.is_cleaner():
                            self._sweep()
                            compact_mark = self._purge_and_compact(compact_mark)
                    backoff.reset()
                except (BackendError, LeaseExpired) as exc:
                    log.warning("job worker %s: upkeep: %s", self.node, exc)
                    self.stopping.wait(backoff.next())
                    continue
                self._due.wait(1.0)
        finally:
            self._unfollow()

    def _elect(self) -> None:
        if self.is_cleaner():
            return
        self._unfollow()  # a lost lock: stop following before anyone else cleans
        if not self.config.cleaner or self.backend.get(self.keys.job_cleaner()) is not None:
            return
        lock = Lock(self.backend, self.keys.job_cleaner(), ttl=self.config.lease_ttl,
                    holder=self.node)
        if lock.try_acquire():
            self._lock = lock
            log.info("job worker %s is the job cleaner", self.node)
            self._nodes = self.store.store.informer(
                self.keys.job_nodes, on_list=self._nodes_listed, on_events=self._nodes_changed,
                name=f"job worker {self.node}: cleaner's node watch").start()

    def _unfollow(self) -> None:
        if self._nodes is not None:
            self._nodes.stop()
            self._nodes = None

    # -- the cleaner ---------------------------------------------------------------------------
    def _nodes_listed(self, listed: ListResult) -> None:
        del listed  # the sweep reads the running keys and the nodes again, together
        self._due.set()  # sweep at once: nodes lost while nobody watched

    def _nodes_changed(self, events: list[WatchEvent]) -> None:
        for ev in events:
            if ev.kind != "delete":
                continue
            node = ev.key.rsplit("/", 1)[1]
            try:
                self._take_back(node)
            except BackendError:
                raise  # the informer hands this batch again once the store answers
            except SkedError as exc:  # a bad record must not stop the node watch
                log.warning("cleaner %s: cannot take back the jobs of lost node %s: %s "
                            "(the next sweep tries again)", self.node, node, exc)

    def _take_back(self, node: str) -> None:
        lock = self._lock
        if lock is None or not lock.held:
            return
        moved = self.store.requeue_node(node, f"node {node} lost", fence=[lock.fence()])
        self.stats.requeued_by_cleaner += len(moved)
        for job in moved:
            log.info("cleaner %s: job %s of lost node %s is %s", self.node, job.id, node,
                     job.status)

    def _sweep(self) -> None:
        """Take back the jobs of every node that has running jobs but no record (a node
        lost while no cleaner was watching)."""
        running = self.backend.list(self.keys.jobs_running).items
        nodes = {kv.key.rsplit("/", 1)[1]
                 for kv in self.backend.list(self.keys.job_nodes).items}
        lost = {kv.key[len(self.keys.jobs_running):].split("/", 1)[0] for kv in running}
        for node in sorted(lost - nodes):
            self._take_back(node)

    def _purge_and_compact(self, mark: int) -> int:
        lock = self._lock
        if lock is None or not lock.held:
            return mark
        purged = self.store.purge(time.time() - self.config.retention, fence=[lock.fence()])
        self.stats.purged += purged
        if purged:
            log.info("cleaner %s: removed %d finished jobs older than %gs", self.node,
                     purged, self.config.retention)
        # Compact up to the revision seen one interval ago, so that a watcher that is
        # at most one interval behind can still resume.
        if mark:
            self.backend.compact(mark)
        return self.backend.current_revision(self.keys.prefix)

    def _purge_local_logs(self) -> None:
        cutoff = time.time() - self.config.retention
        for path in self.logs_dir.glob("*.log"):
            try:
                if not self.running_here(path.stem) and path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError:
                pass
