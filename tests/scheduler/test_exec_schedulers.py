"""Schedulers as executables (``skedlib-scheduler --exec-schedulers DIR``): the example
programs in Node.js and in shell with jq place services end to end with the real daemon
and real agents; a program that times out, fails, writes something that is not a plan, or
may be written by others puts the reason in the service's status."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from skedlib.cli.main import main as sked_main
from skedlib.client import Client
from skedlib.codecs import encode, parse_manifest
from skedlib.models import Host, Resources, ServiceStatus
from skedlib.plugins import Registry
from skedlib.scheduler.daemon import RunOutcome, SchedulerDaemon
from skedlib.scheduling import ExecRequest, ExecSchedulerError, ExecSchedulers
from tests.harness.common import skip_or_fail
from tests.scheduler.conftest import Loop, wait_for, web_manifest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "exec-schedulers"


@pytest.fixture
def node_and_jq() -> None:
    """The example programs need node and jq (skipped without them, failed under CI)."""
    if not (shutil.which("node") and shutil.which("jq")):
        skip_or_fail("no node or jq: run scripts/install-exec-tools.sh")

#: a whole task, as a hand-rolled scheduler writes it (with a task definition of its own)
WHOLE_TASK = {"cluster": {"name": "default", "services": ["web"]}, "service": "web",
              "instance": 1, "host": "h0", "port": 0,
              "task_definition": {"name": "web", "version": 1, "memory": 1,
                                  "containers": [{"name": "evil", "type": "process"}]}}

#: small programs (most of them misbehave), by name
PROGRAMS = {
    "sleeper": "#!/bin/sh\nsleep 3600 &\necho $! > sleeper.pid\nwait\n",
    "fails": "#!/bin/sh\necho 'warming up' >&2\necho 'cannot reach the inventory' >&2\n"
             "exit 3\n",
    "garbage": "#!/bin/sh\necho '{\"place\": [{\"instance\": \"zero\", \"host\": \"h0\"}]}'\n",
    "notjson": "#!/bin/sh\necho 'placing everything on h0'\n",
    "foreign": "#!/bin/sh\necho '{\"stop\": [\"default-other-1-0\"]}'\n",
    "chatty": "#!/bin/sh\nexec yes '{}'\n",
    "loose": "#!/bin/sh\necho '{}'\n",
    "recorder": "#!/bin/sh\ncat > request.json\nenv > env.txt\necho '{}'\n",
    "waiter": "#!/bin/sh\ncat > /dev/null\ntouch started\n"
              "while [ ! -e go ]; do sleep 0.05; done\n"
              "echo '{\"place\": [{\"instance\": 0, \"host\": \"h0\"}]}'\n",
    "nointerpreter": "#!/nonexistent/interpreter\n",
    "whole": f"#!/bin/sh\necho '{json.dumps({'place': [WHOLE_TASK]})}'\n",
}


def program_dir(tmp_path: Path) -> Path:
    """A private directory with the example programs and the misbehaving ones."""
    d = tmp_path / "schedulers"
    d.mkdir(mode=0o755)
    d.chmod(0o755)  # whatever the umask
    for example in EXAMPLES.iterdir():
        shutil.copy(example, d / example.name)
        (d / example.name).chmod(0o755)
    for name, text in PROGRAMS.items():
        (d / name).write_text(text)
        (d / name).chmod(0o775 if name == "loose" else 0o755)
    (d / "README").write_text("not a program\n")
    return d


# -- end to end: the real daemon, real agents ----------------------------------------------
@pytest.mark.slow
def test_exec_schedulers_place_services_end_to_end(node_and_jq: None,
                                                    sqlite_loop: Loop) -> None:
    loop = sqlite_loop
    programs = program_dir(loop.tmp)
    loop.start_agent(1, memory=512)
    loop.start_agent(2, memory=2048)
    loop.start_scheduler("scheduler", "--exec-schedulers", str(programs))
    services = ["webnode", "websh", "webloose"]
    for k, scheduler in enumerate(["most-memory-node", "most-memory-sh", "loose"]):
        loop.apply(web_manifest(services[k], 2, memory=200, scheduler=scheduler,
                                cluster_services=services[:k + 1]))
    # the most free memory: every task on the larger host (binpack would fill h1 first)
    for service in ("webnode", "websh"):
        tasks = loop.wait_healthy(service, 2)
        assert {t.host for t in tasks} == {loop.host(2)}, tasks
        st = wait_for(lambda s=service: (x := loop.status(s)) and x.state == "ok" and x,
                      15, f"{service} ok")
        assert st.placed == st.healthy == 2
    st = wait_for(lambda: (x := loop.status("webloose")) and x.state == "error" and x, 15,
                  "webloose's error")
    assert "writable by its group or others (mode 775): refused" in st.message, st
    log = loop.log_text("scheduler")
    installed = log.split("schedulers installed: ", 1)[1].split("\n", 1)[0].split(", ")
    # next to the plugins (a test may have installed one more): every program but README
    assert set(installed) >= {"binpack", "spread", "daemon", *PROGRAMS,
                              *(p.name for p in EXAMPLES.iterdir())}
    assert "README" not in installed and installed == sorted(installed)
    assert "exec scheduler loose:" in log and "Traceback" not in log
    # scaled down: the program stops the instance above desired
    loop.apply(web_manifest("websh", 1, memory=200, scheduler="most-memory-sh",
                            cluster_services=services))
    wait_for(lambda: [t.instance for t in loop.tasks("websh")] == [0], 20, "websh scaled")


def test_refused_directory(tmp_path: Path) -> None:
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(0o777)
    with pytest.raises(ExecSchedulerError, match=r"open: the directory is writable by its "
                                                 r"group or others \(mode 777\): refused"):
        ExecSchedulers(d)
    code = _scheduler_main(["--backend", "memory://", "--exec-schedulers", str(d)])
    assert code == 1


def _scheduler_main(argv: list[str]) -> int:
    from skedlib.cli.scheduler import main
    return main(argv)


# -- each failure, through the daemon's run ------------------------------------------------
@contextlib.contextmanager
def daemon_on(programs: ExecSchedulers) -> Iterator[tuple[SchedulerDaemon, Client]]:
    """A daemon (not started: its runs are called) offering ``programs``, on an
    in-memory store with hosts h0 (1000 MiB) and h1 (3000 MiB)."""
    registry = Registry(load_entrypoints=False, plugins=(programs,))
    with Client.open(f"memory://{uuid.uuid4().hex}") as client:
        for name, memory in [("h0", 1000), ("h1", 3000)]:
            client.backend.put(client.keys.agent(name), encode(Host(
                name=name, total=Resources(memory=memory, cpu_units=4096))))
        yield SchedulerDaemon(client.store, registry), client


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[SchedulerDaemon, Client]]:
    with daemon_on(ExecSchedulers(program_dir(tmp_path), timeout=1.0,
                                  max_output=1 << 20)) as pair:
        yield pair


def run(daemon: tuple[SchedulerDaemon, Client], scheduler: str, desired: int = 2
        ) -> ServiceStatus:
    d, client = daemon
    client.apply(parse_manifest(web_manifest("web", desired, memory=400,
                                             scheduler=scheduler), "test.yml"))
    out = d.run_once(("default", "web"))
    assert out.status is not None, out
    return out.status


@pytest.mark.parametrize("program", ["most-memory-node", "most-memory-sh"])
def test_examples_plan(node_and_jq: None, daemon: tuple[SchedulerDaemon, Client],
                       program: str) -> None:
    status = run(daemon, program, desired=10)
    assert (status.state, status.placed, status.unschedulable) == ("unschedulable", 9, 1)
    tasks = daemon[1].tasks()
    # h1 (3000 MiB) until it has no more free than h0 (1000), then each in turn
    assert sorted(t.host for t in tasks) == ["h0"] * 2 + ["h1"] * 7
    assert "no live, non-draining host has 400 MiB free" in status.message
    # draining hosts take nothing; what runs stays where it is
    client = daemon[1]
    client.set_draining("h0")
    status = run(daemon, program, desired=11)
    assert status.placed == 9 and status.unschedulable == 2
    assert sorted(t.host for t in client.tasks()) == ["h0"] * 2 + ["h1"] * 7
    # scaled down: the instances above desired are stopped
    status = run(daemon, program, desired=3)
    assert sorted(t.instance for t in client.tasks()) == [0, 1, 2]


@pytest.mark.parametrize(("program", "reason"), [
    ("sleeper", "sleeper: timed out after 1s: killed"),
    ("fails", "fails: exited with code 3: cannot reach the inventory"),
    ("garbage", "garbage: its output is not a plan: Expected `int`, got `str` - at "
                "`$.place[0].instance`"),
    ("notjson", "notjson: its output is not a plan: JSON is malformed"),
    ("foreign", "foreign: its output is not a plan: 'default-other-1-0' is not a task of "
                "service 'web' in cluster 'default' - at `$.stop[0]`"),
    ("chatty", "chatty: wrote more than 1048576 bytes: killed"),
    ("nointerpreter", "nointerpreter: cannot run it: its interpreter (the #! line) was not "
                      "found"),
    ("loose", "loose: the program is writable by its group or others (mode 775): refused"),
])
def test_failures_are_in_the_status(daemon: tuple[SchedulerDaemon, Client], program: str,
                                    reason: str) -> None:
    status = run(daemon, program)
    assert status.state == "error"
    assert status.message.startswith(f"scheduler {program!r} failed: /"), status.message
    assert reason in status.message
    assert "\n" not in status.message
    assert daemon[1].tasks() == []


def test_timeout_kills_the_program_group(daemon: tuple[SchedulerDaemon, Client],
                                         tmp_path: Path) -> None:
    run(daemon, "sleeper")
    pid = int((tmp_path / "schedulers" / "sleeper.pid").read_text())

    def gone() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
    wait_for(gone, 10, "the program's child to be killed")


def test_request_document(daemon: tuple[SchedulerDaemon, Client], tmp_path: Path,
                          capsys: pytest.CaptureFixture[str],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    """What a program reads: the documented fields, decodable as ExecRequest, no more
    environment than documented."""
    monkeypatch.setenv("SKED_TOKEN", "not for the programs")
    status = run(daemon, "recorder", desired=3)
    assert status.state == "ok" and status.placed == 0  # it placed nothing: nothing wanted
    raw = (tmp_path / "schedulers" / "request.json").read_bytes()
    doc = json.loads(raw)
    assert set(doc) == {"protocol", "cluster", "service", "task_definition", "demand",
                        "hosts", "tasks", "healthy"}
    assert [h["name"] for h in doc["hosts"]] == ["h0", "h1"]
    assert set(doc["hosts"][0]) == {"name", "total", "allocated", "free", "ports",
                                    "attributes", "draining", "tasks"}
    assert doc["demand"]["memory"] == 400 and doc["service"]["desired"] == 3
    from skedlib.codecs import decode
    assert decode(raw, ExecRequest).cluster.name == "default"
    env = dict(line.split("=", 1) for line in
               (tmp_path / "schedulers" / "env.txt").read_text().splitlines())
    assert env["SKED_SCHEDULER"] == "recorder" and env["LANG"] == "C.UTF-8"
    assert set(env) - {"PWD", "SHLVL", "_", "OLDPWD"} == {"PATH", "LANG", "SKED_SCHEDULER"}
    # sked schema describes both documents, from the same Structs
    assert sked_main(["schema", "exec_request"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert set(schema["$defs"]["ExecRequest"]["properties"]) == set(doc)
    assert set(schema["$defs"]["ExecHost"]["properties"]) == set(doc["hosts"][0])
    assert sked_main(["schema", "exec_response"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert {"place", "stop", "unschedulable"} <= set(schema["$defs"]["ExecResponse"]
                                                     ["properties"])
    assert schema["$defs"]["ExecPlacement"]["required"] == ["instance", "host"]


def test_whole_task_placements(daemon: tuple[SchedulerDaemon, Client]) -> None:
    """A placement may be a whole task (as a hand-rolled scheduler writes it); it is
    written from the stored task definition."""
    client = daemon[1]
    status = run(daemon, "whole", desired=2)
    [placed] = client.tasks()
    assert (placed.id, placed.host) == ("default-web-1-1", "h0")
    assert placed.task_definition.memory == 400  # the stored one, not the program's
    assert [c.name for c in placed.task_definition.containers] == ["web"]
    assert status.placed == 1
    # the same task again is no change
    assert run(daemon, "whole", desired=2).placed == 1
    assert client.tasks() == [placed]


@pytest.mark.parametrize("changed", [False, True], ids=["unchanged", "changed"])
def test_program_runs_without_holding_the_snapshot(tmp_path: Path, changed: bool) -> None:
    """While a program runs, the daemon's snapshot is free (its watch and other workers
    go on); a service that changed meanwhile is planned again instead of committed."""
    programs = program_dir(tmp_path)
    with daemon_on(ExecSchedulers(programs, timeout=120)) as (d, client):
        client.apply(parse_manifest(web_manifest("web", 1, scheduler="waiter"), "t.yml"))
        outcomes: list[RunOutcome] = []
        run = threading.Thread(target=lambda: outcomes.append(d.run_once(("default", "web"))))
        run.start()
        wait_for(lambda: (programs / "started").exists(), 60, "the program to start")
        if changed:
            client.apply(parse_manifest(web_manifest("web", 2, scheduler="waiter"), "t.yml"))
            d.cache.refresh()
        with d.cache.view():  # would wait until the program timed out, if it were held
            (programs / "go").touch()
        run.join(120)
        [outcome] = outcomes
        if changed:
            assert outcome.status is None and outcome.retry_after is not None
            assert client.tasks() == []
        else:
            assert outcome.status is not None and outcome.status.placed == 1, outcome
            assert [t.host for t in client.tasks()] == ["h0"]


def test_program_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    d = tmp_path / "others"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    prog = d / "stranger"
    prog.write_text("#!/bin/sh\necho '{}'\n")
    prog.chmod(0o755)
    os.chown(prog, 65534, 65534)
    with daemon_on(ExecSchedulers(d)) as pair:
        status = run(pair, "stranger")
    assert status.state == "error"
    assert "stranger: the program is owned by uid 65534, not by root or the daemon's user " \
           "(uid 0): refused" in status.message
    os.chown(d, 65534, 65534)
    with pytest.raises(ExecSchedulerError, match="the directory is owned by uid 65534"):
        ExecSchedulers(d)
