"""Batch jobs under the host policy, through real ``skedlib-agent --jobs-only`` workers:
a command the policy does not list fails with the rule (and runs nothing), and
``--run-as`` runs jobs with that uid, in a work directory of their own, under the
node's limits."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

from tests.jobs.conftest import JobLoop

NOBODY = pwd.getpwnam("nobody")


def _policy(loop: JobLoop, text: str) -> str:
    path = loop.tmp / "policy.yml"
    path.write_text(text)
    return str(path)


def test_a_command_the_policy_does_not_list_fails_with_the_rule(sqlite_jobs: JobLoop) -> None:
    policy = _policy(sqlite_jobs, "commands: [/usr/bin/true, 'echo *']\n")
    sqlite_jobs.start_worker(0, "--policy", policy)
    marker = sqlite_jobs.tmp / "ran"
    refused = sqlite_jobs.jobs.submit("touch", [str(marker)])
    allowed = sqlite_jobs.jobs.submit("true")
    echoed = sqlite_jobs.jobs.submit("echo", ["hello"])
    jobs = {j.id: j for j in sqlite_jobs.wait_finished([refused.id, allowed.id, echoed.id])}
    failed = jobs[refused.id]
    assert failed.status == "failed" and failed.exit_code is None
    assert f"refused by the host policy ({policy}), rule commands" in failed.reason
    assert "touch" in failed.reason and "\n" not in failed.reason
    assert not marker.exists()  # nothing ran
    assert jobs[allowed.id].status == "complete" and jobs[echoed.id].status == "complete"


@pytest.mark.skipif(os.geteuid() != 0, reason="running as another user needs root")
def test_run_as_runs_jobs_with_that_uid_under_the_limits(sqlite_jobs: JobLoop) -> None:
    # pytest's temporary directories are 0700: let the job's user pass, as the directories
    # above a real --state-dir (/var/lib) do
    for p in (sqlite_jobs.tmp, *sqlite_jobs.tmp.parents):
        if p.stat().st_uid == os.geteuid():
            p.chmod(stat.S_IMODE(p.stat().st_mode) | 0o011)
    sqlite_jobs.start_worker(0, "--run-as", "nobody")
    node = sqlite_jobs.jobs.nodes()[0]
    job = sqlite_jobs.jobs.submit(
        "sh", ["-c", 'id -u; id -g; echo "$HOME $USER"; pwd; touch mine; '
                     'stat -c %u:%a "$PWD"'], memory=64)
    (done,) = sqlite_jobs.wait_finished([job.id])
    assert done.status == "complete", done
    assert done.limits == node.limits  # the limits still apply under another user
    output = b"".join(sqlite_jobs.jobs.logs(job.id)).decode()
    uid, gid, who, cwd, owner = output.split("\n")[:5]
    assert (int(uid), int(gid)) == (NOBODY.pw_uid, NOBODY.pw_gid)
    assert who == f"{NOBODY.pw_dir} nobody"
    assert Path(cwd).name == job.id
    assert owner == f"{NOBODY.pw_uid}:700"  # its own work directory, private to it
    # the job's output file stays the worker's (0640), not the job user's
    log = sqlite_jobs.tmp / node.name / "jobs" / "logs" / f"{job.id}.log"
    st = log.stat()
    assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o640
