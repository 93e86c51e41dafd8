"""The host policy through a real ``skedlib-agent``: what the policy refuses is rejected
with the rule's name before anything starts, and ``--run-as`` runs tasks as that user."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import psutil
import pytest

from skedlib.cli.agent import main as agent_main
from skedlib.models import Check, Container
from tests.agent.conftest import PY, AgentEnv, http_server, make_task, sleeper, wait_for

NOBODY = pwd.getpwnam("nobody")
DAEMON = pwd.getpwnam("daemon")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="running as another user needs "
                                "root")


def _policy(tmp_path: Path, text: str) -> str:
    path = tmp_path / "policy.yml"
    path.write_text(text)
    return str(path)


def _passable(path: Path) -> None:
    """pytest makes its temporary directories 0700: let the task user pass, as the
    directories above a real --state-dir (/var/lib) do."""
    for p in (path, *path.parents):
        if p.exists() and p.stat().st_uid == os.geteuid():
            p.chmod(stat.S_IMODE(p.stat().st_mode) | 0o011)


def test_a_task_the_policy_refuses_is_rejected_naming_the_rule(env: AgentEnv,
                                                               tmp_path: Path) -> None:
    policy = _policy(tmp_path, "executors: [process]\ncommands: ['sleep *']\n")
    env.start_agent("--policy", policy)
    allowed = make_task(0, service="allowed", containers=[sleeper()])
    command = make_task(0, service="command", containers=[sleeper("side"), http_server()])
    executor = make_task(0, service="executor", containers=[Container(
        name="sh", type="bash", executor={"start": "sleep 600"})])
    for task in (allowed, command, executor):
        env.put_task(task)

    env.wait_healthy(allowed.id)
    reason = env.wait_rejected(command.id).reject_reason
    assert reason.startswith(f"container web: refused by the host policy ({policy}), rule "
                             f"commands: command '{PY} -m http.server ")
    assert env.wait_rejected(executor.id).reject_reason == (
        f"container sh: refused by the host policy ({policy}), rule executors: executor "
        "'bash' is not allowed (allowed: process)")
    # refused at admission: not even the allowed container of that task was started
    assert env.processes(command.id) == [] and env.processes(executor.id) == []
    assert "executor bash is not enabled: the host policy" in env.log_text()


def test_run_as_starts_tasks_with_that_uid_and_per_task_users_only_if_allowed(
        env: AgentEnv, tmp_path: Path) -> None:
    _passable(tmp_path)
    policy = _policy(tmp_path, "users: [daemon]\n")
    env.start_agent("--policy", policy, "--run-as", "nobody")
    plain = make_task(0, service="plain", containers=[sleeper()])
    chosen = make_task(0, service="chosen", containers=[Container(
        name="main", type="process", executor={"argv": ["sleep", "600"], "user": "daemon"})])
    root = make_task(0, service="root", containers=[Container(
        name="main", type="process", executor={"argv": ["sleep", "600"], "user": "root"})])
    shell = make_task(0, service="shell", containers=[Container(
        name="sh", type="bash", executor={
            "start": "id -u > \"$SKED_WORKDIR/uid\"; echo out-$(id -u); exec sleep 600",
            "stop": "id -u > \"$SKED_WORKDIR/stopped\""})])
    script = make_task(0, service="script", containers=[Container(
        name="main", type="process", executor={"argv": ["sleep", "600"]},
        checks=[Check(script="true", interval="1s")])])
    for task in (plain, chosen, root, shell, script):
        env.put_task(task)

    env.wait_healthy(plain.id)
    proc = psutil.Process(env.pid(plain.id))  # (waits: healthy may come first)
    assert proc.uids().real == proc.uids().effective == NOBODY.pw_uid
    assert proc.gids().real == NOBODY.pw_gid
    assert proc.environ()["HOME"] == NOBODY.pw_dir and proc.environ()["USER"] == "nobody"
    home = NOBODY.pw_dir if os.path.isdir(NOBODY.pw_dir) else "/"
    assert proc.cwd() == home  # not the agent's working directory

    env.wait_healthy(chosen.id)
    proc = psutil.Process(env.pid(chosen.id))
    assert proc.uids().real == DAEMON.pw_uid

    assert "rule users: the task asks to run as 'root', which is not allowed" in \
        env.wait_rejected(root.id).reject_reason
    assert env.processes(root.id) == []
    # the health provider runs script checks as the agent: not under --run-as
    assert env.wait_rejected(script.id).reject_reason == (
        f"container main: refused by the host policy ({policy}), rule run_as: checks[0]: "
        "script 'true' would run as the agent's user, not as nobody (use an http or tcp "
        "check)")
    assert env.processes(script.id) == []

    # bash: the work directory is the task user's own, reachable by its absolute path;
    # the logs stay the agent's, private to everyone else
    env.wait_healthy(shell.id)
    workdir = env.state_dir / "executors" / "bash" / shell.id / "sh"
    uid_file = wait_for(lambda: (workdir / "uid").exists() and workdir / "uid", 30,
                        "the task to write its uid")
    assert uid_file.read_text().strip() == str(NOBODY.pw_uid)
    st = workdir.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (NOBODY.pw_uid, 0o700)
    out = env.state_dir / "logs" / shell.id / "sh.out.log"
    assert f"out-{NOBODY.pw_uid}" in wait_for(lambda: out.exists() and out.read_text(), 30,
                                              "the task's output")
    st = out.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.geteuid(), 0o640)
    for d in (env.state_dir / "executors", env.state_dir / "executors" / "bash"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o711  # pass, not list

    env.delete_task(shell.id)  # the stop command runs as the task's user too
    stopped = wait_for(lambda: (workdir / "stopped").exists() and workdir / "stopped", 15,
                       "the stop command")
    assert stopped.read_text().strip() == str(NOBODY.pw_uid)


def test_a_bad_policy_file_stops_the_agent_with_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = _policy(tmp_path, "docker:\n  privileged: yes please\n")
    assert agent_main(["--backend", "memory://", "--policy", policy]) == 1
    err = capsys.readouterr().err
    assert err == (f"skedlib-agent: {policy}: field docker.privileged: Expected `bool`, "
                   "got `str`\n")
    assert agent_main(["--backend", "memory://", "--run-as", "no-such-user-xyz"]) == 1
    assert capsys.readouterr().err == ("skedlib-agent: --run-as no-such-user-xyz: no user "
                                       "named 'no-such-user-xyz' on this host\n")
