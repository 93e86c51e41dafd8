"""Real etcd servers for the tests: single nodes and 3-member clusters on 127.0.0.1.

Every server gets free ports (picked below the kernel's ephemeral range, so a client's
outgoing connection cannot take the port of a member that is down and about to be
restarted) and a throwaway data directory (under ``/dev/shm`` when it is writable:
fsync on tmpfs is free, which keeps the tests fast). Servers are stopped in fixture
teardown, at interpreter exit as a last resort, and their data is removed.

The binary is ``$SKED_ETCD_BIN`` when that is set (and then only it), else ``etcd`` on
``PATH``, else ``/usr/bin/etcd`` (Debian's ``etcd-server``; ``scripts/install-etcd.sh``
installs it). Without one the fixtures skip, unless ``$CI`` is set: then they fail, so CI
cannot go green by skipping. The same holds when the ``skedlib-etcd`` plugin is not
installed (``pip install -e plugins/skedlib-etcd``).

Use the fixtures from a test module by assignment (pytest finds fixtures among module
attributes; assignment keeps linters quiet about "unused" imports)::

    from tests.harness import etcd as harness

    etcd_single = harness.etcd_single

    def test_x(etcd_single: harness.EtcdCluster) -> None:
        url = etcd_single.url()

Fixtures (each server is started once per session, by whichever module asks first, and
stopped at the end of the session):

- ``etcd_single``, ``etcd_cluster``: one node and three members, shared; never fault them;
- ``etcd_auth``: one node with auth enabled (``root`` / ``s3cret pw``; ``url()`` includes
  the credentials); ``etcd_tls``: one node serving TLS that requires a client certificate
  (``url()`` includes ``ca``, ``cert``, ``key``); ``etcd_tls_auth``: the same with
  ``--client-cert-auth`` and auth enabled (the certificate's CN is the etcd user);
  ``etcd_limited``: one node with
  ``--max-txn-ops=16 --max-request-bytes=65536``;
- ``etcd_fault_cluster``: three members the test may kill, pause and restart (election
  timeout 500 ms), healed (every member resumed, restarted, healthy) before each test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.harness.common import (
    ClusterMember,
    ServerCluster,
    ServerUnavailableError,
    SessionServers,
    TlsFiles,
    first_executable,
    make_tls_files,
    require_backend_plugin,
    skip_or_fail,
    wait_for,
    wait_until,
)
from tests.harness.common import free_ports as _free_ports

__all__ = [
    "EtcdCluster",
    "EtcdMember",
    "EtcdUnavailableError",
    "TlsFiles",
    "etcd_auth",
    "etcd_binary",
    "etcd_cluster",
    "etcd_fault_cluster",
    "etcd_limited",
    "etcd_single",
    "etcd_tls",
    "etcd_tls_auth",
    "free_ports",
    "make_tls_files",
    "require_etcd",
    "require_etcd_plugin",
    "skip_module_unless_plugin_importable",
]

REPO = Path(__file__).resolve().parents[2]
PLUGIN_DIR = REPO / "plugins" / "skedlib-etcd"


class EtcdUnavailableError(ServerUnavailableError):
    """A server did not start or did not become healthy in time (the message has its log)."""


# -- finding the binary and the plugin --------------------------------------------------------
def etcd_binary() -> str | None:
    """The etcd server binary to run, or None when there is none.

    ``$SKED_ETCD_BIN``, when set, is the only candidate (a wrong one is not papered over).
    """
    explicit = os.environ.get("SKED_ETCD_BIN")
    if explicit:
        return first_executable(explicit)
    return first_executable(shutil.which("etcd"), "/usr/bin/etcd")


def require_etcd() -> str:
    """The etcd binary; skips the test when there is none (fails it when ``$CI`` is set)."""
    binary = etcd_binary()
    if binary is None:
        explicit = os.environ.get("SKED_ETCD_BIN")
        where = f"SKED_ETCD_BIN={explicit} is not an executable file" if explicit else \
            "no etcd on PATH or at /usr/bin/etcd"
        skip_or_fail(f"no etcd server binary ({where}): run scripts/install-etcd.sh "
                     "(Debian etcd-server) or set SKED_ETCD_BIN")
    return binary


def skip_module_unless_plugin_importable() -> None:
    """At the top of a test module that imports ``skedlib_etcd``: skip it (fail under
    ``$CI``) when the plugin is not installed, instead of breaking collection."""
    try:
        import skedlib_etcd  # noqa: F401
    except ImportError:
        skip_or_fail("the skedlib-etcd plugin is not installed: run "
                     "`pip install -e plugins/skedlib-etcd`", allow_module_level=True)


def require_etcd_plugin() -> None:
    """Skip (fail under ``$CI``) unless the ``skedlib-etcd`` plugin is installed (its
    entry point: the backend is opened through the plugin registry)."""
    require_backend_plugin("etcd")


# -- ports -----------------------------------------------------------------------------------
def free_ports(n: int) -> list[int]:
    """``n`` distinct ports on 127.0.0.1 that are free now, below the ephemeral range."""
    return _free_ports(n, error=EtcdUnavailableError)


# -- grpc probes (the harness talks to etcd with the plugin's stubs) --------------------------
def _rpc() -> Any:
    from skedlib_etcd import stubs  # imported late: only etcd tests need grpc

    return stubs


class _Probe:
    """A grpc channel to one member, for health and leader checks."""

    def __init__(self, endpoint: str, tls: TlsFiles | None) -> None:
        import grpc

        self.grpc = grpc
        if tls is not None:
            creds = grpc.ssl_channel_credentials(tls.ca.read_bytes(), tls.key.read_bytes(),
                                                 tls.cert.read_bytes())
            self.channel = grpc.secure_channel(endpoint, creds)
        else:
            self.channel = grpc.insecure_channel(endpoint)
        stubs = _rpc()
        self.rpc = stubs.rpc_pb2
        self.kv = stubs.Stub(self.channel, "KV")
        self.maintenance = stubs.Stub(self.channel, "Maintenance")
        self.auth = stubs.Stub(self.channel, "Auth")

    def status(self, timeout: float) -> Any:
        return self.maintenance.Status(self.rpc.StatusRequest(), timeout=timeout)

    def linearizable_read(self, timeout: float, token: str | None = None) -> None:
        md = [("hasleader", "true")] + ([("token", token)] if token else [])
        self.kv.Range(self.rpc.RangeRequest(key=b"health"), timeout=timeout, metadata=md)

    def close(self) -> None:
        self.channel.close()


# -- one member -----------------------------------------------------------------------------
class EtcdMember(ClusterMember):
    """One etcd process: start, stop, signal, restart with the same data and ports."""

    def __init__(self, name: str, client_port: int, peer_port: int, data_dir: Path,
                 log_path: Path, binary: str, tls: TlsFiles | None) -> None:
        super().__init__(log_path)
        self.name = name
        self.client_port = client_port
        self.peer_port = peer_port
        self.data_dir = data_dir
        self.binary = binary
        self.tls = tls
        self._args: list[str] = []

    def __repr__(self) -> str:
        return f"<etcd member {self.name} {self.endpoint} {self.state}>"

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:PORT`` of the client listener."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def configure(self, initial_cluster: str, token: str, extra_args: Sequence[str],
                  heartbeat_ms: int = 100, election_ms: int = 1000) -> None:
        args = [
            self.binary,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", initial_cluster,
            "--initial-cluster-token", token,
            "--initial-cluster-state", "new",
            "--heartbeat-interval", str(heartbeat_ms),
            "--election-timeout", str(election_ms),
            "--enable-v2=false",
            "--logger", "zap",
            "--log-level", "info",
        ]
        if self.tls is not None:
            args += ["--cert-file", str(self.tls.cert), "--key-file", str(self.tls.key),
                     "--trusted-ca-file", str(self.tls.ca)]
        self._args = args + list(extra_args)

    def start(self) -> None:
        """Start the process (again): same ports, same data directory."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.spawn(self._args)


