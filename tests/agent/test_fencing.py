"""Self-fencing: an agent cut off from the store stops the tasks that must run at most once.

The end-to-end test runs a real ``skedlib-agent`` on an etcd server of its own, stops
that server (the agent is cut off from its store) and watches the OS processes; the
others check the parts: the fence's clock, the host flag's bounds, the field's parsing.
"""

from __future__ import annotations

import re
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from skedlib.agent.fencing import Fencing, check_host_fence
from skedlib.agent.operations import StaleTask, TaskOperations
from skedlib.agent.ports import PortAllocator
from skedlib.codecs import encode, parse_manifest
from skedlib.errors import ValidationError
from skedlib.keys import Keyspace
from skedlib.models import Container, Task
from skedlib.plugins import open_backend
from skedlib.store.base import Compare, Delete
from tests.agent.conftest import AGENT, PY, AgentEnv, make_task, sleeper, wait_for
from tests.harness import etcd as harness
from tests.harness.common import free_ports

IGNORES_SIGTERM = """\
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL ends it
while True:
    time.sleep(3600)
"""

LEASE_TTL = 4.0
FENCE = "3s"


@pytest.fixture
def own_etcd() -> Iterator[harness.EtcdCluster]:
    """A single etcd node this test may stop and start again (the shared ones must not
    be faulted)."""
    harness.require_etcd_plugin()
    cluster = harness.EtcdCluster(1, name=f"fence-{uuid.uuid4().hex[:6]}")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text: str = r.read().decode()
    return text


def _fenced_task(script: Path) -> Task:
    task = make_task(0, service="single", provide_port=False, grace=60.0,
                     containers=[Container(name="main", type="process",
                                           executor={"argv": [PY, str(script)]})])
    task.task_definition.stop_after_disconnect = 3_000_000_000
    return task


@pytest.mark.integration
def test_a_fenced_task_stops_while_cut_off_and_comes_back(
        own_etcd: harness.EtcdCluster, tmp_path: Path) -> None:
    script = tmp_path / "stubborn.py"
    script.write_text(IGNORES_SIGTERM)
    env = AgentEnv(tmp_path, own_etcd.url(), f"t{uuid.uuid4().hex[:8]}/")
    (metrics_port,) = free_ports(1)
    try:
        env.start_agent("--metrics", f"127.0.0.1:{metrics_port}", lease_ttl=LEASE_TTL)
        fenced = _fenced_task(script)
        unfenced = make_task(0, service="plain", provide_port=False, containers=[sleeper()])
        env.put_task(fenced)
        env.put_task(unfenced)
        env.wait_healthy(fenced.id)
        env.wait_healthy(unfenced.id)
        fenced_pid, unfenced_pid = env.pid(fenced.id), env.pid(unfenced.id)

        (member,) = own_etcd.members
        member.stop()  # the agent can no longer renew its lease
        # the task ignores SIGTERM and has a 60 s grace period: only a kill cut short to
        # the lease TTL ends it before that
        wait_for(lambda: not psutil.pid_exists(fenced_pid)
                 or psutil.Process(fenced_pid).status() == psutil.STATUS_ZOMBIE,
                 40, "the fenced task's process to be killed")
        line = re.search(r"fencing (\S+): the host lease was not renewed for ([0-9.]+)s "
                         r"\(stop_after_disconnect 3s\): stopping it, killed within "
                         r"([0-9.]+)s", env.log_text())
        assert line is not None, env.log_text()
        assert line.group(1) == fenced.id
        # killed when the lease could expire, measured by the agent from the last renewal
        # it sent (at once if the check came late), not after the 60 s grace period
        silence, kill_within = float(line.group(2)), float(line.group(3))
        assert kill_within <= max(0.0, LEASE_TTL - silence) + 0.1
        assert [p.pid for p in env.processes(unfenced.id)] == [unfenced_pid]
        assert not env.processes(fenced.id)
        assert "skedlib_agent_fenced_tasks_total 1.0" in _metrics(metrics_port)
        assert 'skedlib_agent_tasks{state="fenced"} 1.0' in _metrics(metrics_port)

        member.start()
        own_etcd.wait_healthy(30)
        # still issued here: started again, after re-claiming its key
        wait_for(lambda: env.processes(fenced.id), 60, "the fenced task to start again")
        env.wait_healthy(fenced.id, 30)
        assert env.pid(fenced.id) != fenced_pid
        assert [p.pid for p in env.processes(unfenced.id)] == [unfenced_pid]
        assert "1 fenced task(s) may start again" in env.log_text()
    finally:
        env.cleanup()


