"""The host policy: what this host accepts to run, whoever wrote the task.

The store is the root of trust: whoever can write it can issue tasks to every host. A host
narrows what it accepts with a policy file (``skedlib-agent --policy FILE``, YAML, the
format manifests are written in) decoded as :class:`HostPolicy`, and runs tasks as an
unprivileged user with ``--run-as USER[:GROUP]``. Executors ask the policy before they
start anything; a refusal is a :class:`PolicyRefused` (a
:class:`~skedlib.executors.TaskRejected`), so the agent rejects the task with the rule's
name in the reason and the scheduler places it elsewhere.

Every question and its matching live here, so the ``process``, ``bash`` and ``docker``
executors (and third-party executors: these names are public) answer them the same way:

- :meth:`HostPolicy.check_executor` — the ``executors`` allowlist;
- :meth:`HostPolicy.check_argv` / :meth:`HostPolicy.check_shell` — the ``commands``
  allowlist (fnmatch patterns);
- :meth:`HostPolicy.identity` — the user a task runs as (``run_as``, or a per-task user
  from the ``users`` allowlist);
- :meth:`HostPolicy.check_docker` — images and the dangerous docker options, each denied
  unless the ``docker`` section allows it.

Defaults (no file): every executor, command and image is allowed (as before), and every
dangerous docker option is refused.
"""

from __future__ import annotations

import fnmatch
import grp
import os
import posixpath
import pwd
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from skedlib.codecs import _field_message
from skedlib.errors import ValidationError, one_line
from skedlib.executors.base import TaskRejected

__all__ = [
    "DOCKER_SOCKETS",
    "DockerPolicy",
    "DockerRequest",
    "HostPolicy",
    "Identity",
    "PolicyRefused",
    "load_policy",
    "normalize_image",
]

DOCKER_SOCKETS: tuple[str, ...] = ("/var/run/docker.sock", "/run/docker.sock",
                                   "/run/containerd/containerd.sock")
"""Engine sockets no container may mount unless ``docker.docker_socket`` is true (the
docker executor adds the socket of the engine it talks to)."""


class PolicyRefused(TaskRejected):
    """The host policy refuses the task; the message names the rule (``docker.privileged``)."""

    def __init__(self, message: str, *, rule: str = "") -> None:
        super().__init__(message)
        self.rule = rule
        """The policy field that refused (``docker.privileged``, ``commands`` …)."""


