"""An executor added from outside skedlib, through the ``skedlib_executors`` pluggy hook,
runs tasks under the agent like a built-in one, and the config Struct it declares through
``skedlib_executor_configs`` is checked at ``sked apply`` like a built-in one's.

The plugin here serves HTTP from threads of the test process (blob ``{"body": "…"}``) on
the task's provided port. It has no exit notification, so the agent learns of a crash
from its status poll.
"""

from __future__ import annotations

import http.server
import threading
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec
import pytest

from skedlib.agent import Agent, AgentConfig
from skedlib.client import Client
from skedlib.codecs import decode, encode, parse_manifest
from skedlib.errors import ValidationError
from skedlib.executors import (
    ContainerRef,
    ContainerStatus,
    Executor,
    ExecutorContext,
    convert_blob,
)
from skedlib.hookspecs import hookimpl
from skedlib.keys import Keyspace
from skedlib.models import Check, Container, Host, Task, TaskHealth
from skedlib.plugins import Registry, get_registry
from skedlib.runtime import Store
from skedlib.store.memory import MemoryBackend
from tests.agent.conftest import make_task, wait_for


class _Blob(msgspec.Struct, kw_only=True):
    body: str


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = self.server.body.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class ThreadServerExecutor(Executor):
    """Serves each container's ``body`` over HTTP on ``$PROVIDED_PORT``, from a thread."""

    name = "threadhttp"

    def __init__(self, ctx: ExecutorContext) -> None:
        self.ctx = ctx
        self.servers: dict[ContainerRef, http.server.ThreadingHTTPServer] = {}
        self.crashed: set[ContainerRef] = set()
        self.starts = 0
        self.lock = threading.Lock()

    def start(self, task: Task, container: Container, env: Mapping[str, str]) -> None:
        blob = convert_blob(container, _Blob)
        port = int(env["PROVIDED_PORT"])
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        server.body = blob.body.replace("$PROVIDED_PORT", str(port))  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        ref = ContainerRef(task.id, container.name)
        with self.lock:
            self.servers[ref] = server
            self.crashed.discard(ref)
            self.starts += 1

    def crash(self, ref: ContainerRef) -> None:
        """End a container as if it died on its own."""
        with self.lock:
            server = self.servers.pop(ref)
            self.crashed.add(ref)
        server.shutdown()
        server.server_close()

    def stop(self, ref: ContainerRef, grace: float) -> None:
        with self.lock:
            server = self.servers.pop(ref, None)
        if server is not None:
            server.shutdown()
            server.server_close()

    def status(self, ref: ContainerRef) -> ContainerStatus:
        with self.lock:
            if ref in self.servers:
                return ContainerStatus(state="running")
            if ref in self.crashed:
                return ContainerStatus(state="exited", exit_code=1, message="crashed")
        return ContainerStatus(state="missing")

    def running(self) -> list[ContainerRef]:
        with self.lock:
            return sorted(self.servers)

    def close(self) -> None:
        for ref in self.running():
            self.stop(ref, 0)


class _Plugin:
    """What a third-party plugin package's module holds (named by its entry point)."""

    def __init__(self) -> None:
        self.made: list[ThreadServerExecutor] = []

    @hookimpl
    def skedlib_executors(self) -> Mapping[str, Callable[..., Any]]:
        def create(ctx: ExecutorContext) -> ThreadServerExecutor:
            executor = ThreadServerExecutor(ctx)
            self.made.append(executor)
            return executor
        return {"threadhttp": create}

    @hookimpl
    def skedlib_executor_configs(self) -> Mapping[str, type[msgspec.Struct]]:
        return {"threadhttp": _Blob}


@pytest.fixture
def backend() -> Iterator[MemoryBackend]:
    store = MemoryBackend()
    try:
        yield store
    finally:
        store.close()


def _get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
        return str(resp.read().decode())


