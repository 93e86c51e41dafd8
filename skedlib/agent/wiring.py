"""Opening what the agent runs with: its executors and its health provider, by plugin name."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import urlsplit

from skedlib.errors import PluginError
from skedlib.executors.base import ContainerRef, ContainerStatus, Executor, ExecutorContext
from skedlib.executors.policy import HostPolicy
from skedlib.executors.supervision import reachable_by
from skedlib.health.provider import ExecCheck, HealthContext, HealthProvider
from skedlib.keys import Keyspace
from skedlib.plugins import Registry, install_hint
from skedlib.store.base import Backend

__all__ = ["Executors", "health_provider_name", "open_health_provider"]

log = logging.getLogger("skedlib.agent")

ExitCallback = Callable[[str, ContainerRef, ContainerStatus], None]


class Executors:
    """The executors enabled on a host, opened from the registry."""

    def __init__(self, registry: Registry, host: str, state_dir: Path, log_dir: Path,
                 options: dict[str, dict[str, str]], on_exit: ExitCallback,
                 policy: HostPolicy | None = None) -> None:
        self.registry = registry
        self.policy = policy or HostPolicy()
        self.host = host
        self.state_dir = state_dir
        self.log_dir = log_dir
        self.options = options
        self.on_exit = on_exit
        self.installed = registry.names("executors")
        self.running: dict[str, Executor] = {}
        self.unavailable: dict[str, str] = {}
        """Installed executors that failed to start, and why."""
        self.callbacks: set[str] = set()
        """Executors that report exits themselves (the others are polled)."""
        self._warned: dict[str, str] = {}
        self._usage: tuple[float, dict[str, int]] = (0.0, {})
        self._usage_lock = threading.Lock()

    def open_all(self, names: list[str] | None) -> None:
        """Open ``names`` (each required), or every installed executor that starts (None),
        leaving out those the host policy's ``executors`` does not allow. On an error the
        ones opened are closed again."""
        try:
            for name in self.installed if names is None else names:
                if self.policy.executors is not None and name not in self.policy.executors:
                    log.info("executor %s is not enabled: the host policy (%s) does not "
                             "allow it", name, self.policy.source)
                    continue
                self.open(name, required=names is not None)
        except BaseException:
            self.close()
            raise

    def open(self, name: str, required: bool) -> None:
        """Create executor ``name``. One that cannot be created raises
        :class:`PluginError` when ``required`` (named in the config), else it is left out
        with a warning, and tasks that need it are rejected with the reason."""
        if name not in self.installed:
            hint = install_hint("executors", name)
            raise PluginError(f"no executor named {name!r} is installed (installed: "
                              f"{', '.join(self.installed) or 'none'})"
                              + (f"; {hint}" if hint else ""))
        ctx = ExecutorContext(host=self.host, state_dir=self.state_dir / "executors" / name,
                              log_dir=self.log_dir, options=dict(self.options.get(name, {})),
                              policy=self.policy)
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
        self.running[name] = executor
        if self.policy.run_as or self.policy.users:
            # tasks running as other users reach their work directories below the
            # executor's state dir by path: let them pass (0711), not list
            reachable_by(ctx.state_dir / "x", self.state_dir)
        if executor.notify_exits(self._exit_callback(name)):
            self.callbacks.add(name)

    def _exit_callback(self, name: str) -> Callable[[ContainerRef, ContainerStatus], None]:
        def exited(ref: ContainerRef, status: ContainerStatus) -> None:
            self.on_exit(name, ref, status)
        return exited

    def reserved_ports(self) -> list[int]:
        """The ports the executors hold for themselves (one that cannot answer, e.g. its
        daemon is down, is left out with a warning logged once)."""
        ports: list[int] = []
        for name, executor in list(self.running.items()):
            try:
                ports += executor.reserved_ports()
            except Exception as exc:
                message = f"executor {name} cannot list its reserved ports: {exc}"
                if self._warned.get(name) != message:
                    self._warned[name] = message
                    log.warning("%s", message)
        return ports

    def exec_check(self, executor: str, ref: ContainerRef, command: str,
                   timeout: float) -> tuple[int, str]:
        """Run a ``docker`` check's command inside a container of executor ``executor``
        (see :meth:`Executor.exec_check`)."""
        running = self.running.get(executor)
        if running is None:
            raise NotImplementedError(f"executor {executor!r} is not running here")
        return running.exec_check(ref, command, timeout)

    def memory_usage(self, max_age: float = 1.0) -> dict[str, int]:
        """Bytes of memory each task uses now (by task id, summed over executors), as the
        executors measure it (their cgroups); a reading up to ``max_age`` seconds old is
        reused, so admitting many tasks at once does not read every cgroup each time."""
        with self._usage_lock:
            at, usage = self._usage
            if time.monotonic() - at < max_age:
                return usage
            usage = {}
            for name, executor in list(self.running.items()):
                try:
                    measured = executor.memory_usage()
                except Exception as exc:
                    message = f"executor {name} cannot measure its memory use: {exc}"
                    if self._warned.get(name) != message:
                        self._warned[name] = message
                        log.warning("%s", message)
                    continue
                for task_id, used in measured.items():
                    usage[task_id] = usage.get(task_id, 0) + used
            self._usage = (time.monotonic(), usage)
            return usage

    def containment(self, types: Iterable[str]) -> str:
        """How the executors of ``types`` contain their containers (``cgroup1``, or
        ``process: cgroup1, docker: docker`` when they differ); ``""`` when none says."""
        kinds: dict[str, str] = {}
        for name in sorted(set(types)):
            executor = self.running.get(name)
            kind = executor.containment() if executor is not None else ""
            if kind:
                kinds[name] = kind
        if len(set(kinds.values())) <= 1:
            return next(iter(kinds.values()), "")
        return ", ".join(f"{name}: {kind}" for name, kind in kinds.items())

    def close(self) -> None:
        """Close every executor (a failure is logged)."""
        for executor in self.running.values():
            try:
                executor.close()
            except Exception:
                log.exception("closing executor %s failed", executor.name)


def health_provider_name(configured: str, backend: Backend, registry: Registry) -> str:
    """The configured provider, else the backend's own (by URL scheme), else local."""
    if configured:
        return configured
    scheme = urlsplit(backend.url).scheme
    if scheme and scheme in registry.names("health_providers"):
        return scheme
    return "local"


def open_health_provider(registry: Registry, name: str, *, host: str, backend: Backend,
                         keys: Keyspace, on_change: Callable[[str], None],
                         failure_threshold: int, workers: int,
                         options: dict[str, str],
                         exec_check: ExecCheck | None = None) -> HealthProvider:
    """Create health provider ``name``; a factory returning something else is an error."""
    ctx = HealthContext(host=host, backend=backend, keyspace=keys, on_change=on_change,
                        failure_threshold=failure_threshold, workers=workers,
                        options=dict(options), exec_check=exec_check)
    provider = registry.health_provider_factory(name)(ctx)
    if not isinstance(provider, HealthProvider):
        raise PluginError(f"health provider factory {name!r} returned "
                          f"{type(provider).__name__}, not a HealthProvider")
    return provider
