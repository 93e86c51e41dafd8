"""The host agent: make this host run what the issued state says it should.

One **control thread** owns every task's state and reacts to events, in order:

- the issued state of ``state/hosts/<host>/`` (an :class:`~skedlib.agent.issued.IssuedWatcher`
  delivers listings and watch batches),
- containers that exit (executors call back at once; a periodic status poll is the
  safety net, and the only source for executors that cannot call back),
- health changes (from the :class:`~skedlib.agent.health.HealthProvider`),
- finished start/stop/reject operations, which run on a bounded thread pool so tasks
  start and stop in parallel while the control thread never blocks on them,
- timers (restart backoff, health record refresh, status poll).

A task's life: *admission* (executor installed and enabled, resources left, fixed port
not held by another task, checks valid — else it is rejected at once), *start* (a port is
provided and written back, then each container is started), *running* (checks watched),
and on failure (an essential container exits, or a check stays critical for
``check_failures`` intervals, or a start fails) a restart after an exponential backoff
(0.2 s doubling to 10 s) — until ``max_attempts`` failed attempts (the service's, else
the task definition's, else 10), when the task is *rejected*: stopped, and written back
with ``rejected``, ``reject_reason`` and this host in ``rejected_hosts``. A task that ran
healthy for ``attempt_reset`` seconds starts counting its attempts from zero again.

With ``memory_pressure`` set, the agent reads the host's memory use every couple of
seconds; at or above the threshold it gives up one running task (the lowest
``priority``, then the newest) by rejecting it the same way, so a scheduler moves it to
another host, and then waits ``pressure_cooldown`` seconds before giving up another.

When a task's key goes away it is stopped. On start the agent *adopts* what its
executors still run for tasks still issued to it, and stops what runs for tasks whose
keys vanished while it was down. On a graceful exit tasks keep running (the next agent
adopts them) unless ``stop_tasks_on_exit``.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec

from skedlib.agent.health import (
    DEFAULT_FAILURE_THRESHOLD,
    HealthContext,
    HealthProvider,
)
from skedlib.agent.hostinfo import HostReporter, default_address, measure_total
from skedlib.agent.issued import IssuedWatcher, patch_task
from skedlib.agent.ports import DEFAULT_PORT_RANGE, PortAllocator, port_is_free
from skedlib.agent.pressure import (
    PRESSURE_INTERVAL,
    PressureCandidate,
    choose_task_to_give_up,
    memory_in_use,
    pressure_reason,
)
from skedlib.agent.records import HealthWriter
from skedlib.codecs import decode
from skedlib.errors import BackendError, ConflictError, PluginError, ValidationError
from skedlib.executors.base import (
    ContainerRef,
    ContainerStatus,
    Executor,
    ExecutorContext,
    TaskRejected,
)
from skedlib.keys import DEFAULT_PREFIX, Keyspace
from skedlib.models import CheckStatus, Container, Host, Resources, Service, Task, TaskHealth
from skedlib.plugins import Registry, get_registry
from skedlib.store.base import Backend, KeyValue, ListResult, WatchEvent
from skedlib.validation import DEFAULT_GRACE_PERIOD, DEFAULT_MAX_ATTEMPTS

__all__ = ["Agent", "AgentConfig", "default_state_dir"]

log = logging.getLogger("skedlib.agent")

Phase = Literal["idle", "starting", "running", "stopping", "backoff", "rejecting",
                "rejected", "gone"]


def default_state_dir(host: str) -> Path:
    """``/var/lib/skedlib/agent/<host>`` as root, else ``$XDG_STATE_HOME`` (or
    ``~/.local/state``) ``/skedlib/agent/<host>``."""
    if os.geteuid() == 0:
        return Path("/var/lib/skedlib/agent") / host
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "skedlib" / "agent" / host


class AgentConfig(msgspec.Struct, kw_only=True):
    """How an agent runs; every field has a ``skedlib-agent`` flag."""

    host: str = msgspec.field(default_factory=socket.gethostname)
    address: str = ""
    """Published in the host record; default: the host's outward IP address."""
    cluster: str = ""
    attributes: dict[str, str] = msgspec.field(default_factory=dict)
    executors: list[str] | None = None
    """Executors enabled on this host; None: every installed one that starts. A name
    here that is not installed or whose executor cannot be created (bad options) makes
    :class:`Agent` raise :class:`~skedlib.errors.PluginError`."""
    executor_options: dict[str, dict[str, str]] = msgspec.field(default_factory=dict)
    """Options per executor name (``--executor-opt process.log_max_bytes=1000000``)."""
    health_provider: str = ""
    """The health provider plugin; empty: the provider named like the backend's URL
    scheme when one is installed (``consul://`` → ``consul``), else ``local``."""
    health_options: dict[str, str] = msgspec.field(default_factory=dict)
    state_dir: Path | None = None
    """Default: :func:`default_state_dir`."""
    log_dir: Path | None = None
    """Default: ``<state_dir>/logs``."""
    prefix: str = DEFAULT_PREFIX
    lease_ttl: float = 10.0
    memory: int | None = None
    """MiB offered to tasks; None: the host's total memory."""
    cpu_units: int | None = None
    """CPU units offered (1024 per core); None: every core."""
    disk: int | None = None
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE
    workers: int = 16
    """Starts and stops in flight at once."""
    check_workers: int = 8
    check_failures: int = DEFAULT_FAILURE_THRESHOLD
    """Consecutive critical results of a check that count as a failed attempt."""
    backoff_initial: float = 0.2
    backoff_max: float = 10.0
    attempt_reset: float = 60.0
    """Seconds of healthy running after which failed attempts are forgotten."""
    health_refresh: float = 30.0
    """Health records are rewritten at least this often (never more often than 5 s)."""
    status_poll: float = 5.0
    """Safety-net poll of container status (1 s for executors that cannot call back)."""
    stop_tasks_on_exit: bool = False
    memory_pressure: float = 0.0
    """Percent of the host's memory in use (``psutil.virtual_memory().percent``) at or
    above which the agent gives up one running task (the lowest priority, then the
    newest) so a scheduler moves it elsewhere; 0: never."""
    pressure_cooldown: float = 60.0
    """Seconds after giving up a task under memory pressure before giving up another."""


