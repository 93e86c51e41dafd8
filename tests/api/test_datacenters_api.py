"""``/v1/datacenters`` and ``/v1/all-datacenters/tasks|hosts|services`` over two real etcd
datacenters: every row marked with its datacenter, the token required as on every
route, and with one datacenter's etcd stopped the other is still served while the
stopped one is listed as unreachable, with why, within the server's timeout."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from skedlib.api import ApiServer
from tests.api.conftest import READ_TOKEN, TOKEN, Http, Loop
from tests.api.datacenters import DC_TIMEOUT, TwoDatacenters, two_datacenters

__all__ = ["two_datacenters"]


@pytest.fixture
def server(two_datacenters: TwoDatacenters) -> Iterator[tuple[TwoDatacenters, Http]]:
    """The API over east's store, reading both datacenters."""
    dcs = two_datacenters
    api = ApiServer(dcs.east.client, "127.0.0.1", 0, token=TOKEN, read_token=READ_TOKEN,
                    datacenters=dcs.datacenters, dc_timeout=DC_TIMEOUT)
    api.start()
    try:
        yield dcs, Http(api.url, TOKEN)
    finally:
        api.stop()


def _by_dc(items: list[dict[str, Any]], field: str) -> list[tuple[str, Any]]:
    return sorted((i["datacenter"], i[field]) for i in items)


def test_the_aggregate_marks_each_row_and_reports_a_stopped_datacenter(
        server: tuple[TwoDatacenters, Http]) -> None:
    dcs, admin = server
    assert admin.ok("GET", "/datacenters") == {"items": ["east", "west"],
                                               "timeout": DC_TIMEOUT}

    tasks = admin.ok("GET", "/all-datacenters/tasks")
    assert tasks["unreachable"] == []
    assert [a["datacenter"] for a in tasks["answered"]] == ["east", "west"]
    assert all(a["revision"] > 0 and not a["more"] for a in tasks["answered"])
    assert [(t["datacenter"], t["service"], t["healthy"]) for t in tasks["items"]] == [
        ("east", "web", True), ("east", "web", True)]
    # the same rows as the datacenter's own /v1/tasks, plus the datacenter
    own = admin.ok("GET", "/tasks")["items"]
    assert [{k: v for k, v in t.items() if k != "datacenter"} for t in tasks["items"]] == own

    services = admin.ok("GET", "/all-datacenters/services")
    assert _by_dc(services["items"], "desired") == [("east", 2), ("west", 1)]
    assert next(s for s in services["items"] if s["datacenter"] == "east")["healthy"] == 2
    hosts = admin.ok("GET", "/all-datacenters/hosts")
    assert _by_dc(hosts["items"], "live") == [("east", True), ("west", False)]
    assert {h["name"] for h in hosts["items"] if h["datacenter"] == "west"} == {"spare-west"}

    # one datacenter, a filter and a limit
    west = admin.ok("GET", "/all-datacenters/services", datacenter="west")
    assert [s["datacenter"] for s in west["items"]] == ["west"]
    assert [a["datacenter"] for a in west["answered"]] == ["west"]
    first = admin.ok("GET", "/all-datacenters/tasks", limit=1)
    assert len(first["items"]) == 1
    assert [(a["datacenter"], a["more"]) for a in first["answered"]] == [
        ("east", True), ("west", False)]
    assert admin.ok("GET", "/all-datacenters/tasks", host="nowhere")["items"] == []
    status, body = admin.get("/all-datacenters/tasks", datacenter="north")
    assert status == 400
    assert body["message"] == ("query parameter datacenter: no datacenter 'north' (this "
                               "server reads east, west)")

    # authenticated like every route; the read-only token may read it
    assert Http(admin.base).get("/all-datacenters/tasks")[0] == 401
    assert Http(admin.base, "wrong").get("/datacenters")[0] == 401
    assert Http(admin.base, READ_TOKEN).get("/all-datacenters/hosts")[0] == 200

    # west is cut off: east is still served, west is reported with why
    dcs.west_etcd.stop()
    tasks = admin.ok("GET", "/all-datacenters/tasks")
    assert [t["datacenter"] for t in tasks["items"]] == ["east", "east"]
    assert [a["datacenter"] for a in tasks["answered"]] == ["east"]
    (gone,) = tasks["unreachable"]
    assert gone["datacenter"] == "west" and gone["error"] and "\n" not in gone["error"]
    services = admin.ok("GET", "/all-datacenters/services")
    assert _by_dc(services["items"], "desired") == [("east", 2)]
    assert [u["datacenter"] for u in services["unreachable"]] == ["west"]
    only_west = admin.ok("GET", "/all-datacenters/hosts", datacenter="west")
    assert only_west["items"] == [] and only_west["answered"] == []
    assert [u["datacenter"] for u in only_west["unreachable"]] == ["west"]
    # east's own routes do not depend on west
    assert len(admin.ok("GET", "/tasks")["items"]) == 2


def test_a_server_without_datacenters_says_so(sqlite_loop: Loop) -> None:
    with ApiServer(sqlite_loop.client, "127.0.0.1", 0, token=TOKEN) as api:
        admin = Http(api.url, TOKEN)
        assert admin.ok("GET", "/datacenters")["items"] == []
        status, body = admin.get("/all-datacenters/tasks")
        assert status == 404 and "sked serve --datacenters" in body["message"]
