"""The whole loop with real processes: ``sked apply`` → ``skedlib-scheduler`` → two
``skedlib-agent`` processes → healthy tasks, on SQLite and on a 3-member etcd cluster."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest
import yaml

from tests.scheduler.conftest import Loop, wait_for, web_manifest

pytestmark = pytest.mark.slow


def _full_loop(loop: Loop) -> None:
    loop.start_agent(1, memory=256)
    loop.start_agent(2, memory=256)
    loop.start_scheduler()
    loop.apply(web_manifest(desired=2, memory=100))
    first = loop.wait_healthy("web", 2)
    assert {t.id for t in first} == {"default-web-1-0", "default-web-1-1"}

    # scale up past one host's memory (2 x 100 of 256 per host): both hosts are used
    loop.apply(web_manifest(desired=4, memory=100))
    tasks = loop.wait_healthy("web", 4)
    assert sorted(t.host for t in tasks) == sorted([loop.host(1)] * 2 + [loop.host(2)] * 2)
    st = wait_for(lambda: (s := loop.status("web")) and s.state == "ok" and s, 15,
                  "status ok")
    assert (st.desired, st.placed, st.healthy) == (4, 4, 4)
    code, out = loop.sked("get", "services")
    assert code == 0 and out.splitlines()[2].split()[4:] == ["4", "4", "4", "ok"], out

    # scale down: the highest instances stop, their processes go away
    loop.apply(web_manifest(desired=1, memory=100))
    kept = loop.wait_healthy("web", 1)
    assert kept[0].id == "default-web-1-0"
    wait_for(lambda: len(loop.processes()) == 1, 20, "3 task processes to stop")

    # each task is in exactly one host index, the one its task record names
    index = [kv.key for kv in loop.backend.list(loop.keys.all_host_tasks).items]
    assert index == [loop.keys.host_task(kept[0].host, kept[0].id)]

    # delete the service: its task stops and its status goes
    assert loop.sked("delete", "service", "web")[0] == 0
    wait_for(lambda: not loop.tasks() and loop.status("web") is None, 20,
             "the deleted service's task and status to go")
    wait_for(lambda: not loop.processes(), 20, "the last task process to stop")
    log = loop.log_text("scheduler")
    assert "placed default-web-1-0 on" in log
    assert "stopped default-web-1-0 (web is no longer wanted)" in log


def test_full_loop_sqlite(sqlite_loop: Loop) -> None:
    _full_loop(sqlite_loop)


@pytest.mark.integration
def test_full_loop_etcd(etcd_loop: Loop) -> None:
    _full_loop(etcd_loop)


def test_rejected_task_is_placed_on_the_other_host(sqlite_loop: Loop) -> None:
    loop = sqlite_loop
    # host 1 is smaller, so binpack prefers it, but it cannot run bash containers
    loop.start_agent(1, "--executors", "process", memory=512)
    loop.start_agent(2, "--executors", "bash,process", memory=4096)
    loop.start_scheduler()
    loop.apply("""
clusters: [{name: default, services: [sh]}]
services: [{name: sh, task_name: sh, task_version: 1, desired: 1}]
task_definitions:
  - name: sh
    version: 1
    memory: 64
    grace_period: 1s
    containers: [{name: main, type: bash, executor: {start: "exec sleep 600"}}]
""")
    (task,) = loop.wait_healthy("sh", 1)
    assert task.host == loop.host(2)
    assert task.rejected_hosts == [loop.host(1)] and not task.rejected
    log = loop.log_text("scheduler")
    assert f"placed default-sh-1-0 on {loop.host(1)}" in log
    assert f"placed default-sh-1-0 on {loop.host(2)} (was on {loop.host(1)}: rejected: " \
           "container main: executor 'bash' is not enabled" in log


def test_port_taken_on_every_host_is_reported(sqlite_loop: Loop) -> None:
    loop = sqlite_loop
    loop.start_agent(1)
    loop.start_agent(2)
    loop.start_scheduler()
    with socket.socket() as taken:  # a process that is not a task holds the port
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        loop.apply(f"""
clusters: [{{name: default, services: [fixed]}}]
services: [{{name: fixed, task_name: fixed, task_version: 1, desired: 1}}]
task_definitions:
  - name: fixed
    version: 1
    port: {port}
    memory: 16
    containers: [{{name: main, type: process, executor: {{argv: [sleep, "600"]}}}}]
