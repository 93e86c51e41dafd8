"""The jobs routes of the REST API (``sked serve``), over a real SQLite store and a real
HTTP server on a free port. The job worker's side is simulated (``tests/jobs/fakes.py``):
:class:`Worker` makes the store transitions a worker makes (register, claim, finish), and
:class:`LogNode` is a tiny HTTP server serving ``/v1/jobs/<id>/logs`` as a worker's log
server does.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import requests

from skedlib.api import ApiServer, Stream
from skedlib.client import Client
from skedlib.jobs import JobStore
from skedlib.jobs.keys import JobKeyspace
from tests.api.conftest import Http
from tests.jobs.fakes import (
    OUTPUT,
    LogNode,
    Worker,
    client,
    closed_port_url,
    later,
    log_node,
    url,
)

__all__ = ["client", "log_node", "url"]  # fixtures, imported to be used here

TOKEN = "j0bs-token"


@pytest.fixture
def server(client: Client) -> Iterator[Any]:
    with ApiServer(client, "127.0.0.1", 0, token=TOKEN) as s:
        yield s


@pytest.fixture
def http(server: Any) -> Http:
    return Http(server.url, TOKEN)


def _submit(http: Http, body: dict[str, Any] | None = None, **query: str) -> dict[str, Any]:
    path = "/jobs" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    status, job = http.post(path, body or {"command": "true"})
    assert status == 201, job
    return dict(job)


# -- auth and routing -----------------------------------------------------------------------
def test_every_jobs_route_needs_the_token(server: Any) -> None:
    anonymous, wrong = Http(server.url), Http(server.url, "nope")
    for http in (anonymous, wrong):
        for method, path in (("GET", "/jobs"), ("POST", "/jobs"), ("GET", "/jobs/x"),
                             ("POST", "/jobs/x/cancel"), ("GET", "/jobs/x/wait"),
                             ("GET", "/jobs/x/logs"), ("GET", "/nodes")):
            status, err = http.call(method, path, {"command": "true"} if method == "POST"
                                    else None)
            assert (status, err["error"]) == (401, "unauthorized"), (method, path)
    r = requests.get(server.url + "/jobs/x/logs", timeout=5)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert anonymous.get("/ping") == (200, {"status": "ok"})


def test_wrong_methods_and_paths(server: Any, http: Http) -> None:
    for method, path, allowed in (("DELETE", "/jobs", "GET, POST"), ("PUT", "/jobs/x", "GET"),
                                  ("GET", "/jobs/x/cancel", "POST"),
                                  ("POST", "/jobs/x/wait", "GET"),
                                  ("POST", "/jobs/x/logs", "GET"), ("POST", "/nodes", "GET")):
        r = requests.request(method, server.url + path, timeout=5,
                             headers={"Authorization": f"Bearer {TOKEN}"})
        assert (r.status_code, r.headers["Allow"]) == (405, allowed), (method, path)
        assert r.json()["error"] == "method_not_allowed"
    status, err = http.get("/jobs/x/more")
    assert (status, err["error"]) == (404, "not_found")


# -- submit ---------------------------------------------------------------------------------
def test_submit_queues_the_spec_and_status_explains_the_wait(client: Client, server: Any,
                                                             http: Http) -> None:
    body = {"command": "python3", "args": ["train.py", "--epochs", "3"],
            "env": {"SEED": "1"}, "cwd": "/tmp", "name": "train",
            "requirements": {"memory": 2048, "cpu_units": 1536, "disk": 0},
            "restart_on_node_failure": False, "max_attempts": 5, "timeout": 90 * 10**9}
    r = requests.post(server.url + "/jobs", json=body, timeout=5,
                      headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 201, r.text
    job = r.json()
    assert r.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert uuid.UUID(job["id"]).version == 7
    assert {k: job[k] for k in body} == body
    assert (job["status"], job["attempts"], job["exit_code"], job["started_at"]) == (
        "queued", 0, None, None)
    assert JobStore(client.store).get(job["id"]).job.args == body["args"]

    status, got = http.get(f"/jobs/{job['id']}")
    assert status == 200 and got["reason"] == "no job worker is running"
    Worker(client, "small", memory=1024)
    _, got = http.get(f"/jobs/{job['id']}")
    assert got["reason"].startswith("no node can meet its requirements (memory 2048 MiB, "
                                    "cpu_units 1536); the largest node, small, offers"), got
    Worker(client, "big", memory=8192)
    _, got = http.get(f"/jobs/{job['id']}")
    assert got["reason"] == "waiting for a node with free resources"


def test_submit_with_an_id_is_refused_the_second_time(http: Http) -> None:
    job = _submit(http, {"command": "true"}, id="nightly-2024-05-01")
    assert job["id"] == "nightly-2024-05-01"
    status, err = http.post("/jobs?id=nightly-2024-05-01", {"command": "false"})
    assert (status, err["error"]) == (409, "conflict")
    assert "job nightly-2024-05-01 already exists" in err["message"]
    assert http.get("/jobs/nightly-2024-05-01")[1]["command"] == "true"


@pytest.mark.parametrize(("body", "query", "why"), [
    ({"command": "true", "colour": "red"}, "",
     "request body: field colour: unknown field (expected command, args, env, cwd, "
     "requirements, restart_on_node_failure, max_attempts, timeout, name)"),
    ({"command": "true", "requirements": {"gpu": 1}}, "",
     "request body: field requirements.gpu: unknown field (expected memory, cpu_units, "
     "disk)"),
    ({"args": ["x"]}, "", "Object missing required field `command`"),
    ({"command": ""}, "", "field command: must be a non-empty program name"),
    ({"command": "true", "timeout": -1}, "", "field timeout: Expected `int` >= 0"),
    ({"command": "true", "max_attempts": 0}, "", "field max_attempts: Expected `int` >= 1"),
    ({"command": "true", "env": {"A=B": "1"}}, "", "not a valid environment variable"),
    ({"command": "true"}, "?id=a..b", "invalid job id 'a..b'"),
    ({"command": "true"}, "?id=", "invalid job id '': must not be empty"),
    ({"command": "true"}, "?colour=red", "query parameter colour: unknown (expected id)"),
    (None, "", "request body: missing"),
])
def test_submit_refuses_bad_input(client: Client, http: Http, body: Any, query: str,
                                  why: str) -> None:
    status, err = http.post("/jobs" + query, body)
    assert (status, err["error"]) == (400, "bad_request"), err
    assert why in err["message"], err["message"]
    assert JobStore(client.store).list() == []


def test_malformed_json_is_a_400(http: Http) -> None:
    status, err = http.post("/jobs", raw=b'{"command": ')
    assert status == 400 and "malformed JSON" in err["message"]


# -- status, cancel -------------------------------------------------------------------------
def test_unknown_ids_are_404_everywhere(http: Http) -> None:
    for method, path in (("GET", "/jobs/nope"), ("POST", "/jobs/nope/cancel"),
                         ("GET", "/jobs/nope/wait?timeout=0"), ("GET", "/jobs/nope/logs")):
        status, err = http.call(method, path)
        assert (status, err) == (404, {"error": "not_found", "message": "job nope not found"})
    status, err = http.get("/jobs/a..b")
    assert status == 400 and "invalid job id" in err["message"]


def test_status_of_a_running_and_a_finished_job(client: Client, http: Http) -> None:
    worker = Worker(client, "n1", log_url="http://127.0.0.1:1")
    job = _submit(http)
    worker.claim(job["id"])
    _, got = http.get(f"/jobs/{job['id']}")
    assert (got["status"], got["node"], got["attempts"], got["limits"], got["log_url"],
            got["reason"]) == ("running", "n1", 1, "rlimit", "http://127.0.0.1:1", "")
    assert got["started_at"] >= got["submitted_at"]
    worker.finish(job["id"], "failed", 3)
    _, got = http.get(f"/jobs/{job['id']}")
    assert (got["status"], got["exit_code"], got["reason"]) == ("failed", 3,
                                                                "exited with status 3")
    assert got["finished_at"] >= got["started_at"]


def test_cancel_queued_and_running_jobs_but_not_finished_ones(client: Client,
                                                              http: Http) -> None:
    worker = Worker(client)
    queued, running, done = _submit(http), _submit(http), _submit(http)
    worker.claim(running["id"])
    worker.claim(done["id"])
    worker.finish(done["id"])
    for job in (queued, running):
        status, got = http.post(f"/jobs/{job['id']}/cancel")
        assert status == 200 and (got["status"], got["reason"]) == ("canceled", "canceled")
        assert got["finished_at"] is not None
    assert client.backend.list(JobKeyspace(client.keys).node_jobs_running("n1")).items == []
    status, err = http.post(f"/jobs/{queued['id']}/cancel")
    assert (status, err) == (409, {"error": "conflict", "message":
                                   f"job {queued['id']} is already canceled (canceled)"})
    status, err = http.post(f"/jobs/{done['id']}/cancel")
    assert status == 409 and "is already complete" in err["message"]
    assert http.get(f"/jobs/{done['id']}")[1]["status"] == "complete"
    status, err = http.post(f"/jobs/{done['id']}/cancel?reason=x")
    assert status == 400 and "query parameter reason: unknown" in err["message"]
    assert JobStore(client.store).inconsistencies() == []


# -- list -----------------------------------------------------------------------------------
def test_list_pages_filters_and_explains(client: Client, http: Http) -> None:
    for i in range(1, 6):
        _submit(http, {"command": "true", "requirements": {"memory": 100_000 if i == 5
                                                          else 0}}, id=f"j{i}")
    worker = Worker(client, "n1", memory=1024)
    worker.claim("j2")
    status, page = http.get("/jobs", limit="2")
    assert status == 200
    assert ([j["id"] for j in page["items"]], page["next_token"]) == (["j1", "j2"], "j2")
    _, page = http.get("/jobs", limit="2", next_token="j2")
    assert ([j["id"] for j in page["items"]], page["next_token"]) == (["j3", "j4"], "j4")
    _, page = http.get("/jobs", limit="2", next_token="j4")
    assert ([j["id"] for j in page["items"]], page["next_token"]) == (["j5"], None)
    assert page["items"][0]["reason"].startswith("no node can meet its requirements")
    _, page = http.get("/jobs")
    assert [j["id"] for j in page["items"]] == ["j1", "j2", "j3", "j4", "j5"]
    assert page["items"][0]["reason"] == "waiting for a node with free resources"
    assert page["items"][1]["reason"] == ""  # running: nothing to explain
    assert http.get("/jobs", next_token="")[1]["items"][0]["id"] == "j1"
    _, page = http.get("/jobs", status="running")
    assert [j["id"] for j in page["items"]] == ["j2"]
    assert http.get("/jobs", status="complete") == (200, {"items": [], "next_token": None})
    for query, why in (({"status": "done"}, "query parameter status: expected one of "
                                            "queued, running, complete, failed, canceled"),
                       ({"status": ""}, "query parameter status"),
                       ({"limit": "0"}, "limit must be within 1..1000"),
                       ({"limit": "1001"}, "limit must be within 1..1000"),
                       ({"limit": "x"}, "expected an integer"),
                       ({"page": "2"}, "query parameter page: unknown")):
        status, err = http.get("/jobs", **query)
        assert (status, err["error"]) == (400, "bad_request"), query
        assert why in err["message"], (query, err)


# -- wait -----------------------------------------------------------------------------------
def test_wait_returns_once_another_thread_finishes_the_job(client: Client,
                                                           http: Http) -> None:
    worker = Worker(client)
    job = _submit(http)
    worker.claim(job["id"])
    later(0.5, worker.finish, job["id"], "complete", 0)
    started = time.monotonic()
    status, got = http.get(f"/jobs/{job['id']}/wait", timeout="20")
    took = time.monotonic() - started
    assert status == 200 and (got["status"], got["exit_code"]) == ("complete", 0)
    # It waited for the finish; a wait that missed it would still be waiting when the
    # client's 10 s read timeout fails the request, long before its own 20 s.
    assert took > 0.4, took
    # An ended job answers at once: the default wait (30 s) would outlast that timeout.
    assert http.get(f"/jobs/{job['id']}/wait")[1]["status"] == "complete"


def test_wait_answers_with_the_unfinished_job_at_its_timeout(client: Client,
                                                             http: Http) -> None:
    job = _submit(http)
    started = time.monotonic()
    status, got = http.get(f"/jobs/{job['id']}/wait", timeout="0.3")
    assert time.monotonic() - started > 0.25  # and it answered: the client waits 10 s at most
    assert (status, got["status"], got["reason"]) == (200, "queued",
                                                      "no job worker is running")
    status, got = http.get(f"/jobs/{job['id']}/wait", timeout="0")
    assert (status, got["status"]) == (200, "queued")
    for bad in ("61", "-1", "nan", "inf", "soon"):
        status, err = http.get(f"/jobs/{job['id']}/wait", timeout=bad)
        assert status == 400, bad
        assert err["message"] == (f"query parameter timeout: expected seconds from 0 to 60, "
                                  f"got {bad!r}")


def test_wait_sees_a_cancel(client: Client, http: Http) -> None:
    job = _submit(http)
    later(0.3, http.post, f"/jobs/{job['id']}/cancel")
    status, got = http.get(f"/jobs/{job['id']}/wait", timeout="20")
    assert (status, got["status"]) == (200, "canceled")


# -- nodes ----------------------------------------------------------------------------------
def test_nodes_lists_the_live_workers(client: Client, http: Http) -> None:
    assert http.get("/nodes") == (200, {"items": []})
    Worker(client, "n2", memory=2048, log_url="http://10.0.0.2:7001")
    gone = Worker(client, "n1")
    status, body = http.get("/nodes")
    assert status == 200 and [n["name"] for n in body["items"]] == ["n1", "n2"]
    n2 = body["items"][1]
    assert (n2["capacity"], n2["slots"], n2["log_url"], n2["limits"], n2["hostname"]) == (
        {"memory": 2048, "cpu_units": 4096, "disk": 10240}, 4, "http://10.0.0.2:7001",
        "rlimit", "host-a")
    gone.leave()
    assert [n["name"] for n in http.get("/nodes")[1]["items"]] == ["n2"]
    status, err = http.get("/nodes", all="true")
    assert status == 400 and "unknown (expected none)" in err["message"]


# -- logs -----------------------------------------------------------------------------------
def _logs(server: Any, job_id: str, **params: str) -> requests.Response:
    return requests.get(f"{server.url}/jobs/{job_id}/logs", params=params, timeout=30,
                        headers={"Authorization": f"Bearer {TOKEN}"}, stream=True)


def test_logs_are_proxied_from_the_node(client: Client, server: Any, http: Http,
                                        log_node: LogNode) -> None:
    worker = Worker(client, "n1", log_url=log_node.url)
    job = _submit(http)
    status, err = http.get(f"/jobs/{job['id']}/logs")
    assert (status, err) == (409, {"error": "conflict", "message": f"job {job['id']} has "
                                   "no output yet: it is queued and never started"})
    worker.claim(job["id"])
    log_node.append(job["id"], OUTPUT)
    r = _logs(server, job["id"])
    assert r.status_code == 200 and r.headers["Content-Type"] == "text/plain"
    assert r.headers["Transfer-Encoding"] == "chunked"
    assert r.headers["Cache-Control"] == "no-store"
    assert r.content == OUTPUT
    assert log_node.requests[-1] == (job["id"], 0, False)
    r = _logs(server, job["id"], offset="7")
    assert r.content == OUTPUT[7:] and log_node.requests[-1] == (job["id"], 7, False)
    r = _logs(server, job["id"], offset=str(len(OUTPUT) + 5))
    assert r.status_code == 200 and r.content == b""
    for query, why in (({"offset": "-1"}, "query parameter offset: must be >= 0"),
                       ({"offset": "x"}, "expected an integer"),
                       ({"follow": "maybe"}, "query parameter follow: expected true or "
                                             "false"),
                       ({"tail": "5"}, "query parameter tail: unknown (expected offset, "
                                       "follow)")):
        status, err = http.get(f"/jobs/{job['id']}/logs", **query)
        assert (status, err["error"]) == (400, "bad_request") and why in err["message"]
    worker.finish(job["id"])  # an ended job's output is still served by its node
    assert _logs(server, job["id"], follow="true").content == OUTPUT


def test_following_logs_streams_until_the_job_ends(client: Client, server: Any,
                                                   http: Http, log_node: LogNode) -> None:
    worker = Worker(client, "n1", log_url=log_node.url)
    job = _submit(http)
    worker.claim(job["id"])
    log_node.append(job["id"], b"start\n")
    r = _logs(server, job["id"], follow="true", offset="2")
    chunks = r.iter_content(chunk_size=None)
    assert next(chunks) == b"art\n"  # arrives while the job still runs
    assert log_node.requests[-1] == (job["id"], 2, True)
    log_node.append(job["id"], b"middle\n")
    assert next(chunks) == b"middle\n"

    def end() -> None:
        log_node.append(job["id"], b"end\n")
        worker.finish(job["id"])
        log_node.done.add(job["id"])

    later(0.2, end)
    rest = b"".join(chunks)
    assert rest == b"end\n"
    assert client.backend.get(JobKeyspace(client.keys).job(job["id"])) is not None


def test_logs_when_the_node_cannot_serve_them(client: Client, server: Any, http: Http,
                                              log_node: LogNode) -> None:
    job = _submit(http)
    Worker(client, "gone", log_url=closed_port_url()).claim(job["id"])
    status, err = http.get(f"/jobs/{job['id']}/logs")
    assert (status, err["error"]) == (503, "unavailable")
    assert "which cannot be reached" in err["message"] and "node gone" in err["message"]
    other = _submit(http)
    Worker(client, "n1", log_url=log_node.url).claim(other["id"])  # the node has nothing
    status, err = http.get(f"/jobs/{other['id']}/logs")
    assert status == 503 and "no longer has the output of job" in err["message"], err


def test_a_node_failing_midway_cuts_the_response_short(client: Client, server: Any,
                                                       http: Http, log_node: LogNode) -> None:
    job = _submit(http)
    Worker(client, "n1", log_url=log_node.url).claim(job["id"])
    log_node.append(job["id"], b"partial output\n")
    reset = log_node.broken[job["id"]] = threading.Event()
    r = _logs(server, job["id"])
    assert r.status_code == 200
    chunks = r.iter_content(chunk_size=None)
    assert next(chunks) == b"partial output\n"
    reset.set()
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        b"".join(chunks)  # no final chunk: the client knows the output is incomplete
    assert http.get("/ping") == (200, {"status": "ok"})  # the server goes on


def test_logs_to_an_http_1_0_client_end_with_the_connection(client: Client, server: Any,
                                                            http: Http,
                                                            log_node: LogNode) -> None:
    job = _submit(http)
    Worker(client, "n1", log_url=log_node.url).claim(job["id"])
    log_node.append(job["id"], OUTPUT)
    host, port = server.address
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(f"GET /v1/jobs/{job['id']}/logs HTTP/1.0\r\nHost: {host}:{port}\r\n"
                  f"Authorization: Bearer {TOKEN}\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"chunked" not in head.lower()
    assert b"Connection: close" in head
    assert body == OUTPUT


def test_the_logs_route_without_http(client: Client, server: Any, http: Http,
                                     log_node: LogNode) -> None:
    """Api.handle gives a Stream body: the routes stay testable without a server."""
    job = _submit(http)
    Worker(client, "n1", log_url=log_node.url).claim(job["id"])
    log_node.append(job["id"], OUTPUT)
    host, port = server.address
    here = {"host": f"{host}:{port}"}  # the HTTP layer passes the Host header on
    response = server.api.handle("GET", f"/v1/jobs/{job['id']}/logs?offset=5",
                                 {"authorization": f"Bearer {TOKEN}", **here}, b"")
    assert response.status == 200 and isinstance(response.body, Stream)
    assert b"".join(response.body.chunks) == OUTPUT[5:]
    response = server.api.handle("GET", f"/v1/jobs/{job['id']}", here, b"")
    assert response.status == 401
    response = server.api.handle("GET", f"/v1/jobs/{job['id']}/wait?timeout=0",
                                 {"authorization": f"Bearer {TOKEN}", **here}, b"")
    assert response.status == 200 and msgspec.structs.asdict(response.body)["status"] == \
        "running"
