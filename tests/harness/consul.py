"""Real Consul servers for the tests: ``-dev`` agents and 3-server clusters on 127.0.0.1.

Every agent gets free ports (HTTP, Serf LAN/WAN, server RPC; DNS is disabled), picked
below the kernel's ephemeral range so that a client's outgoing connection cannot take
the port of a server that is down and about to be restarted, and a throwaway directory
(config file, data, log; under ``/dev/shm`` when it is writable). Clusters use
``-server -bootstrap-expect=3 -retry-join`` and ``raft_multiplier=1`` (elections in
about a second). Agents are stopped in fixture teardown, at interpreter exit as a last
resort, and their directories removed.

The binary is ``$SKED_CONSUL_BIN``, else ``$REPO/.cache/bin/consul`` (installed by
``scripts/install-consul.py``: Consul 0.8.5), else ``consul`` on ``PATH``. Without one
the fixtures skip, unless ``$CI`` is set: then they fail, so CI cannot go green by
skipping.

Use the fixtures from a test module by assignment (pytest finds fixtures among module
attributes)::

    from tests.harness import consul as harness

    consul_dev = harness.consul_dev

    def test_x(consul_dev: harness.ConsulCluster) -> None:
        url = consul_dev.url()

``consul_dev`` (one ``-dev`` agent) and ``consul_cluster`` (3 servers) are started once
per session and shared (do not fault them); ``consul_fault_cluster`` is a 3-server
cluster of its own, healed (every member resumed, restarted and in agreement on a
leader) before each test that uses it; ``consul_acl`` is a ``-dev`` agent with ACLs on
(default policy deny, master token :data:`ACL_MASTER_TOKEN`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.harness import common
from tests.harness.common import (
    ClusterMember,
    ServerCluster,
    ServerUnavailableError,
    SessionServers,
    first_executable,
    require_backend_plugin,
    skip_or_fail,
    wait_for,
    wait_until,
)

__all__ = [
    "ACL_MASTER_TOKEN",
    "ConsulAgent",
    "ConsulCluster",
    "ConsulUnavailableError",
    "consul_acl",
    "consul_acl_tls",
    "consul_binary",
    "consul_cluster",
    "consul_dev",
    "consul_fault_cluster",
    "consul_tls",
    "free_ports",
    "make_tls_files",
    "require_consul",
    "require_consul_plugin",
]

REPO = Path(__file__).resolve().parents[2]
ACL_MASTER_TOKEN = "sked-master-token"


class ConsulUnavailableError(ServerUnavailableError):
    """An agent did not start or did not get a leader in time (the message has its log)."""


# -- finding the binary and the plugin -------------------------------------------------------
def consul_binary() -> str | None:
    """The Consul binary to run, or None: ``$SKED_CONSUL_BIN``, ``.cache/bin/consul``, PATH."""
    return first_executable(os.environ.get("SKED_CONSUL_BIN"),
                            str(REPO / ".cache" / "bin" / "consul"), shutil.which("consul"))


def require_consul() -> str:
    """The Consul binary; skips the test when there is none (fails it when ``$CI`` is set)."""
    binary = consul_binary()
    if binary is None:
        skip_or_fail("no Consul binary: run `python scripts/install-consul.py` (Consul "
                     "0.8.5 into .cache/bin/consul) or set SKED_CONSUL_BIN")
    return binary


def require_consul_plugin() -> None:
    """Skip (fail under ``$CI``) unless the ``skedlib-consul`` plugin is installed (its
    entry point: the backend is opened through the plugin registry)."""
    require_backend_plugin("consul")


# -- ports and certificates -----------------------------------------------------------------
def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free now on 127.0.0.1 for both TCP and UDP (Serf uses both)."""
    return common.free_ports(n, udp=True, attempts=2000, error=ConsulUnavailableError)