def test_a_plugin_executor_runs_restarts_rejects_and_stops_tasks(
        backend: MemoryBackend, tmp_path: Path) -> None:
    plugin = _Plugin()
    registry = Registry(load_entrypoints=False, plugins=(plugin,))
    assert registry.names("executors") == ["bash", "process", "threadhttp"]
    keys = Keyspace()
    agent = Agent(backend, AgentConfig(host="p1", state_dir=tmp_path / "state",
                                       executors=["threadhttp"], check_failures=2,
                                       lease_ttl=1.0, backoff_initial=0.1),
                  registry=registry)
    (executor,) = plugin.made
    agent.start()

    def put(task: Task) -> None:
        task.host = "p1"
        backend.put(keys.host_task("p1", task.id), encode(task))
        backend.put(keys.task(task.id), encode(task))

    def stored(task_id: str) -> Task:
        kv = backend.get(keys.task(task_id))
        assert kv is not None
        return decode(kv.value, Task)

    def health(task_id: str) -> TaskHealth | None:
        kv = backend.get(keys.task_health(task_id))
        return decode(kv.value, TaskHealth) if kv else None

    try:
        assert agent.wait_ready(10)
        record = wait_for(lambda: backend.get(keys.agent("p1")), 5, "the host record")
        host = decode(record.value, Host)
        assert host.executors == ["threadhttp"]

        web = make_task(0, containers=[Container(
            name="web", type="threadhttp", executor={"body": "hello from $PROVIDED_PORT"},
            checks=[Check(http="http://127.0.0.1:$PROVIDED_PORT/", interval="300ms")])])
        put(web)
        wait_for(lambda: (h := health(web.id)) and h.healthy, 10, "healthy")
        port = stored(web.id).port
        assert _get(port) == f"hello from {port}"

        # one without checks dies on its own: only the agent's status poll can see it,
        # and it is started again
        quiet = make_task(0, service="quiet", containers=[Container(
            name="main", type="threadhttp", executor={"body": "quiet"})])
        put(quiet)
        wait_for(lambda: (h := health(quiet.id)) and h.healthy, 10, "healthy")
        assert executor.starts == 2
        executor.crash(ContainerRef(quiet.id, "main"))
        wait_for(lambda: (h := health(quiet.id)) and h.healthy and h.attempts == 1, 10,
                 "restarted and healthy")
        assert executor.starts == 3 and _get(stored(quiet.id).port) == "quiet"

        # a blob the plugin cannot read: rejected with the plugin's reason
        bad = make_task(1, containers=[Container(name="web", type="threadhttp",
                                                 executor={"body": 5})])
        put(bad)
        rejected = wait_for(lambda: (t := stored(bad.id)).rejected and t, 10, "rejected")
        assert rejected.reject_reason == ("container web: threadhttp executor: field body: "
                                          "Expected `str`, got `int`")
        assert executor.starts == 3 and health(web.id).attempts == 0  # type: ignore[union-attr]

        backend.delete(keys.host_task("p1", web.id))
        wait_for(lambda: executor.running() == [ContainerRef(quiet.id, "main")], 10,
                 "the task to stop")
    finally:
        agent.stop(stop_tasks=True)


THREADHTTP_MANIFEST = """\
task_definitions:
  - name: web
    version: 1
    containers:
      - {name: main, type: threadhttp, executor: BLOB}
"""


def test_a_plugin_executor_config_is_checked_at_apply(backend: MemoryBackend) -> None:
    plugin = _Plugin()
    registry = get_registry()  # the one `sked apply` uses: built-ins and entry points
    registry.register(plugin, name="threadhttp-plugin")
    client = Client(Store(backend))
    try:
        bad = parse_manifest(THREADHTTP_MANIFEST.replace("BLOB", "{body: 5}"), "m.yml")
        with pytest.raises(ValidationError) as info:
            client.apply(bad)
        assert str(info.value) == (
            'm.yml: task_definitions[0] "web": field containers[0].executor: threadhttp '
            "executor: Expected `str`, got `int` - at `containers[0].executor.body`")
        assert backend.list("").items == []

        good = parse_manifest(THREADHTTP_MANIFEST.replace("BLOB", "{body: hi, bdoy: x}"),
                              "m.yml")
        assert good.warnings == ('m.yml: task_definitions[0] "web": field '
                                 "containers[0].executor.bdoy: unknown field, ignored",)
        assert client.apply(good).created == ("task_definitions/web:1",)
    finally:
        registry.unregister(plugin)
    # where the plugin is not installed its blobs pass unchecked
    unchecked = parse_manifest(THREADHTTP_MANIFEST.replace("BLOB", "{body: 5}").replace(
        "version: 1", "version: 2"), "m.yml")
    assert unchecked.warnings == ()
    assert client.apply(unchecked).created == ("task_definitions/web:2",)
