"""What the harnesses that start real servers (etcd, Consul, dockerd) have in common.

- skipping: :func:`skip_or_fail` skips a test, or fails it when ``$CI`` is set, so CI
  cannot go green by skipping; :func:`first_executable` and
  :func:`require_backend_plugin` find what a harness needs;
- ports and directories: :func:`free_ports` (below the kernel's ephemeral range, so a
  client's outgoing connection cannot take the port of a server that is down and about
  to be restarted) and :func:`tmp_root` (``/dev/shm`` when it is writable);
- certificates: :func:`make_tls_files` (a throwaway CA and a certificate signed by it);
- processes: :class:`ServerProcess`, one server process with a log file that can be
  started, stopped, killed, paused (SIGSTOP) and resumed (SIGCONT);
- clusters: :class:`ServerCluster`, members started together (retrying port clashes),
  healed and stopped together; every started cluster or server registered with
  :func:`stop_at_exit` is stopped at interpreter exit as a last resort;
- waiting: :func:`wait_for` and :func:`wait_until` poll until a deadline;
- fixtures: :class:`SessionServers`, servers shared by a pytest session by name.
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, NoReturn, Protocol, Self, TypeVar
from urllib.parse import urlencode

import pytest

from skedlib.errors import BackendUnavailable
from skedlib.store.base import (
    Backend,
    Compare,
    Delete,
    KeyValue,
    ListResult,
    Op,
    TxnResult,
    Watch,
)

__all__ = [
    "ClusterMember",
    "DelegatingBackend",
    "DeleteFailsOnce",
    "ServerCluster",
    "ServerProcess",
    "ServerUnavailableError",
    "SessionServers",
    "TlsFiles",
    "ephemeral_low",
    "first_executable",
    "forget_at_exit",
    "free_ports",
    "make_tls_files",
    "require_backend_plugin",
    "skip_or_fail",
    "stop_at_exit",
    "tmp_root",
    "wait_for",
    "wait_until",
]

T = TypeVar("T")


class DelegatingBackend(Backend):
    """A real backend passed through unchanged; tests subclass it to interleave a
    competitor's write or a fault at a chosen call (every call still reaches ``inner``)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.url, self.max_txn_ops = inner.url, inner.max_txn_ops
        self.min_lease_ttl = inner.min_lease_ttl

    def get(self, key: str) -> KeyValue | None:
        return self.inner.get(key)

    def list(self, prefix: str) -> ListResult:
        return self.inner.list(prefix)

    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        return self.inner.txn(compares, ops)

    def watch(self, prefix: str, start_revision: int) -> Watch:
        return self.inner.watch(prefix, start_revision)

    def grant_lease(self, ttl: float) -> str:
        return self.inner.grant_lease(ttl)

    def keepalive(self, lease: str) -> None:
        self.inner.keepalive(lease)

    def revoke_lease(self, lease: str) -> None:
        self.inner.revoke_lease(lease)


class DeleteFailsOnce(DelegatingBackend):
    """A real backend, but the first transaction that deletes a key fails as if the store
    did not answer (nothing is applied)."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.failed = False

    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        if not self.failed and any(isinstance(op, Delete) for op in ops):
            self.failed = True
            raise BackendUnavailable(f"{self.url}: txn failed: the store did not answer")
        return super().txn(compares, ops)


class ServerUnavailableError(RuntimeError):
    """A server did not start or did not become ready in time (the message has its log).

    Each harness raises a subclass of its own (``EtcdUnavailableError`` …).
    """


# -- skipping ---------------------------------------------------------------------------------
def skip_or_fail(reason: str, *, allow_module_level: bool = False) -> NoReturn:
    """Skip the test (or the module, with ``allow_module_level``) for ``reason``; fail it
    instead when ``$CI`` is set, so CI cannot go green by skipping."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason, allow_module_level=allow_module_level)


