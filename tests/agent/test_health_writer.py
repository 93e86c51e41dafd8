"""The health writer and records of other hosts (a real SQLite store, two writers).

A restarted agent may adopt a task from a listing older than the task's move to another
host: it then writes the task's health, and deletes it when it stops its stale copy.
Neither may touch the new host's record (the chaos run found such tasks running healthy
on their host without a health record until the next refresh)."""

from __future__ import annotations

from pathlib import Path

from skedlib.agent.records import HealthWriter
from skedlib.codecs import decode
from skedlib.keys import Keyspace
from skedlib.models import HealthState, TaskHealth
from skedlib.plugins import open_backend

TASK = "default-web-1-0"


def _health(host: str, state: HealthState = "healthy") -> TaskHealth:
    return TaskHealth(task_id=TASK, host=host, state=state, healthy=state == "healthy")


def test_a_stale_agent_leaves_the_new_hosts_record_alone(tmp_path: Path) -> None:
    backend = open_backend(f"sqlite://{tmp_path}/store.db")
    keys = Keyspace()
    old, new = HealthWriter(backend, keys, "old"), HealthWriter(backend, keys, "new")
    try:
        backend.put(keys.host_task("new", TASK), b"{}")  # the task moved to "new"
        new.put(_health("new"))
        assert new.flush(10)

        # "old" adopted it from an older listing, then stops its copy and forgets it
        old.put(_health("old"))
        assert old.flush(10)
        old.put(_health("old", "exited"))
        assert old.flush(10)
        old.delete(TASK)
        assert old.flush(10)
        kv = backend.get(keys.task_health(TASK))
        assert kv is not None, "the new host's record was deleted"
        record = decode(kv.value, TaskHealth)
        assert (record.host, record.healthy) == ("new", True)

        # issued back to "old": its record replaces the other host's
        backend.delete(keys.host_task("new", TASK))
        backend.put(keys.host_task("old", TASK), b"{}")
        old.put(_health("old"))
        assert old.flush(10)
        kv = backend.get(keys.task_health(TASK))
        assert kv is not None
        assert decode(kv.value, TaskHealth).host == "old"
    finally:
        old.close()
        new.close()
        backend.close()
