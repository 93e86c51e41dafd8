"""Bash ``ports`` (Sked's reserved ports) on the agent: held while the task runs,
published with the host's ports, and a second task reserving one of them is rejected for
want of room (it may run once the first is gone)."""

from __future__ import annotations

from skedlib.models import Container
from tests.agent.conftest import AgentEnv, make_task, wait_for


def _bash(port: int) -> Container:
    return Container(name="main", type="bash",
                     executor={"start": "exec sleep 600", "ports": [port]})


def test_a_reserved_port_keeps_a_second_task_off_the_host(env: AgentEnv) -> None:
    env.start_agent()
    first = make_task(0, containers=[_bash(18931)], provide_port=False)
    env.put_task(first)
    env.wait_healthy(first.id)
    host = wait_for(lambda: (h := env.host_record()) and 18931 in h.ports and h, 15,
                    "the reserved port in the host record")
    assert 18931 in host.ports
    second = make_task(1, containers=[_bash(18931)], provide_port=False)
    env.put_task(second)
    rejected = env.wait_rejected(second.id)
    assert f"port 18931 is already used by task {first.id}" in rejected.reject_reason
    assert [r.host for r in rejected.capacity_rejections] == [env.host]  # it may expire
    assert not env.processes(second.id)
