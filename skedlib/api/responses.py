"""What a route returns: a :class:`Response` (a status, a JSON body, headers), whose body
may be a :class:`Stream` (bytes sent as they are produced)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

__all__ = ["Response", "Stream"]


class Response(msgspec.Struct):
    """A status, a JSON-encodable body (a Struct, or a dict such as the OpenAPI document)
    or a :class:`Stream`, and extra headers."""

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
