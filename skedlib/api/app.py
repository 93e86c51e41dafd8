"""The API independent of HTTP: :class:`Api` maps a request (method, target, headers,
body) to a :class:`~skedlib.api.responses.Response` through one router over
:data:`ROUTES`, one check of who may call (:class:`~skedlib.api.auth.RequestGuard`) and one
error mapping (:func:`~skedlib.api.errors.error_response`).

Each request goes, in order: path under ``/v1`` and known (else 404), method allowed
(else 405 with ``Allow``), the :class:`~skedlib.api.auth.RequestGuard` (``Host``, the
browser's cross-site headers, the bearer token unless the route is public, a JSON
``Content-Type``: else 403, 401 or 415), query parameters declared and well-formed, body
decoded into the route's type (else 400), then the handler. Paths under ``/blox/v1`` are
blox's daemon-scheduler API (:mod:`skedlib.api.blox`): the same steps over its own route
table, its errors answered as blox's string bodies.
"""

from __future__ import annotations

import functools
import urllib.parse
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from skedlib.api import blox, cluster, environments, events, jobs
from skedlib.api.auth import RequestGuard
from skedlib.api.errors import HttpError, error_response
from skedlib.api.openapi import build_document
from skedlib.api.responses import Response, Stream
from skedlib.api.routing import BASE_PATH, Call, Route, Router, decode_body, parse_query
from skedlib.client import Client
from skedlib.environments.manager import Environments
from skedlib.environments.models import Ping
from skedlib.federation import DEFAULT_TIMEOUT, Datacenter
from skedlib.jobs.client import JobClient
from skedlib.metrics import exposition

__all__ = ["CONSOLE_FILES", "ROUTES", "Api", "console_file", "openapi_document"]


def _ping(call: Call) -> Response:
    return Response(200, Ping())


def _openapi(call: Call) -> Response:
    return Response(200, _served_document())


def _metrics(call: Call) -> Response:
    data, content_type = exposition()
    return Response(200, Stream(iter([data]), content_type=content_type))


_META = (
    Route("GET", "/ping", _ping, "ping", "Liveness",
          "Answers while the server runs (does not touch the store).",
          ok_schema="Ping", public=True, tag="meta"),
    Route("GET", "/openapi.json", _openapi, "openapi", "This document",
          "The OpenAPI 3.1 document of this API, generated from the types the server "
          "decodes requests into and encodes responses from.",
          public=True, tag="meta",
          ok_response={"description": "The OpenAPI document",
                       "content": {"application/json": {"schema": {"type": "object"}}}}),
    Route("GET", "/metrics", _metrics, "metrics", "Prometheus metrics",
          "This process's skedlib_ metrics in the Prometheus text format (see "
          "docs/metrics.md). Readable with the read-only token.",
          tag="meta",
          ok_response={"description": "The metrics, in the Prometheus text exposition "
                                      "format",
                       "content": {"text/plain": {"schema": {"type": "string"}}}}),
)

ROUTES: tuple[Route, ...] = (*_META, *cluster.ROUTES, *events.ROUTES, *environments.ROUTES,
                             *jobs.ROUTES)
"""Every route of the API, in the order the document lists them."""


CONSOLE_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
                 "/console.js": ("console.js", "text/javascript; charset=utf-8"),
                 "/console.css": ("console.css", "text/css; charset=utf-8")}
"""The web console's files (path → file under skedlib/api/console/, media type)."""

_CONSOLE_HEADERS = {
    # the page runs only its own script, talks only to this server, and is never framed
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; img-src 'self'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@functools.cache
def _console_bytes(name: str) -> bytes:
    return resources.files("skedlib.api").joinpath("console", name).read_bytes()


def console_file(path: str) -> Response:
    """The response serving the console file at ``path`` (a key of
    :data:`CONSOLE_FILES`)."""
    name, media = CONSOLE_FILES[path]
    return Response(200, Stream(iter([_console_bytes(name)]), content_type=media),
                    dict(_CONSOLE_HEADERS))


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of :data:`ROUTES` (a fresh JSON-ready dict)."""
    return build_document(ROUTES)


@functools.cache
def _served_document() -> dict[str, Any]:
    return openapi_document()  # built once; only ever encoded, never changed


class Api:
    """The routes, independent of HTTP: :meth:`handle` maps a request to a
    :class:`Response`."""

    def __init__(self, environments: Environments, guard: RequestGuard,
                 jobs: JobClient | None = None, client: Client | None = None, *,
                 datacenters: Sequence[Datacenter] = (),
                 dc_timeout: float = DEFAULT_TIMEOUT) -> None:
        self.environments = environments
        self.datacenters = tuple(datacenters)
        """What ``/v1/all-datacenters/…`` reads (docs/datacenters.md)."""
        self.dc_timeout = dc_timeout
        self.jobs = jobs or JobClient(environments.store)
        self.client = client or Client(environments.store)
        self.guard = guard
        self.router = Router(ROUTES)

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes
               ) -> Response:
        """Route one request (``headers`` with lower-case names); never raises (errors
        become their responses)."""
        if blox.serves(target):  # blox's API has its own error bodies
            return blox.handle(self, method, target, headers, body)
        try:
            return self._route(method, target, headers, body)
        except Exception as exc:
            return error_response(exc, f"{method} {target}")

    def _route(self, method: str, target: str, headers: Mapping[str, str], body: bytes
               ) -> Response:
        split = urllib.parse.urlsplit(target)
        path = split.path
        if path in CONSOLE_FILES:
            if method != "GET":
                raise HttpError(405, f"{method} is not allowed on {path} (allowed: GET)",
                                {"Allow": "GET"})
            self.guard.check_page(headers)
            return console_file(path)
        return self.dispatch(self.router, BASE_PATH, f"GET {BASE_PATH}/openapi.json",
                             method, split, headers, body)

    def dispatch(self, router: Router, base: str, documented: str, method: str,
                 split: urllib.parse.SplitResult, headers: Mapping[str, str], body: bytes
                 ) -> Response:
        """Route one request whose path should be under ``base`` through ``router`` (the
        steps of the module docstring); ``documented`` says where the paths are listed.
        Raises what the handler raises, or an :class:`HttpError`."""
        path = split.path
        if path != base and not path.startswith(base + "/"):
            raise HttpError(404, f"no such path {path!r}: the API is under {base}/")
        parts = [urllib.parse.unquote(p) for p in path[len(base) + 1:].split("/")]
        if len(parts) > 1 and parts[-1] == "":
            parts.pop()  # a trailing slash
        found = router.match(parts)
        if found is None:
            raise HttpError(404, f"no such path {path!r} (see {documented})")
        methods, params = found
        route = methods.get(method)
        if route is None:
            allowed = ", ".join(router.allowed(methods))
            raise HttpError(405, f"{method} is not allowed on {path} (allowed: {allowed})",
                            {"Allow": allowed})
        self.guard.check(route, headers, body)
        query = parse_query(route, split.query)
        data = decode_body(body, route.body) if route.body is not None else None
        return route.handler(Call(self.environments, self.jobs, self.client, params, query,
                                  data, self.datacenters, self.dc_timeout))
