"""The job worker's metrics: ``skedlib-agent --jobs-only --metrics`` counts its claims
and the durations of the jobs it ran, and shows its view of the queue."""

from __future__ import annotations

from tests.harness.common import free_ports
from tests.jobs.conftest import JobLoop
from tests.scheduler.test_metrics import scrape


def test_claims_and_durations_are_counted(sqlite_jobs: JobLoop) -> None:
    (port,) = free_ports(1)
    sqlite_jobs.start_worker(0, "--metrics", f":{port}", slots=2)
    ok = sqlite_jobs.jobs.submit("true", []).id
    bad = sqlite_jobs.jobs.submit("false", []).id
    jobs = sqlite_jobs.wait_finished([ok, bad], 60)
    assert sorted(j.status for j in jobs) == ["complete", "failed"]
    samples = scrape(port)
    assert samples["skedlib_jobs_claims_total"] == 2
    assert samples['skedlib_jobs_duration_seconds_count{status="complete"}'] == 1
    assert samples['skedlib_jobs_duration_seconds_count{status="failed"}'] == 1
    assert samples["skedlib_jobs_queue_depth"] == 0
    # --jobs-only runs no agent: no task is counted
    assert not any(name.startswith("skedlib_agent_tasks{") for name in samples)
