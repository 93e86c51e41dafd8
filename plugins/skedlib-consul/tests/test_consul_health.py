"""Consul's health checks against a real Consul agent and a real HTTP server.

A task is registered (as a Consul service with its checks) on the agent; the agent
itself runs the checks against a ``http.server`` the test starts on a free port. What
was registered is verified through Consul's own agent and catalog APIs. The first tests
use the plain client (:class:`ConsulAgentClient`); the rest the agent's provider
(:class:`ConsulHealthProvider`) through the HealthProvider contract: states,
``on_change``, the failure threshold, TTL reports through the store.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import skedlib_consul.provider
from skedlib_consul.agent_client import ConsulAgentClient
from skedlib_consul.backend import ConsulBackend
from skedlib_consul.checks import check_definitions
from skedlib_consul.client import HttpClient
from skedlib_consul.local_agent import agent_options, on_this_host
from skedlib_consul.options import parse_url
from skedlib_consul.provider import ConsulHealthProvider

from skedlib.codecs import encode
from skedlib.errors import BackendUnavailable, NotFound, PluginError, ValidationError
from skedlib.executors.base import TaskRejected
from skedlib.health.provider import HealthContext, HealthProvider, pass_ttl_check
from skedlib.keys import Keyspace
from skedlib.models import Check, Cluster, Container, Task, TaskDefinition, TaskHealth
from skedlib.plugins import get_registry, open_backend
from skedlib.runtime import Store
from skedlib.store.memory import MemoryBackend
from tests.harness import consul as harness

consul_dev = harness.consul_dev

pytestmark = [pytest.mark.integration]

#: what a loaded machine may add to a call bounded by its timeout (one that is not bounded
#: would hang until pytest's own timeout)
LOAD_SLACK = 3.0


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
def client(consul_dev: harness.ConsulCluster) -> Iterator[ConsulAgentClient]:
    p = ConsulAgentClient(f"http://{consul_dev.members[0].endpoint}", host="host-1",
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


def _wait_health(client: ConsulAgentClient, task_id: str,
                 cond: Callable[[TaskHealth], bool], timeout: float = 15.0) -> TaskHealth:
    deadline = time.monotonic() + timeout
    while True:
        h = client.health(task_id)
        if cond(h):
            return h
        if time.monotonic() > deadline:
            pytest.fail(f"health of {task_id} never matched; last: {h}")
        time.sleep(0.2)


def _status(h: TaskHealth) -> dict[str, str]:
    return {c.name: c.status for c in h.checks}


def test_http_tcp_and_ttl_checks_through_consul(consul_dev: harness.ConsulCluster,
                                                client: ConsulAgentClient,
                                                web_server: _Server) -> None:
    agent = consul_dev.members[0]
    task = _task(web_server.port, [
        Check(id="http", name="http", http="http://127.0.0.1:$PROVIDED_PORT/health",
              interval="1s", timeout="1s"),
        Check(id="tcp", name="tcp", tcp="127.0.0.1:${PROVIDED_PORT}", interval="1s",
              timeout="1s"),
        Check(id="ttl", name="ttl", ttl="30s"),
    ], tags=["web", "canary"])
    assert client.register(task) == task.id == f"prod-{task.service}-3-1"

    # what Consul was told, read back through its own APIs
    status, services = agent.api("GET", "/v1/agent/services")
    assert status == 200
    svc = services[task.id]
    assert (svc["Service"], svc["Port"], sorted(svc["Tags"])) == (
        task.service, web_server.port, ["canary", "web"])
    status, checks = agent.api("GET", "/v1/agent/checks")
    mine = {cid: c for cid, c in checks.items() if c["ServiceID"] == task.id}
    assert set(mine) == {f"{task.id}:app:http", f"{task.id}:app:tcp", f"{task.id}:app:ttl"}
    assert client.check_ids(task) == [f"{task.id}:app:{n}" for n in ("http", "tcp", "ttl")]

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
    h = _wait_health(client, task.id, lambda h: _status(h).get("http") == "passing"
                     and _status(h).get("tcp") == "passing")
    assert _status(h)["ttl"] == "critical" and not h.healthy and h.state == "unhealthy"
    assert h.host == "host-1" and h.task_id == task.id
    outputs = {c.name: c.output for c in h.checks}
    # $PROVIDED_PORT was substituted: Consul's own output names the real port
    assert f"127.0.0.1:{web_server.port}/health" in outputs["http"]
    assert f"127.0.0.1:{web_server.port}" in outputs["tcp"]

    client.pass_ttl(task.id, note="all good")
    h = _wait_health(client, task.id, lambda h: h.healthy)
    assert h.state == "healthy" and set(_status(h).values()) == {"passing"}
    assert {c.name: c.output for c in h.checks}["ttl"] == "all good"

    client.warn_ttl(task.id, "ttl", note="degraded")
    h = _wait_health(client, task.id, lambda h: _status(h)["ttl"] == "warning")
    assert not h.healthy

    client.pass_ttl(task.id, f"{task.id}:app:ttl")
    _wait_health(client, task.id, lambda h: h.healthy)

    # the server goes away: the http and tcp checks turn critical
    web_server.stop()
    h = _wait_health(client, task.id, lambda h: _status(h)["http"] == "critical"
                     and _status(h)["tcp"] == "critical")
    assert not h.healthy and h.state == "unhealthy"

    client.deregister(task.id)
    status, services = agent.api("GET", "/v1/agent/services")
    assert task.id not in services
    status, checks = agent.api("GET", "/v1/agent/checks")
    assert not [c for c in checks.values() if c["ServiceID"] == task.id]
    with pytest.raises(NotFound):
        client.health(task.id)
    client.deregister(task.id)  # idempotent


def test_script_check_sees_the_substituted_port(consul_dev: harness.ConsulCluster,
                                               client: ConsulAgentClient) -> None:
    port = 34567
    # if $PROVIDED_PORT were left for the shell it would expand to "" and exit 2 (critical)
    ok = _task(port, [Check(name="port", script=f'test "$PROVIDED_PORT" = "{port}"',
                            interval="1s")])
    bad = _task(port, [Check(name="fails", script="exit 2", interval="1s")])
    warn = _task(port, [Check(name="warns", script="exit 1", interval="1s")])
    for t in (ok, bad, warn):
        client.register(t)
    assert _wait_health(client, ok.id, lambda h: h.healthy).checks[0].status == "passing"
    assert _wait_health(client, bad.id,
                        lambda h: _status(h) == {"fails": "critical"}).healthy is False
    assert _wait_health(client, warn.id,
                        lambda h: _status(h) == {"warns": "warning"}).healthy is False
    assert {ok.id, bad.id, warn.id} <= set(client.registered())


def test_task_without_checks_is_healthy(client: ConsulAgentClient) -> None:
    task = _task(0, [])
    client.register(task)
    h = client.health(task.id)
    assert h.healthy and h.checks == []


def test_bad_checks_are_refused_before_consul(client: ConsulAgentClient) -> None:
    both = _task(80, [Check(name="x", http="http://127.0.0.1/", tcp="127.0.0.1:80")])
    with pytest.raises(ValidationError, match="exactly one of http, tcp, script, ttl"):
        client.register(both)
    with pytest.raises(ValidationError, match="none"):
        check_definitions(_task(80, [Check(name="empty")]))
    bad_interval = _task(80, [Check(name="x", http="http://127.0.0.1/", interval="often")])
    with pytest.raises(ValidationError, match="Consul refused it"):
        client.register(bad_interval)
    assert bad_interval.id not in client.registered()


def test_ttl_report_needs_a_ttl_check(client: ConsulAgentClient) -> None:
    task = _task(80, [Check(name="a", ttl="10s"), Check(name="b", ttl="10s")])
    client.register(task)
    with pytest.raises(ValidationError, match="several TTL checks"):
        client.pass_ttl(task.id)
    client.pass_ttl(task.id, "a")
    assert _status(_wait_health(client, task.id, lambda h: _status(h)["a"] == "passing"))[
        "b"] == "critical"
    with pytest.raises(NotFound):
        client.pass_ttl("prod-nosuch-1-0")


def test_unreachable_agent_fails_in_time() -> None:
    port = harness.free_ports(1)[0]
    p = ConsulAgentClient(f"http://127.0.0.1:{port}", timeout=1)
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable, match="connection refused") as info:
        p.health("prod-web-1-0")
    assert time.monotonic() - t0 < 1 + LOAD_SLACK
    assert f"consul agent http://127.0.0.1:{port}" in str(info.value)
    assert "\n" not in str(info.value)
    p.close()


# -- the agent's provider (skedlib.HealthProvider) --------------------------------
class _Changes:
    """``on_change`` for a HealthContext: when it was called, and the state then."""

    def __init__(self) -> None:
        self.provider: ConsulHealthProvider | None = None
        self.calls: list[tuple[float, str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, task_id: str) -> None:
        assert self.provider is not None
        h = self.provider.health(task_id)
        with self.lock:
            self.calls.append((time.monotonic(), task_id, h.state if h else "none"))

    def states(self, task_id: str) -> list[str]:
        with self.lock:
            return [s for _, t, s in self.calls if t == task_id]

    def first(self, task_id: str, state: str) -> float:
        with self.lock:
            return next(at for at, t, s in self.calls if t == task_id and s == state)


ProviderFactory = Callable[..., tuple[ConsulHealthProvider, _Changes]]


@pytest.fixture
def agent_provider(consul_dev: harness.ConsulCluster) -> Iterator[ProviderFactory]:
    """Make ConsulHealthProviders on the dev agent; closed (tasks unwatched) after."""
    made: list[ConsulHealthProvider] = []

    def make(*, threshold: int = 2, backend: Any = None,
             options: dict[str, str] | None = None,
             cls: type[ConsulHealthProvider] = ConsulHealthProvider,
             ) -> tuple[ConsulHealthProvider, _Changes]:
        changes = _Changes()
        ctx = HealthContext(host="host-1", backend=backend or MemoryBackend(),
                            keyspace=Keyspace(), on_change=changes, failure_threshold=threshold,
                            options=options if options is not None else
                            {"consul.url": f"http://{consul_dev.members[0].endpoint}",
                             "consul.timeout": "3"})
        p = cls(ctx)
        changes.provider = p
        made.append(p)
        return p, changes

    try:
        yield make
    finally:
        for p in made:
            for task_id in list(p._tasks):
                p.unwatch(task_id)
            p.close()


def _wait_state(p: ConsulHealthProvider, task_id: str, cond: Callable[[TaskHealth], bool],
                timeout: float = 15.0, what: str = "") -> TaskHealth:
    deadline = time.monotonic() + timeout
    while True:
        h = p.health(task_id)
        assert h is not None, f"{task_id} is not watched"
        if cond(h):
            return h
        if time.monotonic() > deadline:
            pytest.fail(f"{task_id} never {what or 'matched'}; last: {h}")
        time.sleep(0.05)


def _consul_checks(agent: harness.ConsulAgent, task_id: str) -> dict[str, dict[str, Any]]:
    status, checks = agent.api("GET", "/v1/agent/checks")
    assert status == 200
    return {cid: c for cid, c in checks.items() if c["ServiceID"] == task_id}


def _wait_consul(cond: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_agent_provider_follows_an_http_check_to_unhealthy(
        consul_dev: harness.ConsulCluster, agent_provider: ProviderFactory,
        web_server: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = consul_dev.members[0]
    # the agent is read on a status change or at the provider's own deadlines; a periodic
    # read (every FOLLOW_WAIT) must not be what confirms the threshold below
    monkeypatch.setattr(skedlib_consul.provider, "FOLLOW_WAIT", 30.0)
    callers: set[int] = set()  # the threads that talked to Consul
    request = HttpClient.request

    def recorded(self: HttpClient, *args: Any, **kwargs: Any) -> Any:
        callers.add(threading.get_ident())
        return request(self, *args, **kwargs)

    monkeypatch.setattr(HttpClient, "request", recorded)
    p, changes = agent_provider(threshold=2)
    assert isinstance(p, HealthProvider) and p.name == "consul"
    # the port comes from watch(), not from the task (which the agent writes back later)
    task = _task(0, [Check(name="http", http="http://127.0.0.1:$PROVIDED_PORT/health",
                           interval="1s", timeout="500ms")], tags=["web", "canary"])
    p.watch(task, web_server.port)
    h = p.health(task.id)
    assert h is not None and h.state == "starting" and h.host == "host-1"

    h = _wait_state(p, task.id, lambda h: h.state == "healthy", what="healthy")
    assert h.healthy and h.checks[0].name == "http" and h.checks[0].status == "passing"
    assert f"127.0.0.1:{web_server.port}/health" in h.checks[0].output
    assert changes.states(task.id)[-1] == "healthy"
    _, services = agent.api("GET", "/v1/agent/services")
    svc = services[task.id]
    assert (svc["Service"], svc["Port"], sorted(svc["Tags"])) == (
        task.service, web_server.port, ["canary", "skedlib-host=host-1", "web"])
    # the task's check, and the liveness check the provider keeps passing
    checks = _consul_checks(agent, task.id)
    assert set(checks) == {f"{task.id}:app:http", f"{task.id}:skedlib-agent"}
    assert checks[f"{task.id}:skedlib-agent"]["Status"] == "passing"
    # every call to Consul came from the provider's threads, none from the caller's
    assert callers and threading.get_ident() not in callers

    # someone removes the service behind our back (a restarted dev agent forgets it too):
    # it is registered again
    status, _ = agent.api("PUT", f"/v1/agent/service/deregister/{task.id}")
    assert status == 200
    _wait_consul(lambda: _consul_checks(agent, task.id), "the service to come back")
    _wait_state(p, task.id, lambda h: h.state == "healthy", what="healthy again")

    # the server goes away: critical is "running" until seen critical for 1.5 intervals
    n = len(changes.states(task.id))
    web_server.stop()
    h = _wait_state(p, task.id, lambda h: h.state == "unhealthy", what="unhealthy")
    assert h.checks[0].status == "critical" and not h.healthy
    seen = changes.states(task.id)[n:]
    assert seen[:2] == ["running", "unhealthy"], seen
    # confirmed by a fresh read 1.5 intervals after the read that first saw it critical
    # (less the time that read took), at the provider's own deadline: long before the
    # next periodic read
    gap = changes.first(task.id, "unhealthy") - changes.first(task.id, "running")
    assert 1.0 <= gap < skedlib_consul.provider.FOLLOW_WAIT / 2, gap

    p.unwatch(task.id)
    assert p.health(task.id) is None
    _wait_consul(lambda: task.id not in agent.api("GET", "/v1/agent/services")[1],
                 "the service to be deregistered")
    assert not _consul_checks(agent, task.id)
    p.unwatch(task.id)  # idempotent


def test_agent_provider_forwards_ttl_reports_from_the_store(
        consul_dev: harness.ConsulCluster, agent_provider: ProviderFactory) -> None:
    agent = consul_dev.members[0]
    backend = MemoryBackend()
    keys = Keyspace()
    p, changes = agent_provider(threshold=2, backend=backend)
    port = 4321
    task = _task(0, [Check(name="beat", ttl="2s")])
    # a script check sees the same environment as with the local provider
    task.task_definition.containers[0].checks.append(Check(
        name="env", interval="1s",
        script=f'test "$SKED_TASK_ID" = "{task.id}" && test "$PROVIDED_PORT" = "{port}" '
               '&& test "$SKED_HOST" = host-1'))
    p.watch(task, port)
    _wait_state(p, task.id, lambda h: h.checks[1].status == "passing", what="env passing")

    def agent_writes() -> TaskHealth:  # what the agent does with the provider's results
        h = p.health(task.id)
        assert h is not None
        backend.put(keys.task_health(task.id), encode(h))
        return h

    assert agent_writes().state == "starting"  # nobody reported the ttl check yet
    pass_ttl_check(Store(backend), task.id, "beat", output="alive")
    h = _wait_state(p, task.id, lambda h: h.state == "healthy", timeout=5, what="healthy")
    assert h.checks[0].output == "alive"
    c = _consul_checks(agent, task.id)[f"{task.id}:app:beat"]
    assert (c["Name"], c["Status"], c["Output"]) == ("beat", "passing", "alive")

    # the agent keeps rewriting the record with the provider's own results: they are not
    # reports, so Consul's TTL runs out and the check goes critical, then unhealthy
    deadline = time.monotonic() + 8
    while (h := agent_writes()).state != "unhealthy":
        assert time.monotonic() < deadline, f"the ttl check never expired: {h}"
        time.sleep(0.2)
    assert h.checks[0].status == "critical" and "TTL expired" in h.checks[0].output
    assert "running" in changes.states(task.id)

    # a report revives it
    pass_ttl_check(Store(backend), task.id, "beat", output="back")
    h = _wait_state(p, task.id, lambda h: h.state == "healthy", timeout=5, what="healthy")
    assert h.checks[0].output == "back"


def test_agent_provider_validates_like_the_local_one(agent_provider: ProviderFactory) -> None:
    p, _ = agent_provider()
    p.validate(_task(80, [Check(name="ok", http="http://127.0.0.1:$PROVIDED_PORT/")]), 80)
    for check, match in [
        (Check(name="x", http="http://127.0.0.1/", tcp="127.0.0.1:80"), "exactly one"),
        (Check(name="x", http="http://127.0.0.1/", interval="often"), "often"),
        (Check(name="x", http="ftp://127.0.0.1/"), "not an http"),
        (Check(name="x", tcp="nohost"), "not host:port"),
    ]:
        with pytest.raises(TaskRejected, match=match):
            p.validate(_task(80, [check]), 80)
        with pytest.raises(TaskRejected, match=match):
            p.watch(_task(80, [check]), 80)


def test_agent_provider_options(consul_dev: harness.ConsulCluster,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    def ctx(options: dict[str, str], backend: Any = None) -> HealthContext:
        return HealthContext(host="h", backend=backend or MemoryBackend(),
                             keyspace=Keyspace(), on_change=lambda _: None, options=options)

    o = agent_options(ctx({"consul.url": "http://10.1.2.3:8600", "consul.timeout": "2",
                           "consul.token": "secret"}))
    assert (o.endpoints, o.timeout, o.token, o.scheme) == (
        (("10.1.2.3", 8600),), 2.0, "secret", "http")
    assert agent_options(ctx({"url": "https://10.1.2.3:8501"})).scheme == "https"
    assert agent_options(ctx({"consul.agent": "10.1.2.4:8500"})).endpoints == (
        ("10.1.2.4", 8500),)
    with pytest.raises(PluginError, match=r"unknown option 'consul\.nope'"):
        agent_options(ctx({"consul.nope": "x"}))
    with pytest.raises(PluginError, match="timeout"):
        agent_options(ctx({"consul.timeout": "soon"}))
    with pytest.raises(PluginError, match="expected http"):
        agent_options(ctx({"consul.url": "http://10.1.2.3:8500/v1"}))
    # no address given: the first endpoint of a consul:// backend …
    backend = open_backend(consul_dev.url(timeout=4))
    try:
        o = agent_options(ctx({}, backend))
        assert (o.endpoints, o.timeout) == (backend.options.endpoints[:1], 4.0)  # type: ignore[attr-defined]
    finally:
        backend.close()
    # … but only one on this host: a server elsewhere would run the checks, and place
    # the service, on its own node
    monkeypatch.delenv("CONSUL_HTTP_ADDR", raising=False)
    elsewhere_first = ConsulBackend(parse_url(
        "consul://192.0.2.10:8500,127.0.0.1:8600,127.0.0.2:8700?token=t&timeout=3"))
    only_elsewhere = ConsulBackend(parse_url("consul://192.0.2.10:8500?token=t&timeout=3"))
    try:
        o = agent_options(ctx({}, elsewhere_first))
        assert (o.endpoints, o.token, o.timeout) == ((("127.0.0.1", 8600),), "t", 3.0)
        o = agent_options(ctx({}, only_elsewhere))  # the local agent, the backend's token
        assert (o.endpoints, o.token, o.timeout) == ((("127.0.0.1", 8500),), "t", 3.0)
        monkeypatch.setenv("CONSUL_HTTP_ADDR", "10.9.9.9:8500")
        assert agent_options(ctx({}, only_elsewhere)).endpoints == (("10.9.9.9", 8500),)
    finally:
        elsewhere_first.close()
        only_elsewhere.close()
    # … else $CONSUL_HTTP_ADDR, else 127.0.0.1:8500
    assert agent_options(ctx({})).endpoints == (("10.9.9.9", 8500),)
    monkeypatch.delenv("CONSUL_HTTP_ADDR")
    assert agent_options(ctx({})).endpoints == (("127.0.0.1", 8500),)


def test_on_this_host_needs_no_dns() -> None:
    for local in ("127.0.0.1", "127.3.2.1", "::1", "localhost", socket.gethostname()):
        assert on_this_host(local), local
    for other in ("192.0.2.10", "0.0.0.0", "2001:db8::1", "consul.example.invalid"):
        assert not on_this_host(other), other
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this picks the outgoing address
            mine = s.getsockname()[0]
        except OSError:
            mine = ""
    if mine and not mine.startswith("127."):
        assert on_this_host(mine)  # an address of a real interface of this machine


def test_agent_provider_without_consul_stays_starting(agent_provider: ProviderFactory) -> None:
    port = harness.free_ports(1)[0]
    p, changes = agent_provider(options={"consul.url": f"http://127.0.0.1:{port}",
                                         "consul.timeout": "1"})
    task = _task(0, [Check(name="http", http="http://127.0.0.1:$PROVIDED_PORT/",
                           interval="1s")])
    p.watch(task, 8080)
    h = _wait_state(p, task.id, lambda h: "not registered with Consul yet" in
                    h.checks[0].output, timeout=1 + 2 * LOAD_SLACK,
                    what="reporting the failed registration")
    assert h.state == "starting" and "connection refused" in h.checks[0].output
    time.sleep(1.5)  # retried, never counted toward the threshold
    assert p.health(task.id).state == "starting"  # type: ignore[union-attr]
    assert "unhealthy" not in changes.states(task.id)
    p.unwatch(task.id)  # the deregistration is retried until close gives up on it
    p.close()
    # close gave up on it after a few seconds: the thread that retried it has ended
    p._sync_thread.join(2 + 1 + LOAD_SLACK)  # 2 x the 1 s timeout, + close's own second
    assert not p._sync_thread.is_alive()


class _BadIntervals(ConsulHealthProvider):
    """Sends Consul an interval it refuses (validation would catch it otherwise)."""

    def _definitions(self, *args: Any) -> list[dict[str, Any]]:
        out = super()._definitions(*args)
        for d in out:
            d["Interval"] = "often"
        return out


def test_agent_provider_reports_a_refused_registration(
        consul_dev: harness.ConsulCluster, agent_provider: ProviderFactory) -> None:
    p, changes = agent_provider(cls=_BadIntervals)
    task = _task(0, [Check(name="http", http="http://127.0.0.1:1/", interval="1s")])
    p.watch(task, 0)
    h = _wait_state(p, task.id, lambda h: h.state == "unhealthy", timeout=5, what="unhealthy")
    assert "Consul refused the registration" in h.checks[0].output
    assert changes.states(task.id)[-1] == "unhealthy"
    assert task.id not in p._sync_client.registered()


def test_registered_through_the_plugin_registry(consul_dev: harness.ConsulCluster) -> None:
    factory = get_registry().health_provider_factory("consul")
    ctx = HealthContext(host="node-7", backend=MemoryBackend(), keyspace=Keyspace(),
                        on_change=lambda _: None,
                        options={"consul.url": f"http://{consul_dev.members[0].endpoint}"})
    p = factory(ctx)
    try:
        assert isinstance(p, ConsulHealthProvider) and isinstance(p, HealthProvider)
        task = _task(0, [])
        p.watch(task, 0)
        h = p.health(task.id)
        assert h is not None and h.state == "healthy" and h.host == "node-7" and h.checks == []
        _wait_consul(lambda: task.id in p._sync_client.registered(), "the registration")
        p.unwatch(task.id)
        _wait_consul(lambda: task.id not in p._sync_client.registered(), "the deregistration")
    finally:
        p.close()
