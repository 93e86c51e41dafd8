"""The ``docker`` executor: runs a task's container on the host's Docker engine.

Each container is created with labels ``skedlib.task_id``, ``skedlib.container`` and
``skedlib.host`` and a deterministic name (:func:`~skedlib_docker.spec.container_name`), so
an agent that restarts lists its containers by label (:meth:`DockerEngineExecutor.running`)
and adopts them instead of starting them twice.

Every call to the engine carries a timeout (``docker.timeout``, default 30 s; a stop adds
the grace period; a pull has ``docker.pull_timeout``). Errors of the Docker SDK never
escape: what can never work raises :class:`~skedlib.executors.TaskRejected`, an engine
that does not answer raises :class:`DockerUnavailable`, anything else :class:`DockerError`
(both :class:`~skedlib.errors.SkedError`), each chained to its cause.

Executor options (``skedlib-agent --executor-opt docker.KEY=VALUE``; the executor reads
each key with or without its ``docker.`` prefix):

``docker.url``
    The engine's address (``unix:///var/run/docker.sock``, ``tcp://host:2375``). Default:
    ``$DOCKER_HOST`` (with ``$DOCKER_TLS_VERIFY``/``$DOCKER_CERT_PATH``), else the local
    socket.
``docker.timeout``
    Seconds each API call may take (default 30).
``docker.bind_ip``
    Host address published ports listen on (default ``127.0.0.1``: loopback, where the
    task's checks reach them; give the host's address to serve other hosts). A port
    mapping naming another address is refused unless the host policy lists it
    (``docker.publish_addresses``).
``docker.pull``
    ``true``: pull an image that is not present (default ``false``: such a task is
    rejected).
``docker.pull_timeout``
    Seconds a pull may take (default 600).
``docker.stats``
    ``false``: do not read memory use from the engine in :meth:`~DockerEngineExecutor.status`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import docker  # type: ignore[import-untyped,unused-ignore]
import docker.errors  # type: ignore[import-untyped,unused-ignore]
import docker.utils  # type: ignore[import-untyped,unused-ignore]
import msgspec
import requests
import urllib3

from skedlib import (
    DOCKER_SOCKETS,
    Backoff,
    Container,
    ContainerRef,
    ContainerStatus,
    Executor,
    ExecutorContext,
    ExitCallback,
    SkedError,
    Task,
    TaskRejected,
    ValidationError,
)
from skedlib_docker.spec import (
    LABEL_CONTAINER,
    LABEL_HOST,
    LABEL_PORTS,
    LABEL_SPEC,
    LABEL_TASK,
    RunSpec,
    build_run_spec,
    container_name,
    docker_request,
)

__all__ = [
    "DockerEngineExecutor",
    "DockerError",
    "DockerOptions",
    "DockerUnavailable",
]

log = logging.getLogger(__name__)

#: seconds a stopped container's id is remembered, so its "die" event is not reported
STOPPED_MEMORY = 600.0

#: lines of a container's output kept in the log directory when it is removed
LOG_TAIL_LINES = 2000

#: engine messages that mean a start can never succeed as configured
_PERMANENT_START_ERRORS = (
    "port is already allocated",
    "address already in use",
    "executable file not found",
)


def _permanent_start_error(message: str) -> bool:
    """True when the engine's start error is about the configuration, not the moment."""
    lowered = message.lower()
    if any(m in lowered for m in _PERMANENT_START_ERRORS):
        return True
    # the command itself: "exec: \"/app\": stat /app: no such file or directory"
    return "exec:" in lowered and ("no such file" in lowered or "permission denied" in lowered)


class DockerError(SkedError):
    """The Docker engine refused or failed a request (the cause is chained)."""


class DockerUnavailable(DockerError):
    """The Docker engine could not be reached or did not answer in time."""


