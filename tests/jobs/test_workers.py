"""Job workers as real ``skedlib-agent --jobs-only`` processes, on SQLite and on a
3-member etcd: exactly-once under contention, requeue on node death, cancel, limits,
failures, logs."""

from __future__ import annotations

import collections
import signal
import sys
import time

import psutil
import pytest

from skedlib.errors import NotFound
from skedlib.jobs import JobFinished
from skedlib.jobs.client import JobWaitTimeout, LogsUnavailable
from tests.jobs.conftest import JobLoop, wait_for

PY = sys.executable


def _running_on(loop: JobLoop, job_id: str) -> str | None:
    job = loop.jobs.store.get(job_id).job
    return job.node if job.status == "running" else None


def test_every_job_runs_exactly_once_under_contention(job_loop: JobLoop) -> None:
    for n in range(3):
        job_loop.start_worker(n, slots=4)
    out = job_loop.tmp / "ran.txt"
    ids = [job_loop.jobs.submit("sh", ["-c", f'echo "$SKED_JOB_ID $SKED_NODE" >> {out}']).id
           for _ in range(120)]
    jobs = job_loop.wait_finished(ids, 90)
    assert {j.status for j in jobs} == {"complete"}, [j.reason for j in jobs]
    lines = out.read_text().split()
    ran = lines[0::2]
    assert sorted(ran) == sorted(ids), "every job ran exactly once"
    per_node = collections.Counter(lines[1::2])
    assert set(per_node) == set(job_loop.workers), f"every node worked: {per_node}"
    assert all(j.attempts == 1 and j.node == per_node_node for j, per_node_node
               in zip(jobs, [dict(zip(ran, lines[1::2], strict=True))[j.id] for j in jobs],
                      strict=True))
    assert job_loop.jobs.store.inconsistencies() == []


def test_worker_killed_mid_job_has_its_job_requeued_and_finished_elsewhere(
        job_loop: JobLoop) -> None:
    a, b = job_loop.node(0), job_loop.node(1)
    job_loop.start_worker(0, slots=1)
    marks = job_loop.tmp / "marks.txt"
    go = job_loop.tmp / "go"
    # the job ends only once the test says so: on a loaded machine, a fixed sleep could
    # end on node a before a is killed
    job = job_loop.jobs.submit(
        "sh", ["-c", f'echo "start $SKED_NODE" >> {marks}; '
                     f'while [ ! -e {go} ]; do sleep 0.1; done; echo "done $SKED_NODE" '
                     f'>> {marks}'])
    wait_for(lambda: _running_on(job_loop, job.id) == a, 20, "the job to run on node a")
    job_loop.start_worker(1, slots=1)
    wait_for(lambda: marks.exists() and "start" in marks.read_text(), 10, "the job to start")
    job_loop.kill_worker(a)
    go.touch()
    (done,) = job_loop.wait_finished([job.id], 60)
    assert done.status == "complete", done
    assert done.node == b and done.attempts == 2
    lines = marks.read_text().splitlines()
    assert lines == [f"start {a}", f"start {b}", f"done {b}"], \
        "the first attempt died with its worker; the second ran to the end"
    assert job_loop.jobs.store.inconsistencies() == []


def test_a_job_that_does_not_restart_fails_when_its_node_dies(sqlite_jobs: JobLoop) -> None:
    a = sqlite_jobs.node(0)
    sqlite_jobs.start_worker(0, slots=1)
    job = sqlite_jobs.jobs.submit("sleep", ["30"], restart_on_node_failure=False)
    wait_for(lambda: _running_on(sqlite_jobs, job.id) == a, 20, "the job to run")
    sqlite_jobs.start_worker(1, slots=1)
    sqlite_jobs.kill_worker(a)
    (done,) = sqlite_jobs.wait_finished([job.id], 30)
    assert done.status == "failed" and f"node {a} lost" in done.reason, done


