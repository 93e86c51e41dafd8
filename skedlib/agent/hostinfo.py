"""The host record: what this host offers, holds and uses, published under a lease.

The agent publishes a :class:`~skedlib.models.Host` at ``state/agents/<host>``, bound to a
lease it keeps alive (TTL ``--lease-ttl``, default 10 s). When the agent dies the lease
runs out and the record disappears, which tells schedulers to place the host's tasks
elsewhere. The record holds:

- ``total``: memory and disk in MiB and CPU units (1024 per core) from ``psutil``, unless
  the operator overrides them (``--memory``, ``--cpu-units``, ``--disk``);
- ``allocated``: the sum of the demands of the tasks the agent runs;
- ``observed``: what the host uses now (memory in use, CPU busy share times units, disk used);
- ``used``: what the agent's tasks use now (memory from their cgroups, summed);
- ``ports``: the tasks' ports and the ports executors reserve;
- ``executors``: the executors enabled on this host; ``attributes``, ``address``,
  ``cluster``; ``updated_at``.

It is rewritten as soon as allocations or ports change and at least every TTL/3 with
fresh observed figures. When the lease is lost (the backend was unreachable for longer
than the TTL) a new lease is granted and the record published again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import psutil

from skedlib._files import HeldError, hold_exclusively, private_dirs
from skedlib.codecs import encode
from skedlib.errors import BackendError
from skedlib.keys import Keyspace, validate_name
from skedlib.locks import KeptLease
from skedlib.metrics import METRICS
from skedlib.models import Host, Resources
from skedlib.runtime import Backoff
from skedlib.store.base import Backend

__all__ = ["HostReporter", "default_address", "default_state_dir", "hold_state_dir",
           "measure_observed", "measure_total"]

log = logging.getLogger(__name__)

MIB = 1024 * 1024
CPU_UNITS_PER_CORE = 1024


def default_state_dir(host: str) -> Path:
    """``/var/lib/skedlib/agent/<host>`` as root, else ``$XDG_STATE_HOME`` (or
    ``~/.local/state``) ``/skedlib/agent/<host>``."""
    if os.geteuid() == 0:
        return Path("/var/lib/skedlib/agent") / host
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "skedlib" / "agent" / host


def hold_state_dir(host: str, state_dir: Path | None) -> int:
    """Make and hold the agent's state directory (``state_dir``, else
    :func:`default_state_dir`) for as long as this process lives: ``<dir>/agent.lock``
    (:func:`~skedlib._files.hold_exclusively`). At its start an agent stops the tasks
    recorded in its directory that are not issued to its host, so a second agent on the
    same directory would stop the first one's tasks; the programs that run an agent
    (``skedlib-agent``, ``sked up``) take this before they build it. Returns the lock's
    descriptor; raises OSError saying which process holds it. ``host`` is checked as a
    host name first (the default directory is named after it)."""
    validate_name(host, "host name")
    path = Path(state_dir or default_state_dir(host))
    # 0700 at creation; an existing directory skedlib names itself is narrowed (as the
    # agent does)
    private_dirs(path, narrow_existing=state_dir is None)
    try:
        return hold_exclusively(path / "agent.lock")
    except HeldError as exc:
        raise OSError(f"state directory {path} is in use by another agent (process "
                      f"{exc.pid or 'unknown'}); give each agent its own --state-dir") \
            from None


def measure_total(disk_path: Path, *, memory: int | None = None,
                  cpu_units: int | None = None, disk: int | None = None) -> Resources:
    """The host's capacity; each figure may be overridden."""
    if memory is None:
        memory = psutil.virtual_memory().total // MIB
    if cpu_units is None:
        cpu_units = (psutil.cpu_count() or 1) * CPU_UNITS_PER_CORE
    if disk is None:
        try:
            disk = psutil.disk_usage(str(disk_path)).total // MIB
        except OSError:
            disk = 0
    return Resources(memory=memory, cpu_units=cpu_units, disk=disk)


def measure_observed(disk_path: Path) -> Resources:
    """What the host uses now (CPU: busy share since the previous call, times units)."""
    vm = psutil.virtual_memory()
    cores = psutil.cpu_count() or 1
    busy = psutil.cpu_percent(interval=None) / 100.0
    try:
        disk = psutil.disk_usage(str(disk_path)).used // MIB
    except OSError:
        disk = 0
    return Resources(memory=(vm.total - vm.available) // MIB,
                     cpu_units=int(busy * cores * CPU_UNITS_PER_CORE), disk=disk)


