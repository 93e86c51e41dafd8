"""``skedlib-agent`` as a real subprocess: running, health, restarts, rejection, adoption,
stopping and the host record. Runs on sqlite, and on etcd when available."""

from __future__ import annotations

import os
import signal
import time
import urllib.request

import psutil
import pytest

from tests.agent.conftest import AgentEnv, http_server, make_task, sleeper, wait_for

pytestmark = pytest.mark.usefixtures("backend_kind")


def _get(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
        status: int = resp.status
        return status


def test_http_task_becomes_healthy_with_a_provided_port(env: AgentEnv) -> None:
    env.start_agent()
    task = make_task(0, containers=[http_server()])
    env.put_task(task)
    health = env.wait_healthy(task.id)
    assert health.state == "healthy" and health.host == env.host
    assert [c.status for c in health.checks] == ["passing"]
    stored, indexed = env.task(task.id), env.task(task.id, by_host=True)
    assert stored is not None and indexed is not None
    assert 20000 <= stored.port <= 32000 and stored.port == indexed.port
    assert _get(stored.port) == 200
    record = wait_for(lambda: (r := env.host_record()) and stored.port in r.ports and r,
                      5, "the port in the host record")
    assert record.executors == ["bash", "process"] and record.total.memory > 0
    assert "started " + task.id in env.log_text()


def test_a_task_killed_from_outside_is_restarted(env: AgentEnv) -> None:
    env.start_agent()
    task = make_task(0, containers=[http_server()])
    env.put_task(task)
    env.wait_healthy(task.id)
    old = env.pid(task.id)
    os.kill(old, signal.SIGKILL)
    new = wait_for(lambda: [p.pid for p in env.processes(task.id) if p.pid != old], 10,
                   "a new process")[0]
    # healthy again after the restart (the record written before the kill was noticed
    # says healthy with no attempt yet)
    health = wait_for(lambda: (h := env.health(task.id)) is not None and h.healthy
                      and h.attempts == 1 and h, 30, "healthy after the restart")
    assert health.attempts == 1 and new != old
    stored = env.task(task.id)
    assert stored is not None and not stored.rejected and _get(stored.port) == 200


def test_a_check_that_never_passes_restarts_then_rejects(env: AgentEnv) -> None:
    env.start_agent()
    closed = http_server(check="http://127.0.0.1:9/never")  # nothing listens on port 9
    task = make_task(0, containers=[closed], max_attempts=2)
    env.put_task(task)
    rejected = env.wait_rejected(task.id, timeout=20)
    assert env.host in rejected.rejected_hosts
    assert "failed 2 times" in rejected.reject_reason
    assert "127.0.0.1:9/never" in rejected.reject_reason
    indexed = env.task(task.id, by_host=True)
    assert indexed is not None and indexed.rejected and indexed.reject_reason
    wait_for(lambda: not env.processes(task.id), 10, "the rejected task to stop")
    health = wait_for(lambda: (h := env.health(task.id)) and h.state == "rejected" and h,
                      5, "the rejected health record")
    assert not health.healthy and health.message == rejected.reject_reason


def test_agent_killed_and_restarted_adopts_its_tasks(env: AgentEnv) -> None:
    agent = env.start_agent()
    tasks = [make_task(i, containers=[http_server()]) for i in range(2)]
    tasks.append(make_task(0, service="worker", containers=[sleeper()], provide_port=False))
    for t in tasks:
        env.put_task(t)
    for t in tasks:
        env.wait_healthy(t.id)
    pids = {t.id: env.pid(t.id) for t in tasks}
    ports = {t.id: env.task(t.id).port for t in tasks[:2]}  # type: ignore[union-attr]
    env.kill9(agent)
    for pid in pids.values():
        assert psutil.pid_exists(pid)
    env.start_agent()
    wait_for(lambda: env.log_text().count("adopted ") == 3, 10, "three adoptions")
    time.sleep(1.0)  # long enough for checks to run and a wrong restart to show up
    for t in tasks:
        assert [p.pid for p in env.processes(t.id)] == [pids[t.id]]
        assert env.wait_healthy(t.id).attempts == 0
    for task_id, port in ports.items():
        assert _get(port) == 200, task_id
    assert "started " not in env.log_text().split("adopted ", 1)[1]


def test_removing_the_key_stops_the_task(env: AgentEnv) -> None:
    env.start_agent()
    keep = make_task(0, containers=[sleeper()], provide_port=False)
    gone = make_task(1, containers=[http_server()])
    env.put_task(keep)
    env.put_task(gone)
    env.wait_healthy(gone.id)
    env.wait_healthy(keep.id)
    pid, kept = env.pid(gone.id), env.pid(keep.id)
    env.delete_task(gone.id)
    wait_for(lambda: not psutil.pid_exists(pid) or
             psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 10, "the process to stop")
    wait_for(lambda: env.health(gone.id) is None, 5, "the health record to go")
    assert env.pid(keep.id) == kept


def test_tasks_removed_while_the_agent_was_down_are_stopped(env: AgentEnv) -> None:
    agent = env.start_agent()
    task, pid = env.run_sleeper()
    env.kill9(agent)
    env.delete_task(task.id)
    env.start_agent()
    wait_for(lambda: not env.processes(task.id), 10, "the orphan to be stopped")
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert "removed while the agent was down" in env.log_text()


def test_host_record_disappears_within_the_lease_ttl_after_kill_9(env: AgentEnv) -> None:
    agent = env.start_agent("--attribute", "zone=a", "--attribute", "disk=ssd",
                            "--memory", "2048", "--cpu-units", "4096",
                            "--address", "192.0.2.7", lease_ttl=2.0)
    record = env.host_record()
    assert record is not None
    assert (record.name, record.address) == (env.host, "192.0.2.7")
    assert record.attributes == {"zone": "a", "disk": "ssd"}
    assert (record.total.memory, record.total.cpu_units) == (2048, 4096)
    assert record.total.disk > 0 and record.observed.memory > 0 and record.observed.disk > 0
    assert record.updated_at > time.time() - 10
    kv = env.backend.get(env.keys.agent(env.host))
    assert kv is not None and kv.lease, "the host record is bound to the agent's lease"
    env.kill9(agent)
    # the lease (TTL 2 s) runs out with nobody to keep it alive; the bound is generous
    # so that a loaded machine does not fail the test
    wait_for(lambda: env.host_record() is None, 30, "the host record to expire")


def test_a_second_agent_on_the_same_state_directory_refuses_to_start(env: AgentEnv) -> None:
    first = env.start_agent()
    task, pid = env.run_sleeper()
    # another host's agent pointed at the same directory (its tasks are not that
    # host's: it would stop them as removed while it was down)
    second = env.start_agent_in(env.state_dir, host="h-other", wait=False)
    assert second.wait(30) == 1
    assert (f"state directory {env.state_dir} is in use by another agent (process "
            f"{first.pid}); give each agent its own --state-dir") in env.log_text()
    time.sleep(0.5)
    assert first.poll() is None
    assert [p.pid for p in env.processes(task.id)] == [pid]
    assert "stopping" not in env.log_text()
    # the lock goes with its process, however it ends: the next agent adopts the task
    env.kill9(first)
    env.start_agent()
    wait_for(lambda: "adopted " in env.log_text(), 10, "the adoption")
    assert [p.pid for p in env.processes(task.id)] == [pid]
    assert (env.state_dir / "agent.lock").stat().st_mode & 0o777 == 0o600
