"""What the agent cannot run is rejected with a reason a person can act on, while the
agent keeps running and other tasks are untouched."""

from __future__ import annotations

import socket

import pytest

from skedlib.cli.main import main as sked_main
from skedlib.models import Check, Container
from tests.agent.conftest import PY, AgentEnv, http_server, make_task, sleeper, wait_for


def _reason(env: AgentEnv, task_id: str, *, capacity: bool = False) -> str:
    """The rejection's reason; for good (``rejected_hosts``) or, with ``capacity``, for
    want of room (``capacity_rejections``, which expire)."""
    rejected = env.wait_rejected(task_id)
    room = [r for r in rejected.capacity_rejections if r.host == env.host]
    if capacity:
        assert env.host not in rejected.rejected_hosts
        assert len(room) == 1 and room[0].reason == rejected.reject_reason
        assert room[0].count == 1 and room[0].at > 0
    else:
        assert env.host in rejected.rejected_hosts and not room
    assert "\n" not in rejected.reject_reason
    indexed = env.task(task_id, by_host=True)
    assert indexed is not None and indexed.rejected
    assert indexed.reject_reason == rejected.reject_reason
    return rejected.reject_reason


def test_bad_input_is_rejected_and_other_tasks_are_untouched(
        env: AgentEnv, capsys: pytest.CaptureFixture[str]) -> None:
    agent = env.start_agent()
    good = make_task(0, service="good", containers=[http_server()])
    env.put_task(good)
    env.wait_healthy(good.id)
    pid = env.pid(good.id)

    wrong_fields = make_task(0, service="wrongfields", containers=[Container(
        name="app", type="process", executor={"argv": "python3 -m http.server"})])
    missing = make_task(0, service="missing", containers=[Container(
        name="app", type="process", executor={"argv": ["no-such-command-xyz", "--flag"]})])
    missing_path = make_task(0, service="missingpath", containers=[Container(
        name="app", type="process", executor={"argv": ["/nonexistent/bin/server"]})])
    bad_url = make_task(0, service="badurl", containers=[Container(
        name="app", type="process", executor={"argv": [PY, "-m", "http.server"]},
        checks=[Check(http="htp://127.0.0.1:$PROVIDED_PORT/")])])
    bad_interval = make_task(0, service="badinterval", containers=[Container(
        name="app", type="process", executor={"argv": ["sleep", "60"]},
        checks=[Check(tcp="127.0.0.1:$PROVIDED_PORT", interval="soon")])])
    unknown = make_task(0, service="unknown", containers=[Container(
        name="app", type="nosuch", executor={})])
    disabled = make_task(0, service="disabled", containers=[Container(
        name="app", type="docker", executor={"image": "nginx"})])
    no_port = make_task(0, service="noport", provide_port=False, containers=[Container(
        name="app", type="process", executor={"argv": ["sleep", "$PROVIDED_PORT"]})])
    for task in (wrong_fields, missing, missing_path, bad_url, bad_interval, unknown,
                 disabled, no_port):
        env.put_task(task)

    assert _reason(env, wrong_fields.id) == (
        "container app: process executor: field argv: Expected `array`, got `str`")
    assert "command 'no-such-command-xyz' not found on PATH" in _reason(env, missing.id)
    assert "command '/nonexistent/bin/server' does not exist" in _reason(env, missing_path.id)
    assert _reason(env, bad_url.id) == (
        "container app: checks[0]: http 'htp://127.0.0.1:$PROVIDED_PORT/' is not an http:// "
        "or https:// URL with a host")
    assert "invalid duration 'soon'" in _reason(env, bad_interval.id)
    assert "no executor named 'nosuch' is installed" in _reason(env, unknown.id)
    assert f"executor 'docker' is not enabled on host {env.host} (enabled: bash, process)" \
        in _reason(env, disabled.id)
    assert "uses $PROVIDED_PORT but the task has no port" in _reason(env, no_port.id)

    assert agent.poll() is None
    assert [p.pid for p in env.processes(good.id)] == [pid]
    assert env.wait_healthy(good.id).attempts == 0
    for task in (wrong_fields, missing, bad_url, unknown):
        health = env.health(task.id)
        assert health is not None and health.state == "rejected" and health.message
        assert not env.processes(task.id)

    # what an operator sees: each task's host, whether rejected or healthy, its state
    assert sked_main(["--backend", env.url, "--prefix", env.prefix, "get", "tasks"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    #            host      rejected healthy state
    assert [rows[good.id][i] for i in (1, 2, 7, 8)] == [env.host, "false", "true", "healthy"]
    assert [rows[missing.id][i] for i in (1, 2, 7, 8)] == [env.host, "true", "false",
                                                            "rejected"]


def test_undecodable_records_are_rejected(env: AgentEnv) -> None:
    agent = env.start_agent()
    task_id = "default-broken-1-0"
    env.put_raw(task_id, b'{"cluster": {"name": "default"}, "service": "broken", '
                         b'"instance": 0, "extra": {"kept": true}}')
    kv = wait_for(lambda: (kv := env.backend.get(env.keys.task(task_id))) and
                  b'"rejected":true' in kv.value and kv, 10, "the raw record rejected")
    assert b'"extra":{"kept":true}' in kv.value  # fields the agent does not know survive
    assert b"task_definition" in kv.value  # the reason names the missing field
    env.put_raw("default-garbage-1-0", b"not json at all")
    health = wait_for(lambda: env.health("default-garbage-1-0"), 10, "a health record")
    assert health.state == "rejected" and "malformed JSON" in health.message
    assert agent.poll() is None


def test_port_in_use_and_not_enough_resources_are_rejected(env: AgentEnv) -> None:
    env.start_agent("--memory", "100", "--cpu-units", "1024")
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        fixed = make_task(0, service="fixed", provide_port=False, port=taken,
                          containers=[sleeper()])
        env.put_task(fixed)
        assert _reason(env, fixed.id, capacity=True) == (
            f"port {taken} is in use on host {env.host} by a process that is not one of "
            "this agent's tasks")
    big = make_task(0, service="big", containers=[sleeper()], memory=200, provide_port=False)
    env.put_task(big)
    assert _reason(env, big.id, capacity=True) == (
        f"needs 200 MiB of memory but only 100 of 100 are free on host {env.host}")
    busy = make_task(0, service="busy", containers=[sleeper()], provide_port=False)
    busy.task_definition.cpu_units = 2048
    env.put_task(busy)
    assert _reason(env, busy.id, capacity=True) == (
        f"needs 2048 CPU units but only 1024 of 1024 are free on host {env.host}")
    fits = make_task(0, service="fits", containers=[sleeper()], memory=60,
                     provide_port=False)
    second = make_task(1, service="fits", containers=[sleeper()], memory=60,
                       provide_port=False)
    env.put_task(fits)
    env.wait_healthy(fits.id)
    env.put_task(second)
    assert "only 40 of 100 are free" in _reason(env, second.id, capacity=True)
    stored = env.task(second.id)
    assert stored is not None and stored.capacity_rejections[0].free.memory == 40
    record = wait_for(lambda: (r := env.host_record()) and r.allocated.memory == 60 and r,
                      5, "the allocation in the host record")
    assert record.total.memory == 100


def test_a_rejected_task_runs_again_when_reissued(env: AgentEnv) -> None:
    env.start_agent()
    task = make_task(0, containers=[Container(name="app", type="process",
                                              executor={"argv": ["sleep", "notanumber"]})],
                     provide_port=False, max_attempts=1)
    env.put_task(task)
    rejected = env.wait_rejected(task.id)
    assert "failed 1 times" in rejected.reject_reason and "exited with code 1" in \
        rejected.reject_reason
    # a scheduler (or a person) clears the flag: the host tries again
    fixed = make_task(0, containers=[sleeper()], provide_port=False)
    fixed.rejected_hosts = rejected.rejected_hosts
    env.put_task(fixed)
    assert env.wait_healthy(task.id).attempts == 0
