"""The host agent with ``health_provider="consul"``: Consul's agent runs the task's checks.

An in-process :class:`~skedlib.agent.Agent` (sqlite store with the provider named, or a
``consul://`` store on the same dev agent, where the agent picks the provider itself) runs
real processes; the checks are registered with the Consul dev agent of the harness, which
runs them. What Consul was told is read back through its own
APIs (``/v1/health/service/<service>``, ``/v1/agent/checks``).
"""

from __future__ import annotations

import logging
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from skedlib import pass_ttl_check
from skedlib.agent import Agent, AgentConfig
from skedlib.models import Check, Container
from skedlib.runtime import Store
from tests.agent import conftest as agent_tests
from tests.agent.conftest import PY, AgentEnv, make_task, sleeper, wait_for
from tests.harness import consul as harness

consul_dev = harness.consul_dev
env = agent_tests.env  # an AgentEnv on sqlite, as in the agent's own tests

pytestmark = [pytest.mark.integration]

AgentFactory = Callable[..., Agent]


@pytest.fixture
def start_agent() -> Iterator[AgentFactory]:
    """Start in-process agents with the consul health provider; stopped (tasks too) after."""
    agents: list[Agent] = []

    def start(env: AgentEnv, health_provider: str = "consul", **options: str) -> Agent:
        config = AgentConfig(host=env.host, prefix=env.prefix, state_dir=env.state_dir,
                             lease_ttl=2.0, executors=["process"], check_failures=2,
                             health_provider=health_provider, health_options=dict(options))
        agent = Agent(env.backend, config)
        agents.append(agent)
        agent.start()
        assert agent.wait_ready(10)
        return agent

    try:
        yield start
    finally:
        for agent in agents:
            agent.stop(stop_tasks=True)


def _service(agent: harness.ConsulAgent, service: str) -> list[dict[str, Any]]:
    status, body = agent.api("GET", f"/v1/health/service/{service}")
    assert status == 200
    return list(body)


def _check_status(agent: harness.ConsulAgent, check_id: str) -> str | None:
    status, checks = agent.api("GET", "/v1/agent/checks")
    assert status == 200
    return checks[check_id]["Status"] if check_id in checks else None


def _server_pid(env: AgentEnv, task_id: str) -> int:
    def find() -> int | None:
        for p in env.processes(task_id):
            try:
                if "http.server" in " ".join(p.cmdline()):
                    return p.pid
            except psutil.Error:
                continue
        return None
    pid: int = wait_for(find, 10, "the http.server process")
    return pid


def test_http_check_through_consul_restart_and_deregistration(
        env: AgentEnv, consul_dev: harness.ConsulCluster, start_agent: AgentFactory,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="skedlib.agent")
    consul = consul_dev.members[0]
    start_agent(env, **{"consul.url": f"http://{consul.endpoint}"})
    service = f"web{uuid.uuid4().hex[:6]}"
    # the server is not essential, so killing it does not end the task: only the
    # check, run by Consul, can make the agent restart it
    web = Container(name="web", type="process", essential=False,
                    executor={"argv": [PY, "-m", "http.server", "$PROVIDED_PORT",
                                       "--bind", "127.0.0.1"]},
                    checks=[Check(name="http", http="http://127.0.0.1:$PROVIDED_PORT/",
                                  interval="1s", timeout="500ms")])
    task = make_task(0, service=service, containers=[web, sleeper()], grace=1.0)
    task.task_definition.tags = ["web", "canary"]
    check_id = f"{task.id}:web:http"
    env.put_task(task)

    # healthy in the health record …
    record = env.wait_healthy(task.id, 20)
    assert [(c.name, c.status) for c in record.checks] == [("http", "passing")]
    stored = env.task(task.id)
    assert stored is not None and stored.port
    port = stored.port
    assert f"127.0.0.1:{port}/" in record.checks[0].output  # Consul's output

    # … and in Consul, as a service with the task's tags and port
    def passing() -> dict[str, Any] | None:
        for entry in _service(consul, service):
            checks = {c["CheckID"]: c["Status"] for c in entry["Checks"]}
            if entry["Service"]["ID"] == task.id and checks.get(check_id) == "passing":
                return entry
        return None
    entry = wait_for(passing, 10, "the service passing in Consul's catalog")
    assert sorted(entry["Service"]["Tags"]) == ["canary", f"skedlib-host={env.host}", "web"]
    assert (entry["Service"]["Service"], entry["Service"]["Port"]) == (service, port)

    # the server dies: Consul's check turns critical, and the agent restarts the task
    old = _server_pid(env, task.id)
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: _check_status(consul, check_id) == "critical", 10,
             "Consul's check to turn critical")
    wait_for(lambda: (h := env.health(task.id)) is not None and h.attempts == 1, 15,
             "a failed attempt")
    record = env.wait_healthy(task.id, 20)
    assert record.attempts == 1
    assert _server_pid(env, task.id) != old
    failures = [r.getMessage() for r in caplog.records if "failed (attempt 1" in r.getMessage()]
    assert failures and "check http critical" in failures[0] \
        and "(2 times in a row)" in failures[0], failures
    wait_for(passing, 10, "the service passing again")

    # the task is removed: stopped, and deregistered from Consul
    env.delete_task(task.id)
    wait_for(lambda: not _service(consul, service), 15, "the service to leave Consul")
    wait_for(lambda: _check_status(consul, check_id) is None, 5, "the check to go")
    wait_for(lambda: env.health(task.id) is None, 10, "the health record to be deleted")
    wait_for(lambda: not env.processes(task.id), 10, "the task's processes to end")


def test_consul_store_ttl_check_and_stop_deregisters(
        tmp_path: Path, consul_dev: harness.ConsulCluster,
        start_agent: AgentFactory) -> None:
    consul = consul_dev.members[0]
    # no provider named and no consul.url: with a consul:// backend the agent uses the
    # consul provider, and the backend names the Consul agent
    env = AgentEnv(tmp_path, consul_dev.url(), f"t{uuid.uuid4().hex[:8]}/")
    try:
        agent = start_agent(env, health_provider="")
        assert agent.health_provider_name == "consul" and agent.health.name == "consul"
        assert agent.health.url == f"http://{consul.endpoint}"  # type: ignore[attr-defined]
        service = f"beat{uuid.uuid4().hex[:6]}"
        main = sleeper()
        main.checks = [Check(name="heartbeat", ttl="3s")]
        task = make_task(0, service=service, containers=[main], provide_port=False)
        check_id = f"{task.id}:main:heartbeat"
        env.put_task(task)

        # the record lists the check once Consul has it; a report through the store
        # reaches Consul, and the task is healthy
        wait_for(lambda: (h := env.health(task.id)) is not None and h.checks, 10,
                 "the record to list the check")
        pass_ttl_check(Store(env.backend, env.keys), task.id, "heartbeat", output="beat")
        record = env.wait_healthy(task.id, 10)
        assert record.checks[0].output == "beat"
        _, checks = consul.api("GET", "/v1/agent/checks")
        assert (checks[check_id]["Status"], checks[check_id]["Output"]) == ("passing", "beat")
        assert _service(consul, service)[0]["Service"]["ID"] == task.id

        # stopping the agent with its tasks deregisters them
        agent.stop(stop_tasks=True)
        assert _check_status(consul, check_id) is None  # gone from the agent at once
        wait_for(lambda: not _service(consul, service), 5, "the catalog to follow")
    finally:
        env.cleanup()
