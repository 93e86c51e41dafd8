"""The agent's life cycle: graceful shutdown (tasks left running or stopped), the
in-process :class:`Agent`, ttl checks end to end, a lost lease, and relisting after a
compacted watch."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil
import pytest

from skedlib import pass_ttl_check
from skedlib.agent import Agent, AgentConfig
from skedlib.codecs import decode, encode
from skedlib.errors import Compacted
from skedlib.keys import Keyspace
from skedlib.models import Check, Container, Host, TaskHealth
from skedlib.runtime import Informer, Store
from skedlib.store.base import (
    Backend,
    ListResult,
    Watch,
    WatchEvent,
)
from skedlib.store.memory import MemoryBackend
from tests.agent.conftest import AGENT, PY, AgentEnv, make_task, wait_for
from tests.harness.common import DelegatingBackend


def test_sigterm_leaves_tasks_running_for_the_next_agent(env: AgentEnv) -> None:
    agent = env.start_agent()
    task, pid = env.run_sleeper()
    assert env.terminate(agent) == 0
    assert psutil.pid_exists(pid)
    assert "tasks left running" in env.log_text()
    env.start_agent()
    wait_for(lambda: "adopted " + task.id in env.log_text(), 10, "the adoption")
    assert [p.pid for p in env.processes(task.id)] == [pid]


def test_stop_tasks_on_exit_stops_them_and_removes_the_host(env: AgentEnv) -> None:
    agent = env.start_agent("--stop-tasks-on-exit", lease_ttl=30)
    task, pid = env.run_sleeper()
    assert env.terminate(agent) == 0
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    assert env.host_record() is None  # revoked at once, not after the 30 s TTL
    health = env.health(task.id)
    assert health is not None and health.state == "stopped" and not health.healthy


def test_stopping_waits_the_grace_period_after_sigterm_then_kills(env: AgentEnv) -> None:
    env.start_agent()
    stubborn = Container(name="main", type="process", executor={"argv": [
        PY, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                  "print('ready', flush=True); time.sleep(600)"]})
    task = make_task(0, containers=[stubborn], provide_port=False, grace=1.5)
    env.put_task(task)
    env.wait_healthy(task.id)
    pid = env.pid(task.id)
    wait_for(lambda: "ready" in (env.state_dir / "logs" / task.id / "main.out.log")
             .read_text(), 10, "the SIGTERM handler")
    env.delete_task(task.id)
    wait_for(lambda: not psutil.pid_exists(pid) or
             psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 15, "the kill")
    # the task definition's grace period (not the 60 s default) passed before SIGKILL
    assert f"{task.id}/main did not stop within 1.5s of SIGTERM: killing it" in \
        env.log_text()


@pytest.mark.parametrize(("args", "error"), [
    (["--executors", "bash,nosuch"],
     "no executor named 'nosuch' is installed (installed: bash, "),
    (["--executors", "process", "--executor-opt", "process.log_max_bytes=lots"],
     "executor 'process' failed to start: process executor option log_max_bytes='lots' is "
     "not a number"),
    (["--health-provider", "nosuch"], "no health provider named 'nosuch' is installed"),
    (["--jobs-only", "--executor-opt", "log_max_bytes=5"],
     "--executor-opt log_max_bytes=5: expected EXECUTOR.KEY=VALUE"),
])
def test_a_bad_command_line_stops_the_agent_with_one_line(
        tmp_path: Path, args: list[str], error: str) -> None:
    assert AGENT is not None
    proc = subprocess.run([AGENT, "--backend", f"sqlite://{tmp_path}/s.db", "--host", "h1",
                           "--state-dir", str(tmp_path / "state"), *args],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"skedlib-agent: {error}")
    assert proc.stderr.count("\n") == 1, proc.stderr  # one line, nothing started


@pytest.fixture
def memory() -> Iterator[MemoryBackend]:
    backend = MemoryBackend()
    try:
        yield backend
    finally:
        backend.close()


def _agent(backend: Backend, tmp_path: Path, host: str = "local1") -> Agent:
    config = AgentConfig(host=host, state_dir=tmp_path / "state", lease_ttl=1.0,
                         executors=["process"], check_failures=2, health_refresh=5.0)
    return Agent(backend, config)


def test_in_process_agent_with_a_ttl_check(memory: MemoryBackend, tmp_path: Path) -> None:
    keys = Keyspace()
    agent = _agent(memory, tmp_path)
    agent.start()
    try:
        assert agent.wait_ready(10)
        assert agent.health_provider_name == "local"  # no provider of the backend's own
        task = make_task(0, provide_port=False, containers=[Container(
            name="main", type="process", executor={"argv": ["sleep", "60"]},
            checks=[Check(name="heartbeat", ttl="3s")])])
        task.host = "local1"
        memory.put(keys.host_task("local1", task.id), encode(task))
        memory.put(keys.task(task.id), encode(task))

        def health() -> TaskHealth | None:
            kv = memory.get(keys.task_health(task.id))
            return decode(kv.value, TaskHealth) if kv else None

        starting = wait_for(lambda: (h := health()) and h.checks and h, 5, "a record")
        assert starting.state == "starting" and not starting.healthy
        assert agent.phases() == {task.id: "running"}
        pass_ttl_check(Store(memory), task.id, "heartbeat", output="beat")
        healthy = wait_for(lambda: (h := health()) and h.healthy and h, 10, "healthy")
        assert healthy.checks[0].status == "passing" and healthy.checks[0].output == "beat"
        record = decode(memory.get(keys.agent("local1")).value, Host)  # type: ignore[union-attr]
        assert record.executors == ["process"]
    finally:
        agent.stop(stop_tasks=True)
    assert agent.phases()[task.id] in ("idle", "running", "stopping")
    assert health() is not None and health().state == "stopped"  # type: ignore[union-attr]


def test_a_lost_lease_is_granted_again_and_the_record_republished(
        memory: MemoryBackend, tmp_path: Path) -> None:
    keys = Keyspace()
    agent = _agent(memory, tmp_path, host="local2")
    agent.start()
    try:
        first = wait_for(lambda: memory.get(keys.agent("local2")), 5, "the host record")
        assert first.lease is not None
        memory.revoke_lease(first.lease)  # as if the backend had expired it
        again = wait_for(lambda: (kv := memory.get(keys.agent("local2"))) and
                         kv.lease != first.lease and kv, 5, "the record on a new lease")
        assert decode(again.value, Host).name == "local2"
    finally:
        agent.stop()


class _CompactingOnce(DelegatingBackend):
    """Delegates to a memory backend; its first watch raises Compacted."""

    def __init__(self, inner: MemoryBackend) -> None:
        super().__init__(inner)
        self.watches = 0

    def watch(self, prefix: str, start_revision: int) -> Watch:
        self.watches += 1
        if self.watches == 1:
            raise Compacted("compacted", start_revision + 1)
        return self.inner.watch(prefix, start_revision)


def test_watcher_lists_again_after_compaction(memory: MemoryBackend) -> None:
    backend = _CompactingOnce(memory)
    listings: list[ListResult] = []
    batches: list[Sequence[WatchEvent]] = []
    memory.put("p/a", b"1")
    watcher = Informer(backend, "p/", on_list=listings.append, on_events=batches.append,
                       poll_timeout=0.1, name="relisting-informer")
    watcher.start()
    try:
        wait_for(lambda: len(listings) == 2, 5, "a second listing")
        memory.put("p/b", b"2")
        wait_for(lambda: batches, 5, "a watch batch")
        assert [kv.key for kv in listings[1].items] == ["p/a"]
        assert [e.key for e in batches[0]] == ["p/b"]
    finally:
        watcher.stop()
        wait_for(lambda: not any(t.name == "relisting-informer" and t.is_alive()
                                 for t in threading.enumerate()), 30, "the informer to stop")