def first_executable(*candidates: str | None) -> str | None:
    """The first candidate that is an executable file (empty and None ones are passed over)."""
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_backend_plugin(name: str) -> None:
    """Skip (fail under ``$CI``) unless the ``skedlib-<name>`` plugin provides backend ``name``.

    The backend is opened through the plugin registry, also from child processes, so the
    plugin's entry point must be installed: ``pip install -e plugins/skedlib-<name>``.
    """
    from skedlib.plugins import get_registry

    if name not in get_registry().names("backends"):
        skip_or_fail(f"the skedlib-{name} plugin is not installed: run "
                     f"`pip install -e plugins/skedlib-{name}`")


# -- ports and directories --------------------------------------------------------------------
def ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (32768 when it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _worker_slice(low: int, high: int) -> tuple[int, int]:
    """This pytest worker's share of the ports ``low``..``high`` when the suite runs on
    several (pytest-xdist): a port is free when picked but bound only when its server
    starts, so two workers picking from one range could start two servers on one port,
    and a test would then talk to the other worker's server."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or count <= 1:
        return low, high
    index = int(worker[2:]) % count
    share = (high - low + 1) // count
    return low + index * share, low + (index + 1) * share - 1


def free_ports(n: int, udp: bool = False, *, attempts: int = 1000,
               error: type[Exception] = ServerUnavailableError) -> list[int]:
    """``n`` distinct ports free now on 127.0.0.1 (for TCP, and for UDP too with ``udp``).

    They are picked at random from the 20000 ports below the ephemeral range (from all
    unprivileged ports when that leaves too few); ``error`` is raised when ``attempts``
    candidates did not yield ``n``.
    """
    high = ephemeral_low() - 1
    low = max(10000, high - 20000)
    if high - low < n * 4:
        low, high = 1024, 65535
    low, high = _worker_slice(low, high)
    kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp else (socket.SOCK_STREAM,)
    ports: list[int] = []
    socks: list[socket.socket] = []  # held until the end, so no port is picked twice
    try:
        tried = 0
        while len(ports) < n:
            tried += 1
            if tried > attempts:
                raise error("no free ports found on 127.0.0.1")
            port = random.randint(low, high)
            if port in ports:
                continue
            bound: list[socket.socket] = []
            try:
                for kind in kinds:
                    s = socket.socket(socket.AF_INET, kind)
                    bound.append(s)
                    s.bind(("127.0.0.1", port))
            except OSError:
                for s in bound:
                    s.close()
                continue
            socks += bound
            ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


def tmp_root() -> str | None:
    """``/dev/shm`` when it is a writable directory (fsync on tmpfs is free), else None
    (the default temporary directory): the ``dir`` for :func:`tempfile.mkdtemp`."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return str(shm)
    return None


# -- certificates -------------------------------------------------------------------------------
@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA and a server/client certificate signed by it (PEM files)."""

    ca: Path
    cert: Path
    key: Path
    other_ca: Path
    """A second CA that signed nothing here: a wrong ``ca`` for the negative tests."""


def make_tls_files(directory: Path, *, subject: str = "skedlib test") -> TlsFiles:
    """Create a CA, a cert for 127.0.0.1/localhost signed by it, and an unrelated CA.

    The CAs are called ``<subject> ca`` and ``<subject> other-ca``; the certificate is
    good for server and client authentication. Skips the test without ``openssl``.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: cannot create test certificates")
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)

    for ca in ("ca", "other-ca"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN={subject} {ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.pem")
    (directory / "san.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "extendedKeyUsage=serverAuth,clientAuth\n")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem")
    return TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key",
                    directory / "other-ca.pem")


# -- waiting ------------------------------------------------------------------------------------
def wait_for(probe: Callable[[], T | None], timeout: float,
             timed_out: Callable[[], Exception], interval: float = 0.1) -> T:
    """Call ``probe`` every ``interval`` seconds until it returns something other than None,
    and return that; raise ``timed_out()`` once ``timeout`` seconds have passed. ``probe``
    may raise to give up early (a server that exited)."""
    deadline = time.monotonic() + timeout
    while (found := probe()) is None:
        if time.monotonic() >= deadline:
            raise timed_out()
        time.sleep(interval)
    return found


def eventually(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
               every: float = 0.05) -> Any:
    """Poll ``cond`` until it returns something truthy and return it; fail the test
    (AssertionError) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def wait_until(ready: Callable[[], bool], timeout: float,
               timed_out: Callable[[], Exception], interval: float = 0.1) -> None:
    """:func:`wait_for` with a yes/no ``ready``."""
    wait_for(lambda: True if ready() else None, timeout, timed_out, interval)


# -- cleanup at exit ------------------------------------------------------------------------------
class _Stoppable(Protocol):
    def stop(self) -> None: ...


_LIVE: set[_Stoppable] = set()
_LIVE_LOCK = threading.Lock()


def stop_at_exit(server: _Stoppable) -> None:
    """Stop ``server`` at interpreter exit unless :func:`forget_at_exit` is called first."""
    with _LIVE_LOCK:
        _LIVE.add(server)


def forget_at_exit(server: _Stoppable) -> None:
    """Undo :func:`stop_at_exit` (``server`` was stopped). No-op if it was not registered."""
    with _LIVE_LOCK:
        _LIVE.discard(server)


@atexit.register
def _stop_all() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for server in live:
        with contextlib.suppress(Exception):
            server.stop()


# -- one process ----------------------------------------------------------------------------------
class ServerProcess:
    """One server process, its output appended to ``log_path``.

    :meth:`spawn` starts it in a session of its own; :meth:`kill`, :meth:`pause`,
    :meth:`resume` and :meth:`stop` act on it and are no-ops when it is not running.
    """

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def running(self) -> bool:
        """True while the process exists (also when it is paused)."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def state(self) -> str:
        """``paused``, ``running`` or ``down``."""
        return "paused" if self.paused else "running" if self.running else "down"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def spawn(self, args: Sequence[str], *, mark: bool = True) -> subprocess.Popen[bytes]:
        """Start ``args``, stdout and stderr appended to the log (after a ``---- start
        HH:MM:SS ----`` line when ``mark``). Raises RuntimeError if it is running."""
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        with open(self.log_path, "ab") as log:
            if mark:
                log.write(f"\n---- start {time.strftime('%H:%M:%S')} ----\n".encode())
                log.flush()
            self.proc = subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.paused = False
        return self.proc

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
        """SIGSTOP: the process keeps its sockets open but answers nothing.

        Returns once the kernel reports the process stopped (or after a second), so that
        whatever the caller does next happens after the freeze.
        """
        self.send(signal.SIGSTOP)
        self.paused = True
        if self.running:
            stat = Path(f"/proc/{self.pid}/stat")
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                try:  # "pid (comm) STATE ...": T is stopped
                    if stat.read_text().rsplit(")", 1)[1].split()[0] in ("T", "t"):
                        break
                except (OSError, IndexError):
                    break
                time.sleep(0.001)

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
        """The end of the log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def check_running(self, error: type[Exception], what: str | None = None) -> None:
        """Raise ``error`` with the exit code and the end of the log unless it is running;
        the message starts with ``what`` (default: the process's repr)."""
        if not self.running:
            code = self.proc.returncode if self.proc else None
            raise error(f"{what or repr(self)} exited with {code}:\n{self.log_tail()}")


# -- a cluster ------------------------------------------------------------------------------------
class ClusterMember(ServerProcess):
    """A member of a :class:`ServerCluster`: it can :meth:`start` (again) on its own."""

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:PORT``: where clients reach it."""
        raise NotImplementedError

    def start(self) -> None:
        """Start the process (again): same ports, same data directory."""
        raise NotImplementedError


M = TypeVar("M", bound=ClusterMember)


class ServerCluster(Generic[M]):
    """Members started together, healed together and stopped together.

    A subclass creates its (not yet started) members in :meth:`_create_members` (new
    ports each time: :meth:`start` retries when a member could not bind them) and waits
    for them in :meth:`wait_healthy`. Its data lives in :attr:`base_dir`, removed by
    :meth:`stop`.
    """

    error: type[ServerUnavailableError] = ServerUnavailableError
    """What the cluster raises when it does not start or get healthy."""
    what = "cluster"
    """How messages name it: ``<what> 'name' did not start``."""
    start_timeout = 30.0
    """The default ``timeout`` of :meth:`start`."""
    heal_timeout = 30.0
    """The default ``timeout`` of :meth:`heal`."""

    def __init__(self, name: str, dir_prefix: str) -> None:
        self.name = name
        self.base_dir = Path(tempfile.mkdtemp(prefix=dir_prefix, dir=tmp_root()))
        self.members: list[M] = []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.members}>"

    def _create_members(self) -> None:
        raise NotImplementedError

    def wait_healthy(self, timeout: float, members: Sequence[M] | None = None) -> None:
        raise NotImplementedError

    # -- life cycle --------------------------------------------------------------------------
    def start(self, timeout: float | None = None, attempts: int = 3) -> Self:
        """Start every member and wait until the cluster is healthy (retries port clashes;
        default ``timeout``: :attr:`start_timeout`)."""
        if timeout is None:
            timeout = self.start_timeout
        last: Exception | None = None
        for _ in range(attempts):
            self._create_members()
            stop_at_exit(self)
            for m in self.members:
                m.start()
            try:
                self.wait_healthy(timeout)
                return self
            except self.error as exc:
                last = exc
                dead = [m for m in self.members if not m.running]
                self._stop_members()
                if not dead:  # not a port clash: a real problem
                    break
        self.stop()
        raise self.error(f"{self.what} {self.name!r} did not start: {last}")

    def _stop_members(self) -> None:
        for m in self.members:
            m.stop()

    def stop(self) -> None:
        """Stop every member and delete the data. Idempotent."""
        self._stop_members()
        forget_at_exit(self)
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _url(self, scheme: str, members: Sequence[M] | None,
             query: Mapping[str, object]) -> str:
        """``scheme://`` the members' endpoints (default: all) ``?query``."""
        chosen = self.members if members is None else members
        netloc = ",".join(m.endpoint for m in chosen)
        qs = urlencode({k: str(v) for k, v in query.items()})
        return f"{scheme}://{netloc}" + (f"?{qs}" if qs else "")

    # -- faults --------------------------------------------------------------------------------
    def leader(self) -> M:
        raise NotImplementedError

    def followers(self) -> list[M]:
        """Every running member but the leader."""
        lead = self.leader()
        return [m for m in self.members if m is not lead and m.running]

    def heal(self, timeout: float | None = None) -> None:
        """Resume paused members, restart dead ones, wait until all are healthy (default
        ``timeout``: :attr:`heal_timeout`)."""
        for m in self.members:
            if m.paused:
                m.resume()
        for m in self.members:
            if not m.running:
                m.start()
        self.wait_healthy(self.heal_timeout if timeout is None else timeout)

    @contextlib.contextmanager
    def healed(self) -> Iterator[Self]:
        """Heal the cluster for a test that faults it; afterwards resume any member left
        paused (never leave a member frozen behind)."""
        self.heal()
        try:
            yield self
        finally:
            for m in self.members:
                if m.paused:
                    m.resume()


# -- fixtures -------------------------------------------------------------------------------------
class _Server(Protocol):
    def start(self) -> Any: ...

    def stop(self) -> None: ...


S = TypeVar("S", bound=_Server)


class SessionServers(Generic[S]):
    """Servers shared by a pytest session by name: started by whichever test asks first,
    stopped at the end of the session. One instance per harness (names are its own)."""

    def __init__(self) -> None:
        self._key = pytest.StashKey[dict[str, S]]()

    def get(self, request: pytest.FixtureRequest, name: str) -> S | None:
        """The session's running server called ``name``, if one was started."""
        return request.config.stash.setdefault(self._key, {}).get(name)

    def keep(self, request: pytest.FixtureRequest, name: str, server: S) -> None:
        """Share ``server`` as ``name`` for the rest of the session; stop it at its end."""
        request.config.stash.setdefault(self._key, {})[name] = server
        request.config.add_cleanup(server.stop)

    def shared(self, request: pytest.FixtureRequest, name: str, factory: Callable[[], S],
               setup: Callable[[S], object] | None = None) -> S:
        """The server called ``name``; the first call creates it with ``factory``, starts it
        and passes it to ``setup`` (it is stopped again if either fails)."""
        server = self.get(request, name)
        if server is None:
            server = factory()
            try:
                server.start()
                if setup is not None:
                    setup(server)
            except BaseException:
                server.stop()
                raise
            self.keep(request, name, server)
        return server
