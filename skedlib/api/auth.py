"""Authentication, in one place: every route but the public ones (``ping``, the OpenAPI
document) passes :meth:`BearerAuth.check` before its handler runs."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from skedlib.api.errors import HttpError

__all__ = ["BearerAuth"]


class BearerAuth:
    """``Authorization: Bearer <token>`` when the server has a token (``--token``,
    ``$SKED_API_TOKEN``); anyone when it has none."""

    def __init__(self, token: str | None) -> None:
        self.token = token or None

    def check(self, headers: Mapping[str, str]) -> None:
        """Raise a 401 :class:`HttpError` unless ``headers`` (lower-case names) carry the
        token; compared in constant time."""
        if self.token is None:
            return
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 self.token.encode()):
            raise HttpError(401, "missing or wrong bearer token: send 'Authorization: "
                                 "Bearer <token>'", {"WWW-Authenticate": "Bearer"})
