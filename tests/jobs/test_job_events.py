"""A job's lifecycle as events, recorded by a real job worker and shown by
``sked describe job``."""

from __future__ import annotations

import json

import pytest

from skedlib.cli.main import main
from skedlib.events import read_events
from tests.jobs.conftest import JobLoop, wait_for


def test_describe_job_shows_its_lifecycle(sqlite_jobs: JobLoop,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    loop = sqlite_jobs
    loop.start_worker(0)
    ok = loop.jobs.submit("true")
    bad = loop.jobs.submit("sh", ["-c", "exit 3"])
    loop.wait_finished([ok.id, bad.id])
    node = loop.node(0)
    wait_for(lambda: len(read_events(loop.store, "job", bad.id)) >= 2 or None, 20,
             "the job's events")
    running, failed = read_events(loop.store, "job", bad.id)
    assert (running.reason, running.source) == ("running", f"job worker {node}")
    assert running.details == {"node": node, "attempt": "1"}
    assert (failed.reason, failed.message) == ("failed", "exit code 3")
    assert failed.details == {"node": node, "exit": "3"}
    wait_for(lambda: len(read_events(loop.store, "job", ok.id)) >= 2 or None, 20,
             "the job's events")
    assert main(["--backend", loop.url, "describe", "job", ok.id, "-o", "json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["object"]["status"] == "complete"
    assert [e["reason"] for e in got["events"]] == ["running", "complete"]
    assert main(["--backend", loop.url, "describe", "job", ok.id]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"job {ok.id}\n") and " complete " in out
