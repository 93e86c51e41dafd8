"""Coming from Sked, end to end with real agents and a real scheduler on SQLite: the
original bash example runs unmodified, Sked's ``scheduler: default`` service is
placed, and a task written by hand under ``state/hosts/`` in Go's shape runs, is seen by
``sked tasks`` / ``sked hosts``, reported by ``sked doctor`` and fixed by it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from skedlib.codecs import decode, encode, load_manifest
from skedlib.models import Task, TaskHealth
from tests.scheduler.conftest import Loop, wait_for

pytestmark = pytest.mark.slow

SKED = Path(__file__).resolve().parents[1] / "data" / "sked"


def test_original_bash_example_runs_unmodified(sqlite_loop: Loop) -> None:
    loop = sqlite_loop
    loop.start_agent(1, "--memory", "8192", "--cpu-units", "8192")
    loop.start_scheduler()
    loop.client.apply(load_manifest(SKED / "hello-world-bash.yml"))
    tasks = loop.wait_healthy("bashworld-service", 20, timeout=90)
    assert {t.task_definition.name for t in tasks} == {"bashworld"}
    assert all(t.port for t in tasks)  # provide_port: true
    st = wait_for(lambda: (s := loop.status("bashworld-service")) and s.state == "ok" and s,
                  30, "status ok")
    assert st.placed == 20


def test_seed_001_service_with_scheduler_default_is_placed(sqlite_loop: Loop) -> None:
    """Sked's own cluster and service JSON, as its readme gives them; a bash task
    definition of Sked's shape (its docker image cannot be pulled here)."""
    loop = sqlite_loop
    loop.start_agent(1)
    loop.start_agent(2)
    loop.start_scheduler()
    cluster = (SKED / "sked-cluster.json").read_text()
    service = (SKED / "sked-service.json").read_text()
    assert json.loads(service)["scheduler"] == "default"
    loop.apply(f"""
clusters: [{cluster}]
services: [{service}]
tasks:
  - name: helloworld
    version: 2
    provide_port: true
    port: 0
    tags: ["urlprefix-/helloworld"]
    containers:
      - name: helloworld
        type: bash
        executor: {{start: "exec sleep 600"}}
        setup: null
        checks: null
""")
    tasks = loop.wait_healthy("helloworld", 4, timeout=60)
    assert {t.host for t in tasks} <= {loop.host(1), loop.host(2)}
    st = wait_for(lambda: (s := loop.status("helloworld")) and s.state == "ok" and s, 30,
                  "status ok")
    assert st.scheduler == "default" and st.placed == 4
    assert "no scheduler named" not in loop.log_text("scheduler")


def _go_task(host: str, marker: Path) -> bytes:
    """A task as Sked's Go code wrote it (its later shape): the cluster as a name, nil
    slices as null, Go field spellings; a bash container with a teardown."""
    return json.dumps({
        "cluster": "default",
        "task_definition": {
            "name": "handmade", "version": 1, "provide_port": False, "port": 0,
            "tags": None, "grace_period": "5s", "max_attempts": 10,
            "containers": [{
                "name": "main", "type": "bash",
                "executor": {"ports": None, "env": None, "start": "exec sleep 600",
                             "stop": "", "artifact": "", "download_dir": ""},
                "setup": None, "teardown": [f"echo torn-down > {marker}"], "checks": None,
                "memory": 0, "cpu_units": 0, "disk_use": 0, "task_id": ""}]},
        "service": "handmade", "instance": 0, "port": 0, "host": host, "scheduled": True,
        "rejected": False, "reject_reason": ""}).encode()


