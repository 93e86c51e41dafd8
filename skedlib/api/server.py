"""The HTTP layer of ``sked serve``: the standard library's
:class:`~http.server.ThreadingHTTPServer` (a thread per connection, so long polls and
followed job output never starve other requests) in front of :class:`~skedlib.api.Api`,
and :class:`ApiServer`, which runs it with the deployment tracker loop.

The HTTP layer reads the request (refusing chunked bodies and bodies over
:data:`MAX_BODY`), hands it to :meth:`Api.handle <skedlib.api.Api.handle>`, and writes the
response: JSON, or a :class:`~skedlib.api.responses.Stream` chunk by chunk. Errors of the
HTTP layer itself (a malformed request line …) are JSON too. A background thread keeps
in-progress deployments' statuses up to date
(:meth:`~skedlib.environments.Environments.track_all`), so they clear even when nobody
reads them.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec

from skedlib.api.app import Api
from skedlib.api.auth import RequestGuard
from skedlib.api.errors import CODES, error
from skedlib.api.listen import DEFAULT_LISTEN, is_loopback, parse_listen
from skedlib.api.responses import Response, Stream
from skedlib.api.routing import BASE_PATH
from skedlib.client import Client
from skedlib.codecs import encode
from skedlib.environments.manager import Environments
from skedlib.environments.models import ErrorBody
from skedlib.errors import BackendError, ValidationError
from skedlib.federation import DEFAULT_TIMEOUT, Datacenter
from skedlib.jobs.client import JobClient

__all__ = ["DEFAULT_LISTEN", "MAX_BODY", "ApiServer", "is_loopback", "parse_listen",
           "tls_context"]

log = logging.getLogger("skedlib.api")

MAX_BODY = 1 << 20
"""Request bodies larger than this (1 MiB) are refused with 413."""


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
            response = error(400, "chunked request bodies are not supported; send "
                                   "Content-Length")
        else:
            try:
                length = int(headers.get("content-length", "0") or "0")
                if length < 0:
                    raise ValueError
            except ValueError:
                self.close_connection = True
                response = error(400, "header Content-Length: not a length")
            else:
                if length > MAX_BODY:
                    self.close_connection = True
                    response = error(413, f"request body: {length} bytes, more than the "
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
        data = encode(ErrorBody(error=CODES.get(code, "error"),
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
    tls: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        """With TLS, the handshake happens here, in the connection's own thread, so a slow
        or silent client never holds up accepting the next one."""
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(_Handler.timeout)
        try:
            wrapped = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:  # wrap_socket closed it
            log.info("%s: TLS handshake failed: %s", client_address[0], exc)
            return
        try:
            super().finish_request(wrapped, client_address)
        finally:
            wrapped.close()


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2 or later) for the PEM files ``cert`` and ``key``;
    raises :class:`ValidationError` naming the file."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise ValidationError(f"--tls-cert/--tls-key: {exc.filename}: no such file"
                              ) from None
    except (ssl.SSLError, OSError) as exc:
        raise ValidationError(f"--tls-cert {cert} / --tls-key {key}: not a certificate "
                              f"and its key: {exc}") from None
    return context


class ApiServer:
    """``sked serve``: the REST API (environments and jobs) on ``host:port`` (port 0:
    any free port), and the deployment tracker loop.

    Every request but ``ping`` and the OpenAPI document needs ``token`` (a random one,
    :attr:`token`, when None), or ``read_token`` for ``GET`` requests (a token for
    dashboards and monitoring that cannot change anything); every request must name
    this server in ``Host`` (its address, or one of ``allowed_hosts``) and not come
    from another site (see
    :class:`~skedlib.api.auth.RequestGuard`). With ``tls`` (:func:`tls_context`) it
    speaks HTTPS only. With ``datacenters``, ``/v1/all-datacenters/…`` reads each of
    them (``dc_timeout`` seconds each at most; docs/datacenters.md).

    >>> server = ApiServer(client, "127.0.0.1", 0, token=token)   # doctest: +SKIP
    >>> server.start(); server.url                               # doctest: +SKIP
    'http://127.0.0.1:40123/v1'
    >>> server.stop()                                            # doctest: +SKIP
    """

    def __init__(self, client: Client, host: str = "127.0.0.1", port: int = 2000, *,
                 token: str | None = None, read_token: str | None = None,
                 allowed_hosts: tuple[str, ...] = (),
                 tls: ssl.SSLContext | None = None, track_every: float = 1.0,
                 environments: Environments | None = None,
                 jobs: JobClient | None = None, datacenters: Sequence[Datacenter] = (),
                 dc_timeout: float = DEFAULT_TIMEOUT) -> None:
        self.environments = environments or Environments(client.store)
        self.jobs = jobs or JobClient(client.store)
        self.token = token or secrets.token_urlsafe(32)
        """The bearer token requests must carry."""
        self.track_every = track_every
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("_BoundServer", (_Server,), {"address_family": family})
        self.httpd: _Server = server_class((host, port), _Handler)
        self.httpd.tls = tls
        # the guard needs the bound port (port 0 picks one)
        guard = RequestGuard(self.token, (host, self.address[1]), allowed_hosts,
                             default_port=443 if tls else 80, read_token=read_token)
        self.api = Api(self.environments, guard, self.jobs, client, datacenters=datacenters,
                       dc_timeout=dc_timeout)
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
        """``http://HOST:PORT/v1`` (``https`` with TLS)."""
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        scheme = "https" if self.httpd.tls else "http"
        return f"{scheme}://{host}:{port}{BASE_PATH}"

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
