"""Local health checks: http, tcp, script and ttl; the provider's states; resolution."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from skedlib.codecs import encode
from skedlib.errors import NotFound
from skedlib.executors.base import TaskRejected
from skedlib.health.checks import ResolvedCheck, resolve_checks, run_check
from skedlib.health.provider import HealthContext, LocalHealthProvider, pass_ttl_check
from skedlib.keys import Keyspace
from skedlib.models import Check, CheckStatus, Container, TaskHealth
from skedlib.runtime import Store
from skedlib.store.memory import MemoryBackend
from tests.agent.conftest import make_task, wait_for


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code = int(self.path.strip("/") or 200)
        self.send_response(code)
        if 300 <= code < 400:
            self.send_header("Location", "/500")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def _check(kind: str, target: str, timeout: float = 1.0) -> ResolvedCheck:
    return ResolvedCheck(name="c", container="app", kind=kind,  # type: ignore[arg-type]
                         target=target, interval=1.0, timeout=timeout)


def test_http_statuses(server: int) -> None:
    url = f"http://127.0.0.1:{server}"
    assert run_check(_check("http", f"{url}/200"), {}).status == "passing"
    assert run_check(_check("http", f"{url}/302"), {}).status == "passing"  # not followed
    assert run_check(_check("http", f"{url}/429"), {}).status == "warning"
    result = run_check(_check("http", f"{url}/503"), {})
    assert (result.status, result.output) == ("critical", f"GET {url}/503: HTTP 503 "
                                                          "Service Unavailable")


def test_http_and_tcp_time_out_and_refuse() -> None:
    with socket.socket() as s:  # listens but never accepts: the request times out
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        port = s.getsockname()[1]
        started = time.monotonic()
        slow = run_check(_check("http", f"http://127.0.0.1:{port}/", timeout=0.3), {})
        assert slow.status == "critical" and "timed out" in slow.output
        assert time.monotonic() - started < 60  # never waited for a reply that never comes
        assert run_check(_check("tcp", f"127.0.0.1:{port}"), {}).status == "passing"
    refused = run_check(_check("tcp", f"127.0.0.1:{port}"), {})
    assert refused.status == "critical" and "refused" in refused.output.lower()


def test_script_exit_codes_and_timeout() -> None:
    env = {"PROVIDED_PORT": "8080"}
    ok = run_check(_check("script", 'echo "port $PROVIDED_PORT"'), env)
    assert (ok.status, ok.output) == ("passing", "port 8080")
    assert run_check(_check("script", "exit 1"), env).status == "warning"
    assert run_check(_check("script", "exit 2"), env).status == "critical"
    started = time.monotonic()
    slow = run_check(_check("script", "sleep 60", timeout=0.3), env)
    assert slow.status == "critical" and "timed out" in slow.output
    assert time.monotonic() - started < 60  # the script was not waited for


def test_resolution_substitutes_the_port_and_applies_defaults() -> None:
    task = make_task(0, containers=[Container(name="web", type="process", checks=[
        Check(http="http://127.0.0.1:$PROVIDED_PORT/health"),
        Check(name="db", tcp="localhost:${PROVIDED_PORT}", interval="2s", timeout="5s"),
        Check(ttl="3s")])])
    http_check, tcp_check, ttl_check = resolve_checks(task, 20001)
    assert (http_check.name, http_check.target) == ("web.checks[0]",
                                                    "http://127.0.0.1:20001/health")
    assert (http_check.interval, http_check.timeout) == (10.0, 5.0)
    assert (tcp_check.name, tcp_check.target, tcp_check.timeout) == ("db", "localhost:20001",
                                                                     2.0)
    assert (ttl_check.kind, ttl_check.ttl, ttl_check.interval) == ("ttl", 3.0, 0.75)
    for bad, message in [(Check(), "exactly one of http, tcp, script, ttl, docker (got none)"),
                         (Check(http="x", tcp="y:1"), "(got http, tcp)"),
                         (Check(tcp="nohostport"), "is not host:port"),
                         (Check(http="http://h/", interval="50ms"), "shorter than 100ms")]:
        bad_task = make_task(0, containers=[Container(name="c", type="process",
                                                      checks=[bad])])
        with pytest.raises(TaskRejected, match=message.replace("(", r"\(").replace(")",
                                                                                   r"\)")):
            resolve_checks(bad_task, 1)


def test_provider_states_threshold_and_ttl(server: int) -> None:
    backend = MemoryBackend()
    keys = Keyspace()
    changes: list[str] = []
    provider = LocalHealthProvider(HealthContext(host="h1", backend=backend, keyspace=keys,
                                                 on_change=changes.append,
                                                 failure_threshold=2))
    try:
        good = make_task(0, containers=[Container(name="web", type="process", checks=[
            Check(http=f"http://127.0.0.1:{server}/200", interval="200ms")])])
        bad = make_task(1, containers=[Container(name="web", type="process", checks=[
            Check(tcp="127.0.0.1:9", interval="200ms")])])
        ttl = make_task(2, containers=[Container(name="web", type="process", checks=[
            Check(name="alive", ttl="1s")])])
        for t in (good, bad, ttl):
            provider.watch(t, 0)
        wait_for(lambda: provider.health(good.id).state == "healthy", 5,  # type: ignore
                 "healthy")
        wait_for(lambda: provider.health(bad.id).state == "unhealthy", 5,  # type: ignore
                 "unhealthy after two criticals")
        assert changes.count(bad.id) == 2  # first result, then the threshold
        # the ttl check passes once reported in the task's health record
        backend.put(keys.task_health(ttl.id), encode(TaskHealth(
            task_id=ttl.id, checks=[CheckStatus(name="alive")])))
        pass_ttl_check(Store(backend), ttl.id, "alive", output="I am alive")
        provider.watch(ttl, 0)  # re-evaluate now rather than after the ttl
        report = wait_for(lambda: (h := provider.health(ttl.id)) and h.healthy and h, 5,
                          "the ttl check to pass")
        assert report.checks[0].output == "I am alive"
        with pytest.raises(NotFound, match="no check named 'nope'"):
            pass_ttl_check(Store(backend), ttl.id, "nope")
        with pytest.raises(NotFound, match="no health record"):
            pass_ttl_check(Store(backend), good.id, "x")
        provider.unwatch(good.id)
        assert provider.health(good.id) is None
    finally:
        provider.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_start_period_lets_a_slow_task_start_and_then_counts_failures() -> None:
    """Critical results before a check first passes within its start_period do not
    count (the task stays starting); after the period, or once it has passed, they do."""
    changes: list[str] = []
    provider = LocalHealthProvider(HealthContext(
        host="h1", backend=MemoryBackend(), keyspace=Keyspace(), on_change=changes.append,
        failure_threshold=1))
    port = _free_port()
    listener = socket.socket()
    try:
        slow = make_task(0, containers=[Container(name="web", type="process", checks=[
            Check(tcp=f"127.0.0.1:{port}", interval="200ms", start_period="30s")])])
        eager = make_task(1, containers=[Container(name="web", type="process", checks=[
            Check(tcp=f"127.0.0.1:{port}", interval="200ms")])])
        short = make_task(2, containers=[Container(name="web", type="process", checks=[
            Check(tcp="127.0.0.1:9", interval="200ms", start_period="1s")])])
        for t in (slow, eager, short):
            provider.watch(t, 0)
        wait_for(lambda: provider.health(eager.id).state == "unhealthy", 5,  # type: ignore
                 "the check without a start period to count at once")
        # the slow one has run and failed several times by now, and is still starting
        wait_for(lambda: provider.health(slow.id).checks[0].output != "not checked yet",
                 5, "a first result")  # type: ignore[union-attr]
        time.sleep(1.0)
        report = provider.health(slow.id)
        assert report is not None and report.state == "starting", report
        assert report.checks[0].status == "critical"
        # the start period of the other one ends: its failures count from then on
        wait_for(lambda: provider.health(short.id).state == "unhealthy", 10,  # type: ignore
                 "failures to count after a 1s start period")
        listener.bind(("127.0.0.1", port))
        listener.listen()
        wait_for(lambda: provider.health(slow.id).state == "healthy", 5,  # type: ignore
                 "the slow task to pass")
        listener.close()  # once it has passed, failures count at once
        wait_for(lambda: provider.health(slow.id).state == "unhealthy", 5,  # type: ignore
                 "a failure after the first pass to count")
    finally:
        listener.close()
        provider.close()