# -- a cluster ------------------------------------------------------------------------------
class EtcdCluster(ServerCluster[EtcdMember]):
    """``size`` members on 127.0.0.1 (1: a single node), started by :meth:`start`.

    ``heartbeat_ms`` / ``election_ms`` are etcd's ``--heartbeat-interval`` and
    ``--election-timeout`` (etcd's defaults: 100 and 1000).
    """

    error = EtcdUnavailableError
    what = "etcd cluster"
    start_timeout = 30.0
    heal_timeout = 30.0

    def __init__(self, size: int = 3, *, tls: TlsFiles | None = None,
                 extra_args: Sequence[str] = (), binary: str | None = None,
                 name: str = "etcd", heartbeat_ms: int = 100,
                 election_ms: int = 1000) -> None:
        self.size = size
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.tls = tls
        self.extra_args = list(extra_args)
        self.binary = binary or require_etcd()
        super().__init__(name, f"sked-etcd-{name}-")
        self.auth: tuple[str, str] | None = None
        self._probes: dict[str, _Probe] = {}

    # -- life cycle ----------------------------------------------------------------------
    def _create_members(self) -> None:
        self._stop_members()
        ports = free_ports(2 * self.size)
        run = uuid.uuid4().hex[:8]
        self.members = [
            EtcdMember(f"{self.name}{i}", ports[2 * i], ports[2 * i + 1],
                       self.base_dir / run / f"m{i}.etcd", self.base_dir / f"m{i}.log",
                       self.binary, self.tls)
            for i in range(self.size)]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        token = f"sked-{self.name}-{run}"
        for m in self.members:
            m.configure(initial, token, self.extra_args, self.heartbeat_ms, self.election_ms)

    def _stop_members(self) -> None:
        super()._stop_members()
        for p in self._probes.values():
            p.close()
        self._probes.clear()

    # -- addresses -------------------------------------------------------------------------
    def url(self, members: Sequence[EtcdMember] | None = None, scheme: str | None = None,
            **query: object) -> str:
        """The backend URL listing ``members`` (default: all), with query options."""
        scheme = scheme or ("etcds" if self.tls else "etcd")
        if self.tls is not None and "ca" not in query:
            query = {"ca": str(self.tls.ca), **query}
            if "cert" not in query:  # etcd 3.4 with --trusted-ca-file requires a client cert
                query = {**query, "cert": str(self.tls.cert), "key": str(self.tls.key)}
        if self.auth is not None and "user" not in query:
            query = {"user": self.auth[0], "password": self.auth[1], **query}
        return self._url(scheme, members, query)

    def member(self, endpoint: str) -> EtcdMember:
        """The member listening on ``endpoint`` (``127.0.0.1:PORT``)."""
        for m in self.members:
            if m.endpoint == endpoint:
                return m
        raise KeyError(endpoint)

    # -- health ----------------------------------------------------------------------------
    def _probe(self, m: EtcdMember) -> _Probe:
        probe = self._probes.get(m.endpoint)
        if probe is None:
            probe = self._probes[m.endpoint] = _Probe(m.endpoint, self.tls)
        return probe

    def status(self, m: EtcdMember, timeout: float = 1.0) -> Any:
        """The member's StatusResponse, or None when it does not answer in time."""
        if not m.running or m.paused:
            return None
        try:
            return self._probe(m).status(timeout)
        except Exception:  # grpc.RpcError: down, starting, paused
            return None

    def member_healthy(self, m: EtcdMember, timeout: float = 1.0) -> bool:
        """Answers Status, knows a leader, and serves a linearizable read."""
        st = self.status(m, timeout)
        if st is None or st.leader == 0:
            return False
        if self.auth is not None:
            return True  # the read would need a token; Status with a leader is enough
        try:
            self._probe(m).linearizable_read(timeout)
        except Exception:
            return False
        return True

    def wait_healthy(self, timeout: float = 20.0,
                     members: Sequence[EtcdMember] | None = None) -> None:
        """Wait until every given member (default: all) is healthy and agrees on a leader."""
        chosen = self.members if members is None else list(members)

        def healthy() -> bool:
            for m in chosen:
                m.check_running(EtcdUnavailableError)
            if all(self.member_healthy(m) for m in chosen):
                leaders = {self.status(m).leader for m in chosen}
                if len(leaders) == 1 and 0 not in leaders:
                    return True
            return False

        def timed_out() -> EtcdUnavailableError:
            sick = [m for m in chosen if not self.member_healthy(m)]
            logs = "\n".join(f"--- {m.name}:\n{m.log_tail()}" for m in sick)
            return EtcdUnavailableError(
                f"{self.name}: not healthy within {timeout}s: {sick}\n{logs}")

        wait_until(healthy, timeout, timed_out)

    def leader(self, timeout: float = 15.0) -> EtcdMember:
        """The member the running members agree is the leader (waits for an election)."""
        leaders: set[int] = set()

        def agreed() -> EtcdMember | None:
            nonlocal leaders
            ids: dict[int, EtcdMember] = {}
            leaders = set()
            for m in self.members:
                st = self.status(m)
                if st is None:
                    continue
                ids[st.header.member_id] = m
                leaders.add(st.leader)
            if len(leaders) == 1:
                (lid,) = leaders
                return ids.get(lid)
            return None

        return wait_for(agreed, timeout, lambda: EtcdUnavailableError(
            f"{self.name}: no agreed leader within {timeout}s (saw {leaders})"), interval=0.05)

    # -- faults ----------------------------------------------------------------------------
    def restart(self, m: EtcdMember, timeout: float = 20.0) -> None:
        """Stop (if needed) and start ``m`` again with its data; wait until it is healthy."""
        m.stop()
        m.start()
        self.wait_healthy(timeout, [m])

    # -- auth ------------------------------------------------------------------------------
    def enable_auth(self, password: str) -> None:
        """Add ``root`` with ``password``, grant it the root role, and enable auth."""
        rpc = _rpc().rpc_pb2
        auth = self._probe(self.members[0]).auth
        md = [("hasleader", "true")]
        with contextlib.suppress(Exception):  # the role may already exist
            auth.RoleAdd(rpc.AuthRoleAddRequest(name="root"), timeout=5, metadata=md)
        auth.UserAdd(rpc.AuthUserAddRequest(name="root", password=password), timeout=5,
                     metadata=md)
        auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root"),
                           timeout=5, metadata=md)
        auth.AuthEnable(rpc.AuthEnableRequest(), timeout=5, metadata=md)
        self.auth = ("root", password)

    def add_prefix_user(self, name: str, password: str, prefix: str) -> None:
        """Add user ``name`` whose one role (``name``) may read and write only the keys
        under ``prefix`` (what ``etcdctl role grant-permission --prefix ROLE readwrite
        PREFIX`` does). Auth must be enabled; adding the same user again is a no-op."""
        assert self.auth is not None, "enable_auth first"
        rpc = _rpc().rpc_pb2
        auth = self._probe(self.members[0]).auth
        token = auth.Authenticate(rpc.AuthenticateRequest(name=self.auth[0],
                                                          password=self.auth[1]),
                                  timeout=5).token
        md = [("hasleader", "true"), ("token", token)]
        start = prefix.encode()
        end = start[:-1] + bytes([start[-1] + 1])  # the prefix's range end
        with contextlib.suppress(Exception):  # already there (the server is shared)
            auth.UserAdd(rpc.AuthUserAddRequest(name=name, password=password), timeout=5,
                         metadata=md)
        with contextlib.suppress(Exception):
            auth.RoleAdd(rpc.AuthRoleAddRequest(name=name), timeout=5, metadata=md)
        authpb = _rpc().auth_pb2
        permission = authpb.Permission(permType=authpb.Permission.READWRITE, key=start,
                                       range_end=end)
        auth.RoleGrantPermission(rpc.AuthRoleGrantPermissionRequest(name=name, perm=permission),
                                 timeout=5, metadata=md)
        auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user=name, role=name), timeout=5,
                           metadata=md)


