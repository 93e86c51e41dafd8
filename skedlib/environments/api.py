"""The REST API (``sked serve``): the standard library's
:class:`~http.server.ThreadingHTTPServer` over
:class:`~skedlib.environments.Environments` and :class:`~skedlib.jobs.client.JobClient`.

Routes, under ``/v1`` (the OpenAPI document at ``GET /v1/openapi.json`` is the
reference; ``docs/api.md`` renders it)::

    GET    /ping
    GET    /openapi.json
    POST   /environments                       GET /environments?cluster=&limit=&next_token=
    GET    /environments/{name}                PUT, DELETE (?keep_tasks=true)
    POST   /environments/{name}/deployments    GET …/deployments?limit=&next_token=
    GET    /environments/{name}/deployments/{id}
    POST   /jobs?id=                           GET /jobs?status=&limit=&next_token=
    GET    /jobs/{id}                          POST /jobs/{id}/cancel
    GET    /jobs/{id}/wait?timeout=            GET /jobs/{id}/logs?offset=&follow=
    GET    /nodes

Every response is JSON but a job's output (``GET /jobs/{id}/logs``: ``text/plain``,
streamed as the node sends it, see :class:`Stream`). Bad input is a 4xx whose body says
what was wrong (:class:`~skedlib.environments.models.ErrorBody`) and changes nothing:
400 for malformed JSON, a wrong or unknown field, a bad name or query parameter; 401
for a missing or wrong bearer token (when the server has one); 404, 405, 409, 413. A
backend error is a 503 with its message, and so is a job worker that cannot serve a
job's output. A background thread keeps in-progress deployments' statuses up to date
(:meth:`~skedlib.environments.Environments.track_all`), so they clear even when nobody
reads them.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec

from skedlib.client import Client
from skedlib.codecs import decode, encode
from skedlib.environments.manager import DEFAULT_PAGE_SIZE, Environments
from skedlib.environments.models import (
    DeploymentCreate,
    EnvironmentCreate,
    EnvironmentUpdate,
    ErrorBody,
    JobNodeList,
    Ping,
)
from skedlib.environments.openapi import (
    BASE_PATH,
    DEFAULT_WAIT,
    MAX_WAIT,
    openapi_document,
)
from skedlib.errors import BackendError, ConflictError, NotFound, SkedError, ValidationError
from skedlib.jobs.client import DEFAULT_PAGE_SIZE as JOB_PAGE_SIZE
from skedlib.jobs.client import (
    JobClient,
    JobWaitTimeout,
    LogsUnavailable,
    explain_waiting,
)
from skedlib.jobs.models import JOB_STATES, Job, JobSpec

__all__ = ["DEFAULT_LISTEN", "MAX_BODY", "Api", "ApiServer", "Response", "Stream",
           "is_loopback", "parse_listen", "with_waiting_reasons"]

log = logging.getLogger("skedlib.api")

DEFAULT_LISTEN = "127.0.0.1:2000"
MAX_BODY = 1 << 20
"""Request bodies larger than this (1 MiB) are refused with 413."""

_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found",
          405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
          500: "internal", 503: "unavailable"}


class Response(msgspec.Struct):
    """A status, a JSON-encodable body and extra headers."""

    status: int
    body: Any
    headers: dict[str, str] = msgspec.field(default_factory=dict)


@dataclass(frozen=True)
class Stream:
    """A response body sent as it is produced (``GET /jobs/{id}/logs``): each item of
    ``chunks`` is written to the client as soon as it comes, with chunked transfer
    encoding. An error while iterating ends the response without its last chunk, so the
    client sees the body cut short rather than a clean end. The HTTP layer closes
    ``chunks`` (when it has a ``close``) however the response ends."""

    chunks: Iterator[bytes]
    content_type: str = "text/plain"


class _HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None
                 ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(status, ErrorBody(error=_CODES.get(status, "error"), message=message),
                    headers or {})


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:2000`` for IPv6, ``:2000`` for every interface) → (host,
    port); raises :class:`ValidationError`."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValidationError(f"--listen {text!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback address ("" is every
    interface: not loopback)."""
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback
                               for i in infos)


