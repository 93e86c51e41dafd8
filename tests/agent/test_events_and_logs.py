"""Events and task output end to end: a real ``skedlib-scheduler`` and ``skedlib-agent``
on SQLite, read back with ``sked describe`` and ``sked logs``."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec
import pytest

from skedlib import events
from skedlib.agent.logs import LogEndpoint, LogEndpointKeyspace
from skedlib.cli.main import main
from skedlib.events import MAX_EVENTS, Event, EventLog, read_events
from skedlib.metrics import METRICS
from skedlib.models import Container
from skedlib.runtime import Store
from skedlib.store.base import Backend, Compare, Op, TxnResult
from tests.agent.conftest import PY, AgentEnv, make_task, wait_for
from tests.harness.cli import sked_script
from tests.harness.common import DelegatingBackend

SCHEDULER = shutil.which("skedlib-scheduler", path=str(Path(sys.executable).parent))

# prints a numbered line every 0.2 s (its output is what `sked logs` shows)
TICKER = ("import itertools, sys, time\n"
          "for i in itertools.count():\n"
          "    print(f'tick {i}', flush=True)\n"
          "    time.sleep(0.2)\n")

MANIFEST = """
clusters:
  - {{name: default, services: [ticker]}}
services:
  - {{name: ticker, task_name: ticker, task_version: 1, desired: 1, min: 0, max: 2}}
task_definitions:
  - name: ticker
    version: 1
    memory: 16
    containers:
      - name: main
        type: process
        executor:
          argv: [{py}, -c, {script}]
