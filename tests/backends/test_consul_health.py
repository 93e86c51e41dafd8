"""The Consul health provider against a real Consul agent and a real HTTP server.

The provider registers a task (as a Consul service with its checks) on the agent; the
agent itself runs the checks against a ``http.server`` the test starts on a free port.
What was registered is verified through Consul's own agent and catalog APIs.
"""

from __future__ import annotations

import http.server
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from skedlib_consul.health import ConsulHealthProvider, check_definitions

from skedlib.errors import BackendUnavailable, NotFound, ValidationError
from skedlib.models import Check, Cluster, Container, Task, TaskDefinition, TaskHealth
from skedlib.plugins import get_registry
from tests.harness import consul as harness

consul_dev = harness.consul_dev

pytestmark = [pytest.mark.integration]


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"ok\n" if self.path == "/health" else b"nope\n"
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server:
    """A real HTTP server on a free port, stoppable (the port then refuses connections)."""

    def __init__(self) -> None:
        self.port = harness.free_ports(1)[0]
        self.httpd: http.server.ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None
        if self.thread is not None:
            self.thread.join(10)


@pytest.fixture
def web_server() -> Iterator[_Server]:
    server = _Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def provider(consul_dev: harness.ConsulCluster) -> Iterator[ConsulHealthProvider]:
    p = ConsulHealthProvider(f"http://{consul_dev.members[0].endpoint}", host="host-1",
                             timeout=3)
    registered_before = set(p.registered())
    try:
        yield p
    finally:
        for sid in set(p.registered()) - registered_before:
            p.deregister(sid)
        p.close()


def _task(port: int, checks: list[Check], *, tags: list[str] | None = None,
          service: str | None = None) -> Task:
    service = service or f"web{uuid.uuid4().hex[:6]}"
    definition = TaskDefinition(name=service, version=3, tags=tags or [], provide_port=True,
                                containers=[Container(name="app", type="process",
                                                      checks=checks)])
    return Task(cluster=Cluster(name="prod"), task_definition=definition, service=service,
                instance=1, port=port, host="host-1")


def _wait_health(provider: ConsulHealthProvider, task_id: str,
                 cond: Callable[[TaskHealth], bool], timeout: float = 15.0) -> TaskHealth:
    deadline = time.monotonic() + timeout
    while True:
        h = provider.health(task_id)
        if cond(h):
            return h
        if time.monotonic() > deadline:
            pytest.fail(f"health of {task_id} never matched; last: {h}")
        time.sleep(0.2)


def _status(h: TaskHealth) -> dict[str, str]:
    return {c.name: c.status for c in h.checks}


def test_http_tcp_and_ttl_checks_through_consul(consul_dev: harness.ConsulCluster,
                                                provider: ConsulHealthProvider,
                                                web_server: _Server) -> None:
    agent = consul_dev.members[0]
    task = _task(web_server.port, [
        Check(id="http", name="http", http="http://127.0.0.1:$PROVIDED_PORT/health",
              interval="1s", timeout="1s"),
        Check(id="tcp", name="tcp", tcp="127.0.0.1:${PROVIDED_PORT}", interval="1s",
              timeout="1s"),
        Check(id="ttl", name="ttl", ttl="30s"),
    ], tags=["web", "canary"])
    assert provider.register(task) == task.id == f"prod-{task.service}-3-1"

    # what Consul was told, read back through its own APIs
    status, services = agent.api("GET", "/v1/agent/services")
    assert status == 200
    svc = services[task.id]
    assert (svc["Service"], svc["Port"], sorted(svc["Tags"])) == (
        task.service, web_server.port, ["canary", "web"])
    status, checks = agent.api("GET", "/v1/agent/checks")
    mine = {cid: c for cid, c in checks.items() if c["ServiceID"] == task.id}
    assert set(mine) == {f"{task.id}:app:http", f"{task.id}:app:tcp", f"{task.id}:app:ttl"}
    assert provider.check_ids(task) == [f"{task.id}:app:{n}" for n in ("http", "tcp", "ttl")]

    deadline = time.monotonic() + 15
    while True:  # the catalog is synced from the agent asynchronously
        status, catalog = agent.api("GET", f"/v1/catalog/service/{task.service}")
        if status == 200 and catalog:
            break
        assert time.monotonic() < deadline, "the service never reached the catalog"
        time.sleep(0.2)
    assert catalog[0]["ServiceID"] == task.id
    assert catalog[0]["ServicePort"] == web_server.port
    assert sorted(catalog[0]["ServiceTags"]) == ["canary", "web"]

    # http and tcp pass once the agent ran them; the TTL check waits for a report
    h = _wait_health(provider, task.id, lambda h: _status(h).get("http") == "passing"
                     and _status(h).get("tcp") == "passing")
    assert _status(h)["ttl"] == "critical" and not h.healthy and h.state == "unhealthy"
    assert h.host == "host-1" and h.task_id == task.id
    outputs = {c.name: c.output for c in h.checks}
    # $PROVIDED_PORT was substituted: Consul's own output names the real port
    assert f"127.0.0.1:{web_server.port}/health" in outputs["http"]
    assert f"127.0.0.1:{web_server.port}" in outputs["tcp"]

    provider.pass_ttl(task.id, note="all good")
    h = _wait_health(provider, task.id, lambda h: h.healthy)
    assert h.state == "healthy" and set(_status(h).values()) == {"passing"}
    assert {c.name: c.output for c in h.checks}["ttl"] == "all good"

    provider.warn_ttl(task.id, "ttl", note="degraded")
    h = _wait_health(provider, task.id, lambda h: _status(h)["ttl"] == "warning")
    assert not h.healthy

    provider.pass_ttl(task.id, f"{task.id}:app:ttl")
    _wait_health(provider, task.id, lambda h: h.healthy)

    # the server goes away: the http and tcp checks turn critical
    web_server.stop()
    h = _wait_health(provider, task.id, lambda h: _status(h)["http"] == "critical"
                     and _status(h)["tcp"] == "critical")
    assert not h.healthy and h.state == "unhealthy"

    provider.deregister(task.id)
    status, services = agent.api("GET", "/v1/agent/services")
    assert task.id not in services
    status, checks = agent.api("GET", "/v1/agent/checks")
    assert not [c for c in checks.values() if c["ServiceID"] == task.id]
    with pytest.raises(NotFound):
        provider.health(task.id)
    provider.deregister(task.id)  # idempotent