class DockerPolicy(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The ``docker`` section: images, and the dangerous options a host lets tasks use.

    Every boolean is ``false`` and every list empty by default: the option is refused.
    """

    images: list[str] | None = None
    """fnmatch patterns of allowed images (``registry.example.com/*``,
    ``docker.io/library/nginx:*``), matched against the image as written and in full form
    (``busybox`` is ``docker.io/library/busybox:latest``); None: every image."""
    registries: list[str] | None = None
    """Registries (``registry.example.com``, ``docker.io``) whose images are all allowed
    (besides ``images``); None: no registry rule."""
    privileged: bool = False
    """``--privileged``: the container is root on the host."""
    mounts: list[str] = msgspec.field(default_factory=list)
    """Host path prefixes a bind mount may name (``/srv/data`` allows ``/srv/data/x``,
    not ``/srv/database``); ``/`` allows every path. Named volumes are always allowed."""
    docker_socket: bool = False
    """Mounting the engine's socket (or a directory holding it): root on the host,
    whatever ``mounts`` says."""
    capabilities: list[str] = msgspec.field(default_factory=list)
    """Capabilities ``--cap-add`` may add (``NET_ADMIN``; ``ALL`` only if listed)."""
    host_network: bool = False
    """``--network=host``."""
    container_namespaces: bool = False
    """``--network``, ``--pid`` or ``--ipc`` ``=container:NAME``: joining another
    container's namespace (one skedlib did not start, perhaps)."""
    host_pid: bool = False
    """``--pid=host``: sees and signals every process of the host."""
    host_ipc: bool = False
    """``--ipc=host``."""
    devices: list[str] = msgspec.field(default_factory=list)
    """fnmatch patterns of host devices ``--device`` may pass in (``/dev/fuse``)."""
    root: bool = False
    """``--user`` naming root (``0``, ``root``, ``0:0``)."""
    publish_addresses: list[str] = msgspec.field(default_factory=list)
    """Host addresses a port mapping may name explicitly (``10.0.0.5:80:8080``) besides
    loopback and the executor's own bind address; ``0.0.0.0`` only if listed."""
    image_user: list[str] = msgspec.field(default_factory=list)
    """fnmatch patterns of images that keep their own user under ``run_as`` (otherwise
    containers get ``--user UID:GID`` of the run-as user)."""
    volume_drivers: list[str] = msgspec.field(default_factory=list)
    """Volume drivers ``--volume-driver`` (a docker blob's ``volume_driver``) may name
    besides ``local``: a volume plugin mounts whatever it provides."""


class HostPolicy(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What this host accepts to run (see the module docstring)."""

    executors: list[str] | None = None
    """Executors tasks may use here (composes with ``--executors``); None: every one."""
    commands: list[str] | None = None
    """fnmatch patterns of commands the ``process`` and ``bash`` executors may run; None:
    every command. A pattern without a space is matched against ``argv[0]`` (as written and
    as resolved: ``/usr/bin/python3*``); one with a space against the whole command line
    (``python3 -m http.server *``). A ``bash`` command string (start, stop, setup) must
    match a pattern as a whole."""
    run_as: str = ""
    """``USER[:GROUP]`` that tasks run as (``--run-as`` wins); empty: the agent's user."""
    users: list[str] = msgspec.field(default_factory=list)
    """Users a task may ask for itself (a ``process``/``bash`` blob's ``user``, a docker
    ``--user``); empty: none."""
    docker: DockerPolicy = msgspec.field(default_factory=DockerPolicy)
    source: str = "default"
    """Where the policy came from (the file), for messages; not read from the file."""

    def validate(self) -> None:
        """Raise :class:`~skedlib.errors.ValidationError` (``field run_as: …``) for what
        the types alone do not catch: an unknown ``run_as``, a relative mount prefix."""
        if self.run_as:
            try:
                Identity.resolve(self.run_as)
            except ValueError as exc:
                raise ValidationError(f"field run_as: {self.run_as!r}: {exc}") from None
        for i, prefix in enumerate(self.docker.mounts):
            if not prefix.startswith("/"):
                raise ValidationError(f"field docker.mounts[{i}]: {prefix!r} is not an "
                                      "absolute path")

    # -- executors and commands -------------------------------------------------------
    def refuse(self, rule: str, what: str) -> PolicyRefused:
        """A :class:`PolicyRefused` naming ``rule`` and this policy's source:
        ``refused by the host policy (FILE), rule RULE: WHAT``."""
        return PolicyRefused(f"refused by the host policy ({self.source}), rule {rule}: "
                             f"{what}", rule=rule)

    def check_executor(self, name: str) -> None:
        """Raise :class:`PolicyRefused` unless executor ``name`` is allowed."""
        if self.executors is not None and name not in self.executors:
            raise self.refuse("executors", f"executor {name!r} is not allowed (allowed: "
                              f"{', '.join(self.executors) or 'none'})")

    def check_argv(self, argv: Sequence[str], resolved: str = "") -> None:
        """Raise :class:`PolicyRefused` unless ``argv`` (``resolved``: ``argv[0]``'s path)
        matches a ``commands`` pattern."""
        if self.commands is None:
            return
        line = shlex.join(argv)
        for pattern in self.commands:
            if " " in pattern.strip():
                if fnmatch.fnmatchcase(line, pattern):
                    return
            elif argv and any(fnmatch.fnmatchcase(a, pattern) for a in (argv[0], resolved)
                              if a):
                return
        raise self.refuse("commands", f"command {line!r} matches no allowed pattern")

    def check_shell(self, command: str, what: str = "command") -> None:
        """Raise :class:`PolicyRefused` unless the shell string ``command`` matches a
        ``commands`` pattern as a whole."""
        if self.commands is None:
            return
        if not any(fnmatch.fnmatchcase(command.strip(), p) for p in self.commands):
            raise self.refuse("commands", f"{what} {command!r} matches no allowed pattern")

    def check_script(self, script: str, what: str = "script check") -> None:
        """Raise :class:`PolicyRefused` for a ``script`` check the host would not run: one
        that matches no ``commands`` pattern, or any script when tasks run as another user
        (``run_as``), since the health provider runs checks as the agent's own user."""
        if self.run_as:
            raise self.refuse("run_as", f"{what} {script!r} would run as the agent's user, "
                              f"not as {self.run_as} (use an http or tcp check)")
        self.check_shell(script, what)

    # -- users ------------------------------------------------------------------------
    def identity(self, requested: str = "") -> Identity | None:
        """Who a task runs as: ``requested`` (a per-task user, only if in ``users``),
        else ``run_as``, else None (the agent's own user). Raises :class:`PolicyRefused`
        for a user the policy does not allow, :class:`TaskRejected` for one unknown here."""
        if requested:
            name = requested.partition(":")[0]
            if requested not in self.users and name not in self.users:
                raise self.refuse("users", f"the task asks to run as {requested!r}, which "
                                  f"is not allowed (allowed: {', '.join(self.users) or 'none'})")
            try:
                return Identity.resolve(requested)
            except ValueError as exc:
                raise TaskRejected(f"user {requested!r}: {exc}") from None
        if self.run_as:
            return Identity.resolve(self.run_as)
        return None

    # -- docker -----------------------------------------------------------------------
    def check_image(self, image: str) -> None:
        """Raise :class:`PolicyRefused` unless ``image`` is allowed."""
        rules = self.docker
        if rules.images is None and rules.registries is None:
            return
        full = normalize_image(image)
        registry = full.partition("/")[0]
        if rules.registries and registry in rules.registries:
            return
        if any(fnmatch.fnmatchcase(name, p) for p in rules.images or [] for name in
               (image, full)):
            return
        allowed = [*(rules.images or []), *(f"{r}/*" for r in rules.registries or [])]
        raise self.refuse("docker.images", f"image {image!r} ({full}) is not allowed "
                          f"(allowed: {', '.join(allowed) or 'none'})")

    def check_docker(self, request: DockerRequest) -> None:
        """Raise :class:`PolicyRefused` for the first thing ``request`` asks that the
        policy does not allow (the image, then each dangerous option)."""
        self.check_image(request.image)
        rules = self.docker
        if request.privileged and not rules.privileged:
            raise self.refuse("docker.privileged", "a privileged container is root on the "
                              "host")
        for source in request.binds:
            self._check_bind(source, request.sockets)
        for cap in request.cap_add:
            name = _capability(cap)
            allowed = {_capability(c) for c in rules.capabilities}
            if name not in allowed:
                raise self.refuse("docker.capabilities", f"--cap-add={cap} is not allowed "
                                  f"(allowed: {', '.join(sorted(allowed)) or 'none'})")
        network = request.network_mode or ""
        if network == "host" and not rules.host_network:
            raise self.refuse("docker.host_network", "--network=host shares the host's "
                              "network namespace")
        for flag, mode in (("--network", network), ("--pid", request.pid_mode or ""),
                           ("--ipc", request.ipc_mode or "")):
            if mode.startswith("container:") and not rules.container_namespaces:
                raise self.refuse("docker.container_namespaces", f"{flag}={mode} joins "
                                  "another container's namespace")
        driver = request.volume_driver or ""
        if driver and driver != "local" and driver not in rules.volume_drivers:
            raise self.refuse("docker.volume_drivers", f"--volume-driver={driver} is not "
                              f"allowed (allowed: local"
                              f"{''.join(', ' + d for d in rules.volume_drivers)})")
        if request.pid_mode == "host" and not rules.host_pid:
            raise self.refuse("docker.host_pid", "--pid=host shares the host's process "
                              "namespace")
        if request.ipc_mode == "host" and not rules.host_ipc:
            raise self.refuse("docker.host_ipc", "--ipc=host shares the host's IPC "
                              "namespace")
        for device in request.devices:
            path = device.split(":")[0]
            if not any(fnmatch.fnmatchcase(path, p) for p in rules.devices):
                raise self.refuse("docker.devices", f"--device={device}: host device "
                                  f"{path} is not allowed")
        if request.user and _is_root(request.user) and not rules.root:
            raise self.refuse("docker.root", f"--user={request.user} runs the container "
                              "as root")
        if (request.user and self.run_as and not _is_root(request.user)
                and request.user != self.docker_user(request.image)):
            name = request.user.partition(":")[0]
            if request.user not in self.users and name not in self.users:
                raise self.refuse("users", f"--user={request.user}: this host runs "
                                  f"containers as {self.run_as}; other users must be "
                                  "listed in users")
        local = {"127.0.0.1", "::1", "localhost", request.bind_ip}
        for address in request.publish_addresses:
            if address not in local and address not in rules.publish_addresses:
                raise self.refuse("docker.publish_addresses", f"a port published on "
                                  f"{address} (allowed: {', '.join(sorted(local))}"
                                  f"{''.join(', ' + a for a in rules.publish_addresses)})")

    def _check_bind(self, source: str, sockets: Sequence[str]) -> None:
        if not source.startswith("/"):
            return  # a named volume: the engine's own storage, not a host path
        paths = {posixpath.normpath(source), os.path.realpath(source)}
        for path in paths:
            for sock in {*sockets, *(os.path.realpath(s) for s in sockets)}:
                if (path == sock or _inside(sock, path)) and not self.docker.docker_socket:
                    raise self.refuse("docker.docker_socket", f"mounting {source} exposes "
                                      f"the engine socket {sock}, which is root on the host")
        for path in paths:
            if not any(_inside(path, prefix) for prefix in self.docker.mounts):
                raise self.refuse("docker.mounts", f"host path {source} may not be mounted "
                                  f"(allowed prefixes: "
                                  f"{', '.join(self.docker.mounts) or 'none'})")

    def docker_user(self, image: str) -> str | None:
        """``UID:GID`` a container of ``image`` runs as under ``run_as`` (None: none,
        or the image keeps its own user by ``docker.image_user``)."""
        if not self.run_as:
            return None
        full = normalize_image(image)
        if any(fnmatch.fnmatchcase(n, p) for p in self.docker.image_user for n in
               (image, full)):
            return None
        ident = Identity.resolve(self.run_as)
        return f"{ident.uid}:{ident.gid}"


@dataclass(frozen=True)
class Identity:
    """A resolved user to run a task as."""

    name: str
    uid: int
    gid: int
    groups: list[int] = field(default_factory=list)
    """Supplementary groups (the user's own, from the group database)."""
    home: str = "/"

    @classmethod
    def resolve(cls, spec: str) -> Identity:
        """``USER[:GROUP]`` (names or numbers) from the user and group databases; raises
        ValueError for an unknown name."""
        user, _, group = spec.partition(":")
        if not user:
            raise ValueError("expected USER[:GROUP]")
        try:
            entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        except KeyError:
            if not user.isdigit():
                raise ValueError(f"no user named {user!r} on this host") from None
            entry = None
        uid = int(user) if entry is None else entry.pw_uid
        gid = entry.pw_gid if entry is not None else uid
        if group:
            if group.isdigit():
                gid = int(group)
            else:
                try:
                    gid = grp.getgrnam(group).gr_gid
                except KeyError:
                    raise ValueError(f"no group named {group!r} on this host") from None
        groups: list[int] = []
        if entry is not None and not group:
            groups = [g for g in os.getgrouplist(entry.pw_name, gid) if g != gid]
        return cls(name=entry.pw_name if entry else user, uid=uid, gid=gid, groups=groups,
                   home=entry.pw_dir if entry else "/")


@dataclass
class DockerRequest:
    """What one container asks of the docker engine that the policy judges."""

    image: str
    privileged: bool = False
    binds: list[str] = field(default_factory=list)
    """Bind-mount sources (host paths, or volume names)."""
    cap_add: list[str] = field(default_factory=list)
    network_mode: str | None = None
    pid_mode: str | None = None
    ipc_mode: str | None = None
    devices: list[str] = field(default_factory=list)
    """``HOST[:CONTAINER[:PERMS]]``."""
    user: str | None = None
    volume_driver: str | None = None
    """``--volume-driver``."""
    publish_addresses: list[str] = field(default_factory=list)
    """Host addresses ports are published on."""
    bind_ip: str = "127.0.0.1"
    """The executor's configured address for published ports."""
    sockets: list[str] = field(default_factory=lambda: list(DOCKER_SOCKETS))
    """Engine sockets that must not be mounted."""


def _inside(path: str, prefix: str) -> bool:
    prefix = posixpath.normpath(prefix) if prefix else ""
    return bool(prefix) and (path == prefix or prefix == "/" or
                             path.startswith(prefix.rstrip("/") + "/"))


def _capability(name: str) -> str:
    upper = name.strip().upper()
    return upper.removeprefix("CAP_")


def _is_root(user: str) -> bool:
    name = user.partition(":")[0].strip()
    return name == "root" or (name.isdigit() and int(name) == 0)


def normalize_image(image: str) -> str:
    """The full form of an image reference: ``busybox`` →
    ``docker.io/library/busybox:latest``, ``registry:5000/app`` →
    ``registry:5000/app:latest``; a digest (``@sha256:…``) keeps no tag."""
    image = image.strip()
    first, slash, rest = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
    else:
        registry, path = "docker.io", image
        if registry == "docker.io" and "/" not in path:
            path = f"library/{path}"
    name, at, digest = path.partition("@")
    if not at and ":" not in name.rpartition("/")[2]:
        name += ":latest"
    return f"{registry}/{name}{at}{digest}"


def load_policy(path: str | Path) -> HostPolicy:
    """Read a policy file (YAML; JSON is YAML too). Errors are one
    :class:`~skedlib.errors.ValidationError` line naming the file and the field."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValidationError(f"{source}: cannot read the host policy: "
                              f"{exc.strerror or exc}") from None
    import yaml  # only a process that reads a policy file needs it

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}:" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValidationError(one_line(f"{source}:{where} malformed YAML: {problem}")) \
            from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValidationError(f"{source}: expected a mapping of policy fields, got "
                              f"{type(data).__name__}")
    if "source" in data:
        raise ValidationError(f"{source}: field source: not a policy field")
    try:
        policy = msgspec.convert(data, HostPolicy)
    except msgspec.ValidationError as exc:
        raise ValidationError(one_line(f"{source}: {_field_message(exc)}")) from None
    policy.source = source
    try:
        policy.validate()
    except ValidationError as exc:
        raise ValidationError(f"{source}: {exc}") from None
    return policy
