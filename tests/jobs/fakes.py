"""The job worker's side, simulated for the API and CLI tests of batch jobs:
:class:`Worker` makes the store transitions a worker makes (register, claim, finish), and
:class:`LogNode` is a tiny HTTP server serving ``/v1/jobs/<id>/logs`` as a worker's log
server does; with the fixtures that go with them (a SQLite store, a log node)."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from skedlib.client import Client
from skedlib.codecs import encode
from skedlib.jobs import Job, JobNode, JobRequirements, JobStore

__all__ = ["OUTPUT", "LogNode", "Worker", "client", "closed_port_url", "later", "log_node",
           "url"]

OUTPUT = b"line 1\nline 2\n\xff\x00 not utf-8\n"
"""A job's output with bytes that are not UTF-8."""


# -- the simulated worker side --------------------------------------------------------------
class Worker:
    """The store side of a job worker: its node record, claims and finishes."""

    def __init__(self, client: Client, name: str = "n1", *, memory: int = 4096,
                 cpu_units: int = 4096, disk: int = 10240, log_url: str = "",
                 slots: int = 4) -> None:
        self.client = client
        self.store = JobStore(client.store)
        self.name = name
        self.log_url = log_url
        node = JobNode(name=name, capacity=JobRequirements(memory=memory, cpu_units=cpu_units,
                                                           disk=disk),
                       slots=slots, log_url=log_url, limits="rlimit", pid=4242,
                       hostname="host-a", started_at=time.time() - 90)
        self.revision = client.backend.put(self.store.keys.job_node(name), encode(node))

    def claim(self, job_id: str) -> Job:
        queued = self.client.backend.get(self.store.keys.job_queued(job_id))
        assert queued is not None, f"job {job_id} is not queued"
        job = self.store.claim(queued, self.name, self.revision, log_url=self.log_url,
                               limits="rlimit")
        assert job is not None
        return job

    def finish(self, job_id: str, status: str = "complete", exit_code: int | None = 0,
               reason: str = "") -> Job:
        stored = self.store.get(job_id)
        reason = reason or (f"exited with status {exit_code}" if exit_code is not None
                            else "")
        assert self.store.finish(stored.job, stored.revision, status,  # type: ignore[arg-type]
                                 exit_code=exit_code, reason=reason)
        return self.store.get(job_id).job

    def leave(self) -> None:
        self.client.backend.delete(self.store.keys.job_node(self.name))


class LogNode:
    """A worker's log server: ``GET /v1/jobs/<id>/logs?offset=N&follow=true|false``.

    ``output[id]`` is the job's output so far (append to it while following);
    ``done.add(id)`` ends a follow. ``requests`` records (id, offset, follow) of each
    request. A ``broken`` id gets its output, then (once its event is set) a reset
    connection.
    """

    def __init__(self) -> None:
        self.output: dict[str, bytes] = {}
        self.done: set[str] = set()
        self.broken: dict[str, threading.Event] = {}
        self.requests: list[tuple[str, int, bool]] = []
        self.lock = threading.Lock()
        node = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                split = urllib.parse.urlsplit(self.path)
                parts = split.path.split("/")
                query = dict(urllib.parse.parse_qsl(split.query))
                if len(parts) != 5 or parts[1:3] != ["v1", "jobs"] or parts[4] != "logs":
                    self.send_error(404)
                    return
                job_id = urllib.parse.unquote(parts[3])
                offset, follow = int(query.get("offset", "0")), query.get("follow") == "true"
                with node.lock:
                    node.requests.append((job_id, offset, follow))
                    known = job_id in node.output
                if not known:
                    self._plain(404, b"no such job here")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                if job_id in node.broken:  # send what there is, then reset the connection
                    self.wfile.write(node.output[job_id][offset:])
                    self.wfile.flush()
                    node.broken[job_id].wait(10)
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               struct.pack("ii", 1, 0))
                    self.connection.close()  # now, before the server's shutdown sends FIN
                    self.close_connection = True
                    return
                sent = offset
                quiet_until = time.monotonic() + 15
                while True:
                    with node.lock:
                        data, finished = node.output[job_id], job_id in node.done
                    if len(data) > sent:
                        self.wfile.write(data[sent:])
                        self.wfile.flush()
                        sent = len(data)
                        quiet_until = time.monotonic() + 15
                    if not follow or finished or time.monotonic() > quiet_until:
                        return
                    time.sleep(0.01)

            def finish(self) -> None:
                with contextlib.suppress(OSError):  # a reset connection is closed already
                    super().finish()

            def _plain(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def append(self, job_id: str, data: bytes) -> None:
        with self.lock:
            self.output[job_id] = self.output.get(job_id, b"") + data

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port_url() -> str:
    """An http:// URL nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def later(delay: float, fn: Any, *args: Any, **kwargs: Any) -> threading.Thread:
    """Call ``fn`` in a thread after ``delay`` seconds."""
    def run() -> None:
        time.sleep(delay)
        fn(*args, **kwargs)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path}/jobs.db"


@pytest.fixture
def client(url: str) -> Iterator[Client]:
    with Client.open(url, f"t{uuid.uuid4().hex[:6]}/") as c:
        yield c


@pytest.fixture
def log_node() -> Iterator[LogNode]:
    node = LogNode()
    yield node
    node.stop()