"""


@pytest.fixture
def cluster(env: AgentEnv, tmp_path: Path) -> Iterator[str]:
    """A scheduler and an agent on ``env``'s store, running one ticker task; its id."""
    assert SCHEDULER is not None
    agent = env.start_agent()
    sched_log = (tmp_path / "scheduler.log").open("ab")
    sched = subprocess.Popen([SCHEDULER, "--backend", env.url, "--prefix", env.prefix,
                              "--resync", "2"], stdout=sched_log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        manifest = tmp_path / "ticker.yml"
        manifest.write_text(MANIFEST.format(py=json.dumps(PY), script=json.dumps(TICKER)))
        assert sked(env, "apply", "-f", str(manifest)) == 0
        task_id = "default-ticker-1-0"
        wait_for(lambda: ((h := env.health(task_id)) is not None and h.healthy) or None, 60,
                 f"{task_id} healthy\n{env.log_text()}")
        yield task_id
    finally:
        sched.terminate()
        sched.wait(30)
        sched_log.close()
        env.terminate(agent)


def sked(env: AgentEnv, *argv: str) -> int:
    return main(["--backend", env.url, "--prefix", env.prefix, *argv])


def test_describe_task_shows_placed_started_healthy(env: AgentEnv, cluster: str,
                                                     capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    def reasons() -> list[str] | None:
        capsys.readouterr()
        assert sked(env, "describe", "task", cluster, "-o", "json") == 0
        got = json.loads(capsys.readouterr().out)
        found = [e["reason"] for e in got["events"]]
        return found if {"placed", "started", "healthy"} <= set(found) else None

    found = wait_for(reasons, 30, "placed, started and healthy events")
    assert found.index("placed") < found.index("started") < found.index("healthy")
    capsys.readouterr()
    assert sked(env, "describe", "task", cluster) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"task {cluster}\n")
    assert "\nstatus:\n" in out and "  state: healthy\n" in out
    lines = out[out.index("events ("):].splitlines()
    assert lines[1].split() == ["AGE", "REASON", "FROM", "MESSAGE"]
    placed = next(line for line in lines if " placed " in line)
    assert "scheduler" in placed and f"on {env.host}" in placed and "score" in placed
    started = next(line for line in lines if " started " in line)
    assert f"agent {env.host}" in started and started.split()[0].endswith("s")
    # the service and the host are described too; an unknown object is an error
    assert sked(env, "describe", "service", "ticker") == 0
    assert "placed" in capsys.readouterr().out
    assert sked(env, "describe", "host", env.host) == 0
    assert f"host {env.host}" in capsys.readouterr().out
    assert sked(env, "describe", "task", "default-nosuch-1-0") == 1
    assert "not found" in capsys.readouterr().err


def test_logs_prints_and_follows_the_task_output(env: AgentEnv, cluster: str,
                                                 capsys: pytest.CaptureFixture[bytes]) -> None:
    wait_for(lambda: b"tick 2" in _logs(env, cluster) or None, 20, "three ticks")
    out = _logs(env, cluster)
    assert out.startswith(b"tick 0\ntick 1\ntick 2\n")
    # -f goes on with the lines written after it started
    proc = subprocess.Popen([sked_script(), "--backend", env.url, "--prefix", env.prefix,
                             "logs", "-f", cluster], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        lines: list[bytes] = []
        reader = threading.Thread(target=lambda: lines.extend(
            proc.stdout.readline() for _ in range(200)), daemon=True)  # type: ignore[union-attr]
        reader.start()
        already = len(_logs(env, cluster).splitlines())
        wait_for(lambda: len(lines) > already + 5 or None, 30, "followed lines")
        assert lines[:already + 5] == [f"tick {i}\n".encode() for i in range(already + 5)]
    finally:
        proc.terminate()
        proc.wait(10)
        reader.join(10)
        proc.stdout.close()  # type: ignore[union-attr]


def _logs(env: AgentEnv, task_id: str) -> bytes:
    done = subprocess.run([sked_script(), "--backend", env.url, "--prefix", env.prefix,
                           "logs", task_id], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_log_requests_without_the_token_are_refused(env: AgentEnv, cluster: str) -> None:
    kv = env.backend.get(LogEndpointKeyspace(env.keys).log_endpoint(env.host))
    assert kv is not None
    endpoint = msgspec.json.decode(kv.value, type=LogEndpoint)
    url = urllib.parse.urlsplit(endpoint.url)
    assert url.hostname == "127.0.0.1"  # loopback by default
    path = f"/v1/tasks/{cluster}/logs"

    def get(token: str | None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(url.hostname or "", url.port or 80, timeout=10)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {token}"}
                         if token is not None else {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    body = wait_for(lambda: get(endpoint.token)[1] or None, 20, "output")
    assert body.startswith(b"tick 0\n")
    for token in (None, "", "wrong", endpoint.token + "x"):
        status, body = get(token)
        assert status == 401 and b"tick" not in body, (token, body)
    # the token is kept private on the host
    token_file = env.state_dir / "log-token"
    assert token_file.read_text().strip() == endpoint.token
    assert os.stat(token_file).st_mode & 0o077 == 0


def test_events_are_bounded_per_object(tmp_path: Path) -> None:
    with Store.open(f"sqlite://{tmp_path}/events.db") as store:
        log = EventLog(store, "test")
        for i in range(MAX_EVENTS + 1):
            log.record("task", "default-web-1-0", "restarted", f"attempt {i + 1}",
                       attempt=i + 1)
            if i == 9:
                assert log.flush()  # several batches: the bound holds across writes
        assert log.flush()
        log.record("task", "default-web-1-1", "started")
        log.close()
        events = read_events(store, "task", "default-web-1-0")
        assert len(events) == MAX_EVENTS
        assert events[0].message == "attempt 2"  # the 51st evicted the 1st
        assert events[-1].message == f"attempt {MAX_EVENTS + 1}"
        assert events[-1].details == {"attempt": str(MAX_EVENTS + 1)}
        assert [e.reason for e in read_events(store, "task", "default-web-1-1")] == \
            ["started"]
        assert log.dropped == 0


def test_old_events_are_dropped(tmp_path: Path) -> None:
    with Store.open(f"sqlite://{tmp_path}/events.db") as store:
        log = EventLog(store, "test", ttl=1.0)
        log.record("job", "j1", "running")
        log.close()
        assert [e.reason for e in read_events(store, "job", "j1", ttl=1.0)] == ["running"]
        time.sleep(1.2)
        assert read_events(store, "job", "j1", ttl=1.0) == []


def test_recording_never_raises(tmp_path: Path) -> None:
    with Store.open(f"sqlite://{tmp_path}/events.db") as store:
        log = EventLog(store, "test")
        log.record("task", "bad/name", "placed")  # an invalid name: dropped quietly
        log.record("nosuchkind", "x", "placed")  # type: ignore[arg-type]
        log.close()
        assert store.list(store.keys.prefix).items == []



def test_a_failing_task_records_its_exit_and_restart(env: AgentEnv) -> None:
    crash = Container(name="main", type="process",
                      executor={"argv": [PY, "-c", "import time; time.sleep(0.3); exit(3)"]})
    task = make_task(containers=[crash], provide_port=False, max_attempts=5)
    env.start_agent()
    env.put_task(task)

    def restarted() -> list[Event] | None:
        events = read_events(Store(env.backend, env.keys), "task", task.id)
        return events if any(e.reason == "restarted" for e in events) else None

    events = wait_for(restarted, 30, f"a restarted event\n{env.log_text()}")
    reasons = [e.reason for e in events]
    assert reasons[:2] == ["started", "healthy"], reasons
    exited = next(e for e in events if e.reason == "exited")
    assert "code 3" in exited.message and exited.details["container"] == "main"
    again = next(e for e in events if e.reason == "restarted")
    assert again.details["attempt"] == "2" and "code 3" in again.message
    assert all(e.source == f"agent {env.host}" for e in events)


class _SlowStore(DelegatingBackend):
    """SQLite whose transactions take ``delay`` seconds more (a store under load)."""

    def __init__(self, inner: Backend, delay: float) -> None:
        super().__init__(inner)
        self.delay = delay
        self.txns = 0

    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        self.txns += 1  # counted as it starts
        time.sleep(self.delay)
        return super().txn(compares, ops)


@contextlib.contextmanager
def _slow_log(tmp_path: Path) -> Iterator[tuple[Store, _SlowStore, EventLog, float]]:
    """An event log on a store whose transactions take 0.5 s more, once its first event
    is written: the store, the slow backend, the log and when the first was seen
    written (patch the writer's constants before)."""
    with Store.open(f"sqlite://{tmp_path}/events.db") as store:
        slow = _SlowStore(store.backend, 0.5)
        log = EventLog(Store(slow, store.keys), "test")
        log.record("task", "default-web-1-0", "placed")
        wait_for(lambda: read_events(store, "task", "default-web-1-0"), 10, "the first")
        yield store, slow, log, time.monotonic()
        log.close()


def _dropped_metric() -> float:
    return METRICS.registry.get_sample_value("skedlib_events_dropped_total") or 0.0


def test_after_a_long_batch_the_writer_rests_and_the_queue_keeps_the_newest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a batch that took 0.5 s at a share of a tenth: the next one waits 4.5 s
    monkeypatch.setattr(events, "WRITER_SHARE", 0.1)
    monkeypatch.setattr(events, "QUEUE_LIMIT", 5)
    dropped_before = _dropped_metric()
    with _slow_log(tmp_path) as (store, slow, log, first):
        written = slow.txns
        for i in range(8):  # more than the queue holds, while the writer rests
            log.record("task", f"default-web-1-{i + 1}", "placed", f"number {i + 1}")
        time.sleep(0.5)  # well inside the rest: nothing more is written
        assert slow.txns == written
        assert log.dropped == 3
        # somebody waiting for the queue does not wait for the rest
        assert log.flush(10)
        assert time.monotonic() - first < 3.0
        names = [f"default-web-1-{i}" for i in range(1, 9)]
        assert [n for n in names if read_events(store, "task", n)] == names[3:]
    assert _dropped_metric() - dropped_before == 3


def test_the_rest_after_a_slow_batch_is_bounded(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "WRITER_SHARE", 0.1)
    monkeypatch.setattr(events, "MAX_REST", 1.0)  # instead of the 4.5 s the share asks
    with _slow_log(tmp_path) as (store, _, log, first):
        log.record("task", "default-web-1-1", "placed")
        # written without a flush, once the bounded rest is over
        wait_for(lambda: read_events(store, "task", "default-web-1-1"), 10, "the second")
        assert time.monotonic() - first < 3.5
