"""Translating a ``docker`` container's executor blob into Docker SDK arguments.

Everything here is pure (no Docker engine is involved), so a task that can never run is
refused with :class:`~skedlib.executors.TaskRejected` before anything is created.

The blob is Sked's docker executor (:class:`skedlib_docker.config.DockerConfig`)::

    {"image": "ubuntu", "cmd": ["sked"], "entry": "", "container_port": 3000,
     "ports": ["5000:5000"], "env": ["K=V"], "work_dir": "/", "volumes": [],
     "flags": ["--net=host"]}

``$PROVIDED_PORT`` (or ``${PROVIDED_PORT}``) is replaced by the task's provided port in
``cmd``, ``entry``, ``env``, ``ports``, ``volumes``, ``work_dir`` and ``flags``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from skedlib import (
    DOCKER_SOCKETS,
    PROVIDED_PORT_VAR,
    Container,
    DockerRequest,
    Task,
    TaskRejected,
    convert_blob,
    substitute_port,
)
from skedlib_docker.config import DockerConfig

__all__ = [
    "LABEL_CONTAINER",
    "LABEL_HOST",
    "LABEL_PORTS",
    "LABEL_SPEC",
    "LABEL_TASK",
    "REFUSED_FLAGS",
    "SUPPORTED_FLAGS",
    "RunSpec",
    "build_run_spec",
    "container_name",
    "docker_request",
    "parse_flags",
    "parse_memory",
    "substitute_port",
]

LABEL_TASK = "skedlib.task_id"
"""Label holding the task id of a container started by skedlib."""
LABEL_CONTAINER = "skedlib.container"
"""Label holding the container's name within its task definition."""
LABEL_HOST = "skedlib.host"
"""Label holding the host name of the agent that started the container."""
LABEL_PORTS = "skedlib.ports"
"""Label holding the host ports the container reserves, comma separated."""
LABEL_SPEC = "skedlib.spec"
"""Label holding a digest of the container's configuration (to spot stale containers)."""

_NAME_OK = re.compile(r"[^A-Za-z0-9_.-]")
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_PROTOCOLS = ("tcp", "udp", "sctp")
_NO_PUBLISH_NETWORKS = ("host", "none")


def _safe(text: str) -> str:
    return _NAME_OK.sub("_", text)


def container_name(host: str, task_id: str, container: str) -> str:
    """The deterministic Docker name of ``container`` of ``task_id`` on ``host``.

    ``sked-<task_id>-<container>-<host>``; characters Docker refuses in names become
    ``_``, and then a short digest of the original parts is appended so two different
    triples can never share a name.
    """
    parts = (task_id, container, host)
    name = "sked-" + "-".join(_safe(p) for p in parts)
    if any(_safe(p) != p for p in parts):
        digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:10]
        name = f"{name}-{digest}"
    return name


def parse_memory(text: str, what: str = "memory") -> int:
    """Bytes in a Docker-style size (``512m``, ``1g``, ``1024k``, ``67108864``)."""
    match = _MEMORY.match(text)
    if match is None:
        raise TaskRejected(f"docker {what} {text!r} is not a size (examples: 512m, 1g)")
    value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if value < 1:
        raise TaskRejected(f"docker {what} {text!r} must be positive")
    return int(value)


def _parse_bool(flag: str, value: str | None) -> bool:
    if value is None:
        return True
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise TaskRejected(f"docker flag {flag}={value} is not a boolean (true or false)")


