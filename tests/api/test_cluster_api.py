"""The cluster routes (``/v1/services``, ``/v1/tasks``, ``/v1/hosts``, ``/v1/changes``)
against a real SQLite store, real ``skedlib-agent`` processes and a real
``skedlib-scheduler``: what the API reads is what ``sked`` shows, writes go through the
same checks, the read-only token reads but cannot write, and the change stream wakes on a
change."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from skedlib.api import cluster as cluster_routes
from tests.api.conftest import READ_TOKEN, Http, Loop
from tests.scheduler.conftest import wait_for

pytestmark = pytest.mark.slow

def test_reads_agree_with_the_store_and_the_cli(running: tuple[Loop, Http, Http]) -> None:
    loop, _, reader = running
    services = reader.ok("GET", "/services")
    (web,) = services["items"]
    assert (web["name"], web["desired"], web["placed"], web["healthy"]) == ("web", 3, 3, 3)
    assert web["clusters"] == ["default"] and web["scheduler"] == "binpack"
    assert reader.ok("GET", "/services", cluster="other")["items"] == []

    detail = reader.ok("GET", "/services/web")
    assert detail["service"]["max"] == 5 and len(detail["tasks"]) == 3
    assert all(t["healthy"] for t in detail["tasks"])

    hosts = {h["name"]: h for h in reader.ok("GET", "/hosts")["items"]}
    assert set(hosts) == {loop.host(1), loop.host(2), "spare"}
    assert hosts["spare"]["live"] is False and hosts["spare"]["memory_total"] is None
    assert hosts["spare"]["attributes"] == {"zone": "b"}
    live = hosts[loop.host(1)]
    assert live["live"] and live["memory_total"] == 512
    assert sum(hosts[loop.host(n)]["tasks"] for n in (1, 2)) == 3

    tasks = reader.ok("GET", "/tasks")
    ids = [t["id"] for t in tasks["items"]]
    assert ids == sorted(ids) and len(ids) == 3 and tasks["next_token"] is None
    # the CLI shows the same tasks
    code, out = loop.sked("tasks")
    assert code == 0 and all(i in out for i in ids)

    one = reader.ok("GET", f"/tasks/{ids[0]}")
    assert one["row"]["id"] == ids[0] and one["row"]["healthy"]
    assert one["task"]["service"] == "web" and one["task"]["host"] == one["row"]["host"]
    assert one["health"] is not None and one["health"]["host"] == one["row"]["host"]
    on_host = reader.ok("GET", f"/hosts/{one['row']['host']}")
    assert ids[0] in [t["id"] for t in on_host["tasks"]]

    # its output, from the agent of its host
    r = reader.session.get(reader.base + f"/tasks/{ids[0]}/logs", timeout=10)
    assert r.status_code == 200 and r.text == f"hello from {ids[0]}\n", r.text
    assert r.headers["Content-Type"].startswith("text/plain")
    status, err = reader.get("/tasks/default-nope-1-0/logs")
    assert status == 404, err

    # paging: two, then the rest
    first = reader.ok("GET", "/tasks", limit=2)
    assert len(first["items"]) == 2 and first["next_token"] == ids[1]
    rest = reader.ok("GET", "/tasks", limit=2, next_token=first["next_token"])
    assert [t["id"] for t in rest["items"]] == ids[2:] and rest["next_token"] is None
    # filters
    mine = reader.ok("GET", "/tasks", host=loop.host(1))["items"]
    assert {t["host"] for t in mine} <= {loop.host(1)}
    assert reader.ok("GET", "/tasks", state="rejected")["items"] == []

    for path in ("/services/nope", "/tasks/default-nope-1-0", "/hosts/nope"):
        status, err = reader.get(path)
        assert status == 404 and err["error"] == "not_found", (path, err)
    status, err = reader.get("/tasks", limit=0)
    assert status == 400 and "limit" in err["message"]


def test_scale_drain_delete(running: tuple[Loop, Http, Http]) -> None:
    loop, admin, reader = running
    # the read-only token cannot change anything
    for method, path, body in (("PUT", "/services/web/scale", {"desired": 1}),
                               ("PUT", f"/hosts/{loop.host(1)}/drain", {}),
                               ("DELETE", "/services/web", None)):
        status, err = reader.call(method, path, body)
        assert status == 403, (method, path, err)
    assert reader.ok("GET", "/services/web")["service"]["desired"] == 3

    # bounds are checked as for sked scale; nothing is written
    status, err = admin.put("/services/web/scale", {"desired": 6})
    assert status == 400 and "max" in err["message"], err
    status, err = admin.put("/services/web/scale", {"desired": 2, "extra": 1})
    assert status == 400 and "extra" in err["message"], err
    scaled = admin.ok("PUT", "/services/web/scale", {"desired": 2})
    assert (scaled["previous"], scaled["service"]["desired"]) == (3, 2)
    loop.wait_healthy("web", 2)
    wait_for(lambda: len(admin.ok("GET", "/tasks")["items"]) == 2, 30, "the third task to go")

    drained = admin.ok("PUT", f"/hosts/{loop.host(1)}/drain", {"draining": True})
    assert drained["draining"] is True and drained["name"] == loop.host(1)
    wait_for(lambda: all(t["host"] == loop.host(2)
                         for t in admin.ok("GET", "/tasks")["items"])
             and len(admin.ok("GET", "/tasks", state="healthy")["items"]) == 2,
             45, "the drained host's tasks to move")
    hosts = {h["name"]: h for h in admin.ok("GET", "/hosts")["items"]}
    assert hosts[loop.host(1)]["draining"] is True
    admin.ok("PUT", f"/hosts/{loop.host(1)}/drain", {"draining": False})

    removed = admin.ok("DELETE", "/services/web")
    assert removed["name"] == "web"
    assert admin.get("/services/web")[0] == 404
    wait_for(lambda: admin.ok("GET", "/tasks")["items"] == [], 30, "the tasks to stop")
    status, _ = admin.delete("/services/web")
    assert status == 404


def _events(response: requests.Response) -> Iterator[dict[str, Any]]:
    """The ``change`` events of a text/event-stream response, as they come."""
    event = ""
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            event = line[len("event: "):]
        elif line.startswith("data: ") and event == "change":
            yield json.loads(line[len("data: "):])


def test_change_stream_wakes_on_a_change(running: tuple[Loop, Http, Http]) -> None:
    _, admin, reader = running
    with reader.session.get(reader.base + "/changes", params={"timeout": 30}, stream=True,
                            timeout=(10, 30)) as r:
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        events = _events(r)
        start = next(events)["revision"]
        assert start > 0
        # a write made after the stream started is announced: an event at or after its
        # revision comes (agents write too, so earlier events may come first)
        written = admin.ok("PUT", "/services/web/scale", {"desired": 2})["revision"]
        assert written > start
        for event in events:
            if event["revision"] >= written:
                break
        else:
            raise AssertionError(f"the stream ended before revision {written}")


def test_change_streams_are_bounded(running: tuple[Loop, Http, Http],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, reader = running
    monkeypatch.setattr(cluster_routes, "_streams", threading.BoundedSemaphore(1))
    with reader.session.get(reader.base + "/changes", params={"timeout": 30}, stream=True,
                            timeout=(10, 30)) as first:
        assert first.status_code == 200
        next(_events(first))
        second = requests.get(reader.base + "/changes", timeout=10,
                              headers={"Authorization": f"Bearer {READ_TOKEN}"})
        assert second.status_code == 503 and "change streams" in second.json()["message"]
    # the first one's slot is given back when it ends
    wait_for(lambda: requests.get(reader.base + "/changes", params={"timeout": 0.1},
                                  timeout=10, headers={"Authorization":
                                                       f"Bearer {READ_TOKEN}"}
                                  ).status_code == 200, 15, "the stream slot to free")
    # without a token: refused
    assert requests.get(reader.base + "/changes", timeout=10).status_code == 401
