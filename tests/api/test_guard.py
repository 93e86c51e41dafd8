"""Who may call the API: a cross-site job submission (what a browser sends from another
site without asking first: ``text/plain``, a foreign ``Origin``, a rebound ``Host``) is
refused and queues nothing; a missing or wrong token is a 401; each check on its own
refuses; a request with the token, a JSON body and the server's own ``Host`` works."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from skedlib.api import ROUTES, ApiServer, RequestGuard
from skedlib.api.auth import split_host
from skedlib.api.errors import HttpError
from skedlib.client import Client
from skedlib.jobs.client import JobClient
from tests.api.conftest import TOKEN

JOB = b'{"command": "touch", "args": ["/tmp/pwned"]}'


@pytest.fixture
def client() -> Iterator[Client]:
    with Client.open(f"memory://{uuid.uuid4().hex}") as c:
        yield c


@pytest.fixture
def server(client: Client) -> Iterator[ApiServer]:
    with ApiServer(client, "127.0.0.1", 0, token=TOKEN, allowed_hosts=("sked.example",)
                   ) as s:
        yield s


def _post(server: ApiServer, headers: dict[str, str], body: bytes = JOB
          ) -> requests.Response:
    return requests.post(server.url + "/jobs", data=body, headers=headers, timeout=10)


def _refused(r: requests.Response, status: int, error: str, client: Client) -> None:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/json"
    assert r.json()["error"] == error and "\n" not in r.json()["message"]
    assert JobClient(client.store).list() == []  # nothing queued


def _ok(server: ApiServer) -> dict[str, str]:
    host, port = server.address
    return {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json",
            "Host": f"{host}:{port}"}


def test_the_cross_site_submission_is_refused_and_queues_nothing(client: Client,
                                                                server: ApiServer) -> None:
    # what a page on evil.example, rebound to 127.0.0.1, makes a browser send
    r = _post(server, {"Content-Type": "text/plain", "Origin": "http://evil.example",
                       "Host": "evil.example"})
    _refused(r, 403, "forbidden", client)
    # ... and the same with the token, to be sure each part is refused on its own
    for change, status, error in (
            ({"Host": "evil.example"}, 403, "forbidden"),
            ({"Host": f"evil.example:{server.address[1]}"}, 403, "forbidden"),
            ({"Origin": "http://evil.example"}, 403, "forbidden"),
            ({"Origin": "null"}, 403, "forbidden"),
            ({"Sec-Fetch-Site": "cross-site"}, 403, "forbidden"),
            ({"Sec-Fetch-Site": "same-site"}, 403, "forbidden"),
            ({"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
            ({"Content-Type": "application/x-www-form-urlencoded"}, 415,
             "unsupported_media_type"),
            ({"Content-Type": "multipart/form-data; boundary=x"}, 415,
             "unsupported_media_type")):
        _refused(_post(server, {**_ok(server), **change}), status, error, client)


def test_a_missing_or_wrong_token_is_a_401_and_changes_nothing(client: Client,
                                                               server: ApiServer) -> None:
    ok = _ok(server)
    without = {k: v for k, v in ok.items() if k != "Authorization"}
    for headers in (without, {**ok, "Authorization": "Bearer wrong"},
                    {**ok, "Authorization": f"Basic {TOKEN}"},
                    {**ok, "Authorization": f"Bearer {TOKEN}x"}):
        r = _post(server, headers)
        _refused(r, 401, "unauthorized", client)
        assert r.headers["WWW-Authenticate"] == "Bearer"


def test_the_right_token_json_and_host_work(client: Client, server: ApiServer) -> None:
    host, port = server.address
    jobs: list[Any] = []
    for extra in ({}, {"Host": f"localhost:{port}"}, {"Host": "sked.example"},
                  {"Host": "SKED.example:8443"},
                  {"Origin": f"http://{host}:{port}", "Sec-Fetch-Site": "same-origin"},
                  {"Content-Type": "application/json; charset=utf-8"},
                  {"Sec-Fetch-Site": "none"}):
        r = _post(server, {**_ok(server), **extra})
        assert r.status_code == 201, (extra, r.text)
        jobs.append(r.json()["id"])
    assert sorted(j.id for j in JobClient(client.store).list()) == sorted(jobs)


def test_ping_and_the_document_need_no_token_but_the_right_host(server: ApiServer) -> None:
    port = server.address[1]
    for path in ("/ping", "/openapi.json"):
        assert requests.get(server.url + path, timeout=10).status_code == 200
        r = requests.get(server.url + path, headers={"Host": f"evil.example:{port}"},
                         timeout=10)
        assert (r.status_code, r.json()["error"]) == (403, "forbidden")


@pytest.mark.parametrize(("listen", "host", "ok"), [
    (("127.0.0.1", 2000), "127.0.0.1:2000", True),
    (("127.0.0.1", 2000), "localhost:2000", True),
    (("127.0.0.1", 2000), "[::1]:2000", True),
    (("127.0.0.1", 2000), "LOCALHOST.:2000", True),
    (("127.0.0.1", 2000), "127.0.0.1:2001", False),
    (("127.0.0.1", 2000), "127.0.0.1", False),      # port 80
    (("127.0.0.1", 2000), "attacker.example:2000", False),
    (("127.0.0.1", 2000), "127.0.0.1.attacker.example:2000", False),
    (("::1", 2000), "[::1]:2000", True),
    (("::1", 2000), "localhost:2000", True),
    (("localhost", 2000), "127.0.0.1:2000", True),
    (("10.1.2.3", 2000), "10.1.2.3:2000", True),
    (("10.1.2.3", 2000), "localhost:2000", False),
    (("10.1.2.3", 2000), "10.1.2.4:2000", False),
    (("", 2000), "10.1.2.4:2000", True),             # every interface: any IP address
    (("0.0.0.0", 2000), "[fe80::1]:2000", True),
    (("0.0.0.0", 2000), "attacker.example:2000", False),
    (("0.0.0.0", 2000), "sked.example", True),       # --allowed-host, any port
    (("127.0.0.1", 80), "localhost", True),
    (("127.0.0.1", 2000), "a:b:c", False),
    (("127.0.0.1", 2000), "[::1:2000", False),
    (("127.0.0.1", 2000), "", False),
])
def test_host_names_this_server(listen: tuple[str, int], host: str, ok: bool) -> None:
    guard = RequestGuard("t", listen, ["sked.example"])
    route = next(r for r in ROUTES if r.operation_id == "ping")
    if ok:
        guard.check(route, {"host": host}, b"")
    else:
        with pytest.raises(HttpError) as info:
            guard.check(route, {"host": host}, b"")
        assert info.value.status == 403 and "header Host" in info.value.message


def test_split_host() -> None:
    assert split_host("Example.COM.:80") == ("example.com", 80)
    assert split_host("[::1]") == ("::1", None)
    for bad in (":80", "h:x", "h:99999", "[::1]x"):
        with pytest.raises(ValueError):
            split_host(bad)


def test_there_is_always_a_token(client: Client) -> None:
    with pytest.raises(ValueError, match="non-empty bearer token"):
        RequestGuard("")
    with ApiServer(client, "127.0.0.1", 0) as server:  # none given: a random one
        assert len(server.token) >= 40
        r = requests.get(server.url + "/jobs", timeout=10)
        assert r.status_code == 401
        r = requests.get(server.url + "/jobs", timeout=10,
                         headers={"Authorization": f"Bearer {server.token}"})
        assert r.status_code == 200


def test_a_cors_preflight_is_never_granted(client: Client, server: ApiServer) -> None:
    # a cross-site fetch with a JSON body asks first; no answer lets it through
    r = requests.options(server.url + "/jobs", timeout=10, headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, authorization"})
    assert r.status_code >= 400
    assert not any(k.lower().startswith("access-control-") for k in r.headers)
    assert JobClient(client.store).list() == []


def test_the_read_only_token_reads_and_changes_nothing(client: Client) -> None:
    reader = "read-" + TOKEN
    with ApiServer(client, "127.0.0.1", 0, token=TOKEN, read_token=reader) as server:
        as_reader = {**_ok(server), "Authorization": f"Bearer {reader}"}
        # every write is refused with a 403 that says why, and queues nothing
        r = _post(server, as_reader)
        _refused(r, 403, "forbidden", client)
        assert "may only read" in r.json()["message"]
        for method, path in (("PUT", "/environments/e1"), ("DELETE", "/environments/e1"),
                             ("POST", "/environments")):
            r = requests.request(method, server.url + path, data=b"{}", headers=as_reader,
                                 timeout=10)
            assert r.status_code == 403, (method, path, r.text)
        # the full token writes; the reader then sees the job and cannot cancel it
        created = _post(server, _ok(server))
        assert created.status_code == 201, created.text
        job = created.json()["id"]
        got = requests.get(f"{server.url}/jobs/{job}", headers=as_reader, timeout=10)
        assert got.status_code == 200 and got.json()["id"] == job
        listed = requests.get(f"{server.url}/jobs", headers=as_reader, timeout=10)
        assert listed.status_code == 200 and [j["id"] for j in listed.json()["items"]] == [job]
        cancel = requests.post(f"{server.url}/jobs/{job}/cancel", headers=as_reader,
                               timeout=10)
        assert cancel.status_code == 403
        assert JobClient(client.store).status(job).status == "queued"
        # a wrong token is still a 401
        wrong = requests.get(f"{server.url}/jobs", timeout=10,
                             headers={**as_reader, "Authorization": f"Bearer {reader}x"})
        assert wrong.status_code == 401


def test_the_read_only_token_must_be_its_own(client: Client) -> None:
    for bad in ("", TOKEN):
        with pytest.raises(ValueError, match="read-only token"):
            RequestGuard(TOKEN, read_token=bad)
