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

import atexit
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

__all__ = [
    "ACL_MASTER_TOKEN",
    "ConsulAgent",
    "ConsulCluster",
    "ConsulUnavailableError",
    "consul_acl",
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

_LIVE: set[ConsulCluster] = set()
_LIVE_LOCK = threading.Lock()


class ConsulUnavailableError(RuntimeError):
    """An agent did not start or did not get a leader in time (the message has its log)."""


# -- finding the binary and the plugin -------------------------------------------------------
def consul_binary() -> str | None:
    """The Consul binary to run, or None: ``$SKED_CONSUL_BIN``, ``.cache/bin/consul``, PATH."""
    for candidate in (os.environ.get("SKED_CONSUL_BIN"), str(REPO / ".cache" / "bin" / "consul"),
                      shutil.which("consul")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


def require_consul() -> str:
    """The Consul binary; skips the test when there is none (fails it when ``$CI`` is set)."""
    binary = consul_binary()
    if binary is None:
        _skip_or_fail("no Consul binary: run `python scripts/install-consul.py` (Consul "
                      "0.8.5 into .cache/bin/consul) or set SKED_CONSUL_BIN")
        raise AssertionError("unreachable")
    return binary


def require_consul_plugin() -> None:
    """Skip (fail under ``$CI``) unless the ``skedlib-consul`` plugin is installed.

    The backend is opened through the plugin registry, also from child processes, so the
    plugin's entry point must be installed: ``pip install -e plugins/skedlib-consul``.
    """
    from skedlib.plugins import get_registry

    if "consul" not in get_registry().names("backends"):
        _skip_or_fail("the skedlib-consul plugin is not installed: run "
                      "`pip install -e plugins/skedlib-consul`")


# -- ports and directories ------------------------------------------------------------------
def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free now on 127.0.0.1 for both TCP and UDP (Serf uses both)."""
    high = _ephemeral_low() - 1
    low = max(10000, high - 20000)
    if high - low < n * 4:
        low, high = 1024, 65535
    ports: list[int] = []
    socks: list[socket.socket] = []
    try:
        attempts = 0
        while len(ports) < n:
            attempts += 1
            if attempts > 2000:
                raise ConsulUnavailableError("no free ports found on 127.0.0.1")
            port = random.randint(low, high)
            if port in ports:
                continue
            pair: list[socket.socket] = []
            try:
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    s = socket.socket(socket.AF_INET, kind)
                    pair.append(s)
                    s.bind(("127.0.0.1", port))
            except OSError:
                for s in pair:
                    s.close()
                continue
            socks += pair
            ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


def _tmp_root() -> str | None:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return str(shm)
    return None


def make_tls_files(directory: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 signed by it, and another CA.

    Returns paths ``ca``, ``cert``, ``key`` and ``other_ca`` (a CA that signed nothing
    here: the wrong ``ca`` for negative tests). Skips the test without ``openssl``.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: cannot create test certificates")
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, timeout=60,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    for ca in ("ca", "other-ca"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN=skedlib consul test {ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.pem")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                       "extendedKeyUsage=serverAuth,clientAuth\n")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem")
    return {"ca": directory / "ca.pem", "cert": directory / "server.pem",
            "key": directory / "server.key", "other_ca": directory / "other-ca.pem"}


# -- one agent --------------------------------------------------------------------------------
class ConsulAgent:
    """One Consul process: start, stop, signal, restart with the same data and ports."""

    def __init__(self, name: str, ports: Mapping[str, int], directory: Path, binary: str,
                 *, dev: bool, config: Mapping[str, Any]) -> None:
        self.name = name
        self.ports = dict(ports)
        self.directory = directory
        self.binary = binary
        self.dev = dev
        self.config = dict(config)
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.log_path = directory / "consul.log"

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.running else "down"
        return f"<consul {self.name} {self.endpoint} {state}>"

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
    def running(self) -> bool:
        """True while the process exists (also when it is paused)."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

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
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [self.binary, "agent", "-config-file", str(self._write_config())]
        if self.dev:
            args.append("-dev")
        with open(self.log_path, "ab") as log:
            log.write(f"\n---- start {time.strftime('%H:%M:%S')} ----\n".encode())
            log.flush()
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.paused = False

    def send(self, sig: int) -> None:
        """Send a signal to the process (no-op when it is not running)."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        """``kill -9`` and reap."""
        self.send(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)
        self.paused = False

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets open but answers nothing."""
        self.send(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT."""
        self.send(signal.SIGCONT)
        self.paused = False

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; always reaps."""
        if self.proc is None:
            return
        if self.running:
            self.send(signal.SIGCONT)
            self.send(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.send(signal.SIGKILL)
                self.proc.wait(10)
        self.paused = False

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

    def log_tail(self, lines: int = 15) -> str:
        """The end of the agent's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])


# -- a cluster (or one dev agent) ----------------------------------------------------------
class ConsulCluster:
    """``size`` Consul servers on 127.0.0.1, or one ``-dev`` agent (``dev=True``)."""

    def __init__(self, size: int = 3, *, dev: bool = False, name: str = "consul",
                 config: Mapping[str, Any] | None = None, binary: str | None = None,
                 token: str | None = None, tls: bool = False) -> None:
        if dev and size != 1:
            raise ValueError("a -dev agent is a cluster of one")
        self.size = size
        self.dev = dev
        self.name = name
        self.config = dict(config or {})
        self.binary = binary or require_consul()
        self.token = token  # the token the harness probes with (ACL agents)
        self.tls = tls
        self.base_dir = Path(tempfile.mkdtemp(prefix=f"sked-{name}-", dir=_tmp_root()))
        self.members: list[ConsulAgent] = []

    def __repr__(self) -> str:
        return f"<ConsulCluster {self.name} {self.members}>"

    # -- life cycle --------------------------------------------------------------------------
    def start(self, timeout: float = 40.0, attempts: int = 3) -> ConsulCluster:
        """Start every agent and wait for a leader (retries when a port was taken)."""
        last: Exception | None = None
        for _ in range(attempts):
            self._create_members()
            with _LIVE_LOCK:
                _LIVE.add(self)
            for m in self.members:
                m.start()
            try:
                self.wait_healthy(timeout)
                return self
            except ConsulUnavailableError as exc:
                last = exc
                dead = [m for m in self.members if not m.running]
                self._stop_members()
                if not dead:  # not a port clash: a real problem
                    break
        self.stop()
        raise ConsulUnavailableError(f"consul {self.name!r} did not start: {last}")

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

    def _stop_members(self) -> None:
        for m in self.members:
            m.stop()

    def stop(self) -> None:
        """Stop every agent and delete the data. Idempotent."""
        self._stop_members()
        with _LIVE_LOCK:
            _LIVE.discard(self)
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> ConsulCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses ---------------------------------------------------------------------------
    def url(self, members: Sequence[ConsulAgent] | None = None, **query: object) -> str:
        """The backend URL listing ``members`` (default: all), with query options."""
        chosen = self.members if members is None else members
        netloc = ",".join(m.endpoint for m in chosen)
        qs = urlencode({k: str(v) for k, v in query.items()})
        return f"consul://{netloc}" + (f"?{qs}" if qs else "")

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
        deadline = time.monotonic() + timeout
        while True:
            for m in chosen:
                if not m.running:
                    code = m.proc.returncode if m.proc else None
                    raise ConsulUnavailableError(f"{m!r} exited with {code}:\n{m.log_tail()}")
            leaders = {m.leader() for m in chosen}
            if len(leaders) == 1 and None not in leaders and \
                    all(m.serves_kv(self.token) for m in chosen):
                return
            if time.monotonic() >= deadline:
                logs = "\n".join(f"--- {m.name}:\n{m.log_tail()}" for m in chosen)
                raise ConsulUnavailableError(
                    f"{self.name}: no agreed leader within {timeout}s (saw {leaders})\n{logs}")
            time.sleep(0.1)

    def leader(self, timeout: float = 20.0) -> ConsulAgent:
        """The server the running members agree is the leader (waits for an election)."""
        deadline = time.monotonic() + timeout
        while True:
            seen = {m.leader() for m in self.members if m.running and not m.paused}
            seen.discard(None)
            if len(seen) == 1:
                (address,) = seen
                assert address is not None
                with contextlib.suppress(KeyError):
                    lead = self.member(address)
                    if lead.running and not lead.paused:
                        return lead
            if time.monotonic() >= deadline:
                raise ConsulUnavailableError(f"{self.name}: no agreed leader within "
                                             f"{timeout}s (saw {seen})")
            time.sleep(0.05)

    def followers(self) -> list[ConsulAgent]:
        """Every running member but the leader."""
        lead = self.leader()
        return [m for m in self.members if m is not lead and m.running]

    # -- faults ----------------------------------------------------------------------------
    def restart(self, m: ConsulAgent, timeout: float = 30.0) -> None:
        """Stop (if needed) and start ``m`` again with its data; wait until it is healthy."""
        m.stop()
        m.start()
        self.wait_healthy(timeout)

    def heal(self, timeout: float = 40.0) -> None:
        """Resume paused members, restart dead ones, wait until all agree on a leader."""
        for m in self.members:
            if m.paused:
                m.resume()
        for m in self.members:
            if not m.running:
                m.start()
        self.wait_healthy(timeout)


@atexit.register
def _stop_all() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for cluster in live:
        with contextlib.suppress(Exception):
            cluster.stop()


# -- fixtures ---------------------------------------------------------------------------------
_SHARED = pytest.StashKey[dict[str, ConsulCluster]]()


def _shared(request: pytest.FixtureRequest, name: str,
            factory: Callable[[], ConsulCluster]) -> ConsulCluster:
    """One cluster per session and name, whichever module asks first; stopped at the end."""
    store = request.config.stash.setdefault(_SHARED, {})
    cluster = store.get(name)
    if cluster is None:
        cluster = factory().start()
        store[name] = cluster
        request.config.add_cleanup(cluster.stop)
    return cluster


@pytest.fixture(scope="session")
def consul_dev(request: pytest.FixtureRequest) -> ConsulCluster:
    """One ``-dev`` agent shared by the session. Do not fault it."""
    require_consul()
    require_consul_plugin()
    return _shared(request, "dev", lambda: ConsulCluster(1, dev=True, name="dev"))


@pytest.fixture(scope="session")
def consul_cluster(request: pytest.FixtureRequest) -> ConsulCluster:
    """A 3-server Consul cluster shared by the session. Do not fault it."""
    require_consul()
    require_consul_plugin()
    return _shared(request, "cluster", lambda: ConsulCluster(3, name="cluster"))


@pytest.fixture
def consul_fault_cluster(request: pytest.FixtureRequest) -> Iterator[ConsulCluster]:
    """A 3-server cluster the test may kill, pause and restart; healed before each test."""
    require_consul()
    require_consul_plugin()
    cluster = _shared(request, "faults", lambda: ConsulCluster(3, name="faults"))
    cluster.heal()
    try:
        yield cluster
    finally:
        for m in cluster.members:  # never leave a member frozen behind
            if m.paused:
                m.resume()


@pytest.fixture(scope="session")
def consul_acl(request: pytest.FixtureRequest) -> ConsulCluster:
    """A ``-dev`` agent with ACLs: default policy deny, master token ACL_MASTER_TOKEN."""
    require_consul()
    require_consul_plugin()
    config = {"acl_datacenter": "dc1", "acl_master_token": ACL_MASTER_TOKEN,
              "acl_default_policy": "deny", "acl_down_policy": "deny"}
    return _shared(request, "acl", lambda: ConsulCluster(
        1, dev=True, name="acl", config=config, token=ACL_MASTER_TOKEN))


@pytest.fixture(scope="session")
def consul_tls(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> tuple[ConsulCluster, dict[str, Path]]:
    """A ``-dev`` agent serving the HTTP API over TLS only, and its certificate files."""
    require_consul()
    require_consul_plugin()
    files = make_tls_files(tmp_path_factory.mktemp("consul-tls"))
    config = {"ca_file": str(files["ca"]), "cert_file": str(files["cert"]),
              "key_file": str(files["key"])}
    cluster = _shared(request, "tls", lambda: ConsulCluster(
        1, dev=True, name="tls", config=config, tls=True))
    return cluster, files
