"""End to end on SQLite, with a real agent and scheduler: a host that had no room for a
task gets it once its capacity grows; a host that refused a task by policy never does."""

from __future__ import annotations

from skedlib.codecs import encode
from skedlib.models import Cluster, Container, Task, TaskDefinition
from tests.scheduler.conftest import (
    PY,
    Loop,
    sqlite_loop,  # noqa: F401  (the fixture)
    wait_for,
)


def _manifest(big_desired: int, script_desired: int) -> str:
    return f"""
clusters:
  - name: default
    services: [big, script]
services:
  - name: big
    task_name: big
    task_version: 1
    desired: {big_desired}
  - name: script
    task_name: script
    task_version: 1
    desired: {script_desired}
task_definitions:
  - name: big
    version: 1
    provide_port: false
    memory: 200
    grace_period: 1s
    containers:
      - name: main
        type: process
        executor:
          argv: [{PY}, -c, "import time; time.sleep(3600)"]
  - name: script
    version: 1
    provide_port: false
    memory: 10
    grace_period: 1s
    containers:
      - name: main
        type: bash
        executor:
          start: sleep 3600
"""


def _issue_by_hand(loop: Loop, task: Task, host: str) -> None:
    """Issue ``task`` to ``host`` as a hand-written scheduler might: without asking
    whether it fits."""
    task.host, task.scheduled = host, True
    value = encode(task)
    loop.backend.put(loop.keys.host_task(host, task.id), value)
    loop.backend.put(loop.keys.task(task.id), value)


def test_a_task_too_big_runs_once_the_host_grows_and_a_policy_refusal_stays(
        sqlite_loop: Loop) -> None:  # noqa: F811
    loop = sqlite_loop
    h1 = loop.host(1)
    agent = loop.start_agent(1, "--executors", "process", memory=100)
    loop.apply(_manifest(big_desired=0, script_desired=0))

    # the task is issued to a host with too little room: its agent rejects it for want
    # of room, not for good
    td = TaskDefinition(name="big", version=1, memory=200, grace_period=1_000_000_000,
                        containers=[Container(name="main", type="process", executor={
                            "argv": [PY, "-c", "import time; time.sleep(3600)"]})])
    big_id = "default-big-1-0"
    _issue_by_hand(loop, Task(cluster=Cluster(name="default", services=["big", "script"]),
                              task_definition=td, service="big", instance=0), h1)

    def rejected(task_id: str) -> Task | None:
        t = next((t for t in loop.tasks() if t.id == task_id), None)
        return t if t is not None and t.rejected else None

    first = wait_for(lambda: rejected(big_id), 20, f"{big_id} to be rejected")
    assert h1 not in first.rejected_hosts
    assert [r.host for r in first.capacity_rejections] == [h1]
    assert "needs 200 MiB of memory but only 100 of 100" in first.reject_reason

    # the scheduler takes the service over: nowhere to put it for now
    loop.start_scheduler()
    loop.apply(_manifest(big_desired=1, script_desired=1))

    # the script task needs an executor the host does not enable: refused for good
    script_id = "default-script-1-0"
    script = wait_for(lambda: (t := rejected(script_id)) and h1 in t.rejected_hosts and t,
                      30, f"{script_id} to be rejected by {h1}")
    assert not script.capacity_rejections

    # the agent comes back with more memory: the big task is placed there and runs
    agent.terminate()
    agent.wait(30)
    loop.start_agent(1, "--executors", "process", memory=400)
    (placed,) = loop.wait_healthy("big", 1, timeout=60)
    assert placed.host == h1 and loop.processes(big_id)

    # the policy refusal stays: the script task is not placed on h1 again
    status = wait_for(lambda: (s := loop.status("script")) and s.state == "unschedulable"
                      and s, 30, "the script service to be unschedulable")
    assert "rejected" in status.message
    stored = next(t for t in loop.tasks("script") if t.id == script_id)
    assert stored.rejected and h1 in stored.rejected_hosts
    assert not loop.processes(script_id)
