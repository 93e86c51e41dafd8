"""Health checks as the agent resolves and runs them locally.

A :class:`~skedlib.models.Check` becomes a :class:`ResolvedCheck` once ``$PROVIDED_PORT``
is substituted and its target, interval and timeout are parsed; a check that can never
run (no kind, two kinds, a URL that is not http(s), a tcp target that is not host:port,
an unparsable duration) is a :class:`~skedlib.executors.base.TaskRejected` naming the
container and the check. Results follow Consul's conventions:

- ``http``: GET; 2xx and 3xx pass, 429 is a warning, anything else (or no answer within
  the timeout) is critical. Redirects are not followed.
- ``tcp``: a connection accepted within the timeout passes.
- ``script``: ``sh -c SCRIPT``; exit 0 passes, 1 is a warning, anything else (or running
  past the timeout) is critical.
- ``ttl``: passes while someone reports it passing at least every ``ttl``
  (:func:`skedlib.pass_ttl_check`).
- ``docker`` (Sked's check): ``sh -c COMMAND`` run *inside* the check's container by
  its executor (:meth:`skedlib.Executor.exec_check`; the docker executor runs it with
  ``docker exec``); exit statuses as for ``script``. A container whose executor cannot
  run commands inside it (bash, process) is critical, saying why.

Defaults (as validation applies them): interval 10s, timeout 5s but never longer than the
interval. A ttl check is read back every quarter of its ttl (at least every 2 s, at most
every 250 ms), so a report is seen quickly; it turns critical once no report came within
the ttl.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import ssl
import subprocess
from collections.abc import Callable, Mapping
from typing import Literal
from urllib.parse import urlsplit

import msgspec

from skedlib.durations import SECOND, parse_duration
from skedlib.errors import ValidationError
from skedlib.executors.base import PROVIDED_PORT_VAR, ContainerRef, TaskRejected, substitute_port
from skedlib.models import Check, Task
from skedlib.validation import DEFAULT_CHECK_INTERVAL, DEFAULT_CHECK_TIMEOUT

__all__ = ["CheckKind", "CheckResult", "ResolvedCheck", "resolve_checks", "run_check"]

CheckKind = Literal["http", "tcp", "script", "ttl", "docker"]
Status = Literal["passing", "warning", "critical"]

_OUTPUT_LIMIT = 500


class ResolvedCheck(msgspec.Struct, frozen=True, kw_only=True):
    """A check ready to run: one kind, its target with the port substituted, in seconds."""

    name: str
    container: str
    kind: CheckKind
    target: str
    """The URL, ``host:port`` or script; empty for ttl."""
    interval: float
    timeout: float
    ttl: float = 0.0
    executor: str = ""
    """The container's executor type (what runs a ``docker`` check's command)."""
    start_period: float = 0.0
    """Seconds after the task started during which critical results do not count until
    the check first passes (:attr:`~skedlib.models.Check.start_period`)."""


class CheckResult(msgspec.Struct, frozen=True):
    """The outcome of one run of one check."""

    status: Status
    output: str


def _seconds(raw: str, what: str) -> float:
    return parse_duration(raw) / SECOND if raw else 0.0


def resolve_check(check: Check, container: str, index: int, port: int,
                  executor: str = "") -> ResolvedCheck:
    """Resolve one check; raises :class:`TaskRejected` when it can never run."""
    label = f"container {container}: checks[{index}]"
    name = check.name or check.id or f"{container}.checks[{index}]"
    kinds = [k for k in ("http", "tcp", "script", "ttl", "docker") if getattr(check, k)]
    if len(kinds) != 1:
        raise TaskRejected(f"{label}: a check needs exactly one of http, tcp, script, ttl, "
                           f"docker (got {', '.join(kinds) or 'none'})")
    kind: CheckKind = kinds[0]  # type: ignore[assignment]
    raw: str = getattr(check, kind)  # messages quote it: the port may be a placeholder
    target = substitute_port(raw, port) if kind != "ttl" else ""
    if PROVIDED_PORT_VAR.search(raw) and not port:
        raise TaskRejected(f"{label}: uses $PROVIDED_PORT but the task has no port")
    try:
        interval = _seconds(check.interval or DEFAULT_CHECK_INTERVAL, "interval")
        timeout = _seconds(check.timeout or DEFAULT_CHECK_TIMEOUT, "timeout")
        ttl = _seconds(check.ttl, "ttl")
        start_period = _seconds(check.start_period, "start_period")
    except ValidationError as exc:
        raise TaskRejected(f"{label}: {exc}") from None
    if kind == "http":
        parts = urlsplit(target)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TaskRejected(f"{label}: http {raw!r} is not an http:// or https:// URL "
                               "with a host")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise TaskRejected(f"{label}: http {raw!r} has a bad port") from None
    elif kind == "tcp":
        host, sep, port_text = target.rpartition(":")
        if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise TaskRejected(f"{label}: tcp {raw!r} is not host:port")
    elif kind == "ttl":
        if ttl <= 0:
            raise TaskRejected(f"{label}: ttl {check.ttl!r} must be longer than 0s")
        interval = min(max(ttl / 4, 0.25), 2.0)
    if interval < 0.1:
        raise TaskRejected(f"{label}: interval shorter than 100ms")
    timeout = min(timeout or interval, interval)
    return ResolvedCheck(name=name, container=container, kind=kind, target=target,
                         interval=interval, timeout=timeout, ttl=ttl, executor=executor,
                         start_period=start_period)


def resolve_checks(task: Task, port: int) -> list[ResolvedCheck]:
    """Every check of every container of ``task``; raises :class:`TaskRejected`."""
    checks = [resolve_check(check, c.name, i, port, c.type)
              for c in task.task_definition.containers for i, check in enumerate(c.checks)]
    names = [c.name for c in checks]
    for name in names:
        if names.count(name) > 1:
            raise TaskRejected(f"two checks are named {name!r}; check names must be unique "
                               "within a task")
    return checks


def run_check(check: ResolvedCheck, env: Mapping[str, str],
              exec_check: Callable[[str, ContainerRef, str, float], tuple[int, str]]
              | None = None) -> CheckResult:
    """Run an http, tcp, script or docker check once (never raises; ttl is not run
    here). ``exec_check`` runs a docker check's command in its container (the agent's
    executors); ``env["SKED_TASK_ID"]`` names the task."""
    try:
        if check.kind == "http":
            return _http(check)
        if check.kind == "tcp":
            return _tcp(check)
        if check.kind == "script":
            return _script(check, env)
        if check.kind == "docker":
            if exec_check is None:
                return CheckResult("critical", "docker checks are not run by this agent")
            ref = ContainerRef(env.get("SKED_TASK_ID", ""), check.container)
            try:
                code, out = exec_check(check.executor, ref, check.target, check.timeout)
            except NotImplementedError as exc:
                return CheckResult("critical", str(exc))
            return _verdict(code, out)
    except Exception as exc:  # a check never takes the agent down
        return CheckResult("critical", f"{check.kind} check failed: {exc}")
    raise ValueError(f"{check.kind} checks are not run by run_check")


def _http(check: ResolvedCheck) -> CheckResult:
    parts = urlsplit(check.target)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname or "", parts.port,
                                           timeout=check.timeout,
                                           context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port,
                                          timeout=check.timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "skedlib-agent health check",
                                           "Connection": "close"})
        resp = conn.getresponse()
        resp.read(_OUTPUT_LIMIT)
    except (OSError, http.client.HTTPException) as exc:
        return CheckResult("critical", f"GET {check.target}: {exc or type(exc).__name__}")
    finally:
        conn.close()
    text = f"GET {check.target}: HTTP {resp.status} {resp.reason}"
    if 200 <= resp.status < 400:
        return CheckResult("passing", text)
    if resp.status == 429:
        return CheckResult("warning", text)
    return CheckResult("critical", text)


def _tcp(check: ResolvedCheck) -> CheckResult:
    host, _, port = check.target.rpartition(":")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=check.timeout):
            pass
    except OSError as exc:
        return CheckResult("critical", f"TCP connect {check.target}: {exc}")
    return CheckResult("passing", f"TCP connect {check.target}: success")


def _script(check: ResolvedCheck, env: Mapping[str, str]) -> CheckResult:
    proc = subprocess.Popen(["sh", "-c", check.target], env={**os.environ, **env},
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=check.timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return CheckResult("critical", f"script timed out after {check.timeout:g}s")
    return _verdict(proc.returncode, out.decode(errors="replace"))


def _verdict(code: int, output: str) -> CheckResult:
    """Consul's reading of a command's exit status: 0 passing, 1 warning, else critical."""
    text = output.strip()[-_OUTPUT_LIMIT:]
    if code == 0:
        return CheckResult("passing", text)
    if code == 1:
        return CheckResult("warning", text)
    return CheckResult("critical", text or f"script exited with {code}")