# -- fixtures -------------------------------------------------------------------------------
_SHARED = SessionServers[EtcdCluster]()


def store_get(request: pytest.FixtureRequest, name: str) -> EtcdCluster | None:
    """The session's running cluster called ``name``, if one was started."""
    return _SHARED.get(request, name)


def _require() -> None:
    require_etcd()
    require_etcd_plugin()


@pytest.fixture(scope="session")
def etcd_single(request: pytest.FixtureRequest) -> EtcdCluster:
    """A single-node etcd shared by the session. Do not fault it."""
    _require()
    return _SHARED.shared(request, "single", lambda: EtcdCluster(1, name="single"))


@pytest.fixture(scope="session")
def etcd_cluster(request: pytest.FixtureRequest) -> EtcdCluster:
    """A 3-member etcd cluster shared by the session. Do not fault it."""
    _require()
    return _SHARED.shared(request, "cluster", lambda: EtcdCluster(3, name="cluster"))


@pytest.fixture(scope="session")
def etcd_auth(request: pytest.FixtureRequest) -> EtcdCluster:
    """A single node with authentication enabled: user ``root``, password ``s3cret pw``."""
    _require()
    return _SHARED.shared(request, "auth", lambda: EtcdCluster(1, name="auth"),
                          setup=lambda cluster: cluster.enable_auth("s3cret pw"))


