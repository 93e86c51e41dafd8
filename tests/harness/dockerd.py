"""A private Docker engine for the tests, and a busybox test image built without a registry.

The engine is Debian's ``dockerd`` (package ``docker.io``; ``scripts/install-docker.sh``
installs it) started as root with everything of its own in a throwaway directory under
``/tmp`` (kept short: unix socket paths are limited to 108 bytes):

- ``--data-root``, ``--exec-root``, ``--pidfile``, ``--config-file`` (an empty one, so a
  host ``/etc/docker/daemon.json`` cannot change the test engine) and the API socket
  ``-H unix:///tmp/skd-…/docker.sock``; the engine starts its own containerd below its
  exec root;
- ``--iptables=false --ip-forward=false --ip-masq=false``: the host's firewall and
  forwarding settings are never touched;
- its own bridge (``skd<hex>``, a free ``10.x.y.0/24``) created here and passed as
  ``--bridge``, instead of the shared ``docker0``: two test sessions (two engineers, or CI
  jobs on one machine) each get their own, and no test engine ever creates, reuses or
  deletes ``docker0``. Ports published on 127.0.0.1 reach containers through
  ``docker-proxy``. If the bridge cannot be created, the engine runs with
  ``--bridge=none`` and :attr:`DockerEngine.bridge` is None: only ``--net=host``
  containers can be reached then (tests that publish ports skip). ``SKED_DOCKERD_BRIDGE=none``
  forces that mode.

At teardown every container is removed, dockerd gets SIGTERM (SIGKILL after a
deadline), a containerd it leaves behind is ended by its recorded pid, mounts left under
the directory are unmounted, the bridge is deleted and the directory removed.

No image can be pulled (no network). :func:`build_busybox_image` imports one from a tar
made here: Debian's static busybox (``busybox-static``) as ``/bin/busybox`` plus a
symlink per applet (``sh``, ``httpd``, ``nc``, ``sleep`` …), tagged :data:`TEST_IMAGE`.
busybox ``wget`` crashes inside containers: check HTTP from the host (``urllib``).

Without root, dockerd, or a static busybox the fixture skips with the reason, unless
``$CI`` is set: then it fails, so CI cannot go green by skipping.

Use the fixture from a test module by assignment (as with ``tests.harness.etcd``)::

    from tests.harness import dockerd as harness

    docker_engine = harness.docker_engine

    def test_x(docker_engine: harness.DockerEngine) -> None:
        url = docker_engine.url            # unix:///tmp/skd-…/docker.sock
        image = docker_engine.image        # skedlib-test/busybox:1
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import pytest

from tests.harness.common import (
    ServerProcess,
    ServerUnavailableError,
    first_executable,
    forget_at_exit,
    free_ports,
    skip_or_fail,
    stop_at_exit,
    wait_until,
)

__all__ = [
    "TEST_IMAGE",
    "DockerEngine",
    "DockerdUnavailableError",
    "build_busybox_image",
    "busybox_binary",
    "docker_engine",
    "dockerd_binary",
    "free_port",
    "free_port_pair",
    "require_docker_plugin",
]

REPO = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO / "scripts" / "install-docker.sh"
TEST_IMAGE = "skedlib-test/busybox:1"


class DockerdUnavailableError(ServerUnavailableError):
    """dockerd did not start or did not answer in time (the message has its log)."""


# -- binaries ---------------------------------------------------------------------------------
def dockerd_binary() -> str | None:
    """``$SKED_DOCKERD_BIN``, ``dockerd`` on PATH, or ``/usr/sbin/dockerd``; None if none."""
    return first_executable(os.environ.get("SKED_DOCKERD_BIN"), shutil.which("dockerd"),
                            "/usr/sbin/dockerd")


def _is_static(path: str) -> bool:
    """True for an ELF executable without a program interpreter (statically linked)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64 * 1024)
    except OSError:
        return False
    if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit ELF only
        return False
    order: Literal["little", "big"] = "little" if head[5] == 1 else "big"
    phoff = int.from_bytes(head[32:40], order)
    phentsize = int.from_bytes(head[54:56], order)
    phnum = int.from_bytes(head[56:58], order)
    for i in range(phnum):
        start = phoff + i * phentsize
        if start + 4 > len(head):
            return False
        if int.from_bytes(head[start:start + 4], order) == 3:  # PT_INTERP
            return False
    return True


