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
  (``url()`` includes ``ca``, ``cert``, ``key``); ``etcd_limited``: one node with
  ``--max-txn-ops=16 --max-request-bytes=65536``;
- ``etcd_fault_cluster``: three members the test may kill, pause and restart (election
  timeout 500 ms), healed (every member resumed, restarted, healthy) before each test.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

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
    "free_ports",
    "make_tls_files",
    "require_etcd",
    "require_etcd_plugin",
    "skip_module_unless_plugin_importable",
]

REPO = Path(__file__).resolve().parents[2]
PLUGIN_DIR = REPO / "plugins" / "skedlib-etcd"

_LIVE: set[EtcdCluster] = set()
_LIVE_LOCK = threading.Lock()


class EtcdUnavailableError(RuntimeError):
    """A server did not start or did not become healthy in time (the message has its log)."""


# -- finding the binary and the plugin --------------------------------------------------------
def _executable(path: str | None) -> bool:
    return bool(path) and os.path.isfile(str(path)) and os.access(str(path), os.X_OK)


def etcd_binary() -> str | None:
    """The etcd server binary to run, or None when there is none.

    ``$SKED_ETCD_BIN``, when set, is the only candidate (a wrong one is not papered over).
    """
    explicit = os.environ.get("SKED_ETCD_BIN")
    if explicit:
        return explicit if _executable(explicit) else None
    for candidate in (shutil.which("etcd"), "/usr/bin/etcd"):
        if _executable(candidate):
            return candidate
    return None


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


def require_etcd() -> str:
    """The etcd binary; skips the test when there is none (fails it when ``$CI`` is set)."""
    binary = etcd_binary()
    if binary is None:
        explicit = os.environ.get("SKED_ETCD_BIN")
        where = f"SKED_ETCD_BIN={explicit} is not an executable file" if explicit else \
            "no etcd on PATH or at /usr/bin/etcd"
        _skip_or_fail(f"no etcd server binary ({where}): run scripts/install-etcd.sh "
                      "(Debian etcd-server) or set SKED_ETCD_BIN")
        raise AssertionError("unreachable")
    return binary


def skip_module_unless_plugin_importable() -> None:
    """At the top of a test module that imports ``skedlib_etcd``: skip it (fail under
    ``$CI``) when the plugin is not installed, instead of breaking collection."""
    try:
        import skedlib_etcd  # noqa: F401
    except ImportError:
        reason = ("the skedlib-etcd plugin is not installed: run "
                  "`pip install -e plugins/skedlib-etcd`")
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)",
                        pytrace=False)
        pytest.skip(reason, allow_module_level=True)


def require_etcd_plugin() -> None:
    """Skip (fail under ``$CI``) unless the ``skedlib-etcd`` plugin is installed.

    The backend is opened through the plugin registry, also from child processes, so the
    plugin's entry point must be installed: ``pip install -e plugins/skedlib-etcd``.
    """
    from skedlib.plugins import get_registry

    if "etcd" not in get_registry().names("backends"):
        _skip_or_fail("the skedlib-etcd plugin is not installed: run "
                      "`pip install -e plugins/skedlib-etcd`")


# -- ports, directories, certificates -------------------------------------------------------
def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return low


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports on 127.0.0.1 that are free now, below the ephemeral range."""
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
            if attempts > 1000:
                raise EtcdUnavailableError("no free ports found on 127.0.0.1")
            port = random.randint(low, high)
            if port in ports:
                continue
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            socks.append(s)
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


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA and a server/client certificate signed by it (PEM files)."""

    ca: Path
    cert: Path
    key: Path
    other_ca: Path
    """A second CA that signed nothing here: a wrong ``ca`` for the negative tests."""


