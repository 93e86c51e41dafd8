"""Errors as responses, in one place: every failure of a request becomes a JSON
:class:`~skedlib.environments.models.ErrorBody` ``{"error": code, "message": one line}``
with the status its exception class maps to (:data:`STATUS_OF`); an error of the HTTP
layer itself (a wrong path or method, a missing token, a cross-site request, a body too large) is an
:class:`HttpError` carrying its status and headers."""

from __future__ import annotations

import logging

from skedlib.api.responses import Response
from skedlib.environments.models import ErrorBody
from skedlib.errors import BackendError, ConflictError, NotFound, SkedError, ValidationError
from skedlib.jobs.client import LogsUnavailable

__all__ = ["CODES", "STATUS_OF", "HttpError", "error", "error_response"]

log = logging.getLogger("skedlib.api")

CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
         405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
         415: "unsupported_media_type", 500: "internal", 503: "unavailable"}
"""Status → the ``error`` code of the body."""

STATUS_OF: tuple[tuple[type[SkedError], int], ...] = (
    (ValidationError, 400),
    (NotFound, 404),
    (ConflictError, 409),
    (LogsUnavailable, 503),  # the node holding a job's output cannot serve it
    (BackendError, 503),
)
"""skedlib's errors → status, first match wins; any other error is a 500."""


class HttpError(Exception):
    """A request refused by the HTTP layer: ``status``, a one-line ``message`` and extra
    ``headers`` (``Allow``, ``WWW-Authenticate``)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None
                 ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """The JSON error response ``status`` with ``message``."""
    return Response(status, ErrorBody(error=CODES.get(status, "error"), message=message),
                    headers or {})


def error_response(exc: Exception, request: str) -> Response:
    """The response for ``exc``, raised while serving ``request`` (``"GET /v1/…"``, for the
    log). Call it in an ``except`` block: a 500 logs the traceback."""
    if isinstance(exc, HttpError):
        return error(exc.status, exc.message, exc.headers)
    for cls, status in STATUS_OF:
        if isinstance(exc, cls):
            if isinstance(exc, BackendError):
                return error(status, f"the store is unavailable: {exc}")
            return error(status, str(exc))
    log.exception("%s failed", request)
    if isinstance(exc, SkedError):
        return error(500, str(exc))
    # a bug must be a 500, never a dropped connection
    return error(500, f"internal error: {type(exc).__name__}: {exc}")