@pytest.fixture
def own_cluster() -> Iterator[harness.EtcdCluster]:
    """Three etcd members this test may stop and start again."""
    harness.require_etcd_plugin()
    cluster = harness.EtcdCluster(3, name=f"fence3-{uuid.uuid4().hex[:6]}",
                                  heartbeat_ms=50, election_ms=500)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.integration
def test_a_task_moved_while_its_agent_was_cut_off_is_not_started_again(
        own_cluster: harness.EtcdCluster, tmp_path: Path) -> None:
    first, *_ = own_cluster.members
    # the test (as a scheduler) reaches every member; the agent only the first, so
    # stopping that member partitions the agent while the store stays up
    env = AgentEnv(tmp_path, own_cluster.url(), f"t{uuid.uuid4().hex[:8]}/")
    env.url = own_cluster.url([first])
    try:
        env.start_agent(lease_ttl=LEASE_TTL)
        fenced = make_task(0, service="single", provide_port=False, containers=[sleeper()])
        fenced.task_definition.stop_after_disconnect = 3_000_000_000
        unfenced = make_task(0, service="plain", provide_port=False, containers=[sleeper()])
        env.put_task(fenced)
        env.put_task(unfenced)
        env.wait_healthy(fenced.id)
        env.wait_healthy(unfenced.id)
        unfenced_pid = env.pid(unfenced.id)

        first.stop()
        wait_for(lambda: not env.processes(fenced.id), 40, "the fenced task to stop")
        wait_for(lambda: env.host_record() is None, 40, "the host's lease to expire")
        # what a scheduler does with the tasks of a host whose lease expired
        env.put_task(fenced, host="elsewhere")
        env.backend.delete(env.keys.host_task(env.host, fenced.id))

        first.start()
        own_cluster.wait_healthy(30)
        wait_for(lambda: env.host_record() is not None, 60, "the host record to be back")
        # the agent forgets the moved task (and deletes the health record it wrote)
        wait_for(lambda: env.health(fenced.id) is None, 60, "the moved task to be forgotten")
        assert not env.processes(fenced.id)
        assert env.log_text().count(f"started {fenced.id} ") == 1, env.log_text()
        assert [p.pid for p in env.processes(unfenced.id)] == [unfenced_pid]
        stored = env.task(fenced.id)
        assert stored is not None and stored.host == "elsewhere"
    finally:
        env.cleanup()


def test_a_claim_loses_to_a_move_and_wins_over_an_older_plan(tmp_path: Path) -> None:
    """The first start after a fence writes the task back at the revision it knows."""
    backend = open_backend(f"sqlite://{tmp_path}/s.db")
    keys = Keyspace("t/")
    ops = TaskOperations(backend, keys, "h1", {}, PortAllocator())
    task = make_task(0, containers=[], provide_port=False)
    task.host = "h1"
    try:
        backend.put(keys.task(task.id), encode(task))
        known = backend.put(keys.host_task("h1", task.id), encode(task))
        planned = backend.get(keys.task(task.id))
        assert planned is not None
        started = ops.start(task.id, task, known, claim=True)
        assert started.revision > known
        # a scheduler's commit planned before the claim compares the older revision
        move = backend.txn([Compare(keys.task(task.id), planned.revision)],
                           [Delete(keys.host_task("h1", task.id))])
        assert not move.succeeded
        # a move committed first: the claim finds the key changed and nothing starts
        backend.delete(keys.host_task("h1", task.id))
        with pytest.raises(StaleTask):
            ops.start(task.id, task, started.revision, claim=True)
    finally:
        backend.close()


# -- the fence's clock ------------------------------------------------------------------------
class Clock:
    """The last renewal's send time, as a test sets it."""

    def __init__(self) -> None:
        self.renewed = 100.0

    def __call__(self) -> float:
        return self.renewed


def _task(fence: str = "", name: str = "web") -> Task:
    task = make_task(0, service=name, containers=[sleeper()], grace=30.0)
    if fence:
        doc = parse_manifest(
            f"task_definitions: [{{name: x, version: 1, stop_after_disconnect: {fence}}}]",
            "m.yml")
        task.task_definition.stop_after_disconnect = \
            doc.manifest.task_definitions[0].stop_after_disconnect
    return task


