"""The host agent: make this host run what the issued state says it should.

One **control thread** owns every task's state and reacts to events, in order:

- the issued state of ``state/hosts/<host>/`` (an :class:`~skedlib.runtime.Informer`
  delivers listings and watch batches),
- containers that exit (executors call back at once; a periodic status poll is the
  safety net, and the only source for executors that cannot call back),
- health changes (from the :class:`~skedlib.HealthProvider`),
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

With ``stop_after_disconnect`` (the task definition's, else ``--stop-after-disconnect``)
a task is *fenced* when the agent could not renew its host lease for that long: stopped
(or kept from starting) so that it never runs beside the replacement a scheduler starts
once the lease expired, and started again when the store answers and the task is still
issued here (:mod:`~skedlib.agent.fencing`).

When a task's key goes away it is stopped. On start the agent *adopts* what its
executors still run for tasks still issued to it, and stops what runs for tasks whose
keys vanished while it was down. On a graceful exit tasks keep running (the next agent
adopts them) unless ``stop_tasks_on_exit``.

The parts live beside this module: :mod:`~skedlib.agent.lifecycle` decides (a pure state
machine per task), :mod:`~skedlib.agent.admission` judges what the host can run,
:mod:`~skedlib.agent.adoption` finds what still runs after a restart,
:mod:`~skedlib.agent.operations` starts, stops and rejects on the worker pool, and this
class wires them to the store, the executors, the health provider and the timers.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec

from skedlib._files import private_dirs
from skedlib.agent import lifecycle as lc
from skedlib.agent.admission import Admission, accounted, demand
from skedlib.agent.adoption import Ref, forget_stale_health, running_containers, verdict
from skedlib.agent.control import (
    Call,
    Changed,
    Done,
    Event,
    Exited,
    HealthChanged,
    Listed,
    Shutdown,
    Timers,
    Tracked,
)
from skedlib.agent.fencing import Fencing, check_host_fence
from skedlib.agent.hostinfo import (
    HostReporter,
    default_address,
    default_state_dir,
    measure_total,
)
from skedlib.agent.logs import LogEndpoint, LogEndpointKeyspace, task_log_source
from skedlib.agent.operations import Started, TaskOperations, start_failure
from skedlib.agent.poll import StatusPoll
from skedlib.agent.ports import DEFAULT_PORT_RANGE, PortAllocator
from skedlib.agent.pressure import PRESSURE_INTERVAL, PressureCandidate, PressureGuard
from skedlib.agent.records import HealthWriter, compose_health
from skedlib.agent.wiring import Executors, health_provider_name, open_health_provider
from skedlib.codecs import encode
from skedlib.errors import BackendError, ValidationError
from skedlib.events import EventLog
from skedlib.executors.base import ContainerRef, ContainerStatus, Executor, TaskRejected
from skedlib.executors.policy import HostPolicy
from skedlib.executors.supervision import reachable_by
from skedlib.health.provider import DEFAULT_FAILURE_THRESHOLD, HealthProvider
from skedlib.keys import DEFAULT_PREFIX, Keyspace
from skedlib.logserver import LogServer, load_token
from skedlib.metrics import METRICS, reject_kind
from skedlib.models import HealthState, Host, Resources, Task
from skedlib.plugins import Registry, get_registry
from skedlib.runtime import Backoff, Informer, Store
from skedlib.store.base import Backend, KeyValue, ListResult

__all__ = ["Agent", "AgentConfig", "default_state_dir"]

MAX_WITHDRAW = 256
#: the agent's own threads that may call the store at once beside its two pools: the
#: control loop, the issued-state watch, the host reporter and its lease, the health
#: writer, and a health provider's threads
AGENT_THREADS = 8
"""At most this many stale copies are stopped at once after a restart."""

log = logging.getLogger("skedlib.agent")


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
    stop_after_disconnect: float = 0.0
    """Seconds: fence (stop) every task of this host whose task definition says nothing
    else when the host lease could not be renewed for this long; 0: never. From half the
    lease TTL to the TTL (docs/operations.md, "Partitions and at-most-once")."""
    host_policy: HostPolicy = msgspec.field(default_factory=HostPolicy)
    """What this host accepts (``--policy FILE``, ``--run-as``): executors, commands,
    images, docker options, users; a task it refuses is rejected naming the rule. The
    default allows every executor, command and image and refuses dangerous docker
    options (docs/security.md)."""
    events: bool = True
    """Record the tasks' events in the store (:mod:`skedlib.events`)."""
    logs_listen: tuple[str, int] | None = ("127.0.0.1", 0)
    """Where the task output server listens (``sked logs``); None: no server. Loopback
    by default: ``sked logs`` then works on this host only."""
    logs_advertise: str = ""
    """The address other hosts reach the output server at (default: the listen address,
    or :attr:`address` when it listens on every interface)."""


