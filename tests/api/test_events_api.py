"""``GET /v1/events?kind=&name=`` of ``sked serve``: an object's recent events, readable
with the read-only token, refused without a token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from skedlib.api import ApiServer
from skedlib.client import Client
from skedlib.events import EventLog
from tests.api.conftest import TOKEN, Http


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    with Client.open(f"sqlite://{tmp_path}/events.db") as c:
        yield c


def test_events_of_an_object(client: Client) -> None:
    log = EventLog(client.store, "scheduler")
    log.record("task", "default-web-1-0", "placed", "on h1; score 1", host="h1")
    log.record("task", "default-web-1-0", "started", "process pid 7")
    log.record("task", "default-web-1-1", "placed", "on h2")
    log.close()
    reader = "read-" + TOKEN
    with ApiServer(client, "127.0.0.1", 0, token=TOKEN, read_token=reader) as server:
        api = Http(server.url, reader)
        status, got = api.get("/events", kind="task", name="default-web-1-0")
        assert status == 200, got
        assert (got["kind"], got["name"]) == ("task", "default-web-1-0")
        assert [(e["reason"], e["source"]) for e in got["events"]] == [
            ("placed", "scheduler"), ("started", "scheduler")]
        assert got["events"][0]["details"] == {"host": "h1"}
        # an object without events has none; missing or bad parameters are a 400
        assert api.get("/events", kind="job", name="j1") == (
            200, {"kind": "job", "name": "j1", "events": []})
        for params in ({"kind": "task"}, {"name": "x"}, {"kind": "pod", "name": "x"},
                       {"kind": "task", "name": "a/b"}):
            status, err = api.get("/events", **params)
            assert status == 400 and err["message"].count("\n") == 0, (params, err)
        # no token: refused
        status, err = Http(server.url).get("/events", kind="task", name="default-web-1-0")
        assert status == 401 and "placed" not in str(err)


def test_the_openapi_document_lists_the_route(client: Client) -> None:
    with ApiServer(client, "127.0.0.1", 0, token=TOKEN) as server:
        doc = Http(server.url).ok("GET", "/openapi.json")
    op = doc["paths"]["/events"]["get"]
    assert op["operationId"] == "getEvents"
    assert {p["name"] for p in op["parameters"]} == {"kind", "name"}
    assert "EventHistory" in doc["components"]["schemas"]
    assert "Event" in doc["components"]["schemas"]