# -- events for the control thread ----------------------------------------------------------
@dataclass
class _Listed:
    listing: ListResult


@dataclass
class _Changed:
    events: list[WatchEvent]


@dataclass
class _Exited:
    executor: str
    ref: ContainerRef
    status: ContainerStatus


@dataclass
class _HealthChanged:
    task_id: str


@dataclass
class _Done:
    task_id: str
    op: str
    result: Any = None
    error: BaseException | None = None


@dataclass
class _Call:
    fn: Callable[[], None]


@dataclass
class _Shutdown:
    stop_tasks: bool


class _Stale(Exception):
    """The task changed in the store while an operation ran: wait for the new version."""


class _StartFailed(Exception):
    """A start failed (the cause is chained); carries the attempts limit it looked up."""

    def __init__(self, max_attempts: int) -> None:
        super().__init__(max_attempts)
        self.max_attempts = max_attempts


_Event = _Listed | _Changed | _Exited | _HealthChanged | _Done | _Call | _Shutdown

Ref = tuple[str, ContainerRef]
"""A container as the agent tracks it: the executor's name and the container's ref."""


@dataclass(eq=False)
class _Started:
    task: Task
    port: int
    refs: list[Ref]
    max_attempts: int
    description: str
    revision: int
    """The host key's revision after the port was written back (else as read)."""


@dataclass(eq=False)
class _Managed:
    """Everything the control thread knows of one task."""

    task_id: str
    issued: Task | None = None
    raw: bytes = b""
    revision: int = 0
    bad_record: str = ""
    """Why the stored value is not a runnable task (undecodable, wrong id)."""
    stale: bool = False
    """An operation found the stored task changed: wait for the watch to deliver it."""
    op_revision: int = 0
    """``revision`` when the operation in flight was decided."""
    phase: Phase = "idle"
    busy: bool = False
    running: Task | None = None
    port: int = 0
    refs: list[Ref] = field(default_factory=list)
    admitted: bool = False
    demand: Resources = field(default_factory=Resources)
    attempts: int = 0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    message: str = ""
    reject_revision: int = 0
    exit_pending: bool = False
    run_started: float = 0.0
    health: TaskHealth | None = None
    healthy: bool = False
    healthy_since: float = 0.0
    ever_healthy: bool = False
    timer_token: int = 0
    written: tuple[Any, ...] | None = None
    after_stop: Callable[[_Managed], None] | None = None


def _grace(task: Task | None) -> float:
    ns = task.task_definition.grace_period if task is not None else 0
    return (ns or DEFAULT_GRACE_PERIOD) / 1e9


def _spec(task: Task) -> bytes:
    """What makes two issued versions of a task run differently (the port aside)."""
    return msgspec.json.encode((task.cluster.name, task.service, task.instance,
                                task.task_definition))


def _demand(task: Task) -> Resources:
    td = task.task_definition
    return Resources(memory=td.total_memory(), cpu_units=td.total_cpu_units(),
                     disk=td.total_disk())


