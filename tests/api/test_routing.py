"""The route table itself: the router and the OpenAPI document come from the same
declarations, a path or method declared twice is refused, and query parameters are
parsed by what each route declares."""

from __future__ import annotations

import re

import pytest

from skedlib.api import ROUTES, Route, Router, openapi_document
from skedlib.api.responses import Response
from skedlib.api.routing import Call, QueryParam, integer, parse_query
from skedlib.errors import ValidationError


def _noop(call: Call) -> Response:
    return Response(200, {})


def test_every_route_is_in_the_document_and_nothing_else() -> None:
    doc = openapi_document()
    documented = {(method.upper(), path) for path, item in doc["paths"].items()
                  for method in item if method != "parameters"}
    assert documented == {(r.method, r.path) for r in ROUTES}
    assert len({r.operation_id for r in ROUTES}) == len(ROUTES)


def test_a_route_declared_twice_is_refused() -> None:
    route = Route("GET", "/x/{id}", _noop, "getX", "Get", "Get one.")
    with pytest.raises(ValueError, match=re.escape("route GET /x/{id}: declared twice")):
        Router([route, route])


def test_match_captures_parameters_and_lists_methods_in_allow_order() -> None:
    router = Router([Route("POST", "/x", _noop, "a", "A", "A."),
                     Route("GET", "/x", _noop, "b", "B", "B."),
                     Route("DELETE", "/x/{id}", _noop, "c", "C", "C."),
                     Route("GET", "/x/{id}", _noop, "d", "D", "D.")])
    found = router.match(["x"])
    assert found is not None and router.allowed(found[0]) == ["GET", "POST"]
    found = router.match(["x", "a/b"])
    assert found is not None and found[1] == {"id": "a/b"}
    assert router.allowed(found[0]) == ["GET", "DELETE"]
    assert router.match(["x", "1", "more"]) is None and router.match(["y"]) is None


def test_query_parameters_are_parsed_by_their_declaration() -> None:
    route = Route("GET", "/x", _noop, "x", "X", "X.",
                  query=(QueryParam("limit", {"type": "integer"}, "", integer),
                         QueryParam("q", {"type": "string"}, "")))
    assert parse_query(route, "limit=3&q=") == {"limit": 3, "q": ""}
    assert parse_query(route, "") == {}
    for query, why in (("limit=1&limit=2", "query parameter limit: given more than once"),
                       ("colour=red", "query parameter colour: unknown (expected limit, q)"),
                       ("limit=x", "query parameter limit: expected an integer, got 'x'")):
        with pytest.raises(ValidationError, match=re.escape(why)):
            parse_query(route, query)
