"""The jobs one node runs: each started under its limits on a thread of its own,
supervised, stopped when asked (a cancel, a timeout, the node giving it back) and its end
recorded; and the :class:`~skedlib.runtime.Informer` on this node's running keys, whose
disappearance (a cancel, or the cleaner taking the job back) stops the job."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from skedlib._files import open_append, private_dirs
from skedlib.errors import BackendUnavailable, SkedError
from skedlib.events import EventLog
from skedlib.executors.base import TaskRejected
from skedlib.executors.limits import Limited, Limiter
from skedlib.executors.supervision import reachable_by, user_popen_args
from skedlib.jobs._config import WorkerConfig, WorkerStats, spawn
from skedlib.jobs.models import Job, JobRequirements
from skedlib.jobs.store import JobStore, StoredJob
from skedlib.locks import KeptLease
from skedlib.metrics import METRICS
from skedlib.runtime import Backoff, Informer
from skedlib.store.base import ListResult, WatchEvent

__all__ = ["RunningJob", "Runs", "command_line"]

log = logging.getLogger("skedlib.jobs.worker")


@dataclass
class RunningJob:
    """One job this node claimed, while it runs."""

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
    claimed_at: float = field(default_factory=time.monotonic)
    """When this node claimed it (monotonic): the start of its duration metric."""


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
        """Run the job on a thread of its own."""
        run.thread = spawn(self.node, "runner", lambda: self._run(run),
                           f"job-{run.stored.job.id[:13]}")

    def _run(self, run: RunningJob) -> None:
        job = run.stored.job
        try:
            status, exit_code, reason = self._execute(run)
            if not run.record_changed:
                self._finish(run, status, exit_code, reason)
        finally:
            with self.cond:
                self.jobs.pop(job.id, None)
                self.cond.notify_all()
            run.done.set()

    def _execute(self, run: RunningJob) -> tuple[str, int | None, str]:
        job = run.stored.job
        env = dict(os.environ)
        env.update(job.env)
        env.update(SKED_JOB_ID=job.id, SKED_JOB_ATTEMPT=str(job.attempts),
                   SKED_NODE=self.node)
        program = shutil.which(job.command, path=env.get("PATH"))
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
            cwd = Path(job.cwd)
            if not cwd.is_dir():
                return ("failed", None,
                        f"working directory {job.cwd} does not exist on node {self.node}")
        else:
            cwd = self.work_dir / job.id
            private_dirs(cwd)
            if user is not None:  # its own, private; the worker's directories let it pass
                os.chown(cwd, user.uid, user.gid)
                reachable_by(cwd, self.config.state_dir)
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
                shutil.rmtree(cwd, ignore_errors=True)

    def _supervise(self, run: RunningJob, limited: Limited, env: dict[str, str],
                   cwd: Path) -> tuple[str, int | None, str]:
        job = run.stored.job
        log_path = self.logs_dir / f"{job.id}.log"
        try:
            with open_append(log_path) as out:
                proc = subprocess.Popen(limited.argv, stdin=subprocess.DEVNULL, stdout=out,
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

    def _finish(self, run: RunningJob, status: str, exit_code: int | None,
                reason: str) -> None:
        job, revision = run.stored.job, run.stored.revision
        run.finishing = True
        backoff = Backoff(initial=0.1, maximum=2.0)
        while True:
            try:
                ok = self.store.finish(job, revision, status,  # type: ignore[arg-type]
                                       exit_code=exit_code, reason=reason)
                break
            except BackendUnavailable as exc:
                lease = self._lease()
                if lease is None or lease.lost.is_set():
                    log.warning("job %s: ended (%s) but the node's lease is lost; its end "
                                "is not recorded: %s", job.id, status, exc)
                    return
                time.sleep(backoff.next())
        if not ok:
            log.info("job %s: ended (%s) after its record changed (canceled or taken "
                     "back); not recorded", job.id, status)
            return
        METRICS.job_seconds.labels(status).observe(time.monotonic() - run.claimed_at)
        if status == "complete":
            self.stats.completed += 1
        else:
            self.stats.failed += 1
        log.info("job %s %s on %s%s", job.id, status, self.node,
                 f": {reason}" if reason else "")
        self.events.record("job", job.id, status, reason or f"{status} on node {self.node}",
                           node=self.node, exit=exit_code)

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
        """Start following ``jobs/status/running/<node>/``: a key that goes stops its job."""
        self._informer = self.store.store.informer(
            self.store.keys.node_jobs_running(self.node), on_list=self._listed,
            on_events=self._changed, name=f"job worker {self.node}: running watch").start()

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
