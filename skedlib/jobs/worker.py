"""The job worker: claims queued jobs that fit this node, runs them, records how they
ended; serves their output; and, when elected, cleans up after lost nodes.

One :class:`JobWorker` per node (``skedlib-agent --jobs``). Its threads:

- **queue watch**: follows ``jobs/status/queued/`` into a local FIFO of claimable jobs
  (the queued key carries the record, so no further reads are needed);
- **claimer**: picks a job that fits the free slots and resources, waits a little in
  proportion to how loaded this node is (so idle nodes win the race: seed 003's answer
  to contention and fairness), then claims it with one transaction;
- **runners**: one thread per job, which starts it under its limits, waits, and
  records ``complete`` or ``failed``;
- **running watch**: follows this node's ``jobs/status/running/<node>/``: a key that
  disappears (a cancel, or the cleaner taking the job back) stops that job;
- **lease**: the node's record ``jobs/nodes/<node>`` is bound to a kept lease. If the
  lease is lost, the node stops every job (it could not record their ends) and
  registers again;
- **cleaner** (on the one node holding the ``jobs/cleaner`` lock): takes back the jobs
  of nodes whose record went (queued again or failed), removes finished jobs older
  than the retention, and compacts the backend's history;
- **log server**: ``GET /v1/jobs/<id>/logs?offset=&follow=``.
"""

from __future__ import annotations

import http.server
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from skedlib.errors import BackendError, BackendUnavailable, Compacted, LeaseExpired, SkedError
from skedlib.jobs.limits import Limited, Limiter, detect_limiter
from skedlib.jobs.models import Job, JobNode, JobRequirements
from skedlib.jobs.store import JobStore, StoredJob
from skedlib.keys import Keyspace, validate_name
from skedlib.locks import KeptLease, Lock
from skedlib.store.base import Backend, Compare, KeyValue, Put, Watch, WatchEvent

__all__ = ["JobWorker", "WorkerConfig", "WorkerStats"]

log = logging.getLogger("skedlib.jobs.worker")

FOLLOW_IDLE = 15.0
"""Seconds a following log request is held open without new output."""


@dataclass
class WorkerConfig:
    """How a job worker runs; every field has a ``skedlib-agent`` flag."""

    node: str
    state_dir: Path
    capacity: JobRequirements | None = None
    """What jobs may use in all (None: the host's memory and cores, the state dir's disk)."""
    slots: int = 0
    """Jobs at once at most (0: the number of cores)."""
    listen: tuple[str, int] = ("127.0.0.1", 0)
    advertise: str = ""
    """Host name or address in the log URL (default: the listen address)."""
    lease_ttl: float = 10.0
    claim_delay: float = 0.02
    """Seconds waited before a claim when every slot is busy; scaled by the load."""
    claim_window: int = 16
    """A claim picks at random among this many of the oldest jobs that fit."""
    limits: str = "auto"
    retention: float = 7 * 86400.0
    """Seconds finished jobs (records and local output) are kept."""
    cleaner: bool = True
    """Stand for election as the cleaner."""
    cleanup_interval: float = 30.0
    grace_period: float = 10.0
    """Seconds between SIGTERM and SIGKILL when a job is stopped."""
    drain_timeout: float = 0.0
    """On shutdown, seconds to let running jobs finish before giving them back."""
    prefix: str = "sked/"


class WorkerStats(msgspec.Struct):
    """Counters of one worker (read them any time)."""

    claimed: int = 0
    conflicts: int = 0
    completed: int = 0
    failed: int = 0
    stopped: int = 0
    """Jobs stopped because their record changed (canceled, taken back)."""
    requeued_by_cleaner: int = 0
    purged: int = 0


@dataclass
class _Running:
    stored: StoredJob
    stop: threading.Event = field(default_factory=threading.Event)
    stop_reason: str = ""
    record_changed: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    proc: subprocess.Popen[bytes] | None = None
    limited: Limited | None = None
    terminating: bool = False
    finishing: bool = False
    """Set before the finish transaction: the running key it deletes is its own doing."""