@dataclass
class RunSpec:
    """Everything needed to create one container, already checked."""

    name: str
    image: str
    command: list[str] | None = None
    entrypoint: list[str] | None = None
    environment: list[str] = field(default_factory=list)
    working_dir: str | None = None
    ports: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    """``"8080/tcp"`` → ``[(host_ip, host_port), …]``."""
    volumes: list[str] = field(default_factory=list)
    """Binds, ``host:container[:mode]``."""
    host_ports: list[int] = field(default_factory=list)
    """Host ports this container reserves (published ports; the task port on ``host``)."""
    network_mode: str | None = None
    network_aliases: list[str] = field(default_factory=list)
    """Aliases of the container on ``network_mode`` (a user-defined network)."""
    volume_driver: str | None = None
    pid_mode: str | None = None
    ipc_mode: str | None = None
    devices: list[str] = field(default_factory=list)
    """``HOST[:CONTAINER[:PERMS]]``."""
    mem_limit: int | None = None
    nano_cpus: int | None = None
    privileged: bool = False
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    read_only: bool = False
    user: str | None = None
    hostname: str | None = None
    extra_hosts: dict[str, str] = field(default_factory=dict)
    dns: list[str] = field(default_factory=list)
    shm_size: int | None = None
    init: bool | None = None
    tmpfs: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)

    def create_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``DockerClient.containers.create(image, **kwargs)``."""
        kwargs: dict[str, Any] = {
            "name": self.name,
            "labels": dict(self.labels),
            "environment": list(self.environment),
            "detach": True,
        }
        optional: dict[str, Any] = {
            "command": self.command,
            "entrypoint": self.entrypoint,
            "working_dir": self.working_dir,
            "network_mode": self.network_mode,
            "pid_mode": self.pid_mode,
            "ipc_mode": self.ipc_mode,
            "mem_limit": self.mem_limit,
            "nano_cpus": self.nano_cpus,
            "user": self.user,
            "hostname": self.hostname,
            "shm_size": self.shm_size,
            "init": self.init,
            "volume_driver": self.volume_driver,
        }
        kwargs.update({k: v for k, v in optional.items() if v is not None})
        if self.network_aliases and self.network_mode:
            # aliases need the network named as an endpoint, not as a mode
            network = kwargs.pop("network_mode")
            kwargs["network"] = network
            kwargs["networking_config"] = {network: {"Aliases": list(self.network_aliases)}}
        if self.ports:
            kwargs["ports"] = {k: list(v) for k, v in self.ports.items()}
        if self.volumes:
            kwargs["volumes"] = list(self.volumes)
        if self.devices:
            kwargs["devices"] = list(self.devices)
        if self.privileged:
            kwargs["privileged"] = True
        if self.read_only:
            kwargs["read_only"] = True
        if self.cap_add:
            kwargs["cap_add"] = list(self.cap_add)
        if self.cap_drop:
            kwargs["cap_drop"] = list(self.cap_drop)
        if self.extra_hosts:
            kwargs["extra_hosts"] = dict(self.extra_hosts)
        if self.dns:
            kwargs["dns"] = list(self.dns)
        if self.tmpfs:
            kwargs["tmpfs"] = dict(self.tmpfs)
        return kwargs

    def digest(self) -> str:
        """A digest of the configuration (labels excluded), stored in ``skedlib.spec``."""
        kwargs = self.create_kwargs()
        kwargs.pop("labels")
        kwargs["image"] = self.image
        blob = json.dumps(kwargs, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# -- flags ----------------------------------------------------------------------------------
@dataclass
class _Flags:
    network: str | None = None
    pid: str | None = None
    ipc: str | None = None
    devices: list[str] = field(default_factory=list)
    memory: int | None = None
    nano_cpus: int | None = None
    privileged: bool = False
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    read_only: bool = False
    user: str | None = None
    hostname: str | None = None
    extra_hosts: dict[str, str] = field(default_factory=dict)
    dns: list[str] = field(default_factory=list)
    shm_size: int | None = None
    init: bool | None = None
    tmpfs: dict[str, str] = field(default_factory=dict)
    env: list[str] = field(default_factory=list)
    ports: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    work_dir: str | None = None
    entrypoint: str | None = None


def _set_network(f: _Flags, v: str) -> None:
    f.network = v


def _set_pid(f: _Flags, v: str) -> None:
    f.pid = v


def _set_ipc(f: _Flags, v: str) -> None:
    f.ipc = v


def _add_device(f: _Flags, v: str) -> None:
    if not v.startswith("/"):
        raise TaskRejected(f"docker flag --device={v}: expected HOST_PATH[:CONTAINER_PATH"
                           "[:PERMISSIONS]]")
    f.devices.append(v)


def _set_memory(f: _Flags, v: str) -> None:
    f.memory = parse_memory(v, "--memory")


def _set_cpus(f: _Flags, v: str) -> None:
    try:
        cpus = float(v)
    except ValueError:
        raise TaskRejected(f"docker flag --cpus={v}: not a number of CPUs") from None
    if not cpus > 0:
        raise TaskRejected(f"docker flag --cpus={v}: must be positive")
    f.nano_cpus = int(cpus * 1e9)


def _set_user(f: _Flags, v: str) -> None:
    f.user = v


def _set_hostname(f: _Flags, v: str) -> None:
    f.hostname = v


def _add_host(f: _Flags, v: str) -> None:
    name, sep, ip = v.partition(":")
    if not (sep and name and ip):
        raise TaskRejected(f"docker flag --add-host={v}: expected NAME:IP")
    f.extra_hosts[name] = ip


def _set_shm(f: _Flags, v: str) -> None:
    f.shm_size = parse_memory(v, "--shm-size")


def _add_tmpfs(f: _Flags, v: str) -> None:
    path, _, opts = v.partition(":")
    if not path.startswith("/"):
        raise TaskRejected(f"docker flag --tmpfs={v}: expected an absolute path[:options]")
    f.tmpfs[path] = opts


def _set_workdir(f: _Flags, v: str) -> None:
    f.work_dir = v


def _set_entrypoint(f: _Flags, v: str) -> None:
    f.entrypoint = v


_ValueHandler = Callable[[_Flags, str], None]

#: flags taking a value: canonical name → handler
_VALUE_FLAGS: dict[str, _ValueHandler] = {
    "--network": _set_network,
    "--pid": _set_pid,
    "--ipc": _set_ipc,
    "--device": _add_device,
    "--memory": _set_memory,
    "--cpus": _set_cpus,
    "--cap-add": lambda f, v: f.cap_add.append(v),
    "--cap-drop": lambda f, v: f.cap_drop.append(v),
    "--user": _set_user,
    "--hostname": _set_hostname,
    "--add-host": _add_host,
    "--dns": lambda f, v: f.dns.append(v),
    "--shm-size": _set_shm,
    "--tmpfs": _add_tmpfs,
    "--env": lambda f, v: f.env.append(v),
    "--publish": lambda f, v: f.ports.append(v),
    "--volume": lambda f, v: f.volumes.append(v),
    "--workdir": _set_workdir,
    "--entrypoint": _set_entrypoint,
}

#: boolean flags (``--privileged`` or ``--privileged=false``): canonical name → attribute
_BOOL_FLAGS: dict[str, str] = {
    "--privileged": "privileged",
    "--read-only": "read_only",
    "--init": "init",
    "--detach": "",  # containers are always detached: accepted and ignored
}

_ALIASES: dict[str, str] = {
    "--net": "--network",
    "-m": "--memory",
    "-u": "--user",
    "-h": "--hostname",
    "-e": "--env",
    "-p": "--publish",
    "-v": "--volume",
    "-w": "--workdir",
    "-d": "--detach",
}

#: flags refused with a specific reason
REFUSED_FLAGS: dict[str, str] = {
    "--restart": "the skedlib agent restarts containers itself (a docker restart policy "
                 "would race it)",
    "--rm": "the executor removes containers itself when they are stopped",
    "--name": "the executor names containers (sked-<task>-<container>-<host>) so a "
              "restarted agent can adopt them",
    "-it": "containers run detached, without a terminal",
    "--interactive": "containers run detached, without a terminal",
    "--tty": "containers run detached, without a terminal",
    "-i": "containers run detached, without a terminal",
    "-t": "containers run detached, without a terminal",
}

#: every supported flag (long forms, then their short aliases)
SUPPORTED_FLAGS: tuple[str, ...] = (
    *sorted([*_VALUE_FLAGS, *_BOOL_FLAGS, "--net"]),
    *sorted(k for k in _ALIASES if not k.startswith("--")),
)


def _supported_text() -> str:
    return ", ".join(SUPPORTED_FLAGS)


def parse_flags(flags: list[str]) -> _Flags:
    """Translate ``docker run`` flags; anything not in :data:`SUPPORTED_FLAGS` is refused."""
    out = _Flags()
    i = 0
    while i < len(flags):
        item = flags[i].strip()
        i += 1
        if not item:
            continue
        if not item.startswith("-"):
            raise TaskRejected(f"docker flags: {item!r} is not a flag (flags start with -; "
                               "the command goes in cmd)")
        name, eq, inline = item.partition("=")
        value: str | None = inline if eq else None
        if name in REFUSED_FLAGS:
            raise TaskRejected(f"docker flag {name} is not supported: {REFUSED_FLAGS[name]}")
        canonical = _ALIASES.get(name, name)
        if canonical in _BOOL_FLAGS:
            enabled = _parse_bool(name, value)
            attr = _BOOL_FLAGS[canonical]
            if attr:
                setattr(out, attr, enabled)
            continue
        handler = _VALUE_FLAGS.get(canonical)
        if handler is None:
            raise TaskRejected(f"docker flag {name} is not supported; supported: "
                               f"{_supported_text()}")
        if value is None:
            if i >= len(flags):
                raise TaskRejected(f"docker flag {name} needs a value ({name}=VALUE)")
            value = flags[i]
            i += 1
        handler(out, value)
    return out


# -- ports and volumes ----------------------------------------------------------------------
def _port_number(text: str, what: str, spec: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise TaskRejected(f"docker port mapping {spec!r}: {what} {text!r} is not a port "
                           "(1-65535)")
    return int(text)


def _parse_port_mapping(spec: str, bind_ip: str) -> tuple[str, str, int]:
    """``[ip:]host:container[/proto]`` → (``"container/proto"``, ip, host port)."""
    body, _, proto = spec.partition("/")
    proto = proto or "tcp"
    if proto not in _PROTOCOLS:
        raise TaskRejected(f"docker port mapping {spec!r}: protocol {proto!r} is not one of "
                           f"{', '.join(_PROTOCOLS)}")
    parts = body.split(":")
    if len(parts) == 2:
        ip, host, ctr = bind_ip, parts[0], parts[1]
    elif len(parts) == 3:
        ip, host, ctr = parts[0] or bind_ip, parts[1], parts[2]
    else:
        raise TaskRejected(f"docker port mapping {spec!r}: expected HOST:CONTAINER, "
                           "IP:HOST:CONTAINER, optionally with /udp (a random host port "
                           "cannot be reserved, so the host port is required)")
    host_port = _port_number(host, "host port", spec)
    ctr_port = _port_number(ctr, "container port", spec)
    return f"{ctr_port}/{proto}", ip, host_port


def _parse_volume(spec: str) -> str:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise TaskRejected(f"docker volume {spec!r}: expected HOST:CONTAINER or "
                           "HOST:CONTAINER:MODE (e.g. /srv/data:/data:ro)")
    if not parts[1].startswith("/"):
        raise TaskRejected(f"docker volume {spec!r}: the container path must be absolute")
    return spec


# -- the whole blob -------------------------------------------------------------------------
def _limits(task: Task, container: Container) -> tuple[int, int]:
    """(MiB, cpu units) from the container, else from a single-container task definition
    (the rule the process and bash executors' cgroups follow too)."""
    limits = task.task_definition.container_limits(container)
    return limits.memory, limits.cpu_units


def _provided_port(task: Task, env: Mapping[str, str]) -> int:
    if task.port:
        return task.port
    text = env.get("PROVIDED_PORT", "")
    return int(text) if text.isdigit() else 0


def build_run_spec(task: Task, container: Container, env: Mapping[str, str], *,
                   host: str, bind_ip: str = "127.0.0.1",
                   user: str | None = None) -> RunSpec:
    """Check and translate ``container``'s blob; raises :class:`TaskRejected` when it can
    never run.

    The container's environment is the blob's ``env`` entries, then ``env`` (the agent's
    task variables: ``PROVIDED_PORT``, ``SKED_TASK_ID`` …, which win over the blob's, as
    for the process executor), then ``SKED_CONTAINER``; the agent's own environment is
    not passed in. ``bind_ip`` is the host address published ports listen on; ``user``
    the one the container runs as when its flags name none (the host's run-as user).
    Every message starts with ``container <name>:``. Whether the host allows what it asks
    is :func:`docker_request` for :meth:`skedlib.HostPolicy.check_docker`.
    """
    config = convert_blob(container, DockerConfig)  # "container web: docker executor: …"
    try:
        return _translate(task, container, config, env, host=host, bind_ip=bind_ip,
                          user=user)
    except TaskRejected as exc:
        raise TaskRejected(f"container {container.name}: {exc}") from None


def _translate(task: Task, container: Container, config: DockerConfig,
               env: Mapping[str, str], *, host: str, bind_ip: str,
               user: str | None) -> RunSpec:
    port = _provided_port(task, env)
    port_text = str(port) if port else ""

    def sub(text: str) -> str:
        if not port_text and PROVIDED_PORT_VAR.search(text):
            raise TaskRejected(f"{text!r} uses $PROVIDED_PORT but the task has no port (set "
                               "provide_port or port in the task definition)")
        return substitute_port(text, port_text)

    if not config.image.strip():
        raise TaskRejected("the docker executor needs an image")
    flags = parse_flags([sub(f) for f in config.flags])

    environment: dict[str, str] = {}
    for entry in [*config.env, *flags.env]:
        key, sep, value = sub(entry).partition("=")
        if not sep or not key:
            raise TaskRejected(f"docker env entry {entry!r}: expected KEY=VALUE")
        environment[key] = value
    environment.update(env)
    if port_text:
        environment.setdefault("PROVIDED_PORT", port_text)
    environment["SKED_CONTAINER"] = container.name

    entry = flags.entrypoint if flags.entrypoint is not None else config.entry
    entrypoint: list[str] | None = None
    if entry:
        try:
            entrypoint = shlex.split(sub(entry))
        except ValueError as exc:
            raise TaskRejected(f"docker entry {entry!r}: {exc}") from None

    work_dir = flags.work_dir if flags.work_dir is not None else config.work_dir
    # Sked passed --net before the flags, so a flag naming a network wins
    network = flags.network if flags.network is not None else (sub(config.net) or None)
    if config.net_alias and not network:
        raise TaskRejected(f"docker net_alias {config.net_alias!r} needs a network (net)")
    if isinstance(config.cmd, str):
        try:
            command = shlex.split(sub(config.cmd))
        except ValueError as exc:
            raise TaskRejected(f"docker cmd {config.cmd!r}: {exc}") from None
    else:
        command = [sub(c) for c in config.cmd]
    publishes = network not in _NO_PUBLISH_NETWORKS and not (network or "").startswith(
        "container:")

    ports: dict[str, list[tuple[str, int]]] = {}
    host_ports: list[int] = []
    seen: set[tuple[int, str]] = set()

    def reserve(host_port: int, proto: str, mapping: str) -> None:
        if (host_port, proto) in seen:
            raise TaskRejected(f"docker port mapping {mapping!r}: host port {host_port}/{proto} "
                               "is mapped twice")
        seen.add((host_port, proto))
        if host_port not in host_ports:
            host_ports.append(host_port)

    if config.container_port:
        if not 0 < config.container_port < 65536:
            raise TaskRejected(f"docker container_port {config.container_port} is not a port")
        if port and publishes:
            reserve(port, "tcp", f"{port}:{config.container_port}")
            ports.setdefault(f"{config.container_port}/tcp", []).append((bind_ip, port))
    if port and network == "host" and port not in host_ports:
        host_ports.append(port)  # the container listens on the task's port itself
    for raw in [*config.ports, *flags.ports]:
        mapping = sub(raw)
        key, ip, host_port = _parse_port_mapping(mapping, bind_ip)
        reserve(host_port, key.partition("/")[2], mapping)
        if publishes:
            ports.setdefault(key, []).append((ip, host_port))
    if network == "none":
        host_ports = []

    mem_mib, cpu_units = _limits(task, container)
    mem_limit = flags.memory if flags.memory is not None else (
        mem_mib * 1024 * 1024 if mem_mib > 0 else None)
    nano_cpus = flags.nano_cpus if flags.nano_cpus is not None else (
        cpu_units * 1_000_000_000 // 1024 if cpu_units > 0 else None)

    task_id = task.id
    spec = RunSpec(
        name=container_name(host, task_id, container.name),
        image=config.image.strip(),
        command=command or None,
        entrypoint=entrypoint,
        environment=[f"{k}={v}" for k, v in environment.items()],
        working_dir=sub(work_dir) if work_dir else None,
        ports=ports,
        volumes=[_parse_volume(sub(v)) for v in [*config.volumes, *flags.volumes]],
        host_ports=sorted(host_ports),
        network_mode=network,
        network_aliases=[sub(config.net_alias)] if config.net_alias else [],
        volume_driver=config.volume_driver or None,
        pid_mode=flags.pid,
        ipc_mode=flags.ipc,
        devices=flags.devices,
        mem_limit=mem_limit,
        nano_cpus=nano_cpus,
        privileged=flags.privileged,
        cap_add=flags.cap_add,
        cap_drop=flags.cap_drop,
        read_only=flags.read_only,
        user=flags.user if flags.user is not None else user,
        hostname=flags.hostname,
        extra_hosts=flags.extra_hosts,
        dns=flags.dns,
        shm_size=flags.shm_size,
        init=flags.init,
        tmpfs=flags.tmpfs,
    )
    spec.labels = {
        LABEL_TASK: task_id,
        LABEL_CONTAINER: container.name,
        LABEL_HOST: host,
        LABEL_PORTS: ",".join(str(p) for p in spec.host_ports),
    }
    spec.labels[LABEL_SPEC] = spec.digest()
    return spec


def docker_request(spec: RunSpec, *, bind_ip: str,
                   sockets: list[str] | None = None) -> DockerRequest:
    """What ``spec`` asks of the host, for :meth:`skedlib.HostPolicy.check_docker`:
    its image, privileged mode, bind-mount sources, added capabilities, namespaces,
    devices, user and the addresses its ports are published on. ``sockets``: the
    engine sockets no mount may expose (default :data:`skedlib.DOCKER_SOCKETS`)."""
    return DockerRequest(
        image=spec.image, privileged=spec.privileged,
        binds=[v.split(":")[0] for v in spec.volumes], cap_add=list(spec.cap_add),
        network_mode=spec.network_mode, pid_mode=spec.pid_mode, ipc_mode=spec.ipc_mode,
        volume_driver=spec.volume_driver,
        devices=list(spec.devices), user=spec.user,
        publish_addresses=sorted({ip for bindings in spec.ports.values()
                                  for ip, _ in bindings}),
        bind_ip=bind_ip, sockets=list(sockets if sockets is not None else DOCKER_SOCKETS))
