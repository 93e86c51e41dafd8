"""Fixtures for the API tests: the scheduler tests' :class:`Loop` (real agent
and scheduler processes), the API server in-process on a free port, and a small HTTP
client for it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from skedlib.api import ApiServer
from skedlib.models import HostConfig
from tests.scheduler.conftest import PY, Loop, etcd_cluster, etcd_loop, sqlite_loop

__all__ = ["PY", "READ_TOKEN", "TOKEN", "Http", "Loop", "daemon_manifest", "etcd_cluster",
           "etcd_loop", "running", "serve", "sqlite_loop"]


def daemon_manifest(versions: tuple[int, ...] = (1, 2), cluster: str = "default") -> str:
    """A cluster with no services and task definition ``web`` in ``versions``: a Python
    HTTP server on a provided port with a fast HTTP check."""
    tds = "".join(f"""
  - name: web
    version: {v}
    provide_port: true
    memory: 32
    cpu_units: 16
    grace_period: 2s
    containers:
      - name: web
        type: process
        executor:
          argv: [{PY}, -m, http.server, --bind, 127.0.0.1, $PROVIDED_PORT]
        checks: [{{http: 'http://127.0.0.1:$PROVIDED_PORT/', interval: 300ms, timeout: 250ms}}]
""" for v in versions)
    return f"clusters: [{{name: {cluster}, services: []}}]\ntask_definitions:{tds}"


class Http:
    """A JSON client of the API: every call returns (status, decoded body)."""

    def __init__(self, base: str, token: str | None = None) -> None:
        self.base = base
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
             **params: Any) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"} if raw is not None else None
        r = self.session.request(method, self.base + path, json=body, data=raw,
                                 params=params or None, headers=headers, timeout=10)
        assert r.headers["Content-Type"] == "application/json", r.text
        return r.status_code, r.json()

    def get(self, path: str, **params: Any) -> tuple[int, Any]:
        return self.call("GET", path, **params)

    def post(self, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
        return self.call("POST", path, body, raw)

    def put(self, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
        return self.call("PUT", path, body, raw)

    def delete(self, path: str, **params: Any) -> tuple[int, Any]:
        return self.call("DELETE", path, **params)

    def ok(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        """The body of a 2xx response (fails the test otherwise)."""
        status, data = self.call(method, path, body, **params)
        assert 200 <= status < 300, (status, data)
        return data


TOKEN = "api-test-token"
"""The bearer token of the servers the fixtures start."""


@pytest.fixture
def serve() -> Iterator[Any]:
    """``serve(loop, token=TOKEN) -> (server, Http)``: the API in-process on a free port
    over ``loop``'s store, and a client sending the token; stopped after the test."""
    servers: list[ApiServer] = []

    def start(loop: Loop, token: str = TOKEN) -> tuple[ApiServer, Http]:
        server = ApiServer(loop.client, "127.0.0.1", 0, token=token, track_every=0.2)
        server.start()
        servers.append(server)
        return server, Http(server.url, token)

    yield start
    for s in servers:
        s.stop()


READ_TOKEN = "read-only-token"


def _manifest(desired: int = 3) -> str:
    """Service ``web`` of ``desired`` cheap tasks (a line of output, then a sleep; healthy
    while it runs)."""
    return f"""
clusters: [{{name: default, services: [web]}}]
task_definitions:
  - name: web
    version: 1
    memory: 32
    cpu_units: 16
    grace_period: 1s
    containers:
      - {{name: web, type: process,
          executor: {{argv: [sh, -c, 'echo "hello from $SKED_TASK_ID"; exec sleep 3600']}}}}
services:
  - {{name: web, task_name: web, task_version: 1, desired: {desired}, max: 5}}
"""


@pytest.fixture
def running(sqlite_loop: Loop) -> Iterator[tuple[Loop, Http, Http]]:
    """Two agents and a scheduler running service ``web`` (3 healthy tasks), and the API
    over their store: (loop, admin client, read-only client)."""
    loop = sqlite_loop
    loop.apply(_manifest())
    loop.client.put_host_config(HostConfig(name="spare", attributes={"zone": "b"}))
    loop.start_agent(1, memory=512)
    loop.start_agent(2, memory=512)
    loop.start_scheduler()
    loop.wait_healthy("web", 3)
    server = ApiServer(loop.client, "127.0.0.1", 0, token=TOKEN, read_token=READ_TOKEN)
    server.start()
    try:
        yield loop, Http(server.url, TOKEN), Http(server.url, READ_TOKEN)
    finally:
        server.stop()
