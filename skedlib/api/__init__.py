"""The REST API (``sked serve``): environments, deployments and batch jobs over HTTP.

One route table (:data:`ROUTES`, each :class:`Route` declaring its handler, parameters and
documentation) serves both the :class:`Router` and the OpenAPI document
(:func:`openapi_document`); who may call (``Host``, cross-site headers, the bearer token,
the content type) is :class:`RequestGuard`, where the token comes from is
:mod:`skedlib.api.token`, error mapping is
:func:`error_response`; :class:`ApiServer` runs it all over HTTP. ``docs/api.md`` is the
reference, rendered from the document.
"""

# imported on first use: a program that needs one of its modules (``skedlib.api.listen``)
# does not load the API server with it
from typing import TYPE_CHECKING

from skedlib.plugins import lazy_attributes

if TYPE_CHECKING:
    from skedlib.api.app import ROUTES, Api, openapi_document
    from skedlib.api.auth import RequestGuard
    from skedlib.api.errors import HttpError, error_response
    from skedlib.api.jobs import DEFAULT_WAIT, MAX_WAIT
    from skedlib.api.responses import Response, Stream
    from skedlib.api.routing import BASE_PATH, Call, QueryParam, Route, Router
    from skedlib.api.server import (
        DEFAULT_LISTEN,
        MAX_BODY,
        ApiServer,
        is_loopback,
        parse_listen,
        tls_context,
    )
    from skedlib.api.token import (
        READ_TOKEN_ENV,
        TOKEN_ENV,
        create_token_file,
        default_token_path,
        find_token,
        read_only_token_for_serve,
        read_token_file,
        token_for_serve,
    )

__all__ = [
    "BASE_PATH",
    "DEFAULT_LISTEN",
    "DEFAULT_WAIT",
    "MAX_BODY",
    "MAX_WAIT",
    "READ_TOKEN_ENV",
    "ROUTES",
    "TOKEN_ENV",
    "Api",
    "ApiServer",
    "Call",
    "HttpError",
    "QueryParam",
    "RequestGuard",
    "Response",
    "Route",
    "Router",
    "Stream",
    "create_token_file",
    "default_token_path",
    "error_response",
    "find_token",
    "is_loopback",
    "openapi_document",
    "parse_listen",
    "read_only_token_for_serve",
    "read_token_file",
    "tls_context",
    "token_for_serve",
]

__getattr__ = lazy_attributes(__name__, {
    "ROUTES": "skedlib.api.app",
    "Api": "skedlib.api.app",
    "openapi_document": "skedlib.api.app",
    "RequestGuard": "skedlib.api.auth",
    "HttpError": "skedlib.api.errors",
    "error_response": "skedlib.api.errors",
    "DEFAULT_WAIT": "skedlib.api.jobs",
    "MAX_WAIT": "skedlib.api.jobs",
    "Response": "skedlib.api.responses",
    "Stream": "skedlib.api.responses",
    "BASE_PATH": "skedlib.api.routing",
    "Call": "skedlib.api.routing",
    "QueryParam": "skedlib.api.routing",
    "Route": "skedlib.api.routing",
    "Router": "skedlib.api.routing",
    "DEFAULT_LISTEN": "skedlib.api.server",
    "MAX_BODY": "skedlib.api.server",
    "ApiServer": "skedlib.api.server",
    "is_loopback": "skedlib.api.server",
    "parse_listen": "skedlib.api.server",
    "tls_context": "skedlib.api.server",
    "READ_TOKEN_ENV": "skedlib.api.token",
    "TOKEN_ENV": "skedlib.api.token",
    "create_token_file": "skedlib.api.token",
    "default_token_path": "skedlib.api.token",
    "find_token": "skedlib.api.token",
    "read_only_token_for_serve": "skedlib.api.token",
    "read_token_file": "skedlib.api.token",
    "token_for_serve": "skedlib.api.token",
})
