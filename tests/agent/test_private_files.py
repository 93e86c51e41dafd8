"""What the agent writes is readable by its owner only, whatever the umask: state
directories 0700, records 0600, task logs 0640; and a key with a newline or a terminal
escape written to the store cannot forge or colour a line of the agent's log."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from skedlib.models import Container
from tests.agent.conftest import AgentEnv, make_task, sleeper, wait_for


def mode(path: Path) -> int:
    """The permission bits of ``path``."""
    return stat.S_IMODE(os.stat(path).st_mode)


def test_state_and_task_logs_are_private_under_an_open_umask(env: AgentEnv) -> None:
    old = os.umask(0)  # the agent inherits it: the modes must come from the code
    try:
        env.start_agent()
    finally:
        os.umask(old)
    bash = Container(name="sh", type="bash", setup=["echo ready > ready.txt"],
                     executor={"start": "echo started; exec sleep 600"})
    task = make_task(0, containers=[sleeper(), bash], provide_port=False)
    env.put_task(task)
    env.wait_healthy(task.id)
    logs = env.state_dir / "logs" / task.id
    wait_for(lambda: (logs / "sh.out.log").read_bytes(), 10, "the bash container's output")
    dirs = [env.state_dir, *(p for p in env.state_dir.rglob("*") if p.is_dir())]
    files = [p for p in env.state_dir.rglob("*") if p.is_file()]
    assert len(dirs) >= 6 and len(files) >= 5
    assert {str(d): mode(d) for d in dirs} == {str(d): 0o700 for d in dirs}
    logs_found = {str(f): mode(f) for f in files if f.name.endswith(".log")}
    assert logs_found == {str(f): 0o640 for f in files if f.name.endswith(".log")}
    assert {str(logs / "main.out.log"), str(logs / "sh.err.log")} <= set(logs_found)
    records = {str(f): mode(f) for f in files if f.suffix == ".json"}
    assert records and set(records.values()) == {0o600}


def test_an_existing_world_readable_state_dir_is_narrowed(env: AgentEnv) -> None:
    # the agent's own directories (the log directory it names itself) are narrowed when
    # the agent opens them again; the --state-dir the operator chose is left as it is
    (env.state_dir / "logs").mkdir(parents=True)
    os.chmod(env.state_dir, 0o755)
    os.chmod(env.state_dir / "logs", 0o755)
    env.start_agent()
    assert mode(env.state_dir / "logs") == 0o700
    assert mode(env.state_dir) == 0o755


def test_control_characters_of_a_key_are_escaped_in_the_log(env: AgentEnv) -> None:
    env.start_agent()
    evil = "evil\nFAKE 1970-01-01 INFO forged line\x1b[31mred"
    env.backend.put(env.keys.host_tasks(env.host) + evil, b"{}")
    wait_for(lambda: "not a task key" in env.log_text(), 15, "the agent to see the key")
    text = env.log_text()
    (line,) = [x for x in text.splitlines() if "not a task key" in x]
    assert "evil\\nFAKE 1970-01-01 INFO forged line\\x1b[31mred" in line
    assert "\x1b" not in text and not any(x.startswith("FAKE") for x in text.splitlines())
