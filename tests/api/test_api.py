"""The REST server in-process on the in-memory store, without agents: routing, auth,
errors as JSON 4xx/503 bodies, the OpenAPI document, ``sked serve``'s address checks,
and the ``sked env|deploy|deployments`` commands."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from skedlib.api import MAX_BODY, ApiServer, is_loopback, openapi_document, parse_listen
from skedlib.cli.main import main as sked_main
from skedlib.client import Client
from skedlib.codecs import parse_manifest
from skedlib.errors import BackendUnavailable, ValidationError
from tests.api.conftest import Http, daemon_manifest


@pytest.fixture
def client() -> Iterator[Client]:
    with Client.open(f"memory://{uuid.uuid4().hex}") as c:
        c.apply(parse_manifest(daemon_manifest(), "m.yml"))
        yield c


@pytest.fixture
def server(client: Client) -> Iterator[ApiServer]:
    with ApiServer(client, "127.0.0.1", 0, token="s3cret") as s:
        yield s


def test_bearer_token_is_required_except_for_ping_and_the_document(server: ApiServer
                                                                   ) -> None:
    anonymous, wrong, right = Http(server.url), Http(server.url, "nope"), \
        Http(server.url, "s3cret")
    assert anonymous.get("/ping") == (200, {"status": "ok"})
    assert anonymous.get("/openapi.json")[1]["openapi"] == "3.1.0"
    for http in (anonymous, wrong):
        status, err = http.get("/environments")
        assert (status, err["error"]) == (401, "unauthorized")
        r = requests.post(server.url + "/environments", json={}, timeout=5)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert right.get("/environments") == (200, {"items": [], "next_token": ""})


def test_routing_errors_are_json_with_one_line(server: ApiServer) -> None:
    http = Http(server.url, "s3cret")
    assert http.get("/environments/")[0] == 200  # a trailing slash is fine
    status, err = http.call("PATCH", "/environments/web")
    assert (status, err["error"]) == (405, "method_not_allowed")
    r = requests.delete(server.url + "/environments", timeout=5,
                        headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 405 and r.headers["Allow"] == "GET, POST"
    for path in ("/nope", "/environments/web/deployments/1/more"):
        status, err = http.get(path)
        assert (status, err["error"]) == (404, "not_found") and "no such path" in err["message"]
    r = requests.get(server.url.removesuffix("/v1") + "/ping", timeout=5)
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    for query, why in (("limit=1&limit=2", "given more than once"), ("colour=red", "unknown"),
                       ("limit=x", "expected an integer")):
        status, err = http.get(f"/environments?{query}")
        assert status == 400 and why in err["message"], err
    status, err = http.get("/environments/a%2Fb")
    assert status == 400 and "must not contain '/'" in err["message"]
    status, err = http.post("/environments", raw=b"x" * (MAX_BODY + 1))
    assert (status, err["error"]) == (413, "payload_too_large")


def test_a_backend_error_is_a_503(client: Client, server: ApiServer,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def down(*args: Any, **kwargs: Any) -> Any:
        raise BackendUnavailable("etcd://h1:2379: connection refused")

    monkeypatch.setattr(client.backend, "get", down)
    monkeypatch.setattr(client.backend, "list", down)
    status, err = Http(server.url, "s3cret").get("/environments/web")
    assert (status, err) == (503, {"error": "unavailable", "message": "the store is "
                                   "unavailable: etcd://h1:2379: connection refused"})


def test_every_documented_operation_is_served(server: ApiServer) -> None:
    doc = openapi_document()
    http = Http(server.url, "s3cret")
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            concrete = path.replace("{name}", "x").replace("{id}", "00000001")
            content = op["responses"].get("200", {}).get("content", {})
            if "text/event-stream" in content:  # a stream: ask for a short one
                r = http.session.request(method.upper(), http.base + concrete,
                                         params={"timeout": "0.2"}, timeout=10)
                status, body = r.status_code, r.text
            elif "text/plain" in content:
                # not JSON (the metrics' text): its status, then the body as text
                r = http.session.request(method.upper(), http.base + concrete, timeout=10)
                status, body = r.status_code, r.text
            else:
                status, body = http.call(method.upper(), concrete, {} if "requestBody" in op
                                         else None)
            assert str(status) in op["responses"], (method, path, status, body)
            assert "no such path" not in str(body) and status != 405, (method, path, body)


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:2000") == ("127.0.0.1", 2000)
    assert parse_listen("[::1]:80") == ("::1", 80)
    assert parse_listen(":2000") == ("", 2000)
    for bad in ("2000", "host:", "h:99999"):
        with pytest.raises(ValidationError, match="expected HOST:PORT"):
            parse_listen(bad)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("") and not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")


def _sked(url: str, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = sked_main(["--backend", url, *argv])
    return code, out.getvalue()


def test_serve_refuses_a_public_address_unless_asked(tmp_path: Path) -> None:
    code, out = _sked(f"sqlite://{tmp_path}/s.db", "serve", "--listen", "0.0.0.0:0")
    assert code == 1 and "not a loopback address; pass --public" in out


def test_the_cli_mirrors_the_api(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/cli.db"
    with Client.open(url) as c:
        c.apply(parse_manifest(daemon_manifest(), "m.yml"))
    code, out = _sked(url, "env", "create", "agentd", "--cluster", "default", "--task",
                      "web:1", "--max-parallel", "2", "--constraint", "attribute:os == linux")
    assert code == 0 and "environment agentd created" in out, out
    code, out = _sked(url, "env", "create", "bad", "--cluster", "default", "--task", "web:1",
                      "--max-parallel", "0")
    assert code == 1 and 'environment "bad": field max_parallel: Expected `int` >= 1' in out
    code, out = _sked(url, "env", "ls")
    header, _, row = out.splitlines()
    assert header.split()[:3] == ["name", "cluster", "task"]
    assert row.split()[:5] == ["agentd", "default", "web:1", "attribute:os", "=="]
    code, out = _sked(url, "deploy", "agentd")
    assert code == 0 and "deployment 00000001 of agentd started: web:1" in out, out
    code, out = _sked(url, "deploy", "agentd", "--token", "used-up")
    assert code == 1 and "field token" in out and out.count("\n") == 1
    code, out = _sked(url, "env", "update", "agentd", "--task", "web:2", "--no-constraints")
    assert code == 0 and "updated: web:2, max parallel 2" in out, out
    code, out = _sked(url, "env", "get", "agentd", "-o", "json")
    env = json.loads(out)
    assert (env["task_version"], env["constraints"], env["deployment_status"]) == (
        2, [], "in_progress")
    code, out = _sked(url, "deploy", "agentd")
    assert code == 0 and "(was version 1)" in out
    code, out = _sked(url, "deployments", "agentd")
    lines = out.splitlines()
    assert [ln.split()[:3] for ln in lines[2:]] == [["00000002", "web:2", "in_progress"],
                                                   ["00000001", "web:1", "failed"]]
    code, out = _sked(url, "deployments", "agentd", "00000001", "-o", "json")
    assert json.loads(out)["message"].startswith("superseded by deployment 00000002")
    code, out = _sked(url, "env", "delete", "agentd", "--keep-tasks")
    assert code == 0 and "keep running" in out
    code, out = _sked(url, "env", "get", "agentd")
    assert code == 1 and 'environment "agentd" not found' in out


def test_serve_as_a_process_until_sigterm(tmp_path: Path) -> None:
    sked = shutil.which("sked", path=str(Path(sys.executable).parent))
    assert sked is not None
    env = {**os.environ, "SKED_API_TOKEN": "t0ken"}
    with subprocess.Popen([sked, "--backend", f"sqlite://{tmp_path}/s.db", "serve",
                           "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert "bearer token required" in line, line
            url = line.split("listening on ")[1].split()[0]
            assert Http(url).get("/ping") == (200, {"status": "ok"})
            assert Http(url).get("/environments")[0] == 401
            assert Http(url, "t0ken").get("/environments")[0] == 200
            with socket.socket() as taken:
                taken.bind(("127.0.0.1", 0))
                taken.listen()
                port = taken.getsockname()[1]
                code, out = _sked(f"sqlite://{tmp_path}/s.db", "serve", "--listen",
                                  f"127.0.0.1:{port}")
                assert code == 1 and "cannot listen there" in out, out
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "GET /v1/ping" in err