def test_cancel_queued_and_running_jobs(job_loop: JobLoop) -> None:
    job_loop.start_worker(0, slots=2, memory=512)
    big = job_loop.jobs.submit("true", memory=100_000)
    status = job_loop.jobs.status(big.id)
    assert status.status == "queued"
    assert "no node can meet its requirements (memory 100000 MiB)" in status.reason
    assert job_loop.jobs.cancel(big.id).status == "canceled"
    with pytest.raises(JobFinished, match="already canceled"):
        job_loop.jobs.cancel(big.id)

    sleeper = job_loop.jobs.submit("sleep", ["60"])
    wait_for(lambda: _running_on(job_loop, sleeper.id), 20, "the job to run")
    wait_for(lambda: job_loop.job_processes(), 10, "its process")
    canceled = job_loop.jobs.cancel(sleeper.id)
    assert canceled.status == "canceled"
    wait_for(lambda: not job_loop.job_processes(), 10, "the canceled job's process to end")
    time.sleep(0.5)  # the worker's own end of the job must not overwrite the cancel
    after = job_loop.jobs.store.get(sleeper.id).job
    assert after.status == "canceled" and after.reason == "canceled"
    with pytest.raises(NotFound):
        job_loop.jobs.cancel("no-such-job")
    assert job_loop.jobs.store.inconsistencies() == []


def test_failures_are_reported_with_their_reason(sqlite_jobs: JobLoop) -> None:
    sqlite_jobs.start_worker(0, slots=4)
    exit3 = sqlite_jobs.jobs.submit("sh", ["-c", "exit 3"])
    missing = sqlite_jobs.jobs.submit("no-such-command-xyz")
    slow = sqlite_jobs.jobs.submit("sleep", ["30"], timeout=0.5)
    ok = sqlite_jobs.jobs.submit("true")
    jobs = {j.id: j for j in sqlite_jobs.wait_finished([exit3.id, missing.id, slow.id, ok.id])}
    assert (jobs[exit3.id].status, jobs[exit3.id].exit_code) == ("failed", 3)
    assert jobs[exit3.id].reason == "exit code 3"
    assert jobs[missing.id].status == "failed"
    assert "command not found" in jobs[missing.id].reason
    assert "no-such-command-xyz" in jobs[missing.id].reason
    assert jobs[slow.id].status == "failed" and "timed out after 0.5s" in jobs[slow.id].reason
    assert jobs[ok.id].status == "complete" and jobs[ok.id].exit_code == 0


def test_memory_limit_is_enforced_and_reported(sqlite_jobs: JobLoop) -> None:
    sqlite_jobs.start_worker(0, slots=2)
    node = sqlite_jobs.jobs.nodes()[0]
    hog = sqlite_jobs.jobs.submit(PY, ["-c", "b = bytearray(300 * 2**20)\n"
                                             "for i in range(0, len(b), 4096): b[i] = 1"],
                                  memory=64)
    small = sqlite_jobs.jobs.submit(PY, ["-c", "b = bytearray(8 * 2**20)"], memory=64)
    jobs = {j.id: j for j in sqlite_jobs.wait_finished([hog.id, small.id])}
    assert jobs[small.id].status == "complete", jobs[small.id]
    failed = jobs[hog.id]
    assert failed.status == "failed" and failed.limits == node.limits
    if node.limits.startswith("cgroup"):
        assert failed.exit_code == -signal.SIGKILL
        assert "memory limit of 64 MiB" in failed.reason, failed.reason
    else:
        assert "rlimit" in failed.reason, failed.reason