""")
        st = wait_for(lambda: (s := loop.status("fixed")) and s.state == "unschedulable" and s,
                      30, "the service to be unschedulable")
    # a busy port is a rejection for want of room: both hosts are avoided for a while
    assert st.message == "1 task(s) unschedulable: 0/2 hosts fit: host lacked room for " \
                         "this task lately on 2 hosts", st
    (task,) = loop.tasks("fixed")
    assert task.rejected and f"port {port} is in use" in task.reject_reason
    assert sorted(r.host for r in task.capacity_rejections) == [loop.host(1), loop.host(2)]
    assert task.rejected_hosts == []


def test_status_says_why_a_service_is_not_placed(sqlite_loop: Loop) -> None:
    loop = sqlite_loop
    loop.start_agent(1, memory=512)
    loop.start_agent(2, memory=512)
    loop.start_scheduler()
    manifest = yaml.safe_load(web_manifest("web", 1, cluster_services=["web", "huge", "odd"]))
    manifest["services"] += [
        {"name": "huge", "task_name": "huge", "task_version": 1, "desired": 3},
        {"name": "odd", "task_name": "odd", "task_version": 1, "scheduler": "no-such"}]
    for name, memory in (("huge", 100_000), ("odd", 16)):
        manifest["task_definitions"].append({
            "name": name, "version": 1, "memory": memory, "containers": [
                {"name": "m", "type": "process", "executor": {"argv": ["sleep", "600"]}}]})
    loop.apply(yaml.safe_dump(manifest))
    loop.wait_healthy("web", 1)  # the others do not hold it up
    wait_for(lambda: loop.status("huge") and loop.status("odd"), 15, "statuses")
    code, out = loop.sked("get", "services")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert "unschedulable: 3 task(s) unschedulable: 0/2 hosts fit: not enough memory on " \
           "2 hosts" in lines["huge"], out
    assert "error: no scheduler named 'no-such' is installed" in lines["odd"], out
    assert lines["web"].split()[4:] == ["1", "1", "1", "ok"], out
    assert loop.tasks("huge") == [] and loop.tasks("odd") == []
    log = loop.log_text("scheduler")
    assert "huge: 3 task(s) unschedulable: 0/2 hosts fit: not enough memory on 2 hosts" in log
    assert log.count("huge: 3 task(s) unschedulable") == 1  # said once, not every retry


def test_daemon_scheduler_follows_hosts_that_join_and_leave(sqlite_loop: Loop) -> None:
    """The ``daemon`` scheduler: a host that joins gets its task at once (well before the
    30 s resync); a host that leaves (its agent killed, its lease expired) loses its task."""
    loop = sqlite_loop
    loop.start_agent(1, memory=256)
    leaving = loop.start_agent(2, memory=256)
    loop.start_scheduler()
    loop.apply(web_manifest(desired=0, memory=100, scheduler="daemon"))
    first = loop.wait_healthy("web", 2)
    assert sorted(t.host for t in first) == sorted([loop.host(1), loop.host(2)])

    loop.start_agent(3, memory=256)  # returns when its host record is in the store
    joined = time.monotonic()
    # the host change is followed at once; 10 s holds on a loaded machine and is well
    # before the 30 s resync that would place the task anyway
    wait_for(lambda: any(t.host == loop.host(3) for t in loop.tasks("web")), 10.0,
             "the joining host's task within 10 s")
    print(f"\n[daemon scheduler] task issued at most {time.monotonic() - joined:.2f}s after the "
          "host record appeared")
    loop.wait_healthy("web", 3)

    os.killpg(leaving.pid, signal.SIGKILL)  # the agent and its tasks: the host is gone
    leaving.wait(10)
    wait_for(lambda: loop.backend.get(loop.keys.agent(loop.host(2))) is None, 10,
             "the lease of the killed host's record to expire")
    wait_for(lambda: sorted(t.host for t in loop.tasks("web")) ==
             sorted([loop.host(1), loop.host(3)]), 2.0,
             "the gone host's task stopped within 2 s, not moved")