def busybox_binary() -> str | None:
    """A statically linked busybox (``$SKED_BUSYBOX_BIN`` or Debian's ``/bin/busybox``)."""
    for candidate in (os.environ.get("SKED_BUSYBOX_BIN"), "/bin/busybox", "/usr/bin/busybox"):
        if candidate and os.path.isfile(candidate) and _is_static(candidate):
            return candidate
    return None


def require_docker_plugin() -> None:
    """Skip (fail under ``$CI``) unless ``skedlib-docker`` and the Docker SDK are installed.

    Call it at module level before importing ``skedlib_docker``.
    """
    try:
        import docker  # noqa: F401
        import skedlib_docker  # noqa: F401
    except ImportError as exc:
        skip_or_fail(f"the skedlib-docker plugin is not installed ({exc}): run "
                     "`pip install -e plugins/skedlib-docker`", allow_module_level=True)


# -- small helpers ----------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, below the kernel's ephemeral range."""
    return free_ports(1, error=DockerdUnavailableError)[0]


def free_port_pair() -> tuple[int, int]:
    """Two distinct TCP ports free on 127.0.0.1 now (two calls of :func:`free_port` may
    return the same one)."""
    first, second = free_ports(2, error=DockerdUnavailableError)
    return first, second


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=30)


def _ping(sock_path: Path, timeout: float = 1.0) -> bool:
    """True when the engine answers ``GET /_ping`` with ``OK`` on its unix socket."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(sock_path))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    except OSError:
        return False
    return data.startswith(b"HTTP/1.") and b" 200 " in data.split(b"\r\n", 1)[0] and \
        data.rstrip().endswith(b"OK")


def _used_networks() -> list[ipaddress.IPv4Network]:
    nets: list[ipaddress.IPv4Network] = []
    out = _run("ip", "-o", "-4", "addr", "show", check=False).stdout
    out += _run("ip", "-4", "route", "show", "table", "all", check=False).stdout
    for word in out.split():
        if "/" in word and word[0].isdigit():
            with contextlib.suppress(ValueError):
                nets.append(ipaddress.IPv4Network(word, strict=False))
    return nets


def _create_bridge() -> tuple[str, str] | None:
    """Create bridge ``skd<hex>`` on a free ``10.x.y.0/24``; None when that fails."""
    if shutil.which("ip") is None:
        return None
    used = _used_networks()
    for _ in range(50):
        net = ipaddress.IPv4Network(f"10.{random.randint(200, 250)}.{random.randint(0, 255)}"
                                    ".0/24")
        if any(net.overlaps(u) for u in used):
            continue
        name = f"skd{secrets.token_hex(4)}"
        gateway = f"{net.network_address + 1}/{net.prefixlen}"
        try:
            _run("ip", "link", "add", "name", name, "type", "bridge")
        except (subprocess.SubprocessError, OSError):
            return None
        try:
            _run("ip", "addr", "add", gateway, "dev", name)
            _run("ip", "link", "set", name, "up")
        except (subprocess.SubprocessError, OSError):
            _run("ip", "link", "delete", name, check=False)
            return None
        return name, gateway
    return None


def _mounts_under(root: Path) -> list[str]:
    points: list[str] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            if len(fields) > 4:
                point = fields[4].replace("\\040", " ")
                if point == str(root) or point.startswith(f"{root}/"):
                    points.append(point)
    return sorted(points, key=len, reverse=True)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state = ""
    with contextlib.suppress(OSError, IndexError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


# -- the engine ---------------------------------------------------------------------------------
class DockerEngine(ServerProcess):
    """One private dockerd: :meth:`start`, :attr:`url`, :meth:`client`, :meth:`stop`."""

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or dockerd_binary() or "dockerd"
        self.base_dir = Path(tempfile.mkdtemp(prefix="skd-", dir="/tmp"))
        super().__init__(self.base_dir / "dockerd.log")
        self.socket = self.base_dir / "docker.sock"
        self.exec_root = self.base_dir / "x"
        self.data_root = self.base_dir / "data"
        self.bridge: str | None = None
        """The engine's own bridge; None when it runs with ``--bridge=none``."""
        self.gateway: str | None = None
        self.image: str = TEST_IMAGE
        self._clients: list[Any] = []

    def __repr__(self) -> str:
        return f"<DockerEngine {self.url} bridge={self.bridge}>"

    @property
    def url(self) -> str:
        """``unix:///tmp/skd-…/docker.sock``: the value for the ``docker.url`` option."""
        return f"unix://{self.socket}"

    def start(self, timeout: float = 60.0) -> DockerEngine:
        """Start dockerd and wait until ``/_ping`` answers; raises
        :class:`DockerdUnavailableError` with the log when it does not in ``timeout``."""
        stop_at_exit(self)
        bridge = None if os.environ.get("SKED_DOCKERD_BRIDGE") == "none" else _create_bridge()
        if bridge is not None:
            self.bridge, self.gateway = bridge
        config = self.base_dir / "daemon.json"
        config.write_text("{}\n")
        args = [
            self.binary,
            "--host", self.url,
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "--pidfile", str(self.base_dir / "dockerd.pid"),
            "--config-file", str(config),
            "--iptables=false", "--ip-forward=false", "--ip-masq=false",
            "--bridge", self.bridge or "none",
            "--shutdown-timeout", "3",
        ]
        self.spawn(args, mark=False)

        def answers() -> bool:
            if _ping(self.socket):
                return True
            self.check_running(DockerdUnavailableError, "dockerd")
            return False

        wait_until(answers, timeout, lambda: DockerdUnavailableError(
            f"dockerd did not answer /_ping within {timeout}s:\n{self.log_tail()}"))
        return self

    def client(self, timeout: float = 30.0) -> Any:
        """A ``docker.DockerClient`` for this engine (closed at :meth:`stop`)."""
        import docker

        client = docker.DockerClient(base_url=self.url, timeout=timeout)
        self._clients.append(client)
        return client

    def log_tail(self, lines: int = 25) -> str:
        """The end of dockerd's log, for error messages."""
        return super().log_tail(lines)

    def _containerd_pid(self) -> int | None:
        for path in (self.exec_root / "containerd" / "containerd.pid",):
            with contextlib.suppress(OSError, ValueError):
                return int(path.read_text().strip())
        return None

    def stop(self, timeout: float = 20.0) -> None:
        """Remove every container, stop dockerd (SIGTERM, SIGKILL after ``timeout``) and its
        containerd, unmount, delete the bridge and the directory. Idempotent."""
        if self.proc is not None and self.proc.poll() is None and _ping(self.socket):
            with contextlib.suppress(Exception):
                client = self.client(timeout=20)
                for c in client.containers.list(all=True):
                    with contextlib.suppress(Exception):
                        c.remove(force=True)
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()
        containerd = self._containerd_pid()
        super().stop(timeout)
        self.proc = None
        if containerd is not None and str(self.exec_root) in _cmdline(containerd):
            # dockerd ends the containerd it started; this is for a dockerd that was killed
            for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
                if not _alive(containerd):
                    break
                with contextlib.suppress(ProcessLookupError):
                    os.kill(containerd, sig)
                deadline = time.monotonic() + wait
                while _alive(containerd) and time.monotonic() < deadline:
                    time.sleep(0.1)
        for point in _mounts_under(self.base_dir):
            _run("umount", "-l", point, check=False)
        if self.bridge is not None:
            _run("ip", "link", "delete", self.bridge, check=False)
            self.bridge = None
        shutil.rmtree(self.base_dir, ignore_errors=True)
        forget_at_exit(self)

    def __enter__(self) -> DockerEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the test image -------------------------------------------------------------------------