def _host_capacity(state_dir: Path) -> JobRequirements:
    import psutil

    try:
        disk = psutil.disk_usage(str(state_dir)).free // (1 << 20)
    except OSError:
        disk = 0
    return JobRequirements(memory=psutil.virtual_memory().total // (1 << 20),
                           cpu_units=(os.cpu_count() or 1) * 1024, disk=disk)


class JobWorker:
    """Works off the job queue on one node. ``start()``, later ``stop()``."""

    def __init__(self, backend: Backend, config: WorkerConfig) -> None:
        validate_name(config.node, "node name")
        self.backend = backend
        self.config = config
        self.node = config.node
        self.store = JobStore(backend, Keyspace(config.prefix))
        self.keys = self.store.keys
        self.stats = WorkerStats()
        self.capacity = config.capacity or _host_capacity(config.state_dir)
        self.slots = config.slots or (os.cpu_count() or 1)
        self.logs_dir = config.state_dir / "jobs" / "logs"
        self.work_dir = config.state_dir / "jobs" / "work"
        self.limiter: Limiter = detect_limiter(self.node, config.limits)
        self._cond = threading.Condition()
        self._queued: dict[str, KeyValue] = {}
        self._running: dict[str, _Running] = {}
        self._stopping = threading.Event()
        self._claiming = threading.Event()
        self._lease: KeptLease | None = None
        self._node_revision = 0
        self._threads: list[threading.Thread] = []
        self._server: http.server.ThreadingHTTPServer | None = None
        self.log_url = ""
        self._cleaner_lock: Lock | None = None

    # -- life -----------------------------------------------------------------------------
    def start(self) -> None:
        """Open the log server, register the node, and start claiming."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._start_log_server()
        self._register(takeover=True)
        for name, target in (("queue", self._queue_loop), ("claim", self._claim_loop),
                             ("running", self._running_loop), ("upkeep", self._upkeep_loop)):
            t = threading.Thread(target=self._guard(name, target),
                                 name=f"jobs-{name}-{self.node}", daemon=True)
            t.start()
            self._threads.append(t)
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
        with self._cond:
            self._cond.notify_all()
        deadline = time.monotonic() + self.config.drain_timeout
        for run in list(self._running.values()):
            run.done.wait(max(0.0, deadline - time.monotonic()))
        for run in list(self._running.values()):
            self._give_back(run, f"node {self.node} shut down")
        for run in list(self._running.values()):
            if run.thread is not None:
                run.thread.join(self.config.grace_period + 5)
        self._release_cleaner()
        if self._lease is not None:
            self._lease.revoke()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for t in self._threads:
            t.join(5)
        self.limiter.close()
        log.info("job worker %s stopped: %s", self.node,
                 msgspec.json.encode(self.stats).decode())

    def _guard(self, name: str, target: Any) -> Any:
        def run() -> None:
            try:
                target()
            except Exception:
                log.exception("job worker %s: %s thread failed", self.node, name)
        return run

    # -- registration ---------------------------------------------------------------------
    def _node_record(self) -> bytes:
        return msgspec.json.encode(JobNode(
            name=self.node, capacity=self.capacity, slots=self.slots, log_url=self.log_url,
            limits=self.limiter.kind, pid=os.getpid(), hostname=socket.gethostname(),
            started_at=time.time()))

    def _register(self, takeover: bool) -> None:
        """Put this node's record under a new lease. A record left by an earlier run of
        this node is taken over: its lease is ended and its jobs taken back."""
        key = self.keys.job_node(self.node)
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
                    time.sleep(0.5)
                    continue
                self._lease, self._node_revision = lease, res.revision
                self._claiming.set()
                with self._cond:
                    self._cond.notify_all()
                return
            except (BackendError, LeaseExpired) as exc:
                log.warning("job worker %s: cannot register yet: %s", self.node, exc)
                self._stopping.wait(1.0)

    def _take_back_own(self, why: str) -> None:
        # jobs this process still runs are its own; those it is stopping are not
        mine = {job_id for job_id, run in self._running.items() if not run.stop.is_set()}
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
        self._claiming.clear()
        log.warning("job worker %s: lease lost; stopping %d jobs", self.node,
                    len(self._running))
        for run in list(self._running.values()):
            self._request_stop(run, "the node's lease was lost", record_changed=True)
        if not self._stopping.is_set():
            threading.Thread(target=self._guard("register", lambda: self._register(False)),
                             name=f"jobs-register-{self.node}", daemon=True).start()

    # -- the queue ------------------------------------------------------------------------
    def _queue_loop(self) -> None:
        prefix = self.keys.jobs_queued
        while not self._stopping.is_set():
            try:
                listed = self.backend.list(prefix)
                with self._cond:
                    self._queued = {kv.key: kv for kv in listed.items}
                    self._cond.notify_all()
                with self.backend.watch(prefix, listed.revision + 1) as watch:
                    while not self._stopping.is_set():
                        events = watch.next(timeout=0.5)
                        if events:
                            self._apply_queue(events)
            except Compacted:
                continue
            except BackendError as exc:
                log.warning("job worker %s: queue watch: %s; listing again", self.node, exc)
                self._stopping.wait(0.5)

    def _apply_queue(self, events: list[WatchEvent]) -> None:
        with self._cond:
            for ev in events:
                if ev.kind == "put":
                    self._queued.pop(ev.key, None)  # a requeued job goes to the back
                    self._queued[ev.key] = KeyValue(ev.key, ev.value, ev.revision,
                                                    ev.revision)
                else:
                    self._queued.pop(ev.key, None)
            self._cond.notify_all()

    def _free(self) -> JobRequirements:
        used = JobRequirements()
        for run in self._running.values():
            used = used.plus(run.stored.job.requirements)
        return self.capacity.minus(used)

    def _pick(self) -> KeyValue | None:
        """Up to ``claim_window`` of the oldest queued jobs that fit; one at random."""
        if len(self._running) >= self.slots:
            return None
        free = self._free()
        fitting: list[KeyValue] = []
        for kv in self._queued.values():
            try:
                req = _requirements(kv.value)
            except msgspec.DecodeError:
                continue
            if req.fits(free):
                fitting.append(kv)
                if len(fitting) >= self.config.claim_window:
                    break
        return random.choice(fitting) if fitting else None

    def _claim_loop(self) -> None:
        while not self._stopping.is_set():
            with self._cond:
                kv = None
                while not self._stopping.is_set():
                    if self._claiming.is_set():
                        kv = self._pick()
                        if kv is not None:
                            break
                    self._cond.wait(1.0)
                if kv is None:
                    return
                load = len(self._running) / self.slots
                # A deep queue saturates every node anyway: holding back helps nobody.
                deep = len(self._queued) > 2 * self.config.claim_window
            if not deep:
                delay = self.config.claim_delay * load + random.uniform(0, 0.002)
                if self._stopping.wait(delay):
                    return
            with self._cond:
                if self._queued.get(kv.key) is not kv:
                    continue  # claimed (or changed) while we waited
            self._claim(kv)

    def _claim(self, kv: KeyValue) -> None:
        try:
            stored = self.store.claim(kv, self.node, self._node_revision,
                                      log_url=self.log_url, limits=self.limiter.kind)
        except SkedError as exc:
            log.warning("job worker %s: claim failed: %s", self.node, exc)
            self._stopping.wait(0.2)
            return
        with self._cond:
            if self._queued.get(kv.key) is kv:
                del self._queued[kv.key]  # the watch will confirm; do not retry it
            if stored is None:
                self.stats.conflicts += 1
                return
            self.stats.claimed += 1
            run = _Running(stored)
            self._running[stored.job.id] = run
        log.info("job %s claimed by %s (attempt %d): %s", stored.job.id, self.node,
                 stored.job.attempts, _command_line(stored.job))
        run.thread = threading.Thread(target=self._guard("runner", lambda: self._run(run)),
                                      name=f"job-{stored.job.id[:13]}", daemon=True)
        run.thread.start()

    # -- running a job --------------------------------------------------------------------
    def _run(self, run: _Running) -> None:
        job = run.stored.job
        try:
            status, exit_code, reason = self._execute(run)
            if not run.record_changed:
                self._finish(run, status, exit_code, reason)
        finally:
            with self._cond:
                self._running.pop(job.id, None)
                self._cond.notify_all()
            run.done.set()

    def _execute(self, run: _Running) -> tuple[str, int | None, str]:
        job = run.stored.job
        env = dict(os.environ)
        env.update(job.env)
        env.update(SKED_JOB_ID=job.id, SKED_JOB_ATTEMPT=str(job.attempts),
                   SKED_NODE=self.node)
        program = shutil.which(job.command, path=env.get("PATH"))
        if program is None:
            return "failed", None, f"command not found on node {self.node}: {job.command}"
        if job.cwd:
            cwd = Path(job.cwd)
            if not cwd.is_dir():
                return ("failed", None,
                        f"working directory {job.cwd} does not exist on node {self.node}")
        else:
            cwd = self.work_dir / job.id
            cwd.mkdir(parents=True, exist_ok=True)
        try:
            limited = self.limiter.wrap(job.id, job.requirements, [program, *job.args])
        except SkedError as exc:
            return "failed", None, f"cannot apply limits on node {self.node}: {exc}"
        try:
            return self._supervise(run, limited, env, cwd)
        finally:
            limited.cleanup()
            if not job.cwd:
                shutil.rmtree(cwd, ignore_errors=True)

    def _supervise(self, run: _Running, limited: Limited, env: dict[str, str],
                   cwd: Path) -> tuple[str, int | None, str]:
        job = run.stored.job
        log_path = self.logs_dir / f"{job.id}.log"
        try:
            with open(log_path, "ab") as out:
                proc = subprocess.Popen(limited.argv, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                        start_new_session=True)
        except OSError as exc:
            return "failed", None, f"cannot start on node {self.node}: {exc}"
        limited.attach(proc.pid)
        timeout = job.timeout / 1e9 if job.timeout else None
        timer = None
        if timeout is not None:
            timer = threading.Timer(timeout, self._request_stop, (run, "timeout", False))
            timer.daemon = True
            timer.start()
        with run.lock:
            run.proc, run.limited = proc, limited
            if run.stop.is_set():
                self._spawn_terminator(run)
        proc.wait()
        if timer is not None:
            timer.cancel()
        timed_out = run.stop_reason == "timeout"
        limited.kill_all()  # what the job left behind
        rc = proc.returncode
        if run.stop.is_set() and not timed_out:
            return "failed", rc, run.stop_reason or "stopped"
        if timed_out:
            return "failed", rc, f"timed out after {timeout:g}s"
        exceeded = limited.exceeded(rc)
        if exceeded:
            return "failed", rc, exceeded
        if rc == 0:
            return "complete", 0, ""
        hint = limited.hint(rc)
        if rc < 0:
            try:
                what = f"killed by signal {signal.Signals(-rc).name}"
            except ValueError:
                what = f"killed by signal {-rc}"
        else:
            what = f"exit code {rc}"
        return "failed", rc, f"{what}; {hint}" if hint else what

    def _terminate(self, proc: subprocess.Popen[bytes], limited: Limited) -> None:
        """SIGTERM the job's processes, SIGKILL them after the grace period."""
        limited.kill_all(signal.SIGTERM)
        try:
            proc.wait(timeout=self.config.grace_period)
        except subprocess.TimeoutExpired:
            limited.kill_all(signal.SIGKILL)
            proc.wait()

    def _finish(self, run: _Running, status: str, exit_code: int | None, reason: str) -> None:
        job, revision = run.stored.job, run.stored.revision
        run.finishing = True
        delay = 0.1
        while True:
            try:
                ok = self.store.finish(job, revision, status,  # type: ignore[arg-type]
                                       exit_code=exit_code, reason=reason)
            except BackendUnavailable as exc:
                if self._lease is None or self._lease.lost.is_set():
                    log.warning("job %s: ended (%s) but the node's lease is lost; its end "
                                "is not recorded: %s", job.id, status, exc)
                    return
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            break
        if not ok:
            log.info("job %s: ended (%s) after its record changed (canceled or taken "
                     "back); not recorded", job.id, status)
            return
        if status == "complete":
            self.stats.completed += 1
        else:
            self.stats.failed += 1
        log.info("job %s %s on %s%s", job.id, status, self.node,
                 f": {reason}" if reason else "")

    def _request_stop(self, run: _Running, reason: str, record_changed: bool) -> None:
        with run.lock:
            if record_changed:
                run.record_changed = True
            if not run.stop.is_set():
                run.stop_reason = reason
                run.stop.set()
                self._spawn_terminator(run)

    def _spawn_terminator(self, run: _Running) -> None:
        proc, limited = run.proc, run.limited
        if proc is None or limited is None or run.terminating or proc.returncode is not None:
            return
        run.terminating = True
        threading.Thread(target=self._guard("stop", lambda: self._terminate(proc, limited)),
                         name=f"job-stop-{run.stored.job.id[:13]}", daemon=True).start()

    def _give_back(self, run: _Running, why: str) -> None:
        """Hand a running job back (queued again or failed), then stop it."""
        try:
            stored = self.store.get(run.stored.job.id)
            if stored.revision == run.stored.revision:
                self.store.requeue_or_fail(stored, why)
        except SkedError as exc:
            log.warning("job %s: could not give it back: %s", run.stored.job.id, exc)
        self._request_stop(run, why, record_changed=True)

    # -- this node's running keys -----------------------------------------------------------
    def _running_loop(self) -> None:
        prefix = self.keys.node_jobs_running(self.node)
        while not self._stopping.is_set():
            try:
                start = self.backend.current_revision() + 1
                self._check_running_keys(prefix)
                with self.backend.watch(prefix, start) as watch:
                    while not self._stopping.is_set():
                        for ev in watch.next(timeout=0.5):
                            if ev.kind == "delete":
                                self._running_key_gone(ev.key.rsplit("/", 1)[1])
            except Compacted:
                continue
            except BackendError as exc:
                log.warning("job worker %s: running watch: %s", self.node, exc)
                self._stopping.wait(0.5)

    def _check_running_keys(self, prefix: str) -> None:
        ours = dict(self._running)  # before the listing: a later claim is not missing
        present = {kv.key.rsplit("/", 1)[1] for kv in self.backend.list(prefix).items}
        for job_id, run in ours.items():
            if job_id not in present and not run.finishing:
                self._running_key_gone(job_id)

    def _running_key_gone(self, job_id: str) -> None:
        run = self._running.get(job_id)
        if run is None or run.stop.is_set() or run.finishing:
            return
        try:
            job = self.store.get(job_id).job
            what = f"{job.status}: {job.reason}" if job.reason else job.status
        except SkedError:
            what = "removed"
        if job_id in self._running and not run.done.is_set():
            log.info("job %s: record changed (%s); stopping it", job_id, what)
            self.stats.stopped += 1
            self._request_stop(run, what, record_changed=True)

    # -- upkeep: cleaner election, cleanup, local output --------------------------------
    def _upkeep_loop(self) -> None:
        last_cleanup = 0.0
        compact_mark = 0
        watch: Watch | None = None
        while not self._stopping.is_set():
            try:
                if self.config.cleaner and not self._is_cleaner():
                    if watch is not None:
                        watch.close()
                        watch = None
                    self._try_become_cleaner()
                    if self._is_cleaner():
                        last_cleanup = 0.0  # sweep at once: nodes lost meanwhile
                if self._is_cleaner():
                    if watch is None:
                        listed = self.backend.list(self.keys.job_nodes)
                        watch = self.backend.watch(self.keys.job_nodes, listed.revision + 1)
                        last_cleanup = 0.0
                    for ev in watch.next(timeout=1.0):
                        if ev.kind == "delete":
                            self._take_back(ev.key.rsplit("/", 1)[1])
                elif self._stopping.wait(1.0):
                    break
                if time.monotonic() - last_cleanup >= self.config.cleanup_interval:
                    last_cleanup = time.monotonic()
                    self._purge_local_logs()
                    if self._is_cleaner():
                        self._sweep()
                        compact_mark = self._purge_and_compact(compact_mark)
            except (BackendError, LeaseExpired) as exc:
                log.warning("job worker %s: upkeep: %s", self.node, exc)
                if watch is not None:
                    watch.close()
                watch = None  # listed and watched again on the next turn
                self._stopping.wait(1.0)
        if watch is not None:
            watch.close()

    def _is_cleaner(self) -> bool:
        return self._cleaner_lock is not None and self._cleaner_lock.held

    def _try_become_cleaner(self) -> None:
        if self.backend.get(self.keys.job_cleaner()) is not None:
            return
        lock = Lock(self.backend, self.keys.job_cleaner(), ttl=self.config.lease_ttl,
                    holder=self.node)
        if lock.try_acquire():
            self._cleaner_lock = lock
            log.info("job worker %s is the job cleaner", self.node)

    def _release_cleaner(self) -> None:
        if self._cleaner_lock is not None:
            self._cleaner_lock.release()
            self._cleaner_lock = None

    def _take_back(self, node: str) -> None:
        lock = self._cleaner_lock
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
        lock = self._cleaner_lock
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
        return self.backend.current_revision()

    def _purge_local_logs(self) -> None:
        cutoff = time.time() - self.config.retention
        for path in self.logs_dir.glob("*.log"):
            try:
                if path.stem not in self._running and path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError:
                pass

    # -- the log server -------------------------------------------------------------------
    def _start_log_server(self) -> None:
        worker = self

        class Handler(_LogHandler):
            pass

        Handler.worker = worker
        host, port = self.config.listen
        server = http.server.ThreadingHTTPServer((host, port), Handler)
        server.daemon_threads = True
        self._server = server
        advertise = self.config.advertise or host
        if advertise in ("0.0.0.0", "::", ""):
            advertise = socket.gethostname()
        if ":" in advertise and not advertise.startswith("["):
            advertise = f"[{advertise}]"
        self.log_url = f"http://{advertise}:{server.server_address[1]}"
        t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                             name=f"jobs-logs-{self.node}", daemon=True)
        t.start()

    def job_running_here(self, job_id: str) -> bool:
        """True while this node runs the job."""
        return job_id in self._running