def _bool(name: str, value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no", ""):
        return False
    raise ValidationError(f"query parameter {name}: expected true or false, got {value!r}")


def _int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValidationError(f"query parameter {name}: expected an integer, got "
                              f"{value!r}") from None


def _seconds(name: str, value: str, maximum: float) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= maximum:  # also refuses nan
        raise ValidationError(f"query parameter {name}: expected seconds from 0 to "
                              f"{maximum:g}, got {value!r}")
    return seconds


def with_waiting_reasons(jobs: JobClient, items: list[Job]) -> list[Job]:
    """``items`` with each queued job's ``reason`` saying why no node has claimed it (as
    :meth:`JobClient.status <skedlib.jobs.client.JobClient.status>` does for one job);
    reads the live nodes once, and only when a job is queued."""
    if any(j.status == "queued" for j in items):
        nodes = jobs.nodes()
        for job in items:
            if job.status == "queued":
                why = explain_waiting(job, nodes)
                job.reason = f"{job.reason}; {why}" if job.reason else why
    return items


class Api:
    """The routes, independent of HTTP: :meth:`handle` maps a request to a
    :class:`Response`."""

    def __init__(self, environments: Environments, token: str | None = None,
                 jobs: JobClient | None = None) -> None:
        self.environments = environments
        self.jobs = jobs or JobClient(environments.client.backend, environments.client.keys)
        self.token = token or None
        self._openapi = openapi_document()

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes
               ) -> Response:
        """Route one request; never raises (errors become their responses)."""
        try:
            return self._route(method, target, headers, body)
        except _HttpError as exc:
            return _error(exc.status, exc.message, exc.headers)
        except ValidationError as exc:
            return _error(400, str(exc))
        except NotFound as exc:
            return _error(404, str(exc))
        except ConflictError as exc:
            return _error(409, str(exc))
        except LogsUnavailable as exc:
            return _error(503, str(exc))
        except BackendError as exc:
            return _error(503, f"the store is unavailable: {exc}")
        except SkedError as exc:
            log.exception("%s %s failed", method, target)
            return _error(500, str(exc))
        except Exception as exc:  # a bug must be a 500, never a dropped connection
            log.exception("%s %s failed", method, target)
            return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    def _authorized(self, headers: dict[str, str]) -> bool:
        if self.token is None:
            return True
        scheme, _, given = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self.token.encode())

    def _route(self, method: str, target: str, headers: dict[str, str], body: bytes
               ) -> Response:
        split = urllib.parse.urlsplit(target)
        path = split.path
        if path != BASE_PATH and not path.startswith(BASE_PATH + "/"):
            raise _HttpError(404, f"no such path {path!r}: the API is under {BASE_PATH}/")
        parts = [urllib.parse.unquote(p) for p in path[len(BASE_PATH) + 1:].split("/")]
        if len(parts) > 1 and parts[-1] == "":
            parts.pop()  # a trailing slash
        route, allowed, args = self._match(parts)
        if route is None:
            raise _HttpError(404, f"no such path {path!r} (see GET {BASE_PATH}/openapi.json)")
        if method not in allowed:
            raise _HttpError(405, f"{method} is not allowed on {path} (allowed: "
                                  f"{', '.join(allowed)})", {"Allow": ", ".join(allowed)})
        if route not in ("ping", "openapi") and not self._authorized(headers):
            raise _HttpError(401, "missing or wrong bearer token: send 'Authorization: "
                                  "Bearer <token>'", {"WWW-Authenticate": "Bearer"})
        query = self._query(split.query)
        return self._call(route, method, args, query, body)

    @staticmethod
    def _match(parts: list[str]) -> tuple[str | None, tuple[str, ...], list[str]]:
        match parts:
            case ["ping"]:
                return "ping", ("GET",), []
            case ["openapi.json"]:
                return "openapi", ("GET",), []
            case ["environments"]:
                return "environments", ("GET", "POST"), []
            case ["environments", name]:
                return "environment", ("GET", "PUT", "DELETE"), [name]
            case ["environments", name, "deployments"]:
                return "deployments", ("GET", "POST"), [name]
            case ["environments", name, "deployments", dep]:
                return "deployment", ("GET",), [name, dep]
            case ["jobs"]:
                return "jobs", ("GET", "POST"), []
            case ["jobs", job_id]:
                return "job", ("GET",), [job_id]
            case ["jobs", job_id, "cancel"]:
                return "job_cancel", ("POST",), [job_id]
            case ["jobs", job_id, "wait"]:
                return "job_wait", ("GET",), [job_id]
            case ["jobs", job_id, "logs"]:
                return "job_logs", ("GET",), [job_id]
            case ["nodes"]:
                return "nodes", ("GET",), []
        return None, (), []

    @staticmethod
    def _query(text: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, value in urllib.parse.parse_qsl(text, keep_blank_values=True):
            if key in out:
                raise ValidationError(f"query parameter {key}: given more than once")
            out[key] = value
        return out

    @staticmethod
    def _only(query: dict[str, str], *names: str) -> None:
        for key in query:
            if key not in names:
                raise ValidationError(
                    f"query parameter {key}: unknown (expected "
                    f"{', '.join(names) if names else 'none'})")

    @staticmethod
    def _body(body: bytes, type_: type[Any]) -> Any:
        if not body.strip():
            raise ValidationError("request body: missing; expected a JSON object")
        try:
            return decode(body, type_, where="request body")
        except ValidationError as exc:
            unknown = re.fullmatch(r"request body: (?:field (\S+): )?Object contains unknown "
                                   r"field `(.*)`", str(exc), re.S)
            if unknown is None:
                raise
            at, field = unknown.groups()
            where: Any = type_
            for part in (at or "").split(".") if at else ():
                where = next((f.type for f in msgspec.structs.fields(where)
                              if f.name == part), None)
            expected = (f" (expected {', '.join(where.__struct_fields__)})"
                        if hasattr(where, "__struct_fields__") else "")
            path = f"{at}.{field}" if at else field
            raise ValidationError(f"request body: field {path}: unknown field{expected}"
                                  ) from None

    def _call(self, route: str, method: str, args: list[str], query: dict[str, str],
              body: bytes) -> Response:
        if route.startswith("job") or route == "nodes":
            return self._call_jobs(route, method, args, query, body)
        envs = self.environments
        if route == "ping":
            self._only(query)
            return Response(200, Ping())
        if route == "openapi":
            self._only(query)
            return Response(200, self._openapi)
        if route == "environments" and method == "POST":
            self._only(query)
            return Response(201, envs.create(self._body(body, EnvironmentCreate)))
        if route == "environments":
            self._only(query, "cluster", "limit", "next_token")
            return Response(200, envs.list(
                cluster=query.get("cluster"),
                limit=_int("limit", query["limit"]) if "limit" in query else DEFAULT_PAGE_SIZE,
                next_token=query.get("next_token", "")))
        name = args[0]
        if route == "environment" and method == "GET":
            self._only(query)
            return Response(200, envs.get(name))
        if route == "environment" and method == "PUT":
            self._only(query)
            return Response(200, envs.update(name, self._body(body, EnvironmentUpdate)))
        if route == "environment":
            self._only(query, "keep_tasks")
            return Response(200, envs.delete(
                name, keep_tasks=_bool("keep_tasks", query.get("keep_tasks", "false"))))
        if route == "deployments" and method == "POST":
            self._only(query)
            req = self._body(body, DeploymentCreate)
            return Response(201, envs.deploy(name, req.token, rollback=req.rollback))
        if route == "deployments":
            self._only(query, "limit", "next_token")
            return Response(200, envs.deployments(
                name, limit=_int("limit", query["limit"]) if "limit" in query
                else DEFAULT_PAGE_SIZE, next_token=query.get("next_token", "")))
        self._only(query)
        return Response(200, envs.deployment(name, args[1]))

    def _call_jobs(self, route: str, method: str, args: list[str], query: dict[str, str],
                   body: bytes) -> Response:
        jobs = self.jobs
        if route == "nodes":
            self._only(query)
            return Response(200, JobNodeList(items=sorted(jobs.nodes(),
                                                          key=lambda n: n.name)))
        if route == "jobs" and method == "POST":
            self._only(query, "id")
            spec = self._body(body, JobSpec)
            job = jobs.submit_spec(spec, query.get("id"))
            return Response(201, job, {"Location": f"{BASE_PATH}/jobs/"
                                                   f"{urllib.parse.quote(job.id, safe='')}"})
        if route == "jobs":
            self._only(query, "status", "limit", "next_token")
            status = query.get("status")
            if status is not None and status not in JOB_STATES:
                raise ValidationError(f"query parameter status: expected one of "
                                      f"{', '.join(JOB_STATES)}, got {status!r}")
            page = jobs.page(
                status=status,
                limit=_int("limit", query["limit"]) if "limit" in query else JOB_PAGE_SIZE,
                next_token=query.get("next_token") or None)
            with_waiting_reasons(jobs, page.items)
            return Response(200, page)
        job_id = args[0]
        if route == "job":
            self._only(query)
            return Response(200, jobs.status(job_id))
        if route == "job_cancel":
            self._only(query)
            return Response(200, jobs.cancel(job_id))
        if route == "job_wait":
            self._only(query, "timeout")
            timeout = _seconds("timeout", query["timeout"], MAX_WAIT) if "timeout" in query \
                else DEFAULT_WAIT
            try:
                return Response(200, jobs.wait(job_id, timeout))
            except JobWaitTimeout:
                return Response(200, jobs.status(job_id))
        # job_logs
        self._only(query, "offset", "follow")
        offset = _int("offset", query["offset"]) if "offset" in query else 0
        if offset < 0:
            raise ValidationError(f"query parameter offset: must be >= 0, got {offset}")
        follow = _bool("follow", query.get("follow", "false"))
        job = jobs.store.get(job_id).job
        if not job.log_url:
            raise _HttpError(409, f"job {job_id} has no output yet: it is {job.status}"
                                  + (" and never started" if job.attempts == 0 else ""))
        chunks = jobs.logs(job_id, follow=follow, offset=offset)
        return Response(200, Stream(chunks), {"Cache-Control": "no-store",
                                              "X-Content-Type-Options": "nosniff"})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sked-serve"
    timeout = 30
    server: _Server

    def _serve(self) -> None:
        started = time.monotonic()
        headers = {k.lower(): v for k, v in self.headers.items()}
        body = b""
        response: Response | None = None
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self.close_connection = True
            response = _error(400, "chunked request bodies are not supported; send "
                                   "Content-Length")
        else:
            try:
                length = int(headers.get("content-length", "0") or "0")
                if length < 0:
                    raise ValueError
            except ValueError:
                self.close_connection = True
                response = _error(400, "header Content-Length: not a length")
            else:
                if length > MAX_BODY:
                    self.close_connection = True
                    response = _error(413, f"request body: {length} bytes, more than the "
                                           f"{MAX_BODY} allowed")
                else:
                    body = self.rfile.read(length) if length else b""
        if response is None:
            response = self.server.api.handle(self.command, self.path, headers, body)
        if isinstance(response.body, Stream):
            self._send_stream(response, response.body, started)
            return
        data = json.dumps(msgspec.to_builtins(response.body)).encode() \
            if isinstance(response.body, dict) else encode(response.body)
        self.send_response(response.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in response.headers.items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        log.info('%s "%s %s" %d %.1fms', self.client_address[0], self.command, self.path,
                 response.status, (time.monotonic() - started) * 1000)

    def _send_stream(self, response: Response, stream: Stream, started: float) -> None:
        """Write ``stream`` chunk by chunk as it comes (chunked, or to the connection's end
        for an HTTP/1.0 client); an error midway cuts the response short."""
        chunked = self.request_version != "HTTP/1.0"
        sent, outcome = 0, "complete"
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", stream.content_type)
            for key, value in response.headers.items():
                self.send_header(key, value)
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.close_connection = True
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            for chunk in stream.chunks:
                if not chunk:
                    continue
                self.wfile.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                sent += len(chunk)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except OSError as exc:  # the client went away (or stopped reading)
            self.close_connection = True
            outcome = f"client gone: {exc}"
        except Exception as exc:  # the source failed: end without the last chunk
            self.close_connection = True
            outcome = f"cut short: {exc}"
            log.warning("%s %s: response cut short after %d bytes: %s", self.command,
                        self.path, sent, exc)
        finally:
            close = getattr(stream.chunks, "close", None)
            if close is not None:
                close()
        log.info('%s "%s %s" %d %.1fms %d bytes streamed, %s', self.client_address[0],
                 self.command, self.path, response.status,
                 (time.monotonic() - started) * 1000, sent, outcome)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):  # every method is routed (unsupported ones get a 405)
            return self._serve
        raise AttributeError(name)

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """Errors of the HTTP layer itself (a malformed request line …), as JSON too."""
        data = encode(ErrorBody(error=_CODES.get(code, "error"),
                                message=message or explain or f"HTTP {code}"))
        self.close_connection = True
        self.send_response(code, message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    api: Api


class ApiServer:
    """``sked serve``: the REST API (environments and jobs) on ``host:port`` (port 0:
    any free port), and the deployment tracker loop.

    >>> server = ApiServer(client, "127.0.0.1", 0)   # doctest: +SKIP
    >>> server.start(); server.url                   # doctest: +SKIP
    'http://127.0.0.1:40123/v1'
    >>> server.stop()                                # doctest: +SKIP
    """

    def __init__(self, client: Client, host: str = "127.0.0.1", port: int = 2000, *,
                 token: str | None = None, track_every: float = 1.0,
                 environments: Environments | None = None,
                 jobs: JobClient | None = None) -> None:
        self.environments = environments or Environments(client)
        self.jobs = jobs or JobClient(client.backend, client.keys)
        self.api = Api(self.environments, token, self.jobs)
        self.track_every = track_every
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("_BoundServer", (_Server,), {"address_family": family})
        self.httpd: _Server = server_class((host, port), _Handler)
        self.httpd.api = self.api
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the server listens on."""
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """``http://HOST:PORT/v1``."""
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}{BASE_PATH}"

    def start(self) -> None:
        """Serve and track in background threads; returns at once."""
        self._threads = [
            threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                             name="sked-serve-http", daemon=True),
            threading.Thread(target=self._track_loop, name="sked-serve-tracker",
                             daemon=True)]
        for t in self._threads:
            t.start()

    def _track_loop(self) -> None:
        while not self._stop.wait(self.track_every):
            try:
                self.environments.track_all()
            except BackendError as exc:
                log.warning("tracking deployments: %s", exc)
            except Exception:  # a bug must not stop the loop
                log.exception("tracking deployments failed")

    def stop(self) -> None:
        """Stop serving and tracking. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        for t in self._threads:
            t.join(5)

    def __enter__(self) -> ApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