def _busybox_tar(busybox: str) -> bytes:
    applets = _run(busybox, "--list").stdout.split()
    buf = io.BytesIO()
    now = int(time.time())

    def add(name: str, *, kind: bytes = tarfile.DIRTYPE, mode: int = 0o755,
            data: bytes = b"", link: str = "") -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.mtime = now
        info.linkname = link
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "etc", "root", "www", "dev", "proc", "sys"):
            add(d)
        add("tmp", mode=0o1777)
        add("bin/busybox", kind=tarfile.REGTYPE, data=Path(busybox).read_bytes())
        for applet in sorted(set(applets) - {"busybox"}):
            add(f"bin/{applet}", kind=tarfile.SYMTYPE, mode=0o777, link="busybox")
        add("etc/passwd", kind=tarfile.REGTYPE, mode=0o644,
            data=b"root:x:0:0:root:/root:/bin/sh\n"
                 b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
        add("etc/group", kind=tarfile.REGTYPE, mode=0o644,
            data=b"root:x:0:\nnogroup:x:65534:\n")
    return buf.getvalue()


def build_busybox_image(engine: DockerEngine, tag: str = TEST_IMAGE) -> str:
    """Import the busybox test image into ``engine`` (once) and return its tag."""
    busybox = busybox_binary()
    if busybox is None:
        raise DockerdUnavailableError("no statically linked busybox: install Debian's "
                                      "busybox-static (scripts/install-docker.sh)")
    import docker.errors

    client = engine.client(timeout=120)
    with contextlib.suppress(docker.errors.ImageNotFound):
        client.images.get(tag)
        return tag
    repository, _, version = tag.rpartition(":")
    client.api.import_image_from_data(_busybox_tar(busybox), repository=repository,
                                      tag=version,
                                      changes=['ENV PATH=/bin', 'CMD ["/bin/sh"]'])
    client.images.get(tag)  # raises if the import did not produce it
    return tag


# -- the fixture ----------------------------------------------------------------------------
_SHARED = pytest.StashKey[DockerEngine]()
_FAILED = pytest.StashKey[str]()


def _preflight() -> str:
    if os.geteuid() != 0:
        skip_or_fail("a private dockerd needs root")
    binary = dockerd_binary()
    if binary is None:
        skip_or_fail(f"no dockerd: run {INSTALL_SCRIPT.relative_to(REPO)} (Debian "
                     "docker.io) or set SKED_DOCKERD_BIN")
    if busybox_binary() is None:
        skip_or_fail(f"no statically linked busybox: run {INSTALL_SCRIPT.relative_to(REPO)} "
                     "(Debian busybox-static) or set SKED_BUSYBOX_BIN")
    return binary


@pytest.fixture(scope="session")
def docker_engine(request: pytest.FixtureRequest) -> DockerEngine:
    """A private dockerd with the busybox test image, shared by the whole session."""
    engine = request.config.stash.get(_SHARED, None)
    if engine is not None:
        return engine
    failed = request.config.stash.get(_FAILED, None)
    if failed is not None:  # tried once this session: do not wait for it again per test
        skip_or_fail(failed)
    binary = _preflight()
    require_docker_plugin()
    engine = DockerEngine(binary)
    try:
        engine.start()
        engine.image = build_busybox_image(engine)
    except Exception as exc:
        engine.stop()
        reason = f"the private docker engine did not start: {exc}"
        request.config.stash[_FAILED] = reason
        skip_or_fail(reason)
    request.config.stash[_SHARED] = engine
    request.config.add_cleanup(engine.stop)
    return engine