def test_hand_written_go_shaped_task_runs_and_is_seen(sqlite_loop: Loop,
                                                      tmp_path: Path) -> None:
    loop = sqlite_loop
    loop.start_agent(1)
    host = loop.host(1)
    task_id = "default-handmade-1-0"
    marker = tmp_path / "teardown-ran"
    key = loop.keys.host_task(host, task_id)
    loop.backend.put(key, _go_task(host, marker))

    def healthy() -> TaskHealth | None:
        kv = loop.backend.get(loop.keys.task_health(task_id))
        h = decode(kv.value, TaskHealth) if kv else None
        return h if h is not None and h.healthy else None
    try:
        wait_for(healthy, 30, "the hand-written task to run")
    except AssertionError:
        raise AssertionError(loop.log_text()) from None
    assert loop.processes(task_id)

    # the operator sees it, marked
    code, out = loop.sked("tasks")
    assert code == 0, out
    line = next(x for x in out.splitlines() if x.startswith(task_id))
    assert host in line and "index-only" in line, out
    code, out = loop.sked("tasks", "-o", "json")
    row = next(r for r in json.loads(out) if r["id"] == task_id)
    assert row["index_only"] is True and row["host"] == host and row["healthy"] is True
    code, out = loop.sked("hosts", "-o", "json")
    assert code == 0, out
    assert next(h for h in json.loads(out) if h["name"] == host)["tasks"] == 1, out
    code, out = loop.sked("tasks", "--by-host")
    assert code == 0 and f"{host}: live, 1 task(s) (1 index-only)" in out, out
    assert "healthy (index-only)" in out, out

    # doctor reports the disagreement and the command that fixes it; the fix works
    code, out = loop.sked("doctor")
    assert code == 1, out
    assert f"{key}: index entry without task" in out, out
    assert f"fix: sked doctor --fix-index {task_id}" in out, out
    code, out = loop.sked("doctor", "--fix-index", task_id)
    assert code == 0, out
    stored = loop.backend.get(loop.keys.task(task_id))
    assert stored is not None
    assert decode(stored.value, Task).host == host
    code, out = loop.sked("doctor")
    assert (code, out.strip()) == (0, "no invalid records"), out

    # a task record whose index entry is gone, and one on the wrong host, are reported
    loop.backend.delete(key)
    wait_for(lambda: not loop.processes(task_id), 30, "the task to be stopped")
    # the container's teardown ran after it stopped
    wait_for(lambda: marker.exists(), 15, "the teardown command")
    assert marker.read_text().strip() == "torn-down"
    code, out = loop.sked("doctor")
    assert code == 1 and "no index entry" in out and f"placed on {host}" in out, out
    other = loop.keys.host_task("elsewhere", task_id)
    loop.backend.put(other, stored.value)
    code, out = loop.sked("doctor", "-o", "json")
    kinds = sorted(p["kind"] for p in json.loads(out) if "kind" in p)
    assert kinds == ["host mismatch", "no index entry"], out
    code, _ = loop.sked("doctor", "--fix-index", task_id)
    assert code == 0
    assert loop.backend.get(other) is None and loop.backend.get(key) is not None
    assert loop.sked("doctor")[0] == 0


def test_external_service_status_says_placed_externally(sqlite_loop: Loop) -> None:
    """A script places the tasks (both keys, as the hand-rolled example does); the
    daemon leaves them alone and its status counts them."""
    loop = sqlite_loop
    loop.start_agent(1)
    loop.start_scheduler()
    loop.apply("""
clusters: [{name: default, services: [ext]}]
services: [{name: ext, task_name: ext, task_version: 1, desired: 1, scheduler: external}]
tasks:
  - name: ext
    version: 1
    containers: [{name: main, type: bash, executor: {start: "exec sleep 600"}}]
""")
    st = wait_for(lambda: loop.status("ext"), 30, "a status")
    assert st.message.startswith("placed externally"), st
    assert not loop.tasks("ext")  # the daemon placed nothing
    td = loop.client.task_definition("ext", 1)
    cluster = loop.client.cluster("default")
    task = Task(cluster=cluster, task_definition=td, service="ext", instance=0,
                host=loop.host(1), scheduled=True)
    loop.backend.put(loop.keys.task(task.id), encode(task))
    loop.backend.put(loop.keys.host_task(task.host, task.id), encode(task))
    loop.wait_healthy("ext", 1)
    st = wait_for(lambda: (s := loop.status("ext")) and s.state == "ok" and s, 30, "ok")
    assert st.message == "placed externally" and st.placed == 1 and st.healthy == 1
    _, out = loop.sked("get", "services")
    assert "ok: placed externally" in out and "no scheduler named" not in out, out