@pytest.fixture(scope="session")
def etcd_tls(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> EtcdCluster:
    """A single node serving clients over TLS and requiring a client certificate.

    ``cluster.tls`` has the CA, the certificate and key (valid as server and client
    certificate) and an unrelated CA; ``cluster.url()`` includes ``ca``, ``cert``, ``key``.
    """
    _require()
    return _SHARED.shared(request, "tls", lambda: EtcdCluster(
        1, name="tls", tls=make_tls_files(tmp_path_factory.mktemp("etcd-tls"))))


@pytest.fixture(scope="session")
def etcd_tls_auth(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> EtcdCluster:
    """A single node serving TLS with ``--client-cert-auth`` and authentication enabled
    (``root`` / ``s3cret pw``): a client certificate authenticates as the user named by
    its common name (``127.0.0.1`` for ``cluster.tls.cert``), which has no user yet."""
    _require()
    return _SHARED.shared(request, "tls-auth", lambda: EtcdCluster(
        1, name="tls-auth", tls=make_tls_files(tmp_path_factory.mktemp("etcd-tls-auth")),
        extra_args=["--client-cert-auth"]),
        setup=lambda cluster: cluster.enable_auth("s3cret pw"))


@pytest.fixture(scope="session")
def etcd_limited(request: pytest.FixtureRequest) -> EtcdCluster:
    """A single node with small limits: ``--max-txn-ops=16 --max-request-bytes=65536``."""
    _require()
    return _SHARED.shared(request, "limited", lambda: EtcdCluster(
        1, name="limited", extra_args=["--max-txn-ops=16", "--max-request-bytes=65536"]))


@pytest.fixture
def etcd_fault_cluster(request: pytest.FixtureRequest) -> Iterator[EtcdCluster]:
    """A 3-member cluster the test may kill, pause and restart; healed before each test.

    It is shared by the session like the others, but kept apart from ``etcd_cluster``.
    Its election timeout is 500 ms (etcd's default: 1000 ms): with the default, electing
    a new leader after a kill alone takes 1-3 s (a follower still inside its leader lease
    ignores the first candidate), which would leave the failover figures to chance.
    """
    _require()
    cluster = _SHARED.shared(request, "faults", lambda: EtcdCluster(
        3, name="faults", heartbeat_ms=50, election_ms=500))
    with cluster.healed():
        yield cluster
