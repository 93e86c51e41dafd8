"""The jobs one node runs: each started under its limits on a runner thread, supervised,
stopped when asked (a cancel, a timeout, the node giving it back) and its end recorded;
and the :class:`~skedlib.runtime.Informer` on this node's running keys, whose
disappearance (a cancel, or the cleaner taking the job back) stops the job.

A runner thread runs one job at a time and is kept for the next (there are as many as
jobs ran at once, at most the slots, and one more while a runner writes ends with the
claims of the jobs that take their slots): a thread per job cost more than a ``true``
job.
The ends of jobs that finish together are recorded together: the runner that finds no
write in flight writes every end queued so far in one transaction
(:meth:`~skedlib.jobs.store.JobStore.finish_many`) while the others go back to work."""

from __future__ import annotations

import itertools
import logging
import os
import queue
import shlex
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from skedlib._files import open_append, private_dirs
from skedlib.errors import BackendUnavailable, SkedError
from skedlib.events import EventLog
from skedlib.executors.base import TaskRejected
from skedlib.executors.limits import Limited, Limiter
from skedlib.executors.supervision import reachable_by, user_popen_args
from skedlib.jobs._config import WorkerConfig, WorkerStats, spawn
from skedlib.jobs.models import Job, JobRequirements
from skedlib.jobs.store import JobEnd, JobStore, StoredJob
from skedlib.locks import KeptLease
from skedlib.metrics import METRICS
from skedlib.runtime import Backoff, Informer
from skedlib.store.base import ListResult, WatchEvent, WatchKind

__all__ = ["PROGRAM_CACHE_SECONDS", "RunningJob", "Runs", "command_line"]

log = logging.getLogger("skedlib.jobs.worker")

_DELETES: tuple[WatchKind, ...] = ("delete",)
"""What the running watch needs: a key that goes stops its job."""

PROGRAM_CACHE_SECONDS = 10.0
"""How long a worker remembers where a job's command is on its ``PATH``."""


@dataclass
class RunningJob:
    """One job this node claimed, while it runs."""

    stored: StoredJob
    stop: threading.Event = field(default_factory=threading.Event)
    stop_reason: str = ""
    record_changed: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    """Set once it ended and its end was recorded (or could not be)."""
    thread: threading.Thread | None = None
    """The runner thread running it (kept for the next job: wait for ``done``)."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    proc: subprocess.Popen[bytes] | None = None
    limited: Limited | None = None
    terminating: bool = False
    finishing: bool = False
    """Set before the finish transaction: the running key it deletes is its own doing."""
    claimed_at: float = field(default_factory=time.monotonic)
    """When this node claimed it (monotonic): the start of its duration metric."""
    output_bytes: int | None = 0
    """The size of its output file when it ended (0 until the file is opened: a job that
    never started wrote nothing; None: not known)."""
    spare_log: str | None = None
    """Its output file, empty at its end, the worker's own, and no process left that
    could write to it (its cgroups were seen empty): it serves a next job once the end
    is written (see :meth:`Runs._open_log`)."""


class _Spares:
    """Empty files or directories of ended jobs in ``directory``, private to the worker,
    each renamed into place for a next job rather than one made: a file or directory
    made per job costs the file system an inode (ext4 without a journal then searches
    past every inode freed in the last seconds: 0.15-0.5 ms of CPU per job here, against
    about 0.01 ms for a rename). As many are kept as jobs ended at once."""

    def __init__(self, directory: Path, names: Iterator[int]) -> None:
        self._dir = str(directory)
        self._names = names  # (shared: any name is taken once)
        self._lock = threading.Lock()
        self._free: list[str] = []

    def take(self, path: str) -> bool:
        """Rename a spare to ``path``; False when there is none, or ``path`` is there
        already (only this worker makes paths here)."""
        with self._lock:
            spare = self._free.pop() if self._free else None
        if spare is None:
            return False
        if os.path.lexists(path):
            with self._lock:
                self._free.append(spare)
            return False
        try:
            os.rename(spare, path)
        except OSError:  # the spare is gone
            return False
        return True

    def give(self, path: str) -> bool:
        """Keep ``path`` (empty, checked by the caller) as a spare; False when it cannot
        be renamed (then it is where it was)."""
        spare = f"{self._dir}/.free-{next(self._names)}"
        try:
            os.rename(path, spare)  # an empty one left by an earlier run is replaced
        except OSError:
            return False
        with self._lock:
            self._free.append(spare)
        return True


def command_line(job: Job) -> str:
    """The job's command as a shell would show it."""
    return shlex.join([job.command, *job.args])


