"""The route table's parts: a :class:`Route` declares one operation once — method, path
template, handler, query parameters, body type, what it answers and why — and both the
:class:`Router` that dispatches requests and the OpenAPI document
(:mod:`skedlib.api.openapi`) are built from the same declarations.

A handler receives a :class:`Call`: path parameters unquoted, the query parameters it
declared already parsed (an unknown, repeated or malformed one is a 400 before it runs),
and the body decoded into its declared type.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from skedlib.api.responses import Response
from skedlib.client import Client
from skedlib.codecs import decode
from skedlib.environments.manager import Environments
from skedlib.errors import ValidationError
from skedlib.federation import DEFAULT_TIMEOUT, Datacenter
from skedlib.jobs.client import JobClient

__all__ = ["BASE_PATH", "METHODS", "Call", "QueryParam", "Route", "Router", "between",
           "boolean",
           "decode_body", "integer", "non_negative", "one_of", "parse_query", "seconds",
           "text"]

BASE_PATH = "/v1"
"""Every route's path is under this prefix."""

METHODS = ("GET", "POST", "PUT", "DELETE")
"""The methods routes use, in the order an ``Allow`` header lists them."""

Parse = Callable[[str, str], Any]
"""A query parameter's parser: (name, raw value) → value; raises ValidationError."""


def text(name: str, value: str) -> str:
    """A query parameter taken as it is."""
    return value


def integer(name: str, value: str) -> int:
    """An integer query parameter."""
    try:
        return int(value)
    except ValueError:
        raise ValidationError(f"query parameter {name}: expected an integer, got "
                              f"{value!r}") from None


def non_negative(name: str, value: str) -> int:
    """An integer query parameter >= 0."""
    number = integer(name, value)
    if number < 0:
        raise ValidationError(f"query parameter {name}: must be >= 0, got {number}")
    return number


def between(low: int, high: int) -> Parse:
    """A parser of an integer from ``low`` to ``high``."""
    def parse(name: str, value: str) -> int:
        number = integer(name, value)
        if not low <= number <= high:
            raise ValidationError(f"query parameter {name}: expected {low} to {high}, got "
                                  f"{number}")
        return number
    return parse


def boolean(name: str, value: str) -> bool:
    """``true``/``1``/``yes`` or ``false``/``0``/``no``/empty, any case."""
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no", ""):
        return False
    raise ValidationError(f"query parameter {name}: expected true or false, got {value!r}")