def test_script_check_sees_the_substituted_port(consul_dev: harness.ConsulCluster,
                                               provider: ConsulHealthProvider) -> None:
    port = 34567
    # if $PROVIDED_PORT were left for the shell it would expand to "" and exit 2 (critical)
    ok = _task(port, [Check(name="port", script=f'test "$PROVIDED_PORT" = "{port}"',
                            interval="1s")])
    bad = _task(port, [Check(name="fails", script="exit 2", interval="1s")])
    warn = _task(port, [Check(name="warns", script="exit 1", interval="1s")])
    for t in (ok, bad, warn):
        provider.register(t)
    assert _wait_health(provider, ok.id, lambda h: h.healthy).checks[0].status == "passing"
    assert _wait_health(provider, bad.id,
                        lambda h: _status(h) == {"fails": "critical"}).healthy is False
    assert _wait_health(provider, warn.id,
                        lambda h: _status(h) == {"warns": "warning"}).healthy is False
    assert {ok.id, bad.id, warn.id} <= set(provider.registered())


def test_task_without_checks_is_healthy(provider: ConsulHealthProvider) -> None:
    task = _task(0, [])
    provider.register(task)
    h = provider.health(task.id)
    assert h.healthy and h.checks == []


def test_bad_checks_are_refused_before_consul(provider: ConsulHealthProvider) -> None:
    both = _task(80, [Check(name="x", http="http://127.0.0.1/", tcp="127.0.0.1:80")])
    with pytest.raises(ValidationError, match="exactly one of http, tcp, script, ttl"):
        provider.register(both)
    with pytest.raises(ValidationError, match="none"):
        check_definitions(_task(80, [Check(name="empty")]))
    bad_interval = _task(80, [Check(name="x", http="http://127.0.0.1/", interval="often")])
    with pytest.raises(ValidationError, match="Consul refused it"):
        provider.register(bad_interval)
    assert bad_interval.id not in provider.registered()


def test_ttl_report_needs_a_ttl_check(provider: ConsulHealthProvider) -> None:
    task = _task(80, [Check(name="a", ttl="10s"), Check(name="b", ttl="10s")])
    provider.register(task)
    with pytest.raises(ValidationError, match="several TTL checks"):
        provider.pass_ttl(task.id)
    provider.pass_ttl(task.id, "a")
    assert _status(_wait_health(provider, task.id, lambda h: _status(h)["a"] == "passing"))[
        "b"] == "critical"
    with pytest.raises(NotFound):
        provider.pass_ttl("prod-nosuch-1-0")


def test_unreachable_agent_fails_in_time() -> None:
    port = harness.free_ports(1)[0]
    p = ConsulHealthProvider(f"http://127.0.0.1:{port}", timeout=1)
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable, match="connection refused") as info:
        p.health("prod-web-1-0")
    assert time.monotonic() - t0 < 2.5
    assert f"consul agent http://127.0.0.1:{port}" in str(info.value)
    assert "\n" not in str(info.value)
    p.close()


def test_registered_through_the_plugin_registry(consul_dev: harness.ConsulCluster) -> None:
    class Context:  # what an agent hands to a health provider factory
        host = "node-7"
        options = {"consul.agent": f"http://{consul_dev.members[0].endpoint}"}

    factory = get_registry().health_provider_factory("consul")
    with factory(Context()) as p:
        assert isinstance(p, ConsulHealthProvider)
        assert p.host == "node-7"
        task = _task(0, [])
        p.register(task)
        try:
            assert p.health(task.id).host == "node-7"
        finally:
            p.deregister(task.id)