def test_a_task_is_fenced_when_its_fence_passes_and_freed_by_a_later_renewal() -> None:
    clock = Clock()
    fencing = Fencing("h1", 0.0, 10.0, clock)
    web, plain = _task("8s"), _task()
    assert fencing.fence_of(web) == 8.0 and fencing.fence_of(plain) == 0.0
    assert fencing.next_check([web, plain], 101.0) == 1.0  # look again within a second
    assert fencing.next_check([web, plain], 107.5) == pytest.approx(0.5)  # exactly when due
    assert not fencing.holds("web", web, 107.9)
    assert fencing.holds("web", web, 108.0)
    assert not fencing.holds("plain", plain, 500.0)
    # killed by the time the lease could expire (renewal + TTL), not after its grace
    assert fencing.kill_by(web) == 110.0
    assert fencing.lift() is None  # no renewal since
    clock.renewed = 107.0  # sent before the fence went up: not proof enough
    assert fencing.lift() is None
    clock.renewed = 109.0
    assert fencing.lift() == {"web"}
    assert not fencing.holds("web", web, 110.0)


def test_the_task_definition_wins_over_the_host_default() -> None:
    fencing = Fencing("h1", 6.0, 10.0, Clock())
    assert fencing.fence_of(_task()) == 6.0
    assert fencing.fence_of(_task("9s")) == 9.0


def test_a_task_fence_out_of_bounds_is_warned_about_once(
        caplog: pytest.LogCaptureFixture) -> None:
    fencing = Fencing("h1", 0.0, 10.0, Clock())
    long, short = _task("30s", "long"), _task("1s", "short")
    for _ in range(3):
        assert fencing.fence_of(long) == 30.0  # honoured: no promise past the TTL
        assert fencing.fence_of(short) == 5.0  # half the TTL: the lease renews every third
    assert fencing.kill_by(long) is None  # its own grace period applies
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2, warnings
    assert "stop_after_disconnect 30s is longer than the lease TTL 10s of host h1" \
        in warnings[0]
    assert "stop_after_disconnect 1s is shorter than half the lease TTL 10s" in warnings[1]


# -- the host flag and the field ----------------------------------------------------------------
@pytest.mark.parametrize(("fence", "ttl", "message"), [
    (12.0, 10.0, r"stop_after_disconnect \(12s\) is longer than the lease TTL \(10s\)"),
    (4.0, 10.0, r"stop_after_disconnect \(4s\) is shorter than half the lease TTL"),
    (-1.0, 10.0, r"stop_after_disconnect must be >= 0 seconds"),
])
def test_a_host_fence_that_cannot_keep_its_promise_is_refused(
        fence: float, ttl: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_host_fence(fence, ttl)


def test_host_fences_within_bounds_are_accepted() -> None:
    for fence in (0.0, 5.0, 8.0, 10.0):
        check_host_fence(fence, 10.0)


def _agent(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert AGENT is not None
    return subprocess.run([AGENT, "--backend", f"sqlite://{tmp_path}/s.db", "--host", "h1",
                           "--state-dir", str(tmp_path / "state"), *args],
                          capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_the_agent_refuses_a_fence_longer_than_its_lease(tmp_path: Path) -> None:
    done = _agent(tmp_path, "--lease-ttl", "10", "--stop-after-disconnect", "30s")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "skedlib-agent: stop_after_disconnect (30s) is longer than the lease TTL (10s): a "
        "replacement could start before the fenced tasks stop; lower it or raise --lease-ttl"]


def test_the_agent_flag_names_a_bad_duration(tmp_path: Path) -> None:
    done = _agent(tmp_path, "--stop-after-disconnect", "soon")
    assert done.returncode == 2
    assert "argument --stop-after-disconnect: invalid duration 'soon'" in done.stderr


@pytest.mark.parametrize(("text", "seconds"), [("8s", 8.0), ("1m", 60.0), ("7", 7.0),
                                               ("2.5", 2.5), ("1m30s", 90.0)])
def test_the_agent_flag_takes_durations_and_seconds(text: str, seconds: float) -> None:
    from skedlib.cli.agent import build_parser

    args = build_parser().parse_args(["--stop-after-disconnect", text])
    assert args.stop_after_disconnect == seconds


def test_the_field_takes_go_durations_and_old_records_decode() -> None:
    assert _task("30s").task_definition.stop_after_disconnect == 30_000_000_000
    assert _task().task_definition.stop_after_disconnect == 0  # absent: never fenced


@pytest.mark.parametrize(("value", "message"), [
    ("soon", 'm.yml: task_definitions[0] "x": field stop_after_disconnect: invalid '
             "duration 'soon'"),
    ("-5s", 'm.yml: task_definitions[0] "x": field stop_after_disconnect: invalid '
            "duration '-5s'"),
])
def test_a_bad_field_is_one_line_naming_file_object_and_field(value: str,
                                                               message: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_manifest(f"task_definitions: [{{name: x, version: 1, "
                      f"stop_after_disconnect: {value}}}]", "m.yml")
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)