def _check(config: AgentConfig) -> None:
    if not 0 <= config.memory_pressure < 100:
        raise ValueError(f"memory_pressure must be a percentage from 0 (off) to below "
                         f"100, got {config.memory_pressure}")
    if config.pressure_cooldown < 0:
        raise ValueError(f"pressure_cooldown must be >= 0 seconds, got "
                         f"{config.pressure_cooldown}")
    check_host_fence(config.stop_after_disconnect, config.lease_ttl)


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
        # 0700 at creation; an existing directory skedlib names itself is narrowed, one
        # the operator chose is left as it is (what is inside is created private)
        private_dirs(self.state_dir, narrow_existing=config.state_dir is None)
        private_dirs(self.log_dir, narrow_existing=config.log_dir is None)
        self.ports = PortAllocator(*config.port_range)
        _check(config)
        self.policy = lc.Policy(self.host, Backoff(initial=config.backoff_initial,
                                                   maximum=config.backoff_max),
                                config.attempt_reset)
        self.total = measure_total(self.state_dir, memory=config.memory,
                                   cpu_units=config.cpu_units, disk=config.disk)

        self._queue: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._tasks: dict[str, Tracked] = {}
        self._phases: dict[str, str] = {}
        self._timers = Timers()
        self._pool = ThreadPoolExecutor(max_workers=max(1, config.workers),
                                        thread_name_prefix="task-op")
        # a store with a connection pool keeps as many connections as may be used at once
        backend.expect_concurrency(max(1, config.workers) + max(1, config.check_workers)
                                   + AGENT_THREADS)
        self._withdraw: ThreadPoolExecutor | None = None
        """While stale copies are withdrawn at adoption: the pool their stops run on."""
        self._fence_pool: ThreadPoolExecutor | None = None
        """Where fencing stops run (made at the first): never behind other operations."""
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._adopted = False
        self._control: threading.Thread | None = None
        self._pressure = PressureGuard(config.memory_pressure, config.pressure_cooldown)

        self.health_provider_name = health_provider_name(config.health_provider, backend,
                                                         self.registry)
        """The health provider in use (see :attr:`AgentConfig.health_provider`)."""
        self.health: HealthProvider = open_health_provider(
            self.registry, self.health_provider_name, host=self.host, backend=backend,
            keys=self.keys, on_change=lambda task_id: self._queue.put(HealthChanged(task_id)),
            failure_threshold=config.check_failures, workers=config.check_workers,
            options=config.health_options,
            exec_check=lambda *args: self._executors.exec_check(*args))

        self._executors = Executors(self.registry, self.host, self.state_dir, self.log_dir,
                                    config.executor_options,
                                    lambda *args: self._queue.put(Exited(*args)),
                                    config.host_policy)
        self.installed = self._executors.installed
        try:
            self._executors.open_all(config.executors)
        except BaseException:
            self.health.close()
            raise
        self.executors: dict[str, Executor] = self._executors.running
        if config.state_dir is None and (config.host_policy.run_as or
                                         config.host_policy.users):
            # the default dir's parents are skedlib's own (…/skedlib/agent/HOST): let
            # task users pass through them to their work directories
            reachable_by(self.state_dir, self.state_dir.parent.parent)
        self.unavailable: dict[str, str] = self._executors.unavailable
        """Installed executors that failed to start, and why (only when the config names
        none: a named executor that cannot start is an error)."""
        self.admission = Admission(self.host, self.total, self.executors, self.unavailable,
                                   self.installed, self.ports, self.health,
                                   config.host_policy)
        self.operations = TaskOperations(backend, self.keys, self.host, self.executors,
                                         self.ports)
        self._poll = StatusPoll(self.executors, self._executors.callbacks, config.status_poll,
                                self._pool.submit, self._queue.put)
        self.writer = HealthWriter(backend, self.keys, self.host)
        template = Host(name=self.host, address=config.address or default_address(),
                        cluster=config.cluster, attributes=dict(config.attributes),
                        total=self.total, executors=sorted(self.executors))
        self.reporter = HostReporter(backend, self.keys, template, config.lease_ttl,
                                     self.state_dir, self._executors.reserved_ports,
                                     self._executors.memory_usage)
        self.fencing = Fencing(self.host, config.stop_after_disconnect,
                               max(config.lease_ttl, backend.min_lease_ttl),
                               self.reporter.renewed_at)

        self.events = EventLog(Store(backend, self.keys), f"agent {self.host}",
                               enabled=config.events)
        """Records the tasks' events: started, healthy, restarted … (:mod:`skedlib.events`)."""
        self.log_server: LogServer | None = None
        """Serves the tasks' output (``sked logs``), when ``logs_listen`` is set."""
        self.watcher = Informer(backend, self.keys.host_tasks(self.host),
                                on_list=lambda listing: self._queue.put(Listed(listing)),
                                on_events=lambda events: self._queue.put(Changed(events)),
                                name="issued-watcher")

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
        METRICS.add_source("skedlib_agent_tasks", self._phase_counts)
        if self.config.logs_listen is not None:
            self._serve_logs(self.config.logs_listen)
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
            self._queue.put(Shutdown(stop_tasks))
            self._control.join(timeout)
        self._pool.shutdown(wait=True)
        if self._fence_pool is not None:
            self._fence_pool.shutdown(wait=True)
        self.health.close()
        self.events.close()
        if self.log_server is not None:
            self.log_server.stop()
        self.writer.close()
        self.reporter.stop(revoke=stop_tasks)
        self._executors.close()
        log.info("agent %s stopped%s", self.host,
                 " (tasks stopped)" if stop_tasks else " (tasks left running)")

    def phases(self) -> dict[str, str]:
        """Each known task's phase (idle, starting, running, backoff, rejected …)."""
        return dict(self._phases)

    def _phase_counts(self) -> dict[tuple[str, ...], float]:
        counts: dict[tuple[str, ...], float] = {}
        if self._stopped.is_set():
            return counts
        for phase in self.phases().values():
            counts[(phase,)] = counts.get((phase,), 0.0) + 1
        return counts

    # -- the control loop -------------------------------------------------------------
    def _loop(self) -> None:
        self._timers.add(max(self.config.health_refresh, 5.0), self._refresh_health)
        self._timers.add(self._poll.interval(), self._poll_status)
        if self.config.memory_pressure > 0:
            self._timers.add(PRESSURE_INTERVAL, self._check_pressure)
        self._timers.add(0.0, self._check_fence)
        while True:
            try:
                event: Event | None = self._queue.get(timeout=self._timers.delay())
            except queue.Empty:
                event = None
            for fn in self._timers.due():
                self._guarded(fn)
            if isinstance(event, Shutdown):
                self._shutdown(event.stop_tasks)
                return
            if event is not None:
                try:
                    self._handle(event)
                except Exception:  # one bad event must not take the agent down
                    log.exception("agent %s: internal error handling %r", self.host, event)
            self.reporter.update(self._allocated(), sorted(
                {m.port for m in self._tasks.values() if m.admitted and m.port}))

    def _guarded(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:  # one bad event must not take the agent down
            log.exception("agent %s: internal error", self.host)

    def _handle(self, event: Event) -> None:
        if isinstance(event, Listed):
            self._on_listed(event.listing)
        elif isinstance(event, Changed):
            for ev in event.events:
                if ev.kind == "put":
                    self._on_put(KeyValue(ev.key, ev.value, ev.revision, 0))
                else:
                    self._on_delete(ev.key, ev.revision)
        elif isinstance(event, Exited):
            self._on_exited(event.executor, event.ref, event.status)
        elif isinstance(event, HealthChanged):
            self._on_health(event.task_id)
        elif isinstance(event, Done):
            self._on_done(event)
        elif isinstance(event, Call):
            event.fn()

    def _shutdown(self, stop_tasks: bool) -> None:
        if stop_tasks:
            for m in self._tasks.values():
                if m.refs and not m.lc.busy:
                    self._step(m, lc.StopNow("the agent is shutting down"))
        deadline = time.monotonic() + 60
        while any(m.lc.busy for m in self._tasks.values()) and time.monotonic() < deadline:
            try:
                event = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if not isinstance(event, Done) or event.task_id not in self._tasks:
                continue
            done = self._tasks[event.task_id]
            done.lc.busy = False  # the control loop ends: no more steps for it
            if not stop_tasks:
                continue
            if event.op == "start" and event.error is None:
                for name, ref in event.result.refs:  # started as we were shutting down
                    self.operations.stop_quietly(name, ref, event.result.task)
            if event.op in ("stop", "start"):
                done.refs = []
                self._publish(done, force_state="stopped")

    # -- the issued state -------------------------------------------------------------
    def _task_id_of(self, key: str) -> str | None:
        task_id = key[len(self.keys.host_tasks(self.host)):]
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
                self._step(m, lc.Reconcile())
            self._ready.set()

    def _on_put(self, kv: KeyValue, reconcile: bool = True) -> None:
        task_id = self._task_id_of(kv.key)
        if task_id is None:
            return
        m = self._tasks.get(task_id)
        if m is None:
            m = self._tasks[task_id] = Tracked(task_id)
        elif m.revision == kv.revision and m.raw == kv.value:
            return  # a relisting: nothing changed
        m.put(kv)
        self._step(m, lc.Issued(reconcile))

    def _on_delete(self, key: str, revision: int) -> None:
        task_id = self._task_id_of(key)
        m = self._tasks.get(task_id) if task_id is not None else None
        if m is None:
            return
        m.issued, m.raw, m.revision, m.bad_record = None, b"", revision, ""
        self._step(m, lc.Issued())  # deleted

    def _view(self, m: Tracked) -> lc.View:
        active = self._adopted and not self._stopped.is_set()
        fenced = active and self.fencing.holds(m.task_id, m.running or m.issued,
                                               time.monotonic())
        return m.view(active=active, fenced=fenced)

    def _serve_logs(self, listen: tuple[str, int]) -> None:
        """Start the task output server and publish where it is, with its token."""
        token = load_token(self.state_dir / "log-token")

        def containers(task_id: str) -> list[str] | None:
            m = self._tasks.get(task_id)
            task = m.issued or m.running if m is not None else None
            return [c.name for c in task.task_definition.containers] if task else None

        source = task_log_source(self.log_dir, containers,
                                 lambda task_id: self._phases.get(task_id) in
                                 ("starting", "running"))
        advertise = self.config.logs_advertise or (
            self.config.address if listen[0] in ("0.0.0.0", "::") and self.config.address
            else listen[0])
        self.log_server = LogServer(f"agent {self.host}", {"tasks": source}, listen,
                                    advertise, token=token)
        self.log_server.start()
        endpoint = LogEndpoint(host=self.host, url=self.log_server.url, token=token)
        try:
            self.backend.put(LogEndpointKeyspace(self.keys).log_endpoint(self.host),
                             encode(endpoint))
        except BackendError as exc:  # the tasks matter more than their output
            log.warning("agent %s: cannot publish the task output server: %s", self.host,
                        exc)
        log.info("agent %s: task output served at %s", self.host, self.log_server.url)

    # -- the lifecycle and its effects ------------------------------------------------
    def _step(self, m: Tracked, event: lc.Input) -> None:
        """Feed ``event`` to the task's lifecycle and carry out the effects, in order."""
        result = lc.step(m.lc, event, self._view(m), self.policy, now=time.monotonic(),
                         wall=time.time())
        was_healthy, m.lc = m.lc.healthy, result.state
        if result.state.healthy != was_healthy and result.state.phase == "running":
            self.events.record("task", m.task_id, "healthy" if result.state.healthy
                               else "unhealthy", result.state.message, host=self.host)
        if self._tasks.get(m.task_id) is m:
            self._phases[m.task_id] = m.lc.phase
        for effect in result.effects:
            self._perform(m, effect)

    def _perform(self, m: Tracked, effect: lc.Effect) -> None:
        if isinstance(effect, lc.Admit):
            assert m.issued is not None
            refusal = self.admission.judge(m.task_id, m.issued,
                                           self._held(exclude=m.task_id))
            self._step(m, lc.Admitted(refusal.reason, refusal.capacity) if refusal
                       else lc.Admitted(None))
        elif isinstance(effect, lc.Start):
            assert m.issued is not None
            if m.lc.attempts:
                METRICS.restarts.inc()
                self.events.record("task", m.task_id, "restarted", m.lc.message,
                                   host=self.host, attempt=m.lc.attempts + 1)
            m.admitted, m.demand = True, demand(m.issued)
            self._submit(m, "start", self.operations.start, m.issued, m.revision,
                         effect.claim)
        elif isinstance(effect, lc.Stop) and effect.fence:
            self._fence_stop(m)
        elif isinstance(effect, lc.Stop):
            if effect.why:
                log.info("stopping %s: %s", m.task_id, effect.why)
            self.events.record("task", m.task_id, "stopped", effect.why or m.lc.message,
                               host=self.host)
            self._submit(m, "stop", self.operations.stop, list(m.refs), m.running or m.issued)
        elif isinstance(effect, lc.Reject):
            METRICS.rejections.labels(reject_kind(effect.reason)).inc()
            if not effect.reason.startswith("memory pressure"):  # that one is "evicted"
                self.events.record("task", m.task_id, "rejected", effect.reason,
                                   host=self.host, capacity=effect.capacity or None)
                self.events.record("host", self.host, "rejected",
                                   f"{m.task_id}: {effect.reason}")
            refs, m.refs = m.refs, []
            free = self.total - self._allocated(exclude=m.task_id) if effect.capacity \
                else None
            self._submit(m, "reject", self.operations.reject, refs, m.running or m.issued,
                         m.revision, effect.reason, free)
        elif isinstance(effect, lc.Timer):
            token = effect.token
            self._timers.add(effect.delay, lambda: self._step_known(m, lc.TimerFired(token)))
        elif isinstance(effect, lc.Publish):
            self._publish(m)
        elif isinstance(effect, lc.Release):
            m.admitted, m.demand, m.port = False, Resources(), 0
            self.ports.release(m.task_id)
        elif isinstance(effect, lc.Forget):
            self.health.unwatch(m.task_id)
            self.writer.delete(m.task_id)
            self._tasks.pop(m.task_id, None)
            self._phases.pop(m.task_id, None)
        elif isinstance(effect, lc.UnwatchHealth):
            self.health.unwatch(m.task_id)
        elif isinstance(effect, lc.Log):
            getattr(log, effect.level)("%s", effect.message)

    def _step_known(self, m: Tracked, event: lc.Input) -> None:
        if self._tasks.get(m.task_id) is m:
            self._step(m, event)

    def _submit(self, m: Tracked, op: str, fn: Callable[..., Any], *args: Any,
                pool: ThreadPoolExecutor | None = None) -> None:
        m.op_revision = m.revision
        task_id = m.task_id

        def run() -> None:
            try:
                result = fn(task_id, *args)
            except BaseException as exc:
                self._queue.put(Done(task_id, op, error=exc))
            else:
                self._queue.put(Done(task_id, op, result=result))

        (pool or self._withdraw or self._pool).submit(run)

    def _allocated(self, exclude: str = "") -> Resources:
        total = Resources()
        for m in self._tasks.values():
            if m.admitted and m.task_id != exclude:
                total = total + m.demand
        return total

    def _held(self, exclude: str = "") -> Resources:
        """What admission counts as taken: each task's demand, or its use when larger."""
        return accounted({m.task_id: m.demand for m in self._tasks.values()
                          if m.admitted and m.task_id != exclude},
                         self._executors.memory_usage())

    # -- operations finishing ---------------------------------------------------------
    def _on_done(self, done: Done) -> None:
        m = self._tasks.get(done.task_id)
        if m is None:
            return
        if done.op == "start":
            self._step(m, self._start_result(m, done))
        elif done.op == "stop":
            if done.error is not None:
                log.error("stopping %s failed: %s", m.task_id, done.error)
            m.refs, m.running = [], None
            self._step(m, lc.StopDone())
        elif done.op == "reject":
            m.refs = []
            err = done.error
            if err is None and done.result:
                m.reject_revision = done.result
                self._step(m, lc.RejectDone("written"))
            elif err is None:
                self._step(m, lc.RejectDone("changed"))
            else:
                self._step(m, lc.RejectDone(
                    "invalid" if isinstance(err, ValidationError) else "error", str(err)))

    def _start_result(self, m: Tracked, done: Done) -> lc.Input:
        err = done.error
        if err is None:
            started: Started = done.result
            m.running, m.port, m.refs = started.task, started.port, started.refs
            m.revision = max(m.revision, started.revision)
            m.health = None
            log.info("started %s (%s)", m.task_id, started.description)
            self.events.record("task", m.task_id, "started", started.description,
                               host=self.host, attempt=m.lc.attempts + 1)
            METRICS.starts.inc()
            rejected = self._watch_health(started.task, started.port)
            exited = None
            if m.lc.exit_pending and not rejected:
                exited = self._first_exit(m)
            return lc.StartOk(started.max_attempts, self._has_checks(started.task),
                              rejected, exited)
        return start_failure(m.task_id, err)

    def _watch_health(self, task: Task, port: int) -> str:
        """Have the health provider watch ``task``; why it refused, or ''."""
        try:
            self.health.watch(task, port)
        except TaskRejected as exc:
            return str(exc)
        return ""

    @staticmethod
    def _has_checks(task: Task) -> bool:
        return any(c.checks for c in task.task_definition.containers)

    # -- exits and health -------------------------------------------------------------
    def _first_exit(self, m: Tracked) -> lc.Exited | None:
        for name, ref in m.refs:
            status = self.executors[name].status(ref)
            if status.state in ("exited", "missing"):
                return m.exited(name, ref, status)
        return None

    def _on_exited(self, executor: str, ref: ContainerRef, status: ContainerStatus) -> None:
        m = self._tasks.get(ref.task_id)
        if m is not None:
            what = status.message or status.state
            if (executor, ref) in m.refs:
                oom = "oom" in what.lower() or "out of memory" in what.lower()
                self.events.record("task", m.task_id, "oom" if oom else "exited",
                                   f"container {ref.container} {what}", host=self.host,
                                   container=ref.container)
            self._step(m, m.exited(executor, ref, status))

    def _on_health(self, task_id: str) -> None:
        m = self._tasks.get(task_id)
        if m is None or m.lc.phase != "running" or m.lc.busy:
            return
        report = self.health.health(task_id)
        if report is None:
            return
        m.health = report
        bad = next((c for c in report.checks if c.status == "critical"), None)
        self._step(m, lc.HealthReport(report.state, bad.name if bad else "",
                                      bad.output if bad else "", self.config.check_failures))

    # -- health records ---------------------------------------------------------------
    def _publish(self, m: Tracked, force: bool = False,
                 force_state: HealthState | None = None) -> None:
        task = m.running or m.issued
        limits = self._executors.containment(
            c.type for c in task.task_definition.containers) if task is not None else ""
        record = compose_health(m.lc, self.host, m.health, force_state, limits)
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

    def _poll_status(self) -> None:
        """Timer: the safety-net poll of the running tasks' containers."""
        self._timers.add(self._poll.interval(), self._poll_status)
        self._poll.poll([list(m.refs) for m in self._tasks.values()
                         if m.lc.phase == "running" and not m.lc.busy])

    # -- memory pressure --------------------------------------------------------------
    def _check_pressure(self) -> None:
        """Timer: under memory pressure, give up one running task (then cool down)."""
        self._timers.add(PRESSURE_INTERVAL, self._check_pressure)
        candidates = [PressureCandidate(m.task_id, m.running.task_definition.priority,
                                        m.lc.run_started)
                      for m in self._tasks.values()
                      if m.lc.phase == "running" and not m.lc.busy and m.running is not None]
        chosen = self._pressure.choose(candidates, time.monotonic())
        if chosen is not None:
            self.events.record("task", chosen[0].task_id, "evicted", chosen[1], host=self.host)
            self.events.record("host", self.host, "evicted", f"{chosen[0].task_id}: {chosen[1]}")
            self._step(self._tasks[chosen[0].task_id], lc.GiveUp(chosen[1]))

    # -- self-fencing -----------------------------------------------------------------
    def _check_fence(self) -> None:
        """Timer: fence the tasks whose ``stop_after_disconnect`` has passed since the
        last renewal of the host lease; lift the fence once a renewal succeeds again."""
        now = time.monotonic()
        if self._adopted and not self._stopped.is_set():
            lifted = self.fencing.lift()
            if lifted is not None:
                log.info("host lease renewed again: %d fenced task(s) may start again "
                         "(each re-claims its key first)", len(lifted))
                for task_id in sorted(lifted):
                    m = self._tasks.get(task_id)
                    if m is not None:
                        self._step(m, lc.Reconcile())
            for m in list(self._tasks.values()):
                if m.task_id not in self.fencing.fenced and self.fencing.holds(
                        m.task_id, m.running or m.issued, now):
                    self._step(m, lc.Reconcile())
        self._timers.add(self.fencing.next_check(
            [m.running or m.issued for m in self._tasks.values()
             if m.task_id not in self.fencing.fenced], time.monotonic()), self._check_fence)

    def _fence_stop(self, m: Tracked) -> None:
        """Stop a fenced task at once, on a pool of its own, its grace period ending by
        the time the lease could expire; one log line, one count."""
        task = m.running or m.issued
        now = time.monotonic()
        kill_by = self.fencing.kill_by(task)
        METRICS.fenced_tasks.inc()
        log.warning("fencing %s: the host lease was not renewed for %.1fs "
                    "(stop_after_disconnect %gs): stopping it%s", m.task_id,
                    self.fencing.silence(now), self.fencing.fence_of(task),
                    "" if kill_by is None else
                    f", killed within {max(0.0, kill_by - now):.1f}s")
        if self._fence_pool is None:
            self._fence_pool = ThreadPoolExecutor(max_workers=MAX_WITHDRAW,
                                                  thread_name_prefix="fence")
        self._submit(m, "stop", self.operations.stop, list(m.refs), task, kill_by,
                     pool=self._fence_pool)

    # -- adoption ---------------------------------------------------------------------
    def _adopt(self) -> None:
        """Adopt what the executors still run; stop what is no longer issued here.

        Stale copies (tasks moved to other hosts while this agent was away) are withdrawn
        all at once, on a pool of their own as wide as their number, before anything is
        started: they run on beside their replacements until stopped, so the double-run
        window must not depend on ``workers`` nor wait behind starts."""
        stale: list[tuple[Tracked, list[Ref], str]] = []
        for task_id, refs in sorted(running_containers(self.executors).items()):
            m = self._tasks.get(task_id)
            issued = m is not None
            if m is None:  # tracked from here on so that it is stopped, then forgotten
                m = self._tasks[task_id] = Tracked(task_id)
                m.lc = lc.TaskState(task_id, phase="gone")
                self._phases[task_id] = "gone"
            why = verdict(issued, m.issued, self._view(m).wanted, refs)
            if why:
                stale.append((m, refs, why))
            else:
                self._adopt_one(m, refs)
        if stale:
            self._withdraw = ThreadPoolExecutor(max_workers=min(len(stale), MAX_WITHDRAW),
                                                thread_name_prefix="withdraw")
            try:
                for m, refs, why in stale:
                    m.refs = refs
                    self._step(m, lc.StopNow(why))
            finally:
                self._withdraw.shutdown(wait=False)  # its threads end with their stops
                self._withdraw = None
        forget_stale_health(self.backend, self.keys, self.host, self._tasks, self.writer)

    def _adopt_one(self, m: Tracked, refs: list[Ref]) -> None:
        task = m.issued
        assert task is not None
        port = task.port or task.task_definition.port
        m.running, m.port, m.refs = task, port, refs
        m.admitted, m.demand = True, demand(task)
        if port:
            self.ports.hold(m.task_id, port)
        self.ports.reserve(m.task_id, task.task_definition.executor_ports())
        self._step(m, lc.Adopted(self.operations.max_attempts(task), self._has_checks(task),
                                 self.operations.describe(refs, port),
                                 self._watch_health(task, port)))