def _requirements(value: bytes) -> JobRequirements:
    return _req_decoder.decode(value).requirements


class _ReqOnly(msgspec.Struct):
    requirements: JobRequirements = msgspec.field(default_factory=JobRequirements)


_req_decoder = msgspec.json.Decoder(_ReqOnly)


def _command_line(job: Job) -> str:
    import shlex

    return shlex.join([job.command, *job.args])


class _LogHandler(http.server.BaseHTTPRequestHandler):
    """``GET /v1/jobs/<id>/logs?offset=N&follow=true`` and ``GET /v1/ping``."""

    worker: JobWorker
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("log server: " + format, *args)

    def _plain(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if parts == ["v1", "ping"]:
            self._plain(200, f"job worker {self.worker.node}\n")
            return
        if len(parts) != 4 or parts[:2] != ["v1", "jobs"] or parts[3] != "logs":
            self._plain(404, f"no such path: {url.path}\n")
            return
        job_id = parts[2]
        query = urllib.parse.parse_qs(url.query)
        try:
            offset = int(query.get("offset", ["0"])[0])
            if offset < 0:
                raise ValueError
        except ValueError:
            self._plain(400, "offset must be an integer >= 0\n")
            return
        follow = query.get("follow", ["false"])[0] in ("1", "true", "yes")
        try:
            validate_name(job_id, "job id")
        except SkedError as exc:
            self._plain(400, f"{exc}\n")
            return
        path = self.worker.logs_dir / f"{job_id}.log"
        if not path.exists():
            self._plain(404, f"node {self.worker.node} has no output of job {job_id}\n")
            return
        if not follow:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self._follow(path, job_id, offset)

    def _follow(self, path: Path, job_id: str, offset: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        idle_since = time.monotonic()
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                while True:
                    running = self.worker.job_running_here(job_id)
                    data = f.read(65536)
                    if data:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                        self.wfile.flush()
                        idle_since = time.monotonic()
                        continue
                    if not running or time.monotonic() - idle_since > FOLLOW_IDLE:
                        break
                    time.sleep(0.1)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