def make_tls_files(directory: Path) -> TlsFiles:
    """Create a CA, a cert for 127.0.0.1/localhost signed by it, and an unrelated CA."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: cannot create test certificates")
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)

    for ca in ("ca", "other-ca"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN=skedlib test {ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.pem")
    (directory / "san.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "extendedKeyUsage=serverAuth,clientAuth\n")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem")
    return TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key",
                    directory / "other-ca.pem")


# -- grpc probes (the harness talks to etcd with etcd3's generated stubs) -------------------
def _rpc() -> Any:
    import etcd3.etcdrpc as rpc  # imported late: the module warns at import (filtered)

    return rpc


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
        rpc = _rpc()
        self.rpc = rpc
        self.kv = rpc.KVStub(self.channel)
        self.maintenance = rpc.MaintenanceStub(self.channel)
        self.auth = rpc.AuthStub(self.channel)

    def status(self, timeout: float) -> Any:
        return self.maintenance.Status(self.rpc.StatusRequest(), timeout=timeout)

    def linearizable_read(self, timeout: float, token: str | None = None) -> None:
        md = [("hasleader", "true")] + ([("token", token)] if token else [])
        self.kv.Range(self.rpc.RangeRequest(key=b"health"), timeout=timeout, metadata=md)

    def close(self) -> None:
        self.channel.close()


# -- one member -----------------------------------------------------------------------------
class EtcdMember:
    """One etcd process: start, stop, signal, restart with the same data and ports."""

    def __init__(self, name: str, client_port: int, peer_port: int, data_dir: Path,
                 log_path: Path, binary: str, tls: TlsFiles | None) -> None:
        self.name = name
        self.client_port = client_port
        self.peer_port = peer_port
        self.data_dir = data_dir
        self.log_path = log_path
        self.binary = binary
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self._args: list[str] = []

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.running else "down"
        return f"<etcd member {self.name} {self.endpoint} {state}>"

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

    @property
    def running(self) -> bool:
        """True while the process exists (also when it is paused)."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

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
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n---- start {time.strftime('%H:%M:%S')} ----\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self._args, stdin=subprocess.DEVNULL, stdout=log,
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

    def log_tail(self, lines: int = 15) -> str:
        """The end of the member's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])


# -- a cluster ------------------------------------------------------------------------------
class EtcdCluster:
    """``size`` members on 127.0.0.1 (1: a single node), started by :meth:`start`.

    ``heartbeat_ms`` / ``election_ms`` are etcd's ``--heartbeat-interval`` and
    ``--election-timeout`` (etcd's defaults: 100 and 1000).
    """

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
        self.name = name
        self.base_dir = Path(tempfile.mkdtemp(prefix=f"sked-etcd-{name}-", dir=_tmp_root()))
        self.members: list[EtcdMember] = []
        self.auth: tuple[str, str] | None = None
        self._probes: dict[str, _Probe] = {}

    def __repr__(self) -> str:
        return f"<EtcdCluster {self.name} {self.members}>"

    # -- life cycle ----------------------------------------------------------------------
    def start(self, timeout: float = 30.0, attempts: int = 3) -> EtcdCluster:
        """Start every member and wait until the cluster is healthy (retries port clashes)."""
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
            except EtcdUnavailableError as exc:
                last = exc
                dead = [m for m in self.members if not m.running]
                self._stop_members()
                if not dead:  # not a port clash: a real problem
                    break
        self.stop()
        raise EtcdUnavailableError(f"etcd cluster {self.name!r} did not start: {last}")

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
        for m in self.members:
            m.stop()
        for p in self._probes.values():
            p.close()
        self._probes.clear()

    def stop(self) -> None:
        """Stop every member and delete the data. Idempotent."""
        self._stop_members()
        with _LIVE_LOCK:
            _LIVE.discard(self)
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses -------------------------------------------------------------------------
    def url(self, members: Sequence[EtcdMember] | None = None, scheme: str | None = None,
            **query: object) -> str:
        """The backend URL listing ``members`` (default: all), with query options."""
        chosen = self.members if members is None else members
        scheme = scheme or ("etcds" if self.tls else "etcd")
        netloc = ",".join(m.endpoint for m in chosen)
        if self.tls is not None and "ca" not in query:
            query = {"ca": str(self.tls.ca), **query}
            if "cert" not in query:  # etcd 3.4 with --trusted-ca-file requires a client cert
                query = {**query, "cert": str(self.tls.cert), "key": str(self.tls.key)}
        if self.auth is not None and "user" not in query:
            query = {"user": self.auth[0], "password": self.auth[1], **query}
        qs = urlencode({k: str(v) for k, v in query.items()})
        return f"{scheme}://{netloc}" + (f"?{qs}" if qs else "")

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
        deadline = time.monotonic() + timeout
        while True:
            for m in chosen:
                if not m.running:
                    raise EtcdUnavailableError(
                        f"{m!r} exited with {m.proc.returncode if m.proc else None}:\n"
                        f"{m.log_tail()}")
            if all(self.member_healthy(m) for m in chosen):
                leaders = {self.status(m).leader for m in chosen}
                if len(leaders) == 1 and 0 not in leaders:
                    return
            if time.monotonic() >= deadline:
                sick = [m for m in chosen if not self.member_healthy(m)]
                logs = "\n".join(f"--- {m.name}:\n{m.log_tail()}" for m in sick)
                raise EtcdUnavailableError(
                    f"{self.name}: not healthy within {timeout}s: {sick}\n{logs}")
            time.sleep(0.1)

    def leader(self, timeout: float = 15.0) -> EtcdMember:
        """The member the running members agree is the leader (waits for an election)."""
        deadline = time.monotonic() + timeout
        while True:
            ids: dict[int, EtcdMember] = {}
            leaders: set[int] = set()
            for m in self.members:
                st = self.status(m)
                if st is None:
                    continue
                ids[st.header.member_id] = m
                leaders.add(st.leader)
            if len(leaders) == 1:
                (lid,) = leaders
                if lid in ids:
                    return ids[lid]
            if time.monotonic() >= deadline:
                raise EtcdUnavailableError(f"{self.name}: no agreed leader within "
                                           f"{timeout}s (saw {leaders})")
            time.sleep(0.05)

    def followers(self) -> list[EtcdMember]:
        """Every running member but the leader."""
        lead = self.leader()
        return [m for m in self.members if m is not lead and m.running]

    # -- faults ----------------------------------------------------------------------------
    def restart(self, m: EtcdMember, timeout: float = 20.0) -> None:
        """Stop (if needed) and start ``m`` again with its data; wait until it is healthy."""
        m.stop()
        m.start()
        self.wait_healthy(timeout, [m])

    def heal(self, timeout: float = 30.0) -> None:
        """Resume paused members, restart dead ones, wait until all are healthy."""
        for m in self.members:
            if m.paused:
                m.resume()
        for m in self.members:
            if not m.running:
                m.start()
        self.wait_healthy(timeout)

    # -- auth ------------------------------------------------------------------------------
    def enable_auth(self, password: str) -> None:
        """Add ``root`` with ``password``, grant it the root role, and enable auth."""
        rpc = _rpc()
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


@atexit.register
def _stop_all() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for cluster in live:
        with contextlib.suppress(Exception):
            cluster.stop()


# -- fixtures -------------------------------------------------------------------------------
_SHARED = pytest.StashKey[dict[str, EtcdCluster]]()


def store_get(request: pytest.FixtureRequest, name: str) -> EtcdCluster | None:
    """The session's running cluster called ``name``, if one was started."""
    return request.config.stash.setdefault(_SHARED, {}).get(name)


def _keep(request: pytest.FixtureRequest, name: str, cluster: EtcdCluster) -> None:
    request.config.stash.setdefault(_SHARED, {})[name] = cluster
    request.config.add_cleanup(cluster.stop)


def _shared(request: pytest.FixtureRequest, name: str,
            factory: Callable[[], EtcdCluster]) -> EtcdCluster:
    """One cluster per session and name, whichever module asks first; stopped at the end."""
    cluster = store_get(request, name)
    if cluster is None:
        cluster = factory()
        try:
            cluster.start()
        except BaseException:
            cluster.stop()
            raise
        _keep(request, name, cluster)
    return cluster


@pytest.fixture(scope="session")
def etcd_single(request: pytest.FixtureRequest) -> EtcdCluster:
    """A single-node etcd shared by the session. Do not fault it."""
    require_etcd()
    require_etcd_plugin()
    return _shared(request, "single", lambda: EtcdCluster(1, name="single"))


@pytest.fixture(scope="session")
def etcd_cluster(request: pytest.FixtureRequest) -> EtcdCluster:
    """A 3-member etcd cluster shared by the session. Do not fault it."""
    require_etcd()
    require_etcd_plugin()
    return _shared(request, "cluster", lambda: EtcdCluster(3, name="cluster"))


@pytest.fixture(scope="session")
def etcd_auth(request: pytest.FixtureRequest) -> EtcdCluster:
    """A single node with authentication enabled: user ``root``, password ``s3cret pw``."""
    require_etcd()
    require_etcd_plugin()

    cluster = store_get(request, "auth")
    if cluster is None:
        cluster = EtcdCluster(1, name="auth")
        try:
            cluster.start()
            cluster.enable_auth("s3cret pw")
        except BaseException:
            cluster.stop()
            raise
        _keep(request, "auth", cluster)
    return cluster


@pytest.fixture(scope="session")
def etcd_tls(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> EtcdCluster:
    """A single node serving clients over TLS and requiring a client certificate.

    ``cluster.tls`` has the CA, the certificate and key (valid as server and client
    certificate) and an unrelated CA; ``cluster.url()`` includes ``ca``, ``cert``, ``key``.
    """
    require_etcd()
    require_etcd_plugin()
    cluster = store_get(request, "tls")
    if cluster is None:
        tls = make_tls_files(tmp_path_factory.mktemp("etcd-tls"))
        cluster = EtcdCluster(1, name="tls", tls=tls)
        try:
            cluster.start()
        except BaseException:
            cluster.stop()
            raise
        _keep(request, "tls", cluster)
    return cluster


@pytest.fixture(scope="session")
def etcd_limited(request: pytest.FixtureRequest) -> EtcdCluster:
    """A single node with small limits: ``--max-txn-ops=16 --max-request-bytes=65536``."""
    require_etcd()
    require_etcd_plugin()
    return _shared(request, "limited", lambda: EtcdCluster(
        1, name="limited", extra_args=["--max-txn-ops=16", "--max-request-bytes=65536"]))


@pytest.fixture
def etcd_fault_cluster(request: pytest.FixtureRequest) -> Iterator[EtcdCluster]:
    """A 3-member cluster the test may kill, pause and restart; healed before each test.

    It is shared by the session like the others, but kept apart from ``etcd_cluster``.
    Its election timeout is 500 ms (etcd's default: 1000 ms): with the default, electing
    a new leader after a kill alone takes 1-3 s (a follower still inside its leader lease
    ignores the first candidate), which would leave the failover figures to chance.
    """
    require_etcd()
    require_etcd_plugin()
    cluster = _shared(request, "faults", lambda: EtcdCluster(
        3, name="faults", heartbeat_ms=50, election_ms=500))
    cluster.heal()
    try:
        yield cluster
    finally:
        for m in cluster.members:  # never leave a member frozen behind
            if m.paused:
                m.resume()