def seconds(maximum: float) -> Parse:
    """A parser of a number of seconds from 0 to ``maximum`` (nan and inf refused)."""
    def parse(name: str, value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not 0 <= number <= maximum:  # also refuses nan
            raise ValidationError(f"query parameter {name}: expected seconds from 0 to "
                                  f"{maximum:g}, got {value!r}")
        return number
    return parse


def one_of(values: Sequence[str]) -> Parse:
    """A parser accepting only ``values``."""
    def parse(name: str, value: str) -> str:
        if value not in values:
            raise ValidationError(f"query parameter {name}: expected one of "
                                  f"{', '.join(values)}, got {value!r}")
        return value
    return parse


@dataclass(frozen=True)
class QueryParam:
    """An optional query parameter: its name, JSON Schema and description (for the
    document), and its parser (for the router)."""

    name: str
    schema: dict[str, Any]
    description: str
    parse: Parse = text


@dataclass(frozen=True)
class Call:
    """One routed request as its handler sees it."""

    environments: Environments
    jobs: JobClient
    client: Client
    path: dict[str, str]
    """Path parameters by name (``{name}`` in the template), unquoted."""
    query: dict[str, Any]
    """The declared query parameters that were given, parsed."""
    data: Any
    """The body decoded into the route's ``body`` type (None without one)."""
    datacenters: Sequence[Datacenter] = ()
    """The datacenters the server reads for ``/v1/all-datacenters/…`` (none: it does not
    aggregate)."""
    dc_timeout: float = DEFAULT_TIMEOUT
    """Seconds a datacenter has to answer before it is reported as unreachable."""


@dataclass(frozen=True)
class Route:
    """One operation: dispatch (``method``, ``path``, ``handler``, ``query``, ``body``,
    ``public``) and documentation (the rest), declared together so they cannot drift.

    ``errors`` are its 4xx codes (401 and 503 are added unless ``public``); what each
    means is ``meanings[code]``, else the tag's default text (:mod:`skedlib.api.openapi`).
    ``path_docs`` describes the template's path parameters.
    """

    method: str
    path: str
    handler: Callable[[Call], Response]
    operation_id: str
    summary: str
    description: str
    ok: str = "200"
    ok_schema: str = ""
    errors: tuple[str, ...] = ()
    body: type[Any] | None = None
    query: tuple[QueryParam, ...] = ()
    public: bool = False
    tag: str = "environments"
    meanings: Mapping[str, str] = field(default_factory=dict)
    ok_response: Mapping[str, Any] | None = None
    path_docs: Mapping[str, str] = field(default_factory=dict)

    @property
    def segments(self) -> tuple[str, ...]:
        """The path template split at ``/``."""
        return tuple(self.path.strip("/").split("/"))


class Router:
    """Path segments → the routes of that path (by method) and the path parameters."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self._paths: dict[tuple[str, ...], dict[str, Route]] = {}
        for route in routes:
            methods = self._paths.setdefault(route.segments, {})
            if route.method in methods:
                raise ValueError(f"route {route.method} {route.path}: declared twice")
            methods[route.method] = route

    def match(self, parts: Sequence[str]) -> tuple[dict[str, Route], dict[str, str]] | None:
        """The routes whose template matches ``parts`` (unquoted segments; a ``{param}``
        segment matches any one segment) and the captured parameters, or None."""
        for template, methods in self._paths.items():
            if len(template) != len(parts):
                continue
            params: dict[str, str] = {}
            for want, got in zip(template, parts, strict=True):
                if want.startswith("{") and want.endswith("}"):
                    params[want[1:-1]] = got
                elif want != got:
                    break
            else:
                return methods, params
        return None

    @staticmethod
    def allowed(methods: Mapping[str, Route]) -> list[str]:
        """The methods of one path, in :data:`METHODS` order."""
        return sorted(methods, key=lambda m: METHODS.index(m) if m in METHODS else 99)


def parse_query(route: Route, query: str) -> dict[str, Any]:
    """The query string ``query`` parsed by ``route``'s declared parameters; raises
    :class:`ValidationError` for a repeated, unknown or malformed parameter."""
    raw: dict[str, str] = {}
    for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if key in raw:
            raise ValidationError(f"query parameter {key}: given more than once")
        raw[key] = value
    names = [q.name for q in route.query]
    for key in raw:
        if key not in names:
            raise ValidationError(f"query parameter {key}: unknown (expected "
                                  f"{', '.join(names) if names else 'none'})")
    return {q.name: q.parse(q.name, raw[q.name]) for q in route.query if q.name in raw}


def decode_body(body: bytes, type_: type[Any]) -> Any:
    """The JSON request ``body`` decoded into ``type_``; an unknown field is named with
    its path and the fields expected there."""
    if not body.strip():
        raise ValidationError("request body: missing; expected a JSON object")
    try:
        return decode(body, type_, where="request body")
    except ValidationError as exc:
        unknown = re.fullmatch(r"request body: (?:field (\S+): )?Object contains unknown "
                               r"field `(.*)`", str(exc), re.S)
        if unknown is None:
            raise
        at, name = unknown.groups()
        where: Any = type_
        for part in (at or "").split(".") if at else ():
            where = next((f.type for f in msgspec.structs.fields(where)
                          if f.encode_name == part), None)
        # the names as JSON spells them (a renamed struct's camelCase, not its attributes)
        expected = (f" (expected {', '.join(where.__struct_encode_fields__)})"
                    if hasattr(where, "__struct_encode_fields__") else "")
        path = f"{at}.{name}" if at else name
        raise ValidationError(f"request body: field {path}: unknown field{expected}"
                              ) from None
