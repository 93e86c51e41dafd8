"""The job worker: claims queued jobs that fit this node, runs them, records how they
ended; serves their output; and, when elected, cleans up after lost nodes.

One :class:`JobWorker` per node (``skedlib-agent --jobs``). It wires together:

- the **claim queue** (:mod:`skedlib.jobs._queue`): an informer on
  ``jobs/status/queued/`` and the claimer, which takes the jobs that fit in one
  transaction (several at once when the queue is deep);
- the **running jobs** (:mod:`skedlib.jobs._running`): runner threads (one per job
  running at once, kept for the next jobs), each of which starts a job under its limits
  (in a cgroup reused from job to job), waits, and records ``complete`` or ``failed``
  (the ends of jobs that finish together in one transaction); and an informer on
  this node's ``jobs/status/running/<node>/``: a key that disappears (a cancel, or the
  cleaner taking the job back) stops that job;
- the **lease** (here): the node's record ``jobs/nodes/<node>`` is bound to a kept
  lease. If the lease is lost, the node stops every job (it could not record their
  ends) and registers again;
- **upkeep** (:mod:`skedlib.jobs._cleaner`): local output past the retention goes; on
  the one node holding the ``jobs/cleaner`` lock, the jobs of nodes whose record went
  are taken back (queued again or failed), finished jobs older than the retention are
  removed, and the backend's history is compacted;
- the **log server** (:mod:`skedlib.logserver`, shared with the agent's task output):
  ``GET /v1/jobs/<id>/logs?offset=&follow=``, on loopback unless configured otherwise,
  answering only requests that carry the node's token (kept 0600 in
  ``STATE_DIR/jobs/log-token`` and published in the node's record).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path

import msgspec

from skedlib._files import private_dirs
from skedlib.errors import BackendError, LeaseExpired, SkedError
from skedlib.events import EventLog
from skedlib.executors.limits import Limiter, detect_limiter
from skedlib.jobs._cleaner import Upkeep
from skedlib.jobs._config import WorkerConfig, WorkerStats, spawn
from skedlib.jobs._queue import ClaimQueue
from skedlib.jobs._running import Runs
from skedlib.jobs.models import JobNode, JobRequirements
from skedlib.jobs.store import JobStore
from skedlib.keys import Keyspace, validate_name
from skedlib.locks import KeptLease
from skedlib.logserver import FOLLOW_IDLE, LogServer, LogSource, load_token
from skedlib.runtime import Backoff, Store
from skedlib.store.base import Backend, Compare, Put

__all__ = ["FOLLOW_IDLE", "JobWorker", "WorkerConfig", "WorkerStats"]

log = logging.getLogger("skedlib.jobs.worker")


def _host_capacity(state_dir: Path) -> JobRequirements:
    import psutil

    try:
        disk = psutil.disk_usage(str(state_dir)).free // (1 << 20)
    except OSError:
        disk = 0
    return JobRequirements(memory=psutil.virtual_memory().total // (1 << 20),
                           cpu_units=(os.cpu_count() or 1) * 1024, disk=disk)


class JobWorker:
    """Works off the job queue on one node. ``start()``, later ``stop()``.

    ``backend`` is a :class:`Backend` (used under ``config.prefix``) or a
    :class:`~skedlib.runtime.Store` under that same prefix.
    """

    def __init__(self, backend: Backend | Store, config: WorkerConfig) -> None:
        validate_name(config.node, "node name")
        store = Store.of(backend, Keyspace(config.prefix))
        self.backend = store.backend
        self.config = config
        self.node = config.node
        self.store = JobStore(store)
        self.keys = self.store.keys
        self.stats = WorkerStats()
        self.capacity = config.capacity or _host_capacity(config.state_dir)
        self.slots = config.slots or (os.cpu_count() or 1)
        self.logs_dir = config.state_dir / "jobs" / "logs"
        self.work_dir = config.state_dir / "jobs" / "work"
        # one pooled cgroup per slot, emptied and reset between jobs
        self.limiter: Limiter = detect_limiter(self.node, config.limits, reuse=True)
        self._stopping = threading.Event()
        self._lease: KeptLease | None = None
        self.events = EventLog(self.store.store, f"job worker {self.node}")
        """Records the jobs' lifecycle (running, complete, failed …): :mod:`skedlib.events`."""
        self.runs = Runs(self.store, config, self.limiter, self.stats, self.logs_dir,
                         self.work_dir, lambda: self._lease, self.events)
        self.queue = ClaimQueue(self.store, config, self.runs, self.stats, self.slots,
                                self.capacity, self.limiter.kind, self._stopping)
        self.upkeep = Upkeep(self.store, config, self.stats, self.logs_dir,
                             self.job_running_here, self._stopping)
        self._upkeep_thread: threading.Thread | None = None
        self._server: LogServer | None = None
        self.log_url = ""
        self.log_token = ""
        """The secret the log server wants (published in the node's record)."""

    # -- life -----------------------------------------------------------------------------
    def start(self) -> None:
        """Open the log server, register the node, and start claiming."""
        private_dirs(self.logs_dir)
        private_dirs(self.work_dir)
        self.log_token = load_token(self.config.state_dir / "jobs" / "log-token")
        jobs = LogSource("job", self.logs_dir, lambda job_id, _query: [f"{job_id}.log"],
                         self.job_running_here, moves=True)
        self._server = LogServer(f"job worker {self.node}", {"jobs": jobs},
                                 self.config.listen, self.config.advertise,
                                 token=self.log_token)
        self._server.start()
        self.log_url = self.queue.log_url = self._server.url
        self._register(takeover=True)
        self.queue.start()
        self.runs.follow()
        self._upkeep_thread = spawn(self.node, "upkeep", self.upkeep.run,
                                    f"jobs-upkeep-{self.node}")
        log.info("job worker %s: %d slots, capacity %s, limits %s, logs at %s", self.node,
                 self.slots, msgspec.json.encode(self.capacity).decode(), self.limiter.kind,
                 self.log_url)

    def run(self, stop: threading.Event) -> None:
        """Start, wait for ``stop``, then :meth:`stop`."""
        self.start()
        stop.wait()
        self.stop()

    def stop(self) -> None:
        """Stop claiming; let running jobs finish for ``drain_timeout`` seconds, give the
        rest back to the queue (queued again, or failed when they do not restart), and
        leave. Idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self.queue.wake()
        self.upkeep.wake()
        deadline = time.monotonic() + self.config.drain_timeout
        for run in list(self.runs.jobs.values()):
            run.done.wait(max(0.0, deadline - time.monotonic()))
        for run in list(self.runs.jobs.values()):
            self.runs.give_back(run, f"node {self.node} shut down")
        for run in list(self.runs.jobs.values()):
            run.done.wait(self.config.grace_period + 5)
        self.upkeep.release()
        if self._lease is not None:
            self._lease.revoke()
        if self._server is not None:
            self._server.stop()
        self.queue.stop()
        self.runs.unfollow()
        self.runs.close()
        if self._upkeep_thread is not None:
            self._upkeep_thread.join(5)
        self.limiter.close()
        self.events.close()
        log.info("job worker %s stopped: %s", self.node,
                 msgspec.json.encode(self.stats).decode())

    def job_running_here(self, job_id: str) -> bool:
        """True while this node runs the job."""
        return job_id in self.runs.jobs

    def _is_cleaner(self) -> bool:
        return self.upkeep.is_cleaner()

    # -- registration ---------------------------------------------------------------------
    def _node_record(self) -> bytes:
        return msgspec.json.encode(JobNode(
            name=self.node, capacity=self.capacity, slots=self.slots, log_url=self.log_url,
            log_token=self.log_token,
            limits=self.limiter.kind, pid=os.getpid(), hostname=socket.gethostname(),
            started_at=time.time()))

    def _register(self, takeover: bool) -> None:
        """Put this node's record under a new lease. A record left by an earlier run of
        this node is taken over: its lease is ended and its jobs taken back. A record
        still there (its lease not yet ended) is waited out."""
        key = self.keys.job_node(self.node)
        backoff = Backoff(initial=0.5, maximum=5.0)
        while not self._stopping.is_set():
            try:
                old = self.backend.get(key)
                if old is not None and old.lease and takeover:
                    log.info("job worker %s: taking over the record of an earlier run",
                             self.node)
                    self.backend.revoke_lease(old.lease)
                elif old is not None and not old.lease:
                    self.backend.txn([Compare(key, old.revision)], [])
                self._take_back_own(f"node {self.node} restarted")
                lease = KeptLease(self.backend, self.config.lease_ttl,
                                  on_lost=self._lease_lost)
                res = self.backend.txn([Compare(key, 0)],
                                       [Put(key, self._node_record(), lease=lease.id)])
                if not res.succeeded:
                    lease.revoke()
                    self._stopping.wait(backoff.next())
                    continue
                self._lease = lease
                self.queue.node_revision = res.revision
                self.queue.claiming.set()
                self.queue.wake()
                return
            except (BackendError, LeaseExpired) as exc:
                log.warning("job worker %s: cannot register yet: %s", self.node, exc)
                self._stopping.wait(backoff.next())

    def _take_back_own(self, why: str) -> None:
        # jobs this process still runs are its own; those it is stopping are not
        mine = {job_id for job_id, run in self.runs.jobs.items() if not run.stop.is_set()}
        for kv in self.backend.list(self.keys.node_jobs_running(self.node)).items:
            job_id = kv.key.rsplit("/", 1)[1]
            if job_id in mine:
                continue
            try:
                stored = self.store.get(job_id)
            except SkedError:
                continue
            if stored.job.node == self.node:
                self.store.requeue_or_fail(stored, why)

    def _lease_lost(self) -> None:
        """The node's lease ended: nothing it records would hold, so stop every job and
        register again (the cleaner, or the new registration, takes them back)."""
        self.queue.claiming.clear()
        log.warning("job worker %s: lease lost; stopping %d jobs", self.node,
                    len(self.runs.jobs))
        for run in list(self.runs.jobs.values()):
            self.runs.request_stop(run, "the node's lease was lost", record_changed=True)
        if not self._stopping.is_set():
            spawn(self.node, "register", lambda: self._register(False),
                  f"jobs-register-{self.node}")