def _truthy(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class DockerOptions:
    """The executor's settings, from the agent's ``docker.*`` executor options."""

    url: str | None = None
    timeout: float = 30.0
    bind_ip: str = "127.0.0.1"
    pull: bool = False
    pull_timeout: float = 600.0
    stats: bool = True

    @classmethod
    def from_mapping(cls, options: Mapping[str, str]) -> DockerOptions:
        """Read ``url``, ``timeout``, ``bind_ip``, ``pull``, ``pull_timeout`` and ``stats``,
        each with or without the ``docker.`` prefix (``skedlib-agent --executor-opt
        docker.url=…`` hands the executor ``url``); raises
        :class:`~skedlib.errors.ValidationError` for a bad value."""

        def get(key: str) -> str | None:
            value = options.get(f"docker.{key}")
            return options.get(key) if value is None else value

        def seconds(key: str, default: float) -> float:
            text = get(key)
            if text is None or not text.strip():
                return default
            try:
                value = float(text)
            except ValueError:
                raise ValidationError(f"executor option docker.{key}={text!r}: not a number "
                                      "of seconds") from None
            if not value > 0:
                raise ValidationError(f"executor option docker.{key}={text!r}: must be "
                                      "positive")
            return value

        return cls(
            url=get("url") or None,
            timeout=seconds("timeout", cls.timeout),
            bind_ip=get("bind_ip") or cls.bind_ip,
            pull=_truthy(get("pull") or ""),
            pull_timeout=seconds("pull_timeout", cls.pull_timeout),
            stats=_truthy(get("stats") or "true"),
        )

    def describe(self) -> str:
        """The engine address for messages."""
        return self.url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def _explain(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    if explanation:
        return str(explanation)
    return str(exc) or type(exc).__name__


def _parse_time(text: str | None) -> float:
    if not text or text.startswith("0001-"):
        return 0.0
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


def _memory_in_use(stats: Mapping[str, Any]) -> int:
    """Bytes in use as ``docker stats`` computes them (page cache excluded)."""
    mem = stats.get("memory_stats") or {}
    usage = int(mem.get("usage") or 0)
    detail = mem.get("stats") or {}
    for key in ("total_inactive_file", "inactive_file"):  # cgroup v1, cgroup v2
        if key in detail:
            return max(0, usage - int(detail[key]))
    return max(0, usage - int(detail.get("cache") or 0))


class DockerEngineExecutor(Executor):
    """Starts, stops and observes ``docker`` containers through the Docker SDK.

    Thread-safe: calls for the same container are serialized; the client (created on first
    use, so the agent starts even while the engine is down) is shared.
    """

    name = "docker"

    def __init__(self, context: ExecutorContext, options: DockerOptions | None = None) -> None:
        self.context = context
        self.host = context.host
        self.options = options or DockerOptions.from_mapping(context.options)
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        # exit notifications (docker events)
        self._callbacks: list[ExitCallback] = []
        self._events_lock = threading.Lock()
        self._events_thread: threading.Thread | None = None
        self._events_stream: Any = None
        self._closing = threading.Event()
        self._stopped_ids: dict[str, float] = {}

    # -- plumbing ------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The ``docker.DockerClient`` (created on first use)."""
        with self._client_lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def _connect(self) -> Any:
        opts = self.options
        url = opts.url or os.environ.get("DOCKER_HOST") or ""
        if url.startswith(("unix://", "http+unix://")) or not url:
            path = url.split("unix://", 1)[1] if url else "/var/run/docker.sock"
            if not os.path.exists(path):
                # checked here: the SDK leaks a socket when it connects to a missing path
                raise DockerUnavailable(f"cannot connect to the docker engine at "
                                        f"{opts.describe()}: no socket at {path}")
        try:
            if opts.url:
                return docker.DockerClient(base_url=opts.url, timeout=opts.timeout)
            return docker.DockerClient(timeout=opts.timeout, **docker.utils.kwargs_from_env())
        except docker.errors.DockerException as exc:
            raise DockerUnavailable(f"cannot connect to the docker engine at "
                                    f"{opts.describe()}: {exc}") from exc

    @contextlib.contextmanager
    def _edge(self, what: str) -> Iterator[None]:
        """Translate Docker SDK and transport errors into skedlib errors."""
        try:
            yield
        except SkedError:
            raise
        except docker.errors.APIError as exc:
            raise DockerError(f"{what}: docker engine answered {exc.status_code}: "
                              f"{_explain(exc)}") from exc
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError,
                OSError) as exc:
            raise DockerUnavailable(f"{what}: the docker engine at {self.options.describe()} "
                                    f"did not answer within {self.options.timeout:g}s: "
                                    f"{exc}") from exc
        except docker.errors.DockerException as exc:
            raise DockerError(f"{what}: {exc}") from exc

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        with self._locks_lock:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            yield

    def _name(self, ref: ContainerRef) -> str:
        return container_name(self.host, ref.task_id, ref.container)

    def _inspect(self, name: str) -> dict[str, Any] | None:
        """The container's inspect data, or None when there is none by that name."""
        with self._edge(f"inspecting container {name}"):
            try:
                info: dict[str, Any] = self.client.api.inspect_container(name)
            except docker.errors.NotFound:
                return None
        return info

    def _owned(self, info: Mapping[str, Any], ref: ContainerRef) -> bool:
        labels = (info.get("Config") or {}).get("Labels") or {}
        return (labels.get(LABEL_HOST) == self.host and labels.get(LABEL_TASK) == ref.task_id
                and labels.get(LABEL_CONTAINER) == ref.container)

    def _list(self, *, all_states: bool) -> list[dict[str, Any]]:
        with self._edge("listing containers"):
            found: list[dict[str, Any]] = self.client.api.containers(
                all=all_states, filters={"label": [f"{LABEL_HOST}={self.host}"]})
        return found

    # -- the host policy -------------------------------------------------------------------
    def engine_sockets(self) -> list[str]:
        """The sockets of the engine this executor talks to, and the usual ones: what no
        container may mount unless the policy allows ``docker.docker_socket``."""
        sockets = list(DOCKER_SOCKETS)
        for url in (self.options.url or "", os.environ.get("DOCKER_HOST", "")):
            if "unix://" in url:
                sockets.append(url.split("unix://", 1)[1])
        return sockets

    def _spec(self, task: Task, container: Container, env: Mapping[str, str]) -> RunSpec:
        """The container's run spec, once the host policy allows it (raises
        :class:`~skedlib.PolicyRefused` naming the rule, before anything is created)."""
        policy = self.context.policy
        spec = build_run_spec(task, container, env, host=self.host,
                              bind_ip=self.options.bind_ip)
        user = policy.docker_user(spec.image)
        if user is not None and spec.user is None:
            spec = build_run_spec(task, container, env, host=self.host,
                                  bind_ip=self.options.bind_ip, user=user)
        try:
            policy.check_docker(docker_request(spec, bind_ip=self.options.bind_ip,
                                               sockets=self.engine_sockets()))
        except TaskRejected as exc:
            raise exc.within(f"container {container.name}") from None
        return spec

    def admit(self, task: Task, container: Container) -> None:
        """The blob translates and the host policy allows the image and every option
        (with the task's port, or a stand-in when it is yet to be provided)."""
        definition = task.task_definition
        port = task.port or definition.port or (1 if definition.provide_port else 0)
        env = {"PROVIDED_PORT": str(port)} if port else {}
        probe = task if task.port or not port else msgspec.structs.replace(task, port=port)
        self._spec(probe, container, env)

    # -- start ---------------------------------------------------------------------------
    def start(self, task: Task, container: Container, env: Mapping[str, str]) -> None:
        """Create and start the container (see :func:`~skedlib_docker.spec.build_run_spec`).

        A container of this task that is already running with the same configuration is
        left alone (a retried start); a stale one is replaced. Raises
        :class:`~skedlib.executors.TaskRejected` for a bad blob, an unsupported flag, a
        missing image (unless ``docker.pull``), a taken port or a missing command.
        """
        spec = self._spec(task, container, env)
        try:
            self._start(task, container, spec)
        except TaskRejected as exc:
            raise TaskRejected(f"container {container.name}: {exc}") from exc.__cause__

    def _start(self, task: Task, container: Container, spec: RunSpec) -> None:
        ref = ContainerRef(task.id, container.name)
        with self._locked(spec.name):
            info = self._inspect(spec.name)
            if info is not None:
                if not self._owned(info, ref):
                    raise TaskRejected(f"a docker container named {spec.name} exists that "
                                       f"skedlib did not start for task {task.id} on host "
                                       f"{self.host}; remove it")
                state = info.get("State") or {}
                labels = (info.get("Config") or {}).get("Labels") or {}
                if state.get("Running") and labels.get(LABEL_SPEC) == spec.labels[LABEL_SPEC]:
                    return
                grace = task.task_definition.grace_period / 1e9
                self._stop_and_remove(spec.name, info, grace)
            self._ensure_image(spec.image)
            self._create_and_start(spec)

    def _ensure_image(self, image: str) -> None:
        with self._edge(f"inspecting image {image}"):
            try:
                self.client.api.inspect_image(image)
                return
            except docker.errors.NotFound:
                pass
        if not self.options.pull:
            raise TaskRejected(f"docker image {image!r} is not present on host {self.host} "
                               "(pulling is off: set the executor option docker.pull=true)")
        self._pull(image)

    def _pull(self, image: str) -> None:
        """Pull ``image`` within ``docker.pull_timeout`` (the SDK's pull has no timeout)."""
        outcome: list[BaseException | None] = []

        def pull() -> None:
            try:
                self.client.images.pull(image)
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        worker = threading.Thread(target=pull, name=f"docker-pull-{image}", daemon=True)
        worker.start()
        worker.join(self.options.pull_timeout)
        if not outcome:
            raise DockerError(f"pulling docker image {image!r} took longer than "
                              f"{self.options.pull_timeout:g}s (it may still finish)")
        exc = outcome[0]
        if exc is None:
            return
        if isinstance(exc, docker.errors.APIError) and exc.is_client_error():
            raise TaskRejected(f"docker image {image!r} could not be pulled: "
                               f"{_explain(exc)}") from exc
        with self._edge(f"pulling image {image}"):
            raise exc

    def _create_and_start(self, spec: RunSpec) -> None:
        what = f"creating container {spec.name} from {spec.image}"
        with self._edge(what):
            try:
                self.client.containers.create(spec.image, **spec.create_kwargs())
            except docker.errors.APIError as exc:
                if exc.is_client_error() and exc.status_code != 409:
                    # 404 image/network not found, 400 invalid configuration
                    raise TaskRejected(f"docker refused to create {spec.name}: "
                                       f"{_explain(exc)}") from exc
                raise
        with self._edge(f"starting container {spec.name}"):
            try:
                self.client.api.start(spec.name)
            except docker.errors.APIError as exc:
                message = _explain(exc)
                with contextlib.suppress(SkedError):
                    self._remove(spec.name, save_logs=False)
                if exc.is_client_error() or _permanent_start_error(message):
                    raise TaskRejected(f"docker could not start {spec.name}: "
                                       f"{message}") from exc
                raise

    # -- stop and cleanup ----------------------------------------------------------------
    def stop(self, ref: ContainerRef, grace: float) -> None:
        """Stop the container (SIGTERM, ``grace`` seconds, SIGKILL) and remove it.

        Idempotent: a container that is gone or stopped is not an error. Its last
        :data:`LOG_TAIL_LINES` lines of output are appended to
        ``<log_dir>/<task_id>/<container>.log`` before it is removed.
        """
        name = self._name(ref)
        with self._locked(name):
            info = self._inspect(name)
            if info is None or not self._owned(info, ref):
                return
            self._stop_and_remove(name, info, grace)

    def _stop_and_remove(self, name: str, info: Mapping[str, Any], grace: float) -> None:
        self._remember_stopped(str(info.get("Id") or ""))
        state = info.get("State") or {}
        if state.get("Running") or state.get("Restarting") or state.get("Paused"):
            with self._edge(f"stopping container {name}"):
                try:
                    self.client.api.stop(name, timeout=max(0, math.ceil(grace)))
                except docker.errors.NotFound:
                    return
        self._remove(name, save_logs=True)

    def cleanup(self, ref: ContainerRef) -> None:
        """Remove the container if it is no longer running (keeping its last output)."""
        name = self._name(ref)
        with self._locked(name):
            info = self._inspect(name)
            if info is None or not self._owned(info, ref):
                return
            if (info.get("State") or {}).get("Running"):
                return
            self._remove(name, save_logs=True)

    def _remove(self, name: str, *, save_logs: bool) -> None:
        if save_logs:
            self._save_logs(name)
        with self._edge(f"removing container {name}"):
            try:
                self.client.api.remove_container(name, v=True, force=True)
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as exc:
                if exc.status_code == 409 and "in progress" in _explain(exc):
                    return
                raise

    def _save_logs(self, name: str) -> None:
        """Best effort: append the container's last output to the task's log file."""
        try:
            info = self.client.api.inspect_container(name)
            labels = (info.get("Config") or {}).get("Labels") or {}
            data: bytes = self.client.api.logs(name, stdout=True, stderr=True,
                                               tail=LOG_TAIL_LINES)
        except (docker.errors.DockerException, requests.exceptions.RequestException,
                urllib3.exceptions.HTTPError, OSError):
            return
        if not data:
            return
        task_id = str(labels.get(LABEL_TASK) or name).replace("/", "_")
        container = str(labels.get(LABEL_CONTAINER) or "container").replace("/", "_")
        path = Path(self.context.log_dir) / task_id / f"{container}.log"
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        with contextlib.suppress(OSError):
            # the task's logs are readable by the agent's user only (docs/security.md):
            # directories 0700, the file 0640, given at creation
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
            with os.fdopen(fd, "ab") as out:
                out.write(f"---- docker container {name}, output kept at removal "
                          f"{stamp} ----\n".encode())
                out.write(data if data.endswith(b"\n") else data + b"\n")

    # -- observing -----------------------------------------------------------------------
    def status(self, ref: ContainerRef) -> ContainerStatus:
        """``running`` (with pid, start time and memory), ``exited`` (with the exit code)
        or ``missing``. Raises :class:`DockerUnavailable` when the engine does not answer."""
        name = self._name(ref)
        info = self._inspect(name)
        if info is None or not self._owned(info, ref):
            return ContainerStatus(state="missing", message=f"no docker container {name}")
        state = info.get("State") or {}
        started_at = _parse_time(state.get("StartedAt"))
        if state.get("Running") or state.get("Restarting"):
            pid = int(state.get("Pid") or 0) or None
            message = "paused" if state.get("Paused") else str(state.get("Status") or "")
            return ContainerStatus(state="running", pid=pid, started_at=started_at,
                                   message=message, memory_bytes=self._memory(name))
        status = str(state.get("Status") or "exited")
        if status == "created":
            return ContainerStatus(state="exited", exit_code=None, message="created but "
                                   "never started")
        exit_code = int(state.get("ExitCode") or 0)
        parts = [f"exited with code {exit_code}"]
        if state.get("OOMKilled"):
            parts.append("killed: out of memory")
        if state.get("Error"):
            parts.append(str(state["Error"]))
        return ContainerStatus(state="exited", exit_code=exit_code, started_at=started_at,
                               message="; ".join(parts))

    def _memory(self, name: str) -> int:
        if not self.options.stats:
            return 0
        try:
            stats = self.client.api.stats(name, stream=False, one_shot=True)
        except (docker.errors.DockerException, requests.exceptions.RequestException,
                urllib3.exceptions.HTTPError, OSError):
            return 0  # optional: an old engine (API < 1.41) or a container that just exited
        return _memory_in_use(stats)

    def running(self) -> list[ContainerRef]:
        """Every container labelled for this host, running or not yet removed, so a
        restarted agent adopts the running ones and cleans up the rest."""
        refs: set[ContainerRef] = set()
        for summary in self._list(all_states=True):
            labels = summary.get("Labels") or {}
            task_id, ctr = labels.get(LABEL_TASK), labels.get(LABEL_CONTAINER)
            if not task_id or not ctr:
                continue
            names = [n.lstrip("/") for n in summary.get("Names") or []]
            if container_name(self.host, task_id, ctr) not in names:
                continue  # not named by this executor: status() could not find it
            if str(summary.get("State") or "") in ("removing", "dead"):
                continue
            refs.add(ContainerRef(task_id, ctr))
        return sorted(refs)

    def containment(self) -> str:
        """``docker``: the engine puts each container in a cgroup of its own, with the
        memory and CPU limits of :func:`~skedlib_docker.spec.build_run_spec`."""
        return "docker"

    def reserved_ports(self) -> list[int]:
        """Host ports published by (or, with ``--net=host``, reserved for) running containers."""
        ports: set[int] = set()
        for summary in self._list(all_states=False):
            for binding in summary.get("Ports") or []:
                if binding.get("PublicPort"):
                    ports.add(int(binding["PublicPort"]))
            labels = summary.get("Labels") or {}
            for text in str(labels.get(LABEL_PORTS) or "").split(","):
                if text.strip().isdigit():
                    ports.add(int(text))
        return sorted(ports)

    def exec_check(self, ref: ContainerRef, command: str, timeout: float) -> tuple[int, str]:
        """Run a ``docker`` check's command inside the container (``docker exec … sh -c
        COMMAND``); past ``timeout`` seconds the check is critical (the command is left
        to finish in the container: the engine cannot cancel an exec)."""
        name = self._name(ref)
        result: list[tuple[int, str]] = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                created = self.client.api.exec_create(name, ["sh", "-c", command])
                out = self.client.api.exec_start(created["Id"])
                code = self.client.api.exec_inspect(created["Id"]).get("ExitCode")
                result.append((2 if code is None else int(code),
                               (out or b"").decode(errors="replace")))
            except BaseException as exc:  # reported by the check thread below
                errors.append(exc)

        thread = threading.Thread(target=run, name=f"docker-check-{name}", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            return 2, f"docker check timed out after {timeout:g}s"
        if errors:
            return 2, f"docker exec in {name}: {_explain(errors[0])}"
        return result[0]

    # -- exit notifications ----------------------------------------------------------------
    def notify_exits(self, callback: ExitCallback) -> bool:
        """Call ``callback(ref, status)`` when a container of this host dies on its own.

        A thread follows the engine's ``die`` events for containers labelled
        ``skedlib.host=<host>``; containers ended by :meth:`stop` (or replaced by
        :meth:`start`) are not reported. When the event stream breaks (the engine
        restarted) it is reopened with ``since`` set to the last event seen, so no exit
        is lost. Returns True.
        """
        with self._events_lock:
            self._callbacks.append(callback)
            if self._events_thread is None and not self._closing.is_set():
                self._events_thread = threading.Thread(
                    target=self._watch_events, name=f"docker-events-{self.host}", daemon=True)
                self._events_thread.start()
        return True

    def _remember_stopped(self, container_id: str) -> None:
        if not container_id:
            return
        now = time.monotonic()
        with self._events_lock:
            self._stopped_ids[container_id] = now
            for cid, when in list(self._stopped_ids.items()):
                if now - when > STOPPED_MEMORY:
                    del self._stopped_ids[cid]

    def _watch_events(self) -> None:
        since = time.time()
        seen: dict[tuple[str, int], None] = {}
        backoff = Backoff(initial=0.2, maximum=30.0)
        last_error = ""
        filters = {"type": "container", "event": "die", "label": f"{LABEL_HOST}={self.host}"}
        while not self._closing.is_set():
            try:
                stream = self.client.api.events(since=f"{since:.9f}", filters=filters,
                                                decode=True)
                with self._events_lock:
                    if self._closing.is_set():
                        stream.close()
                        return
                    self._events_stream = stream
                backoff.reset()
                if last_error:
                    log.info("docker events for host %s: following again", self.host)
                    last_error = ""
                for event in stream:
                    when = int(event.get("timeNano") or 0)
                    key = (str(event.get("id") or ""), when)
                    if key in seen:
                        continue  # replayed after a reconnect
                    seen[key] = None
                    if len(seen) > 1000:
                        del seen[next(iter(seen))]
                    if when:
                        since = max(since, when / 1e9)
                    self._on_die(event)
            except Exception as exc:
                if self._closing.is_set():
                    return
                if str(exc) != last_error:  # once per distinct problem, not every retry
                    log.warning("docker events for host %s: %s (retrying; the agent polls "
                                "status meanwhile)", self.host, exc)
                    last_error = str(exc)
            if self._closing.wait(backoff.next()):
                return

    def _on_die(self, event: Mapping[str, Any]) -> None:
        attrs = (event.get("Actor") or {}).get("Attributes") or {}
        task_id, ctr = attrs.get(LABEL_TASK), attrs.get(LABEL_CONTAINER)
        cid = str(event.get("id") or "")
        if not task_id or not ctr or attrs.get(LABEL_HOST) != self.host:
            return
        with self._events_lock:
            if cid in self._stopped_ids:
                return
            callbacks = list(self._callbacks)
        code_text = str(attrs.get("exitCode") or "0")
        code = int(code_text) if code_text.lstrip("-").isdigit() else None
        status = ContainerStatus(state="exited", exit_code=code,
                                 message=f"exited with code {code_text}")
        ref = ContainerRef(str(task_id), str(ctr))
        for callback in callbacks:
            try:
                callback(ref, status)
            except Exception:
                log.exception("exit callback for %s/%s failed", ref.task_id, ref.container)

    def close(self) -> None:
        """Stop watching events and close the client's connections (containers keep
        running)."""
        self._closing.set()
        with self._events_lock:
            stream, self._events_stream = self._events_stream, None
            thread, self._events_thread = self._events_thread, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
        if thread is not None:
            thread.join(5)
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
