"""The REST API (``sked serve``): environments, deployments and batch jobs over HTTP.

One route table (:data:`ROUTES`, each :class:`Route` declaring its handler, parameters and
documentation) serves both the :class:`Router` and the OpenAPI document
(:func:`openapi_document`); who may call (``Host``, cross-site headers, the bearer token,
the content type) is :class:`RequestGuard`, where the token comes from is
:mod:`skedlib.api.token`, error mapping is
:func:`error_response`; :class:`ApiServer` runs it all over HTTP. ``docs/api.md`` is the
reference, rendered from the document.
"""

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