def test_logs_are_served_by_the_node_and_followed(sqlite_jobs: JobLoop) -> None:
    sqlite_jobs.start_worker(0, slots=2)
    with pytest.raises(LogsUnavailable, match="never started"):
        sqlite_jobs.jobs.logs(sqlite_jobs.jobs.submit("true", memory=10**6).id)
    job = sqlite_jobs.jobs.submit(
        "sh", ["-c", "for i in 1 2 3 4 5; do echo line $i; echo err $i >&2; sleep 0.3; done"])
    wait_for(lambda: _running_on(sqlite_jobs, job.id), 20, "the job to run")
    followed = b"".join(sqlite_jobs.jobs.logs(job.id, follow=True))
    assert sqlite_jobs.jobs.store.get(job.id).job.status == "complete"
    lines = followed.decode().splitlines()
    assert [x for x in lines if x.startswith("line")] == [f"line {i}" for i in range(1, 6)]
    assert [x for x in lines if x.startswith("err")] == [f"err {i}" for i in range(1, 6)]
    whole = b"".join(sqlite_jobs.jobs.logs(job.id))
    assert whole == followed
    assert b"".join(sqlite_jobs.jobs.logs(job.id, offset=7)) == whole[7:]


def test_logs_of_a_dead_node_are_a_clear_error(sqlite_jobs: JobLoop) -> None:
    a = sqlite_jobs.node(0)
    sqlite_jobs.start_worker(0, slots=1)
    job = sqlite_jobs.jobs.submit("echo", ["hello"])
    (done,) = sqlite_jobs.wait_finished([job.id])
    assert b"".join(sqlite_jobs.jobs.logs(job.id)) == b"hello\n"
    sqlite_jobs.kill_worker(a, signal.SIGTERM)
    with pytest.raises(LogsUnavailable, match=f"kept on node {a}.*cannot be reached"):
        list(sqlite_jobs.jobs.logs(done.id))


def test_wait_and_shutdown_gives_running_jobs_back(sqlite_jobs: JobLoop) -> None:
    a, b = sqlite_jobs.node(0), sqlite_jobs.node(1)
    sqlite_jobs.start_worker(0, slots=1)
    job = sqlite_jobs.jobs.submit("sleep", ["2"])
    wait_for(lambda: _running_on(sqlite_jobs, job.id) == a, 20, "the job to run")
    with pytest.raises(JobWaitTimeout, match="still running"):
        sqlite_jobs.jobs.wait(job.id, timeout=0.2)
    sqlite_jobs.kill_worker(a, signal.SIGTERM)  # graceful: the job goes back at once
    again = sqlite_jobs.jobs.store.get(job.id).job
    assert again.status == "queued" and f"node {a} shut down" in again.reason
    sqlite_jobs.start_worker(1, slots=1)
    done = sqlite_jobs.jobs.wait(job.id, timeout=30)
    assert done.status == "complete" and done.node == b and done.attempts == 2


def test_restarted_worker_takes_back_its_own_jobs_at_once(sqlite_jobs: JobLoop) -> None:
    a = sqlite_jobs.node(0)
    # a 60 s lease: a job retaken only when it expires could not be done in under 50 s
    proc = sqlite_jobs.start_worker(0, "--lease-ttl", "60", slots=1)
    job = sqlite_jobs.jobs.submit("sleep", ["1"])
    wait_for(lambda: _running_on(sqlite_jobs, job.id) == a, 20, "the job to run")
    pids = [p.pid for p in sqlite_jobs.job_processes()]
    assert pids
    sqlite_jobs.kill_worker(a)
    killed = time.monotonic()
    assert proc.returncode == -signal.SIGKILL
    wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status()
                             != psutil.STATUS_ZOMBIE for p in pids), 5,
             "the job to die with its worker")
    sqlite_jobs.start_worker(0, "--lease-ttl", "60", slots=1)
    done = sqlite_jobs.jobs.wait(job.id, timeout=45)
    assert time.monotonic() - killed < 50, "waited for the 60 s lease to expire"
    assert done.status == "complete" and done.attempts == 2


def test_unknown_job(sqlite_jobs: JobLoop) -> None:
    with pytest.raises(NotFound, match="job nope not found"):
        sqlite_jobs.jobs.status("nope")
    with pytest.raises(NotFound):
        list(sqlite_jobs.jobs.logs("nope"))