class _Timers:
    """A heap of callbacks due at monotonic times, run by the control thread."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def add(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), fn))

    def delay(self) -> float | None:
        if not self._heap:
            return None
        return max(0.0, self._heap[0][0] - time.monotonic())

    def due(self) -> list[Callable[[], None]]:
        now = time.monotonic()
        out = []
        while self._heap and self._heap[0][0] <= now:
            out.append(heapq.heappop(self._heap)[2])
        return out


class Agent:
    """Runs the tasks issued to one host. Usable in-process and by ``skedlib-agent``.

    >>> agent = Agent(backend, AgentConfig(host="h1", state_dir=Path("/tmp/h1")))
    >>> agent.start(); agent.wait_ready(10)   # doctest: +SKIP
    >>> agent.stop()                          # doctest: +SKIP
    """

    def __init__(self, backend: Backend, config: AgentConfig, *,
                 registry: Registry | None = None) -> None:
        self.backend = backend
        self.config = config
        self.host = config.host
        self.keys = Keyspace(config.prefix)
        self.keys.host_tasks(self.host)  # validates the host name
        self.registry = registry or get_registry()
        self.state_dir = Path(config.state_dir or default_state_dir(self.host))
        self.log_dir = Path(config.log_dir or self.state_dir / "logs")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.ports = PortAllocator(*config.port_range)
        if not 0 <= config.memory_pressure < 100:
            raise ValueError(f"memory_pressure must be a percentage from 0 (off) to below "
                             f"100, got {config.memory_pressure}")
        if config.pressure_cooldown < 0:
            raise ValueError(f"pressure_cooldown must be >= 0 seconds, got "
                             f"{config.pressure_cooldown}")
        self.total = measure_total(self.state_dir, memory=config.memory,
                                   cpu_units=config.cpu_units, disk=config.disk)

        self._queue: queue.SimpleQueue[_Event] = queue.SimpleQueue()
        self._tasks: dict[str, _Managed] = {}
        self._phases: dict[str, str] = {}
        self._timers = _Timers()
        self._tokens = itertools.count(1)
        self._pool = ThreadPoolExecutor(max_workers=max(1, config.workers),
                                        thread_name_prefix="task-op")
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._adopted = False
        self._polling = False
        self._control: threading.Thread | None = None
        self._warned: dict[str, str] = {}
        self._gave_up_at: float | None = None  # last give-up under memory pressure

        self.health_provider_name = self._health_provider_name()
        """The health provider in use (see :attr:`AgentConfig.health_provider`)."""
        self.health: HealthProvider = self._open_health_provider()

        self.installed = self.registry.names("executors")
        wanted = self.installed if config.executors is None else list(config.executors)
        self.executors: dict[str, Executor] = {}
        self.unavailable: dict[str, str] = {}
        """Installed executors that failed to start, and why (only when the config names
        none: a named executor that cannot start is an error)."""
        self._callbacks: set[str] = set()
        try:
            for name in wanted:
                self._open_executor(name, required=config.executors is not None)
        except BaseException:
            for executor in self.executors.values():
                executor.close()
            self.health.close()
            raise
        self.writer = HealthWriter(backend, self.keys, self.host)
        template = Host(name=self.host, address=config.address or default_address(),
                        cluster=config.cluster, attributes=dict(config.attributes),
                        total=self.total, executors=sorted(self.executors))
        self.reporter = HostReporter(backend, self.keys, template, config.lease_ttl,
                                     self.state_dir, self._reserved_ports)
        self.watcher = IssuedWatcher(backend, self.keys.host_tasks(self.host),
                                     lambda listing: self._queue.put(_Listed(listing)),
                                     lambda events: self._queue.put(_Changed(events)))

    # -- set-up -----------------------------------------------------------------------
    def _open_executor(self, name: str, required: bool) -> None:
        """Create executor ``name``. One that cannot be created raises
        :class:`PluginError` when ``required`` (named in the config), else it is left out
        with a warning, and tasks that need it are rejected with the reason."""
        if name not in self.installed:
            raise PluginError(f"no executor named {name!r} is installed (installed: "
                              f"{', '.join(self.installed) or 'none'})")
        ctx = ExecutorContext(host=self.host, state_dir=self.state_dir / "executors" / name,
                              log_dir=self.log_dir,
                              options=dict(self.config.executor_options.get(name, {})))
        try:
            executor = self.registry.executor_factory(name)(ctx)
            if not isinstance(executor, Executor):
                raise PluginError(f"executor factory {name!r} returned "
                                  f"{type(executor).__name__}, not an Executor")
        except Exception as exc:
            if required:
                raise PluginError(f"executor {name!r} failed to start: {exc}") from exc
            self.unavailable[name] = f"executor {name!r} failed to start: {exc}"
            log.warning("%s", self.unavailable[name])
            return
        self.executors[name] = executor
        if executor.notify_exits(self._exit_callback(name)):
            self._callbacks.add(name)

    def _exit_callback(self, name: str) -> Callable[[ContainerRef, ContainerStatus], None]:
        def exited(ref: ContainerRef, status: ContainerStatus) -> None:
            self._queue.put(_Exited(name, ref, status))
        return exited

    def _health_provider_name(self) -> str:
        """The configured provider, else the backend's own (by URL scheme), else local."""
        if self.config.health_provider:
            return self.config.health_provider
        scheme = urlsplit(self.backend.url).scheme
        if scheme and scheme in self.registry.names("health_providers"):
            return scheme
        return "local"

    def _open_health_provider(self) -> HealthProvider:
        name = self.health_provider_name
        ctx = HealthContext(host=self.host, backend=self.backend, keyspace=self.keys,
                            on_change=lambda task_id: self._queue.put(_HealthChanged(task_id)),
                            failure_threshold=self.config.check_failures,
                            workers=self.config.check_workers,
                            options=dict(self.config.health_options))
        provider = self.registry.health_provider_factory(name)(ctx)
        if not isinstance(provider, HealthProvider):
            raise PluginError(f"health provider factory {name!r} returned "
                              f"{type(provider).__name__}, not a HealthProvider")
        return provider

    def _reserved_ports(self) -> list[int]:
        ports: list[int] = []
        for name, executor in list(self.executors.items()):
            try:
                ports += executor.reserved_ports()
            except Exception as exc:  # e.g. its daemon is down: report the rest
                self._warn_once(f"reserved-ports:{name}",
                                f"executor {name} cannot list its reserved ports: {exc}")
        return ports

    def _warn_once(self, topic: str, message: str) -> None:
        """Log ``message`` unless it is what was last logged for ``topic``."""
        if self._warned.get(topic) != message:
            self._warned[topic] = message
            log.warning("%s", message)

    # -- life cycle -------------------------------------------------------------------
    def start(self) -> None:
        """Start every thread and return; :meth:`wait_ready` waits for adoption."""
        if self._control is not None:
            raise RuntimeError("the agent was already started")
        log.info("agent %s starting: executors %s, health provider %s, state in %s",
                 self.host, ", ".join(sorted(self.executors)) or "none",
                 self.health_provider_name, self.state_dir)
        self._control = threading.Thread(target=self._loop, name="agent-control",
                                         daemon=True)
        self._control.start()
        self.reporter.start()
        self.watcher.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the first listing was read and running containers were adopted."""
        return self._ready.wait(timeout)

    def run(self, stop: threading.Event) -> None:
        """Start, wait for ``stop`` to be set, then :meth:`stop`."""
        self.start()
        stop.wait()
        self.stop()

    def stop(self, *, stop_tasks: bool | None = None, timeout: float = 120.0) -> None:
        """Stop watching and reporting. Tasks keep running (a restarted agent adopts
        them) unless ``stop_tasks`` (default: the config's ``stop_tasks_on_exit``)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        stop_tasks = self.config.stop_tasks_on_exit if stop_tasks is None else stop_tasks
        self.watcher.stop()
        if self._control is not None:
            self._queue.put(_Shutdown(stop_tasks))
            self._control.join(timeout)
        self._pool.shutdown(wait=True)
        self.health.close()
        self.writer.close()
        self.reporter.stop(revoke=stop_tasks)
        for executor in self.executors.values():
            try:
                executor.close()
            except Exception:
                log.exception("closing executor %s failed", executor.name)
        log.info("agent %s stopped%s", self.host,
                 " (tasks stopped)" if stop_tasks else " (tasks left running)")

    def phases(self) -> dict[str, str]:
        """Each known task's phase (idle, starting, running, backoff, rejected …)."""
        return dict(self._phases)

    # -- the control loop -------------------------------------------------------------
    def _loop(self) -> None:
        refresh = max(self.config.health_refresh, 5.0)
        self._timers.add(refresh, self._refresh_health)
        self._timers.add(self._poll_interval(), self._poll_status)
        if self.config.memory_pressure > 0:
            self._timers.add(PRESSURE_INTERVAL, self._check_pressure)
        while True:
            try:
                event: _Event | None = self._queue.get(timeout=self._timers.delay())
            except queue.Empty:
                event = None
            for fn in self._timers.due():
                self._guarded(fn)
            if isinstance(event, _Shutdown):
                self._shutdown(event.stop_tasks)
                return
            if event is not None:
                try:
                    self._handle(event)
                except Exception:  # one bad event must not take the agent down
                    log.exception("agent %s: internal error handling %r", self.host, event)
            self._report_host()

    def _guarded(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:  # one bad event must not take the agent down
            log.exception("agent %s: internal error", self.host)

    def _handle(self, event: _Event) -> None:
        if isinstance(event, _Listed):
            self._on_listed(event.listing)
        elif isinstance(event, _Changed):
            for ev in event.events:
                if ev.kind == "put":
                    self._on_put(KeyValue(ev.key, ev.value, ev.revision, 0))
                else:
                    self._on_delete(ev.key, ev.revision)
        elif isinstance(event, _Exited):
            self._on_exited(event.executor, event.ref, event.status)
        elif isinstance(event, _HealthChanged):
            self._on_health(event.task_id)
        elif isinstance(event, _Done):
            self._on_done(event)
        elif isinstance(event, _Call):
            event.fn()

    def _shutdown(self, stop_tasks: bool) -> None:
        if stop_tasks:
            for m in self._tasks.values():
                if m.refs and not m.busy:
                    self._stop(m, "the agent is shutting down", then=None)
        deadline = time.monotonic() + 60
        while any(m.busy for m in self._tasks.values()) and time.monotonic() < deadline:
            try:
                event = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if isinstance(event, _Done):
                task = self._tasks.get(event.task_id)
                if task is None:
                    continue
                task.busy = False
                if not stop_tasks:
                    continue
                if event.op == "start" and event.error is None:
                    for name, ref in event.result.refs:  # started as we were shutting down
                        self._stop_quietly(name, ref, event.result.task)
                if event.op in ("stop", "start"):
                    task.refs = []
                    self._publish(task, force_state="stopped")

    # -- the issued state -------------------------------------------------------------
    def _task_id_of(self, key: str) -> str | None:
        prefix = self.keys.host_tasks(self.host)
        task_id = key[len(prefix):]
        try:
            self.keys.host_task(self.host, task_id)
        except ValidationError:
            log.warning("ignoring %s: not a task key", key)
            return None
        return task_id

    def _on_listed(self, listing: ListResult) -> None:
        seen: set[str] = set()
        for kv in listing.items:
            task_id = self._task_id_of(kv.key)
            if task_id is not None:
                seen.add(task_id)
                self._on_put(kv, reconcile=self._adopted)
        for task_id, m in list(self._tasks.items()):
            if task_id not in seen and m.raw:
                self._on_delete(self.keys.host_task(self.host, task_id), listing.revision)
        if not self._adopted:
            self._adopt()
            self._adopted = True
            for m in list(self._tasks.values()):
                self._reconcile(m)
            self._ready.set()

    def _on_put(self, kv: KeyValue, reconcile: bool = True) -> None:
        task_id = self._task_id_of(kv.key)
        if task_id is None:
            return
        m = self._tasks.get(task_id)
        if m is None:
            m = self._tasks[task_id] = _Managed(task_id)
        elif m.revision == kv.revision and m.raw == kv.value:
            return  # a relisting: nothing changed
        m.raw, m.revision, m.stale, m.bad_record = kv.value, kv.revision, False, ""
        try:
            task = decode(kv.value, Task, where=kv.key)
            if task.id != task_id:
                raise ValidationError(f"{kv.key}: holds task {task.id!r}, not {task_id!r}")
            m.issued = task
        except ValidationError as exc:
            m.issued = None
            m.bad_record = str(exc)
        if reconcile:
            self._reconcile(m)

    def _on_delete(self, key: str, revision: int) -> None:
        task_id = self._task_id_of(key)
        m = self._tasks.get(task_id) if task_id is not None else None
        if m is None:
            return
        m.issued, m.raw, m.revision, m.bad_record, m.stale = None, b"", revision, "", False
        self._reconcile(m)

    @staticmethod
    def _raw_object(m: _Managed) -> dict[str, Any] | None:
        try:
            obj = json.loads(m.raw)
        except ValueError:
            return None
        return obj if isinstance(obj, dict) else None

    def _wanted(self, m: _Managed) -> bool:
        return (m.issued is not None and not m.issued.rejected
                and m.revision > m.reject_revision)

    # -- reconciling ------------------------------------------------------------------
    def _reconcile(self, m: _Managed) -> None:
        if m.busy or not self._adopted or self._stopped.is_set():
            return
        if not self._wanted(m):
            if m.refs:
                why = "its key was removed" if not m.raw else "it is rejected"
                self._stop(m, why, then=self._reconcile)
                return
            m.timer_token = 0
            self._release(m)
            obj = self._raw_object(m) if m.bad_record else None
            if not m.raw:
                self._forget(m)
            elif m.bad_record and obj is not None and obj.get("rejected") is not True:
                if not m.stale:
                    self._reject(m, m.bad_record)
            elif m.bad_record and obj is None:
                if m.message != m.bad_record:
                    log.error("cannot run %s: %s (not a JSON object, so it cannot be "
                              "marked rejected)", m.task_id, m.bad_record)
                m.message = m.bad_record
                self._set_phase(m, "rejected")
                self._publish(m)
            else:
                self._set_phase(m, "rejected")
                if m.issued is not None and m.issued.reject_reason and not m.message:
                    m.message = m.issued.reject_reason
                self._publish(m)
            return
        if m.phase == "rejecting":
            return  # writing the rejection is being retried
        if m.phase in ("rejected", "gone"):  # issued again
            self._set_phase(m, "idle")
            m.attempts, m.message = 0, ""
        if m.phase == "running":
            assert m.issued is not None and m.running is not None
            moved = m.issued.port and m.issued.port != m.port
            if _spec(m.issued) != _spec(m.running) or moved:
                self._stop(m, "its task changed", then=self._reconcile)
            return
        if m.phase == "idle" and not m.stale:
            self._admit(m)

    def _forget(self, m: _Managed) -> None:
        self.health.unwatch(m.task_id)
        self.writer.delete(m.task_id)
        self._tasks.pop(m.task_id, None)
        self._phases.pop(m.task_id, None)

    def _release(self, m: _Managed) -> None:
        m.admitted = False
        m.demand = Resources()
        self.ports.release(m.task_id)
        m.port = 0

    def _set_phase(self, m: _Managed, phase: Phase) -> None:
        m.phase = phase
        self._phases[m.task_id] = phase

    # -- admission and start ----------------------------------------------------------
    def _allocated(self, exclude: str = "") -> Resources:
        total = Resources()
        for m in self._tasks.values():
            if m.admitted and m.task_id != exclude:
                total = total + m.demand
        return total

    def _admission(self, m: _Managed, task: Task) -> str | None:
        """Why this host can never run ``task`` as issued, or None."""
        td = task.task_definition
        if not td.containers:
            return "the task definition has no containers"
        for c in td.containers:
            if c.type in self.executors:
                continue
            if c.type in self.unavailable:
                return f"container {c.name}: {self.unavailable[c.type]}"
            if c.type not in self.installed:
                return (f"container {c.name}: no executor named {c.type!r} is installed on "
                        f"host {self.host} (installed: {', '.join(self.installed) or 'none'})")
            return (f"container {c.name}: executor {c.type!r} is not enabled on host "
                    f"{self.host} (enabled: {', '.join(sorted(self.executors)) or 'none'})")
        demand = _demand(task)
        free = self.total - self._allocated(exclude=m.task_id)
        for what, unit in (("memory", "MiB of memory"), ("cpu_units", "CPU units"),
                           ("disk", "MiB of disk")):
            need, left = getattr(demand, what), getattr(free, what)
            if need > left and (what != "disk" or self.total.disk):
                return (f"needs {need} {unit} but only {max(left, 0)} of "
                        f"{getattr(self.total, what)} are free on host {self.host}")
        port = task.port or td.port
        if port:
            owner = self.ports.owner(port)
            if owner is not None and owner != m.task_id:
                return f"port {port} is already used by task {owner} on host {self.host}"
        try:
            self.health.validate(task, port or (1 if td.provide_port else 0))
        except TaskRejected as exc:
            return str(exc)
        return None

    def _admit(self, m: _Managed) -> None:
        task = m.issued
        assert task is not None
        reason = self._admission(m, task)
        if reason is not None:
            self._reject(m, reason)
            return
        m.admitted, m.demand = True, _demand(task)
        m.exit_pending = False
        self._set_phase(m, "starting")
        self._publish(m)
        self._submit(m, "start", self._op_start, task, m.revision)

    def _submit(self, m: _Managed, op: str, fn: Callable[..., Any], *args: Any) -> None:
        m.busy = True
        m.op_revision = m.revision
        task_id = m.task_id

        def run() -> None:
            try:
                result = fn(task_id, *args)
            except BaseException as exc:
                self._queue.put(_Done(task_id, op, error=exc))
            else:
                self._queue.put(_Done(task_id, op, result=result))

        self._pool.submit(run)

    def _op_start(self, task_id: str, task: Task, revision: int) -> _Started:
        """Worker: provide the port, then start every container (stops them on failure)."""
        max_attempts = self._max_attempts(task)
        try:
            return self._start_containers(task_id, task, revision, max_attempts)
        except _Stale:
            raise
        except BaseException as exc:
            raise _StartFailed(max_attempts) from exc

    def _start_containers(self, task_id: str, task: Task, revision: int,
                          max_attempts: int) -> _Started:
        td = task.task_definition
        port = task.port or td.port
        if td.provide_port and not task.port:
            port = self.ports.pick(task_id)
            try:
                written = patch_task(self.backend, self.keys, self.host, task_id, revision,
                                     lambda obj: obj.__setitem__("port", port))
            except BaseException:
                self.ports.release(task_id)
                raise
            if not written:
                self.ports.release(task_id)
                raise _Stale()
            task, revision = msgspec.structs.replace(task, port=port), written
        elif port:
            if not port_is_free(port):
                raise TaskRejected(f"port {port} is in use on host {self.host} by a process "
                                   "that is not one of this agent's tasks")
            self.ports.hold(task_id, port)
        env = {"SKED_TASK_ID": task_id, "SKED_HOST": self.host}
        if port:
            env["PROVIDED_PORT"] = str(port)
        refs: list[Ref] = []
        try:
            for c in td.containers:
                executor = self.executors[c.type]
                executor.start(task, c, env)
                refs.append((c.type, ContainerRef(task_id, c.name)))
        except BaseException:
            for name, ref in reversed(refs):
                self._stop_quietly(name, ref, task)
            raise
        return _Started(task, port, refs, max_attempts, self._describe(refs, port), revision)

    def _describe(self, refs: list[Ref], port: int) -> str:
        parts = []
        for name, ref in refs:
            status = self.executors[name].status(ref)
            if status.pid:
                parts.append(f"{name} pid {status.pid}")
            else:
                parts.append(f"{name} {status.state}")
        if port:
            parts.append(f"port {port}")
        return ", ".join(parts)

    def _stop_quietly(self, name: str, ref: ContainerRef, task: Task | None) -> None:
        executor = self.executors.get(name)
        if executor is None:
            return
        try:
            executor.stop(ref, _grace(task))
            executor.cleanup(ref)
        except Exception:
            log.exception("stopping %s/%s failed", ref.task_id, ref.container)

    def _max_attempts(self, task: Task) -> int:
        try:
            kv = self.backend.get(self.keys.service(task.service))
            service = decode(kv.value, Service, where=kv.key) if kv else None
        except (BackendError, ValidationError):
            service = None
        if service is not None and service.max_attempts > 0:
            return service.max_attempts
        return task.task_definition.max_attempts or DEFAULT_MAX_ATTEMPTS

    def _op_stop(self, task_id: str, refs: list[Ref], task: Task | None) -> None:
        """Worker: stop and clean up containers (in reverse start order)."""
        del task_id
        for name, ref in reversed(refs):
            self._stop_quietly(name, ref, task)

    def _op_reject(self, task_id: str, refs: list[Ref], task: Task | None, revision: int,
                   reason: str) -> int:
        """Worker: stop the containers, then write the rejection back (0: key changed)."""
        self._op_stop(task_id, refs, task)
        host = self.host

        def patch(obj: dict[str, Any]) -> None:
            obj["rejected"] = True
            obj["reject_reason"] = reason
            hosts = obj.get("rejected_hosts")
            hosts = list(hosts) if isinstance(hosts, list) else []
            if host not in hosts:
                hosts.append(host)
            obj["rejected_hosts"] = hosts

        return patch_task(self.backend, self.keys, self.host, task_id, revision, patch)

    # -- operations finishing ---------------------------------------------------------
    def _on_done(self, done: _Done) -> None:
        m = self._tasks.get(done.task_id)
        if m is None:
            return
        m.busy = False
        if done.op == "start":
            self._start_done(m, done)
        elif done.op == "stop":
            if done.error is not None:
                log.error("stopping %s failed: %s", m.task_id, done.error)
            m.refs, m.running = [], None
            self._set_phase(m, "idle")
            then, m.after_stop = m.after_stop, None
            (then or self._reconcile)(m)
        elif done.op == "reject":
            self._reject_done(m, done)

    def _start_done(self, m: _Managed, done: _Done) -> None:
        err = done.error
        if err is None:
            started: _Started = done.result
            m.running, m.port, m.refs = started.task, started.port, started.refs
            m.max_attempts = started.max_attempts
            m.revision = max(m.revision, started.revision)
            m.run_started = time.monotonic()
            m.healthy = m.ever_healthy = False
            m.health = None
            self._set_phase(m, "running")
            log.info("started %s (%s)", m.task_id, started.description)
            try:
                self.health.watch(started.task, started.port)
            except TaskRejected as exc:
                self._reject(m, str(exc))
                return
            if not started.task.task_definition.containers or not self._has_checks(m):
                self._set_healthy(m, True)
            self._publish(m)
            if m.exit_pending:
                m.exit_pending = False
                self._check_exits(m)
            self._reconcile(m)
            return
        if isinstance(err, _StartFailed):
            m.max_attempts = err.max_attempts
            err = err.__cause__
        if isinstance(err, _Stale):
            self._release(m)
            self._set_phase(m, "idle")
            self._await_newer(m)
            return
        if isinstance(err, TaskRejected):
            self._release(m)
            self._reject(m, str(err))
            return
        if isinstance(err, BackendError | ConflictError):
            log.warning("could not start %s: %s", m.task_id, err)
        self._set_phase(m, "idle")
        self._fail(m, f"start failed: {err}")

    def _reject_done(self, m: _Managed, done: _Done) -> None:
        m.refs = []
        self._release(m)
        err = done.error
        if err is None and done.result:
            m.reject_revision = done.result
            self._set_phase(m, "rejected")
            log.warning("rejected %s: %s", m.task_id, m.message)
            self._publish(m)
            return
        if err is None:  # the key changed or went away: judge the new version
            self._set_phase(m, "idle")
            self._await_newer(m)
            return
        if isinstance(err, ValidationError):  # not a JSON object: reject locally only
            log.error("cannot mark %s rejected: %s", m.task_id, err)
            self._set_phase(m, "rejected")
            self._publish(m)
            return
        log.warning("could not write the rejection of %s: %s (retrying)", m.task_id, err)
        token = m.timer_token = next(self._tokens)
        reason = m.message

        def retry() -> None:  # phase stays "rejecting" until then
            if m.timer_token == token and not m.busy and m.raw:
                self._reject(m, reason)

        self._timers.add(1.0, retry)

    def _await_newer(self, m: _Managed) -> None:
        """The store had a newer version than the operation used: judge that one."""
        if m.revision == m.op_revision and m.raw:
            m.stale = True  # not delivered yet: the watch will bring it
        else:
            self._reconcile(m)

    # -- failures, restarts and rejection ---------------------------------------------
    def _fail(self, m: _Managed, why: str) -> None:
        """A failed attempt: stop what is left, then back off or reject."""
        ran = time.monotonic() - m.run_started if m.run_started else 0.0
        if m.ever_healthy and ran >= self.config.attempt_reset:
            m.attempts = 0
        m.attempts += 1
        m.message = why
        m.run_started = 0.0
        self.health.unwatch(m.task_id)
        self._set_healthy(m, False)
        log.warning("%s failed (attempt %d of %d): %s", m.task_id, m.attempts,
                    m.max_attempts, why)
        if m.refs:
            self._stop(m, "", then=self._after_failure)
        else:
            self._after_failure(m)

    def _after_failure(self, m: _Managed) -> None:
        if not self._wanted(m):
            self._reconcile(m)
            return
        if m.attempts >= m.max_attempts:
            self._reject(m, f"failed {m.attempts} times on host {self.host}; last: "
                            f"{m.message}")
            return
        delay = min(self.config.backoff_initial * 2 ** (m.attempts - 1),
                    self.config.backoff_max)
        self._set_phase(m, "backoff")
        m.message = (f"{m.message}; restarting in {delay:.1f}s (attempt {m.attempts + 1} of "
                     f"{m.max_attempts})")
        self._publish(m)
        token = m.timer_token = next(self._tokens)

        def expired() -> None:
            if m.timer_token == token and m.phase == "backoff":
                self._set_phase(m, "idle")
                self._reconcile(m)

        self._timers.add(delay, expired)

    def _reject(self, m: _Managed, reason: str) -> None:
        self.health.unwatch(m.task_id)
        m.message = reason
        m.timer_token = 0
        self._set_healthy(m, False)
        self._set_phase(m, "rejecting")
        refs, m.refs = m.refs, []
        self._submit(m, "reject", self._op_reject, refs, m.running or m.issued, m.revision,
                     reason)

    def _stop(self, m: _Managed, why: str, then: Callable[[_Managed], None] | None) -> None:
        """Stop the task's containers, then call ``then`` (default: reconcile)."""
        self.health.unwatch(m.task_id)
        self._set_healthy(m, False)
        if why:
            log.info("stopping %s: %s", m.task_id, why)
        self._set_phase(m, "stopping")
        m.after_stop = then
        self._submit(m, "stop", self._op_stop, list(m.refs), m.running or m.issued)

    # -- exits and health -------------------------------------------------------------
    def _on_exited(self, executor: str, ref: ContainerRef, status: ContainerStatus) -> None:
        m = self._tasks.get(ref.task_id)
        if m is None:
            return
        if m.phase == "starting":
            m.exit_pending = True
            return
        if m.phase != "running" or m.busy or (executor, ref) not in m.refs:
            return
        container = self._container(m, ref.container)
        what = status.message or status.state
        if container is not None and not container.essential:
            log.info("%s: container %s %s (not essential)", m.task_id, ref.container, what)
            return
        self._fail(m, f"container {ref.container} {what}")

    def _container(self, m: _Managed, name: str) -> Container | None:
        task = m.running or m.issued
        if task is None:
            return None
        return next((c for c in task.task_definition.containers if c.name == name), None)

    def _check_exits(self, m: _Managed) -> None:
        for name, ref in m.refs:
            status = self.executors[name].status(ref)
            if status.state in ("exited", "missing"):
                self._on_exited(name, ref, status)
                return

    def _has_checks(self, m: _Managed) -> bool:
        task = m.running or m.issued
        return task is not None and any(c.checks for c in task.task_definition.containers)

    def _on_health(self, task_id: str) -> None:
        m = self._tasks.get(task_id)
        if m is None or m.phase != "running" or m.busy:
            return
        report = self.health.health(task_id)
        if report is None:
            return
        m.health = report
        if report.state == "unhealthy":
            bad = next((c for c in report.checks if c.status == "critical"), None)
            detail = f"check {bad.name} critical: {bad.output}" if bad else "checks critical"
            self._fail(m, f"{detail} ({self.config.check_failures} times in a row)")
            return
        if m.healthy and report.state != "healthy":
            bad = next((c for c in report.checks if c.status == "critical"), None)
            log.warning("%s is unhealthy%s", m.task_id,
                        f": check {bad.name}: {bad.output}" if bad else "")
        elif not m.healthy and report.state == "healthy" and m.ever_healthy:
            log.info("%s is healthy again", m.task_id)
        self._set_healthy(m, report.state == "healthy")
        self._publish(m)

    def _set_healthy(self, m: _Managed, healthy: bool) -> None:
        if healthy != m.healthy:
            m.healthy = healthy
            m.healthy_since = time.time()
            if healthy:
                if not m.ever_healthy:
                    log.info("%s is healthy", m.task_id)
                m.ever_healthy = True
                if m.phase == "running":
                    m.message = ""

    # -- health records ---------------------------------------------------------------
    def _compose(self, m: _Managed, force_state: str | None = None) -> TaskHealth:
        checks: list[CheckStatus] = list(m.health.checks) if m.health else []
        healthy = False
        state: str
        if force_state is not None:
            state = force_state
        elif m.phase == "running":
            if m.healthy:
                state, healthy = "healthy", True
            elif not m.ever_healthy:
                state = "starting"
            else:
                state = "unhealthy"
        else:
            state = {"idle": "pending", "starting": "starting", "stopping": "exited",
                     "backoff": "exited", "rejecting": "rejected",
                     "rejected": "rejected"}.get(m.phase, "stopped")
        return TaskHealth(task_id=m.task_id, host=self.host, state=state,  # type: ignore[arg-type]
                          healthy=healthy, checks=checks, attempts=m.attempts,
                          message=m.message, since=m.healthy_since or time.time(),
                          updated_at=time.time())

    def _publish(self, m: _Managed, force: bool = False, force_state: str | None = None
                 ) -> None:
        record = self._compose(m, force_state)
        fingerprint = (record.state, record.healthy,
                       tuple((c.name, c.status) for c in record.checks), record.attempts,
                       record.message)
        if force or fingerprint != m.written:
            m.written = fingerprint
            self.writer.put(record)

    def _refresh_health(self) -> None:
        for m in self._tasks.values():
            if m.written is not None and m.raw:
                self._publish(m, force=True)
        self._timers.add(max(self.config.health_refresh, 5.0), self._refresh_health)

    # -- the safety-net status poll ---------------------------------------------------
    def _poll_interval(self) -> float:
        if set(self.executors) - self._callbacks:
            return min(self.config.status_poll, 1.0)
        return self.config.status_poll

    def _poll_status(self) -> None:
        self._timers.add(self._poll_interval(), self._poll_status)
        if self._polling:
            return
        running = [(m.task_id, list(m.refs)) for m in self._tasks.values()
                   if m.phase == "running" and not m.busy]
        if not running:
            return
        self._polling = True

        def poll() -> None:
            try:
                for _, refs in running:
                    for name, ref in refs:
                        status = self.executors[name].status(ref)
                        if status.state in ("exited", "missing"):
                            self._queue.put(_Exited(name, ref, status))
            finally:
                self._queue.put(_Call(self._poll_done))

        self._pool.submit(poll)

    def _poll_done(self) -> None:
        self._polling = False

    # -- memory pressure --------------------------------------------------------------
    def _check_pressure(self) -> None:
        """Timer: under memory pressure, give up one running task (then cool down)."""
        self._timers.add(PRESSURE_INTERVAL, self._check_pressure)
        now = time.monotonic()
        cooldown = self.config.pressure_cooldown
        if self._gave_up_at is not None and now - self._gave_up_at < cooldown:
            return
        threshold = self.config.memory_pressure
        in_use = memory_in_use()
        if in_use < threshold:
            self._warned.pop("memory-pressure", None)
            return
        candidates = [PressureCandidate(m.task_id, m.running.task_definition.priority,
                                        m.run_started)
                      for m in self._tasks.values()
                      if m.phase == "running" and not m.busy and m.running is not None]
        chosen = choose_task_to_give_up(candidates)
        if chosen is None:
            self._warn_once("memory-pressure",
                            f"memory pressure: host memory in use >= {threshold:g}%, but "
                            "this agent runs no task it could give up")
            return
        m = self._tasks[chosen.task_id]
        reason = pressure_reason(in_use, threshold)
        log.warning("giving up %s (priority %d, of %d running task(s)): %s; no other task "
                    "is given up for %gs", m.task_id, chosen.priority, len(candidates),
                    reason, cooldown)
        self._gave_up_at = now
        self._reject(m, reason)

    # -- adoption ---------------------------------------------------------------------
    def _adopt(self) -> None:
        """Adopt what the executors still run; stop what is no longer issued here."""
        found: dict[str, list[Ref]] = {}
        for name, executor in self.executors.items():
            try:
                listed = executor.running()
            except Exception as exc:
                log.warning("executor %s cannot list its containers, so none are adopted "
                            "from it: %s", name, exc)
                continue
            for ref in listed:
                found.setdefault(ref.task_id, []).append((name, ref))
        for task_id, refs in sorted(found.items()):
            m = self._tasks.get(task_id)
            if m is not None and self._wanted(m) and self._complete(m, refs):
                self._adopt_one(m, refs)
                continue
            if m is None:
                m = self._tasks[task_id] = _Managed(task_id, phase="gone")
                why = "its key was removed while the agent was down"
            elif not self._wanted(m):
                why = "it is rejected"
            else:
                why = "only some of its containers were still running"
            m.refs = refs
            self._stop(m, why, then=self._reconcile)
        self._forget_stale_health()

    def _complete(self, m: _Managed, refs: list[Ref]) -> bool:
        assert m.issued is not None
        have = {(name, ref.container) for name, ref in refs}
        want = {(c.type, c.name) for c in m.issued.task_definition.containers}
        return have == want

    def _adopt_one(self, m: _Managed, refs: list[Ref]) -> None:
        task = m.issued
        assert task is not None
        port = task.port or task.task_definition.port
        m.running, m.port, m.refs = task, port, refs
        m.admitted, m.demand = True, _demand(task)
        if port:
            self.ports.hold(m.task_id, port)
        m.max_attempts = self._max_attempts(task)
        m.run_started = time.monotonic()
        self._set_phase(m, "running")
        log.info("adopted %s (%s)", m.task_id, self._describe(refs, port))
        try:
            self.health.watch(task, port)
        except TaskRejected as exc:
            self._reject(m, str(exc))
            return
        if not self._has_checks(m):
            self._set_healthy(m, True)
        self._publish(m)

    def _forget_stale_health(self) -> None:
        try:
            listed = self.backend.list(self.keys.health)
        except BackendError as exc:
            log.warning("could not list health records: %s", exc)
            return
        for kv in listed.items:
            task_id = kv.key[len(self.keys.health):]
            if task_id in self._tasks:
                continue
            try:
                record = decode(kv.value, TaskHealth, where=kv.key)
            except ValidationError:
                continue
            if record.host == self.host:
                self.writer.delete(task_id)

    # -- the host record --------------------------------------------------------------
    def _report_host(self) -> None:
        ports = sorted({m.port for m in self._tasks.values() if m.admitted and m.port})
        self.reporter.update(self._allocated(), ports)