def default_address() -> str:
    """The first non-loopback IPv4 address of an interface that is up, else 127.0.0.1."""
    stats = psutil.net_if_stats()
    for name, addrs in sorted(psutil.net_if_addrs().items()):
        if name in stats and not stats[name].isup:
            continue
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return str(a.address)
    return "127.0.0.1"


class HostReporter:
    """Publishes the host record under a kept lease from a background thread."""

    def __init__(self, backend: Backend, keyspace: Keyspace, template: Host, ttl: float,
                 disk_path: Path, reserved_ports: Callable[[], list[int]],
                 task_usage: Callable[[], dict[str, int]] | None = None) -> None:
        self.backend = backend
        self.key = keyspace.agent(template.name)
        self.template = template
        self.ttl = ttl
        self.disk_path = disk_path
        self.reserved_ports = reserved_ports
        self.task_usage = task_usage
        """Bytes of memory per task id (the executors' cgroups); None: not measured."""
        self._allocated = Resources()
        self._ports: list[int] = []
        self._lease: KeptLease | None = None
        self._holding: KeptLease | None = None
        """The lease the record was last written under."""
        self._started = time.monotonic()
        self._published: Host | None = None
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.published = threading.Event()
        """Set once the record was first written."""
        self._thread = threading.Thread(target=self._run, name="host-reporter", daemon=True)

    def start(self) -> None:
        """Publish now and keep publishing."""
        self._started = time.monotonic()
        measure_observed(self.disk_path)  # primes psutil's CPU counter
        self._thread.start()

    def update(self, allocated: Resources, ports: list[int]) -> None:
        """New allocations or ports: republish soon if they changed."""
        with self._lock:
            if allocated == self._allocated and ports == self._ports:
                return
            self._allocated, self._ports = allocated, sorted(ports)
        self._changed.set()

    def renewed_at(self) -> float:
        """Monotonic time the last successful renewal (or grant) of the lease the record
        is written under was sent; a new lease counts once the record was written on it.
        Before the first: when the reporter started. The store keeps the record at least
        the lease's TTL from then (what self-fencing counts from)."""
        lease = self._holding
        return self._started if lease is None else max(self._started, lease.renewed_at)

    def record(self) -> Host:
        """The record as it would be published now."""
        with self._lock:
            allocated, ports = self._allocated, list(self._ports)
        try:
            ports = sorted(set(ports) | set(self.reserved_ports()))
        except Exception:  # an executor that cannot answer must not stop the reports
            log.exception("could not list the executors' reserved ports")
        used = Resources()
        if self.task_usage is not None:
            used = Resources(memory=sum(self.task_usage().values()) // MIB)
        return msgspec.structs.replace(self.template, allocated=allocated,
                                       observed=measure_observed(self.disk_path),
                                       used=used, ports=ports, updated_at=time.time())

    def _run(self) -> None:
        interval = max(self.ttl / 3, 0.1)
        backoff = Backoff(initial=0.2, maximum=5.0)
        while not self._stop.is_set():
            self._changed.clear()  # a change signalled from now on is published next round
            try:
                self._publish()
                backoff.reset()
                timeout = interval
            except BackendError as exc:
                log.warning("could not publish the host record: %s", exc)
                timeout = backoff.next()
            self._changed.wait(timeout)

    def _publish(self) -> None:
        lease = self._lease
        if lease is None or lease.lost.is_set():
            if lease is not None:
                log.warning("host lease lost: publishing the host record on a new lease")
                METRICS.lease_losses.inc()
            lease = self._lease = KeptLease(self.backend, self.ttl,
                                             on_lost=self._changed.set,
                                             on_renewed=METRICS.lease_renewals.inc)
            self._published = None
        record = self.record()
        self.backend.put(self.key, encode(record), lease=lease.id)
        self._holding = lease
        self._published = record
        self.published.set()

    def stop(self, revoke: bool) -> None:
        """Stop publishing; ``revoke`` ends the lease now (the record disappears), else
        it expires on its own after the TTL (a restarted agent takes it over)."""
        self._stop.set()
        self._changed.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        lease = self._lease
        if lease is None:
            return
        if revoke:
            lease.revoke()
        else:
            lease.abandon()