def make_tls_files(directory: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 signed by it, and another CA.

    Returns paths ``ca``, ``cert``, ``key`` and ``other_ca`` (a CA that signed nothing
    here: the wrong ``ca`` for negative tests). Skips the test without ``openssl``.
    """
    files = common.make_tls_files(directory, subject="skedlib consul test")
    return {"ca": files.ca, "cert": files.cert, "key": files.key, "other_ca": files.other_ca}


# -- one agent --------------------------------------------------------------------------------
class ConsulAgent(ClusterMember):
    """One Consul process: start, stop, signal, restart with the same data and ports."""

    def __init__(self, name: str, ports: Mapping[str, int], directory: Path, binary: str,
                 *, dev: bool, config: Mapping[str, Any]) -> None:
        super().__init__(directory / "consul.log")
        self.name = name
        self.ports = dict(ports)
        self.directory = directory
        self.binary = binary
        self.dev = dev
        self.config = dict(config)

    def __repr__(self) -> str:
        return f"<consul {self.name} {self.endpoint} {self.state}>"

    @property
    def http_port(self) -> int:
        return self.ports.get("https") or self.ports["http"]

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:PORT`` of the HTTP API (HTTPS when the agent has TLS)."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def server_address(self) -> str:
        """``127.0.0.1:PORT`` of the server RPC port, as ``/v1/status/leader`` names it."""
        return f"127.0.0.1:{self.ports['server']}"

    @property
    def serf_lan(self) -> str:
        return f"127.0.0.1:{self.ports['serf_lan']}"

    @property
    def serf_wan(self) -> str:
        """``127.0.0.1:PORT`` of Serf WAN, which another datacenter's servers join
        (``retry_join_wan``)."""
        return f"127.0.0.1:{self.ports['serf_wan']}"

    def _write_config(self) -> Path:
        ports = {"dns": -1, "http": self.ports.get("http", -1),
                 "serf_lan": self.ports["serf_lan"], "serf_wan": self.ports["serf_wan"],
                 "server": self.ports["server"]}
        if "https" in self.ports:
            ports["https"] = self.ports["https"]
        cfg: dict[str, Any] = {
            "node_name": self.name,
            "bind_addr": "127.0.0.1",
            "client_addr": "127.0.0.1",
            "ports": ports,
            "disable_update_check": True,
            "disable_host_node_id": True,
            "performance": {"raft_multiplier": 1},
            "log_level": "INFO",
        }
        if not self.dev:
            cfg["data_dir"] = str(self.directory / "data")
        cfg.update(self.config)
        path = self.directory / "config.json"
        path.write_text(json.dumps(cfg, indent=1))
        return path

    def start(self) -> None:
        """Start the process (again): same ports, same data directory."""
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [self.binary, "agent", "-config-file", str(self._write_config())]
        if self.dev:
            args.append("-dev")
        self.spawn(args)

    # -- probes ---------------------------------------------------------------------------
    def api(self, method: str, path: str, body: Any = None, *, token: str | None = None,
            timeout: float = 1.0) -> tuple[int, Any]:
        """One HTTP call to this agent: (status, decoded JSON or text). Raises OSError."""
        data = None if body is None else json.dumps(body).encode()
        scheme = "https" if "https" in self.ports else "http"
        req = urllib.request.Request(f"{scheme}://{self.endpoint}{path}", data=data,
                                     method=method)
        if token:
            req.add_header("X-Consul-Token", token)
        ctx = None
        if scheme == "https":
            import ssl

            ctx = ssl.create_default_context(cafile=self.config.get("ca_file"))
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        text = raw.decode(errors="replace")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def leader(self, timeout: float = 1.0) -> str | None:
        """The server address this agent names as leader, or None (none, or no answer)."""
        if not self.running or self.paused:
            return None
        try:
            status, body = self.api("GET", "/v1/status/leader", timeout=timeout)
        except OSError:
            return None
        return body if status == 200 and isinstance(body, str) and body else None

    def serves_kv(self, token: str | None = None, timeout: float = 1.0) -> bool:
        """A consistent KV read through this agent answers (200 or 404)."""
        if not self.running or self.paused:
            return False
        try:
            status, _ = self.api("GET", "/v1/kv/sked-harness-probe?consistent", token=token,
                                 timeout=timeout)
        except OSError:
            return False
        return status in (200, 404)


# -- a cluster (or one dev agent) ----------------------------------------------------------
class ConsulCluster(ServerCluster[ConsulAgent]):
    """``size`` Consul servers on 127.0.0.1, or one ``-dev`` agent (``dev=True``)."""

    error = ConsulUnavailableError
    what = "consul"
    start_timeout = 40.0
    heal_timeout = 40.0

    def __init__(self, size: int = 3, *, dev: bool = False, name: str = "consul",
                 config: Mapping[str, Any] | None = None, binary: str | None = None,
                 token: str | None = None, tls: bool = False) -> None:
        if dev and size != 1:
            raise ValueError("a -dev agent is a cluster of one")
        self.size = size
        self.dev = dev
        self.config = dict(config or {})
        self.binary = binary or require_consul()
        self.token = token  # the token the harness probes with (ACL agents)
        self.tls = tls
        super().__init__(name, f"sked-{name}-")

    # -- life cycle --------------------------------------------------------------------------
    def _create_members(self) -> None:
        self._stop_members()
        per = 5 if self.tls else 4
        ports = free_ports(per * self.size)
        run = uuid.uuid4().hex[:6]
        self.members = []
        for i in range(self.size):
            p = ports[per * i: per * (i + 1)]
            names = ["http", "serf_lan", "serf_wan", "server"] + (["https"] if self.tls else [])
            member_ports = dict(zip(names, p, strict=True))
            if self.tls:
                member_ports["http"] = -1
            config = dict(self.config)
            if not self.dev:
                config.update({"server": True, "bootstrap_expect": self.size})
            self.members.append(ConsulAgent(
                f"{self.name}-{i}-{run}", member_ports, self.base_dir / run / f"m{i}",
                self.binary, dev=self.dev, config=config))
        if not self.dev:
            for m in self.members:
                m.config["retry_join"] = [o.serf_lan for o in self.members if o is not m]
                m.config["retry_interval"] = "1s"

    # -- addresses ---------------------------------------------------------------------------
    def url(self, members: Sequence[ConsulAgent] | None = None, **query: object) -> str:
        """The backend URL listing ``members`` (default: all), with query options."""
        return self._url("consul", members, query)

    def member(self, endpoint: str) -> ConsulAgent:
        """The agent whose HTTP API (``127.0.0.1:PORT``) or RPC address is ``endpoint``."""
        for m in self.members:
            if endpoint in (m.endpoint, m.server_address):
                return m
        raise KeyError(endpoint)

    # -- health ----------------------------------------------------------------------------
    def wait_healthy(self, timeout: float = 30.0,
                     members: Sequence[ConsulAgent] | None = None) -> None:
        """Wait until every given agent (default: all) agrees on a leader and serves KV."""
        chosen = self.members if members is None else list(members)
        leaders: set[str | None] = set()

        def healthy() -> bool:
            nonlocal leaders
            for m in chosen:
                m.check_running(ConsulUnavailableError)
            leaders = {m.leader() for m in chosen}
            return len(leaders) == 1 and None not in leaders and \
                all(m.serves_kv(self.token) for m in chosen)

        def timed_out() -> ConsulUnavailableError:
            logs = "\n".join(f"--- {m.name}:\n{m.log_tail()}" for m in chosen)
            return ConsulUnavailableError(
                f"{self.name}: no agreed leader within {timeout}s (saw {leaders})\n{logs}")

        wait_until(healthy, timeout, timed_out)

    def leader(self, timeout: float = 20.0) -> ConsulAgent:
        """The server the running members agree is the leader (waits for an election)."""
        seen: set[str | None] = set()

        def agreed() -> ConsulAgent | None:
            nonlocal seen
            seen = {m.leader() for m in self.members if m.running and not m.paused}
            seen.discard(None)
            if len(seen) == 1:
                (address,) = seen
                assert address is not None
                with contextlib.suppress(KeyError):
                    lead = self.member(address)
                    if lead.running and not lead.paused:
                        return lead
            return None

        return wait_for(agreed, timeout, lambda: ConsulUnavailableError(
            f"{self.name}: no agreed leader within {timeout}s (saw {seen})"), interval=0.05)

    # -- faults ----------------------------------------------------------------------------
    def restart(self, m: ConsulAgent, timeout: float = 30.0) -> None:
        """Stop (if needed) and start ``m`` again with its data; wait until it is healthy."""
        m.stop()
        m.start()
        self.wait_healthy(timeout)


# -- fixtures ---------------------------------------------------------------------------------
_SHARED = SessionServers[ConsulCluster]()
_TLS_FILES: dict[str, dict[str, Path]] = {}
"""The certificate files of each shared TLS agent, by its name."""


def _require() -> None:
    require_consul()
    require_consul_plugin()


@pytest.fixture(scope="session")
def consul_dev(request: pytest.FixtureRequest) -> ConsulCluster:
    """One ``-dev`` agent shared by the session. Do not fault it."""
    _require()
    return _SHARED.shared(request, "dev", lambda: ConsulCluster(1, dev=True, name="dev"))


@pytest.fixture(scope="session")
def consul_cluster(request: pytest.FixtureRequest) -> ConsulCluster:
    """A 3-server Consul cluster shared by the session. Do not fault it."""
    _require()
    return _SHARED.shared(request, "cluster", lambda: ConsulCluster(3, name="cluster"))


@pytest.fixture
def consul_fault_cluster(request: pytest.FixtureRequest) -> Iterator[ConsulCluster]:
    """A 3-server cluster the test may kill, pause and restart; healed before each test."""
    _require()
    cluster = _SHARED.shared(request, "faults", lambda: ConsulCluster(3, name="faults"))
    with cluster.healed():
        yield cluster


@pytest.fixture(scope="session")
def consul_acl(request: pytest.FixtureRequest) -> ConsulCluster:
    """A ``-dev`` agent with ACLs: default policy deny, master token ACL_MASTER_TOKEN."""
    _require()
    config = {"acl_datacenter": "dc1", "acl_master_token": ACL_MASTER_TOKEN,
              "acl_default_policy": "deny", "acl_down_policy": "deny"}
    return _SHARED.shared(request, "acl", lambda: ConsulCluster(
        1, dev=True, name="acl", config=config, token=ACL_MASTER_TOKEN))


@pytest.fixture(scope="session")
def consul_tls(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> tuple[ConsulCluster, dict[str, Path]]:
    """A ``-dev`` agent serving the HTTP API over TLS only, and its certificate files."""
    _require()
    files = make_tls_files(tmp_path_factory.mktemp("consul-tls"))
    config = {"ca_file": str(files["ca"]), "cert_file": str(files["cert"]),
              "key_file": str(files["key"])}
    cluster = _SHARED.shared(request, "tls", lambda: ConsulCluster(
        1, dev=True, name="tls", config=config, tls=True))
    return cluster, files


@pytest.fixture(scope="session")
def consul_acl_tls(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                   ) -> tuple[ConsulCluster, dict[str, Path]]:
    """A ``-dev`` agent with ACLs (default deny, master token ACL_MASTER_TOKEN) serving
    the HTTP API over TLS only, and its certificate files: how a production agent is run."""
    _require()

    def start() -> ConsulCluster:
        # the certificates are made with the agent, once: a second use of this fixture
        # (from another conftest) gets the running agent and must get its files too
        files = make_tls_files(tmp_path_factory.mktemp("consul-acl-tls"))
        _TLS_FILES["acl-tls"] = files
        config = {"ca_file": str(files["ca"]), "cert_file": str(files["cert"]),
                  "key_file": str(files["key"]), "acl_datacenter": "dc1",
                  "acl_master_token": ACL_MASTER_TOKEN, "acl_default_policy": "deny",
                  "acl_down_policy": "deny"}
        return ConsulCluster(1, dev=True, name="acl-tls", config=config, tls=True,
                             token=ACL_MASTER_TOKEN)

    cluster = _SHARED.shared(request, "acl-tls", start)
    return cluster, _TLS_FILES["acl-tls"]
