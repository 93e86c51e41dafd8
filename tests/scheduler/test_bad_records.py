"""A task record whose id does not match its key, with a real scheduler daemon and agent
on SQLite: it is quarantined (one warning), never replanned forever, and a scale from
1 to 3 completes around it; ``sked doctor`` lists it and removes it."""

from __future__ import annotations

import subprocess

import pytest

from tests.scheduler.conftest import BIN, Loop, web_manifest

pytestmark = pytest.mark.slow


def test_a_task_record_with_a_wrong_id_does_not_freeze_its_service(sqlite_loop: Loop
                                                                    ) -> None:
    loop = sqlite_loop
    loop.start_agent(1, memory=512)
    loop.start_scheduler()
    loop.apply(web_manifest(desired=1, memory=64))
    (first,) = loop.wait_healthy("web", 1)
    # a buggy hand-rolled scheduler wrote task 0's record under the key of instance 7
    stored = loop.backend.get(loop.keys.task(first.id))
    assert stored is not None
    bad_key = loop.keys.task("default-web-1-7")
    loop.backend.put(bad_key, stored.value)

    loop.apply(web_manifest(desired=3, memory=64))
    tasks = loop.wait_healthy("web", 3, timeout=60)
    assert sorted(t.id for t in tasks) == [f"default-web-1-{i}" for i in range(3)]
    log = loop.log_text("scheduler")
    assert "planning again" not in log, log
    assert log.count("ignoring a record") == 1 and "default-web-1-7" in log, log

    # a new process, as a user runs it: one warning naming the key, the table without it
    proc = subprocess.run([str(BIN / "sked"), "--backend", loop.url, "tasks"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and "default-web-1-7" not in proc.stdout, proc
    assert proc.stderr.count("sked: warning:") == 1 and "default-web-1-7" in proc.stderr, proc
    code, out = loop.sked("get", "services")
    assert code == 0 and "1 invalid record(s)" in out, out
    code, out = loop.sked("doctor")
    assert code == 1 and "default-web-1-7" in out and "does not match its key" in out, out
    assert "sked doctor --delete sked/state/tasks/default-web-1-7" in out, out
    code, out = loop.sked("doctor", "--delete", bad_key)
    assert code == 0, out
    assert loop.sked("doctor") == (0, "no invalid records\n")
