"""Consul's catalog follows the issued state: real ``skedlib-agent`` processes, real Consul.

- a stale skedlib registration on a live Consul agent is removed when the agent starts;
- a killed skedlib agent's entries turn critical within the liveness TTL (``?passing``
  and DNS drop them) while the Consul agent and ``serfHealth`` stay up; the restarted
  agent removes those whose task moved away while it was down;
- a host that dies whole (skedlib agent, tasks and Consul agent): the elected cleaner
  removes its entries whose task moved away from the catalog, and keeps the others;
- the ``original`` naming (Name ``<cluster>-<service>``, cluster and service tags, the
  host's address) through the catalog, ``?passing`` and Consul's DNS interface;
- the HTTP pool sized to the concurrency: no "Connection pool is full".

The harness's Consul 0.8.5 agents run on loopback; the store is SQLite; times measured
are printed (``-s``), never asserted.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from skedlib_consul.catalog import (
    RegistrationSettings,
    host_tag,
    liveness_check_id,
    owner,
    registration,
    stale_local,
)
from skedlib_consul.client import DEFAULT_POOL_SIZE, HttpClient
from skedlib_consul.local_agent import agent_options, registration_settings
from skedlib_consul.options import agent_url_options

from skedlib.agent import Agent, AgentConfig
from skedlib.errors import PluginError
from skedlib.health.provider import HealthContext
from skedlib.keys import Keyspace
from skedlib.plugins import open_backend
from skedlib.store.memory import MemoryBackend
from tests.agent import conftest as agent_tests
from tests.agent.conftest import AgentEnv, make_task, sleeper, wait_for
from tests.harness import consul as harness

env = agent_tests.env  # an AgentEnv on sqlite, with real skedlib-agent processes
consul_acl_tls = harness.consul_acl_tls

pytestmark = [pytest.mark.integration]

TTL = 3.0  # the liveness TTL the agents are started with


class _DnsCluster(harness.ConsulCluster):
    """A ``-dev`` agent that also serves DNS (on ``self.dns_port``)."""

    def _create_members(self) -> None:
        super()._create_members()
        self.dns_port = harness.free_ports(1)[0]
        for m in self.members:
            m.config["ports"] = {"dns": self.dns_port, "http": m.ports["http"],
                                 "serf_lan": m.ports["serf_lan"],
                                 "serf_wan": m.ports["serf_wan"], "server": m.ports["server"]}


@pytest.fixture(scope="module")
def consul() -> Iterator[_DnsCluster]:
    """A dev agent of its own: these tests join and kill client agents, and use DNS."""
    harness.require_consul()
    harness.require_consul_plugin()
    cluster = _DnsCluster(1, dev=True, name="catalog")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _opts(agent: harness.ConsulAgent, *extra: str) -> list[str]:
    opts = ["--health-provider", "consul", "--health-opt", f"consul.url=http://{agent.endpoint}",
            "--health-opt", f"consul.liveness_ttl={TTL:g}",
            "--health-opt", "consul.clean_interval=1"]
    for e in extra:
        opts += ["--health-opt", e]
    return opts


def _entries(agent: harness.ConsulAgent, name: str, passing: bool = False
             ) -> list[dict[str, Any]]:
    status, body = agent.api("GET", f"/v1/health/service/{name}" + ("?passing" if passing
                                                                    else ""))
    assert status == 200, body
    return list(body)


def _ids(entries: list[dict[str, Any]]) -> set[str]:
    return {e["Service"]["ID"] for e in entries}


def _catalog(agent: harness.ConsulAgent, name: str) -> set[tuple[str, str]]:
    status, body = agent.api("GET", f"/v1/catalog/service/{name}")
    assert status == 200, body
    return {(e["Node"], e["ServiceID"]) for e in body}


def _kill_tasks(env: AgentEnv) -> None:
    for p in env.processes():
        p.kill()
    wait_for(lambda: not env.processes(), 10, "the tasks' processes to end")


def _dns_a(port: int, name: str) -> list[str]:
    """The A records Consul's DNS interface answers for ``name`` (stdlib only)."""
    query = struct.pack(">HHHHHH", 0x5ced, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    query += struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(query, ("127.0.0.1", port))
        data = s.recv(4096)
    answers = struct.unpack(">H", data[6:8])[0]
    pos = len(query)  # the answer repeats the question
    out = []
    for _ in range(answers):
        if data[pos] & 0xC0 == 0xC0:  # a compressed name
            pos += 2
        else:
            while data[pos]:
                pos += data[pos] + 1
            pos += 1
        rtype, _cls, _ttl, length = struct.unpack(">HHIH", data[pos:pos + 10])
        pos += 10
        if rtype == 1 and length == 4:
            out.append(socket.inet_ntoa(data[pos:pos + 4]))
        pos += length
    return out


def test_stale_registration_on_a_live_agent_is_removed_on_start(
        env: AgentEnv, consul: _DnsCluster) -> None:
    agent = consul.members[0]
    service = f"stale{uuid.uuid4().hex[:6]}"
    mine, other, foreign = (f"prod-{service}-1-{i}" for i in range(3))
    # left by an earlier run of this host's agent; made for another host; not skedlib's
    for sid, tags in ((mine, [host_tag(env.host)]), (other, [host_tag("elsewhere")]),
                      (foreign, ["web"])):
        status, body = agent.api("PUT", "/v1/agent/service/register",
                                 {"ID": sid, "Name": service, "Tags": tags})
        assert status == 200, body
    try:
        assert _ids(_entries(agent, service)) == {mine, other, foreign}
        env.start_agent(*_opts(agent, "consul.clean_interval=3600"))  # only the start sweep
        wait_for(lambda: mine not in _ids(_entries(agent, service)), 20,
                 "the stale registration to be removed")
        assert _ids(_entries(agent, service)) == {other, foreign}
    finally:
        for sid in (mine, other, foreign):
            agent.api("PUT", f"/v1/agent/service/deregister/{sid}")


def test_killed_agent_turns_critical_and_the_restarted_one_cleans_up(
        env: AgentEnv, consul: _DnsCluster) -> None:
    agent = consul.members[0]
    service = f"beat{uuid.uuid4().hex[:6]}"
    stays, moves = (make_task(i, service=service, containers=[sleeper()],
                              provide_port=False) for i in range(2))
    env.put_task(stays)
    env.put_task(moves)
    proc = env.start_agent(*_opts(agent))
    wait_for(lambda: _ids(_entries(agent, service, passing=True)) == {stays.id, moves.id},
             20, "both tasks passing in Consul")
    for e in _entries(agent, service):
        assert host_tag(env.host) in e["Service"]["Tags"]
        checks = {c["CheckID"]: c["Status"] for c in e["Checks"]}
        assert checks[liveness_check_id(e["Service"]["ID"])] == "passing"

    # the skedlib agent dies with its tasks; Consul's agent (and serfHealth) stay up
    env.kill9(proc)
    _kill_tasks(env)
    killed = time.monotonic()
    wait_for(lambda: not _entries(agent, service, passing=True), 4 * TTL + 10,
             "the entries to turn critical")
    print(f"\nentries critical {time.monotonic() - killed:.1f}s after the kill "
          f"(liveness TTL {TTL:g}s)")
    entries = _entries(agent, service)
    assert _ids(entries) == {stays.id, moves.id}  # still there, but not passing
    for e in entries:
        checks = {c["CheckID"]: c["Status"] for c in e["Checks"]}
        assert checks["serfHealth"] == "passing"
        assert checks[liveness_check_id(e["Service"]["ID"])] == "critical"

    # one task moves away while the agent is down; the restarted agent finds nothing
    # to adopt, runs the task still issued and removes the other's registration
    env.delete_task(moves.id)
    env.start_agent(*_opts(agent))
    wait_for(lambda: _ids(_entries(agent, service)) == {stays.id}, 20,
             "the moved task's registration to be removed")
    wait_for(lambda: _ids(_entries(agent, service, passing=True)) == {stays.id}, 20,
             "the task still issued to pass again")


def test_a_dead_hosts_moved_tasks_leave_the_catalog(
        env: AgentEnv, consul: _DnsCluster, tmp_path: Path) -> None:
    server = consul.members[0]
    other = f"h{uuid.uuid4().hex[:10]}"  # a second host, on the server's node
    ports = harness.free_ports(4)
    client = harness.ConsulAgent(
        f"client-{uuid.uuid4().hex[:6]}",
        dict(zip(["http", "serf_lan", "serf_wan", "server"], ports, strict=True)),
        tmp_path / "client", server.binary, dev=False,
        config={"retry_join": [server.serf_lan], "retry_interval": "1s"})
    client.start()
    try:
        wait_for(lambda: client.leader() is not None, 30, "the client agent to join")
        service = f"moved{uuid.uuid4().hex[:6]}"
        stays, moves = (make_task(i, service=service, containers=[sleeper()],
                                  provide_port=False) for i in range(2))
        env.put_task(stays)
        env.put_task(moves)
        dead = env.start_agent(*_opts(client))
        env.start_agent(*_opts(server), host=other)
        wait_for(lambda: _ids(_entries(server, service, passing=True)) == {stays.id,
                                                                            moves.id},
                 30, "both tasks passing on the client's node")

        # the whole host dies: the skedlib agent, its tasks and its Consul agent
        env.kill9(dead)
        _kill_tasks(env)
        client.kill()
        # the task moves to the other host; the one left issued to the dead host stays
        env.delete_task(moves.id)
        env.put_task(moves, host=other)
        moved = time.monotonic()
        wait_for(lambda: (client.name, moves.id) not in _catalog(server, service),
                 60, "the dead node's entry of the moved task to be removed")
        print(f"\nthe dead node's entry removed {time.monotonic() - moved:.1f}s after the "
              "move")
        wait_for(lambda: (server.name, moves.id) in _catalog(server, service), 30,
                 "the moved task on its new host's node")
        # the cleaner leaves the entry of a task still issued to the dead host (Consul
        # itself may reap the failed node with everything on it: not ours to judge). The
        # catalog is read before the node list: a reap between the two reads then shows as
        # a node gone, never as an entry missing from a node still listed.
        catalog = _catalog(server, service)
        _, nodes = server.api("GET", "/v1/catalog/nodes", timeout=5)
        # (on failure: what the agents logged about the task and the cleaner, and the
        # node's checks, to tell the cleaner from Consul or the dead agent)
        assert ((client.name, stays.id) in catalog
                or client.name not in {n["Node"] for n in nodes}), (
            catalog, [line for line in env.log_text().splitlines()
                      if stays.id in line or "catalog cleaner" in line],
            server.api("GET", f"/v1/health/node/{client.name}", timeout=5)[1])
        assert f"removed {stays.id}" not in env.log_text()
        assert _ids(_entries(server, service, passing=True)) == {moves.id}
    finally:
        client.stop()
        server.api("PUT", f"/v1/agent/force-leave/{client.name}")
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if p.environ().get("SKED_HOST") == other:
                    p.kill()


def test_original_naming_through_the_catalog_passing_and_dns(
        env: AgentEnv, consul: _DnsCluster) -> None:
    agent = consul.members[0]
    service = f"orig{uuid.uuid4().hex[:6]}"
    task = make_task(0, service=service, containers=[sleeper()], provide_port=False)
    task.task_definition.tags = ["urlprefix-/app"]
    env.put_task(task)
    proc = env.start_agent(*_opts(agent, "consul.naming=original"), "--address",
                           "127.0.0.9")
    name = f"{task.cluster.name}-{service}"
    wait_for(lambda: _ids(_entries(agent, name, passing=True)) == {task.id}, 20,
             "the task passing under its original name")
    (entry,) = _entries(agent, name, passing=True)
    assert entry["Service"]["Address"] == "127.0.0.9"
    assert sorted(entry["Service"]["Tags"]) == sorted(
        ["urlprefix-/app", task.cluster.name, service, host_tag(env.host)])
    assert not _entries(agent, service)  # nothing under the plain service name
    assert _dns_a(consul.dns_port, f"{name}.service.consul") == ["127.0.0.9"]
    assert _dns_a(consul.dns_port, f"{service}.{name}.service.consul") == ["127.0.0.9"]

    # the agent dies: ?passing and DNS drop the entry within the liveness TTL
    env.kill9(proc)
    wait_for(lambda: not _entries(agent, name, passing=True), 4 * TTL + 10,
             "the entry to turn critical")
    assert _dns_a(consul.dns_port, f"{name}.service.consul") == []
    _kill_tasks(env)
    agent.api("PUT", f"/v1/agent/service/deregister/{task.id}")


def _blocking_reads(client: HttpClient, n: int) -> None:
    """``n`` blocking queries at once (each held by Consul for a second)."""
    status = client.request("GET", "/v1/kv/pool-probe")
    index = int(status.headers["X-Consul-Index"])
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            barrier.wait(10)
            client.request("GET", "/v1/kv/pool-probe",
                           params=[("index", index), ("wait", "1s")], hold=1.5)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors


def test_the_pool_follows_the_concurrency(consul: _DnsCluster, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="urllib3")
    options = agent_url_options(f"http://{consul.members[0].endpoint}", None, 5.0)
    n = DEFAULT_POOL_SIZE + 24

    def full() -> list[str]:
        return [r.getMessage() for r in caplog.records if "pool is full" in r.getMessage()]

    # more concurrent calls than the default pool keeps: urllib3 warns (the test can fail)
    plain = HttpClient(options, "plain")
    try:
        _blocking_reads(plain, n)
    finally:
        plain.close()
    assert full(), "expected 'Connection pool is full' beyond the default pool"
    caplog.clear()

    # a client sized to the concurrency: none
    sized = HttpClient(options, "sized")
    sized.size_pool(n)
    try:
        _blocking_reads(sized, n)
        _blocking_reads(sized, n)
    finally:
        sized.close()
    assert not full()

    # the agent sizes its store's pool from --workers (and its other threads)
    backend = open_backend(f"consul://{consul.members[0].endpoint}")
    try:
        ag = Agent(backend, AgentConfig(host=f"h{uuid.uuid4().hex[:8]}",
                                        prefix=f"t{uuid.uuid4().hex[:8]}/",
                                        state_dir=tmp_path / "state", workers=n,
                                        executors=["process"]))
        try:
            assert backend._http.pool_size >= n  # type: ignore[attr-defined]
        finally:
            ag.stop()
    finally:
        backend.close()


def test_liveness_pass_survives_a_vanished_check(env: AgentEnv, consul: _DnsCluster) -> None:
    """A registration removed behind the agent's back is registered again, and its
    liveness check passes again (the provider's own recovery, with the new check)."""
    agent = consul.members[0]
    service = f"back{uuid.uuid4().hex[:6]}"
    task = make_task(0, service=service, containers=[sleeper()], provide_port=False)
    env.put_task(task)
    env.start_agent(*_opts(agent))
    wait_for(lambda: _ids(_entries(agent, service, passing=True)) == {task.id}, 20,
             "the task passing")
    agent.api("PUT", f"/v1/agent/service/deregister/{task.id}")
    wait_for(lambda: _ids(_entries(agent, service, passing=True)) == {task.id}, 30,
             "the task registered and passing again")
    time.sleep(TTL + 1)  # longer than the TTL: still passing, so it is being passed
    assert _ids(_entries(agent, service, passing=True)) == {task.id}


def test_registration_liveness_and_sweep_with_acls_and_tls(
        env: AgentEnv, consul_acl_tls: tuple[harness.ConsulCluster, dict[str, Path]]) -> None:
    """As a production agent runs: ACLs (default deny) and HTTPS; the provider's token may
    write services and nodes and nothing else, and comes from a private file."""
    cluster, files = consul_acl_tls
    agent = cluster.members[0]
    master = harness.ACL_MASTER_TOKEN
    rules = 'service "" { policy = "write" }\nnode "" { policy = "write" }\n'
    status, body = agent.api("PUT", "/v1/acl/create", {"Name": "sked-provider",
                                                       "Type": "client", "Rules": rules},
                             token=master, timeout=5)
    assert status == 200, body
    token_file = env.tmp / "provider.token"
    token_file.write_text(str(body["ID"]) + "\n")
    token_file.chmod(0o600)
    service = f"acl{uuid.uuid4().hex[:6]}"
    stale = f"prod-{service}-1-9"
    status, body = agent.api("PUT", "/v1/agent/service/register",
                             {"ID": stale, "Name": service, "Tags": [host_tag(env.host)]},
                             token=master)
    assert status == 200, body
    task = make_task(0, service=service, containers=[sleeper()], provide_port=False)
    env.put_task(task)

    def entries(passing: bool = False) -> set[str]:
        status, body = agent.api("GET", f"/v1/health/service/{service}"
                                 + ("?passing" if passing else ""), token=master)
        assert status == 200, body
        return {e["Service"]["ID"] for e in body}

    url = (f"consul://{agent.endpoint}?token_file={token_file}&ca={files['ca']}")
    env.start_agent("--health-provider", "consul", "--health-opt", f"consul.url={url}",
                    "--health-opt", f"consul.liveness_ttl={TTL:g}")
    try:
        try:
            wait_for(lambda: entries() == {task.id}, 20,
                     "the task registered and the stale registration removed")
        except AssertionError:
            raise AssertionError(f"catalog: {entries()}\n{env.log_text()}") from None
        time.sleep(TTL + 1)  # longer than the TTL: the liveness check is being passed
        assert entries(passing=True) == {task.id}
    finally:
        agent.api("PUT", f"/v1/agent/service/deregister/{stale}", token=master)


def test_registration_options() -> None:
    def ctx(options: dict[str, str]) -> HealthContext:
        return HealthContext(host="h", backend=MemoryBackend(), keyspace=Keyspace(),
                             on_change=lambda _: None, options=options)

    assert registration_settings(ctx({})) == RegistrationSettings()
    s = registration_settings(ctx({"consul.naming": "original", "liveness_ttl": "5",
                                   "consul.clean_interval": "2.5",
                                   "consul.catalog_cleaner": "false",
                                   "consul.address": "10.0.0.7"}))
    assert s == RegistrationSettings(naming="original", liveness_ttl=5.0, clean_interval=2.5,
                                     catalog_cleaner=False, address="10.0.0.7")
    # these options are the provider's, not unknown ones
    assert agent_options(ctx({"consul.naming": "original",
                              "consul.url": "http://10.1.2.3:8500"})).endpoints == (
        ("10.1.2.3", 8500),)
    for options, message in (
            ({"consul.naming": "fancy"}, "consul.naming must be 'service' or 'original'"),
            ({"consul.liveness_ttl": "1"}, "consul.liveness_ttl must be a number of seconds "
                                           "between 3 and 3600, not '1'"),
            ({"consul.clean_interval": "often"}, "consul.clean_interval must be"),
            ({"consul.catalog_cleaner": "maybe"}, "consul.catalog_cleaner must be true or "
                                                  "false")):
        with pytest.raises(PluginError) as info:
            registration_settings(ctx(options))
        assert message in str(info.value) and "\n" not in str(info.value)


def test_original_naming_payload() -> None:
    task = make_task(0, service="web", containers=[sleeper()], provide_port=False)
    task.task_definition.tags = ["urlprefix-/web", "web"]
    payload = registration(task, 8080, [], host="h1",
                           settings=RegistrationSettings(naming="original"),
                           address="10.0.0.7")
    assert (payload["ID"], payload["Name"], payload["Address"], payload["Port"]) == (
        task.id, f"{task.cluster.name}-web", "10.0.0.7", 8080)
    # the definition's tags, then the cluster and the service (once), then the mark
    assert payload["Tags"] == ["urlprefix-/web", "web", task.cluster.name, "skedlib-host=h1"]
    assert [c["CheckID"] for c in payload["Checks"]] == [liveness_check_id(task.id)]
    plain = registration(task, 8080, [], host="h1", settings=RegistrationSettings(),
                         address="10.0.0.7")
    assert (plain["Name"], "Address" in plain) == ("web", False)
    assert plain["Tags"] == ["urlprefix-/web", "web", "skedlib-host=h1"]
    assert owner(plain["Tags"]) == "h1" and owner(["web"]) is None
    services = {"a": {"Tags": ["skedlib-host=h1"]}, "b": {"Tags": ["skedlib-host=h2"]},
                "c": {"Tags": ["web"]}, "d": {"Tags": ["skedlib-host=h1"]}}
    assert stale_local(services, "h1", keep=["d"]) == ["a"]