class Runs:
    """The running jobs of node ``config.node`` (``jobs`` by id, guarded by ``cond``,
    which is notified whenever one ends)."""

    def __init__(self, store: JobStore, config: WorkerConfig, limiter: Limiter,
                 stats: WorkerStats, logs_dir: Path, work_dir: Path,
                 lease: Callable[[], KeptLease | None], events: EventLog | None = None
                 ) -> None:
        self.store = store
        self.events = events or EventLog(store.store, "", enabled=False)
        self.config = config
        self.node = config.node
        self.limiter = limiter
        self.stats = stats
        self.logs_dir = logs_dir
        self.work_dir = work_dir
        self._lease = lease
        self.cond = threading.Condition()
        self.jobs: dict[str, RunningJob] = {}
        self._informer: Informer | None = None
        self._launches: queue.SimpleQueue[RunningJob | None] = queue.SimpleQueue()
        self._runners_lock = threading.Lock()
        self._runners = 0
        self._idle = 0
        self._closed = False
        self._ends: list[tuple[RunningJob, JobEnd]] = []
        self._ends_lock = threading.Lock()
        self._recording = False
        self.slots: int | None = None
        """How many jobs may run at once (set by the claim queue): an end that leaves no
        slot free (the jobs claimed with it took them all) does not wake the claimer.
        None: every end wakes it."""
        self.refill: Callable[[list[JobEnd]], list[RunningJob] | None] | None = None
        """Writes ends together with the claim of the jobs that take their slots (set by
        the claim queue): the jobs claimed, to launch; None when it wrote nothing (the
        ends are then written alone)."""
        self._environ = dict(os.environ)
        """The worker's environment, every job's base (copied once: reading
        ``os.environ`` decodes every variable)."""
        self._programs: dict[tuple[str, str | None], tuple[str, float]] = {}
        names = itertools.count()
        self._spare_dirs = _Spares(work_dir, names)
        """Empty working directories of ended jobs (see :meth:`_make_work_dir`)."""
        self._spare_logs = _Spares(logs_dir, names)
        """Empty output files of ended jobs (see :meth:`_open_log`)."""
        self._work = str(work_dir)
        self._logs = str(logs_dir)
        """The two as text (paths made per job: ``pathlib`` costs more)."""

    def used(self) -> JobRequirements:
        """What the running jobs ask for in all."""
        used = JobRequirements()
        for run in list(self.jobs.values()):
            used = used.plus(run.stored.job.requirements)
        return used

    # -- starting ----------------------------------------------------------------------------
    def add(self, stored: StoredJob) -> RunningJob:
        """Count a job just claimed as running (call with ``cond`` held), before
        :meth:`launch`."""
        run = RunningJob(stored)
        self.jobs[stored.job.id] = run
        return run

    def launch(self, run: RunningJob) -> None:
        """Run the job on an idle runner thread, or on a new one when none is idle."""
        with self._runners_lock:
            closed = self._closed
            new = not self._idle or closed
            if new:
                self._runners += 1
                number = self._runners
            else:
                self._idle -= 1
        self._launches.put(run)
        if closed:  # after close(): a runner for this job, which ends after it
            self._launches.put(None)
        if new:
            spawn(self.node, "runner", self._runner, f"jobs-runner-{self.node}-{number}")

    def close(self) -> None:
        """Let the runner threads end once their jobs have (call after the last
        :meth:`launch`)."""
        with self._runners_lock:
            self._closed = True
            runners, self._runners, self._idle = self._runners, 0, 0
        for _ in range(runners):
            self._launches.put(None)

    def _runner(self) -> None:
        while True:
            run = self._launches.get()
            if run is None:
                return
            run.thread = threading.current_thread()
            try:
                self._run(run)
            except Exception:  # one job's failure must not end the runner
                log.exception("job worker %s: running job %s failed", self.node,
                              run.stored.job.id)
            with self._runners_lock:
                self._idle += 1

    def _run(self, run: RunningJob) -> None:
        job = run.stored.job
        try:
            status, exit_code, reason = self._execute(run)
        except BaseException:
            self._forget([run])
            raise
        if run.record_changed:
            self._forget([run])
            return
        self._record_end(run, JobEnd(job, run.stored.revision, status,  # type: ignore[arg-type]
                                     exit_code, reason, run.output_bytes))

    def _forget(self, runs: list[RunningJob]) -> None:
        """The jobs ended and their ends are recorded (or cannot be): free their slots,
        and wake the claimer when one is free (the claimer picks nothing without one)."""
        with self.cond:
            for run in runs:
                self.jobs.pop(run.stored.job.id, None)
            if self.slots is None or len(self.jobs) < self.slots:
                self.cond.notify_all()
        for run in runs:
            run.done.set()

    def _which(self, command: str, path: str | None) -> str | None:
        """``shutil.which``, remembered for :data:`PROGRAM_CACHE_SECONDS` (a lookup walks
        the ``PATH``: a system call per directory, for every job)."""
        key = (command, path)
        now = time.monotonic()
        hit = self._programs.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        program = shutil.which(command, path=path)
        if len(self._programs) >= 256:  # commands come from users: keep it bounded
            self._programs.clear()
        if program is not None:
            self._programs[key] = (program, now + PROGRAM_CACHE_SECONDS)
        else:
            self._programs.pop(key, None)
        return program

    def _execute(self, run: RunningJob) -> tuple[str, int | None, str]:
        job = run.stored.job
        env = {**self._environ, **job.env, "SKED_JOB_ID": job.id,
               "SKED_JOB_ATTEMPT": str(job.attempts), "SKED_NODE": self.node}
        program = self._which(job.command, env.get("PATH"))
        if program is None:
            return "failed", None, f"command not found on node {self.node}: {job.command}"
        # the host policy: the commands this node runs, and the user it runs them as
        policy = self.config.policy
        try:
            policy.check_argv([job.command, *job.args], resolved=program)
            user = policy.identity()
        except (TaskRejected, ValueError) as exc:  # PolicyRefused included
            return "failed", None, f"node {self.node}: {exc}"
        _, env = user_popen_args(user, env)
        if job.cwd:
            cwd = job.cwd
            if not os.path.isdir(cwd):
                return ("failed", None,
                        f"working directory {job.cwd} does not exist on node {self.node}")
        else:
            cwd = f"{self._work}/{job.id}"
            self._make_work_dir(cwd)
            if user is not None:  # its own, private; the worker's directories let it pass
                os.chown(cwd, user.uid, user.gid)
                reachable_by(Path(cwd), self.config.state_dir)
        try:
            limited = self.limiter.wrap(job.id, job.requirements, [program, *job.args],
                                        user=user)
        except SkedError as exc:
            return "failed", None, f"cannot apply limits on node {self.node}: {exc}"
        try:
            return self._supervise(run, limited, env, cwd)
        finally:
            limited.cleanup()
            if not job.cwd:
                self._free_work_dir(cwd)

    def _make_work_dir(self, cwd: str) -> None:
        """The job's own working directory (0700): the empty one of an ended job renamed
        into place, else a new one (one left by an earlier attempt is narrowed)."""
        if not self._spare_dirs.take(cwd):
            private_dirs(Path(cwd))

    def _free_work_dir(self, cwd: str) -> None:
        """Keep an ended job's directory for the next job when it is still empty, the
        worker's own and 0700 (as :meth:`_make_work_dir` made it); else remove it."""
        try:
            st = os.lstat(cwd)
            with os.scandir(cwd) as entries:
                empty = next(entries, None) is None
        except OSError:
            return
        # (as many are kept as jobs ran at once: each job takes one, or makes one)
        if empty and stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() \
                and stat.S_IMODE(st.st_mode) == 0o700 and self._spare_dirs.give(cwd):
            return
        try:
            os.rmdir(cwd)  # most jobs leave their directory empty
        except OSError:
            shutil.rmtree(cwd, ignore_errors=True)

    def _open_log(self, path: str) -> BinaryIO:
        """The job's output file, opened for appending: the empty one of an ended job
        renamed into place (see :attr:`RunningJob.spare_log`), else a new one; one
        already there (an earlier attempt's here) is appended to."""
        self._spare_logs.take(path)
        return open_append(path)

    @staticmethod
    def _measure_log(run: RunningJob, path: str, emptied: bool) -> None:
        """Its output file's size, and whether it may serve a next job (one look)."""
        try:
            st = os.lstat(path)
        except OSError:
            return
        if stat.S_ISREG(st.st_mode):
            run.output_bytes = st.st_size
            if emptied and not st.st_size and st.st_nlink == 1 \
                    and st.st_uid == os.geteuid():
                run.spare_log = path

    def _supervise(self, run: RunningJob, limited: Limited, env: dict[str, str],
                   cwd: str) -> tuple[str, int | None, str]:
        job = run.stored.job
        log_path = f"{self._logs}/{job.id}.log"
        try:
            run.output_bytes = None
            with self._open_log(log_path) as out:
                proc = limited.popen(stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                     start_new_session=True)
        except OSError as exc:
            return "failed", None, f"cannot start on node {self.node}: {exc}"
        limited.attach(proc.pid)
        timeout = job.timeout / 1e9 if job.timeout else None
        timer = None
        if timeout is not None:
            timer = threading.Timer(timeout, self.request_stop, (run, "timeout", False))
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
        self._measure_log(run, log_path, limited.emptied)
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

    def _record_end(self, run: RunningJob, end: JobEnd) -> None:
        """Queue the job's end; unless a write is in flight, write the queue (in one
        transaction, until nothing is left) — whoever writes takes the ends queued
        meanwhile with it."""
        run.finishing = True
        with self._ends_lock:
            self._ends.append((run, end))
            if self._recording:
                return
            self._recording = True
        while True:
            with self._ends_lock:
                batch, self._ends = self._ends, []
                if not batch:
                    self._recording = False
                    return
            claimed: list[RunningJob] = []
            try:
                claimed = self._finish(batch)
            except BaseException:
                with self._ends_lock:
                    self._recording = False
                raise
            finally:
                self._forget([r for r, _ in batch])
                for next_run in claimed:  # jobs claimed with these ends: start them now
                    self.launch(next_run)

    def _finish(self, batch: list[tuple[RunningJob, JobEnd]]) -> list[RunningJob]:
        """Write the ends of ``batch``; the jobs claimed with them (see ``refill``)."""
        backoff = Backoff(initial=0.1, maximum=2.0)
        ends = [end for _, end in batch]
        claimed = None
        if self.refill is not None:
            try:
                claimed = self.refill(ends)
            except SkedError as exc:  # written or not: the ends alone say which
                log.warning("job worker %s: claim failed: %s", self.node, exc)
        if claimed is not None:
            written = [end.job.status == "running" for end in ends]  # as finish_many
        while claimed is None:
            try:
                written = self.store.finish_many(ends)
                break
            except BackendUnavailable as exc:
                lease = self._lease()
                if lease is None or lease.lost.is_set():
                    for _, end in batch:
                        log.warning("job %s: ended (%s) but the node's lease is lost; its "
                                    "end is not recorded: %s", end.job.id, end.status, exc)
                    return []
                time.sleep(backoff.next())
        for (run, end), ok in zip(batch, written, strict=True):
            job, status, reason = end.job, end.status, end.reason
            if not ok:
                log.info("job %s: ended (%s) after its record changed (canceled or taken "
                         "back); not recorded", job.id, status)
                continue
            if run.spare_log is not None:  # written with 0: nobody asks this node for it
                self._spare_logs.give(run.spare_log)
            METRICS.job_seconds.labels(status).observe(time.monotonic() - run.claimed_at)
            if status == "complete":
                self.stats.completed += 1
            else:
                self.stats.failed += 1
            log.info("job %s %s on %s%s", job.id, status, self.node,
                     f": {reason}" if reason else "")
            self.events.record("job", job.id, status,
                               reason or f"{status} on node {self.node}", node=self.node,
                               exit=end.exit_code)
        return claimed or []

    # -- stopping ----------------------------------------------------------------------------
    def request_stop(self, run: RunningJob, reason: str, record_changed: bool) -> None:
        """Stop the job (SIGTERM, SIGKILL after the grace period); with
        ``record_changed`` its end is not recorded (the record is no longer its own)."""
        with run.lock:
            if record_changed:
                run.record_changed = True
            if not run.stop.is_set():
                run.stop_reason = reason
                run.stop.set()
                self._spawn_terminator(run)

    def _spawn_terminator(self, run: RunningJob) -> None:
        proc, limited = run.proc, run.limited
        if proc is None or limited is None or run.terminating or proc.returncode is not None:
            return
        run.terminating = True
        spawn(self.node, "stop", lambda: self._terminate(proc, limited),
              f"job-stop-{run.stored.job.id[:13]}")

    def _terminate(self, proc: subprocess.Popen[bytes], limited: Limited) -> None:
        """SIGTERM the job's processes, SIGKILL them after the grace period."""
        limited.kill_all(signal.SIGTERM)
        try:
            proc.wait(timeout=self.config.grace_period)
        except subprocess.TimeoutExpired:
            limited.kill_all(signal.SIGKILL)
            proc.wait()

    def give_back(self, run: RunningJob, why: str) -> None:
        """Hand a running job back (queued again or failed), then stop it."""
        try:
            stored = self.store.get(run.stored.job.id)
            if stored.revision == run.stored.revision:
                self.store.requeue_or_fail(stored, why)
                self.events.record("job", stored.job.id, "given back", why, node=self.node)
        except SkedError as exc:
            log.warning("job %s: could not give it back: %s", run.stored.job.id, exc)
        self.request_stop(run, why, record_changed=True)

    # -- this node's running keys ------------------------------------------------------------
    def follow(self) -> None:
        """Start following ``jobs/status/running/<node>/``: a key that goes stops its job.
        Only deletes are watched (this node's own claims are puts there, and need no
        message)."""
        self._informer = self.store.store.informer(
            self.store.keys.node_jobs_running(self.node), on_list=self._listed,
            on_events=self._changed, name=f"job worker {self.node}: running watch",
            kinds=_DELETES).start()

    def unfollow(self) -> None:
        """Stop following the running keys."""
        if self._informer is not None:
            self._informer.stop()

    def _listed(self, listed: ListResult) -> None:
        """A (re)listing: every job of ours whose key is not in it went while nobody
        watched. A job claimed after the listing's revision is not missing from it: its
        claim is newer than the listing (so this check cannot stop a fresh claim)."""
        present = {kv.key.rsplit("/", 1)[1] for kv in listed.items}
        for job_id, run in list(self.jobs.items()):
            if job_id not in present and run.stored.revision <= listed.revision \
                    and not run.finishing:
                self.key_gone(job_id)

    def _changed(self, events: list[WatchEvent]) -> None:
        for ev in events:
            if ev.kind == "delete":
                self.key_gone(ev.key.rsplit("/", 1)[1])

    def key_gone(self, job_id: str) -> None:
        """The running key of ``job_id`` went (not by this node's own finish): stop it."""
        run = self.jobs.get(job_id)
        if run is None or run.stop.is_set() or run.finishing:
            return
        try:
            job = self.store.get(job_id).job
            what = f"{job.status}: {job.reason}" if job.reason else job.status
        except SkedError:
            what = "removed"
        if job_id in self.jobs and not run.done.is_set():
            log.info("job %s: record changed (%s); stopping it", job_id, what)
            self.stats.stopped += 1
            self.request_stop(run, what, record_changed=True)
