"""The node's log server: ``GET /v1/jobs/<id>/logs?offset=&follow=`` serves a job's
output from this node's state directory, and ``GET /v1/ping`` says who answers."""

from __future__ import annotations

import http.server
import logging
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from skedlib.errors import SkedError
from skedlib.keys import validate_name

__all__ = ["FOLLOW_IDLE", "LogServer"]

log = logging.getLogger("skedlib.jobs.worker")

FOLLOW_IDLE = 15.0
"""Seconds a following log request is held open without new output."""


class LogServer:
    """Serves the output files in ``logs_dir`` of node ``node`` on ``listen``;
    ``running(job_id)`` says whether a followed job may still write more."""

    def __init__(self, node: str, logs_dir: Path, listen: tuple[str, int], advertise: str,
                 running: Callable[[str], bool]) -> None:
        self.node = node
        self.logs_dir = logs_dir
        self.running = running
        host, port = listen
        handler = type("Handler", (_LogHandler,), {"server_of": self})
        self._server = http.server.ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        advertise = advertise or host
        if advertise in ("0.0.0.0", "::", ""):
            advertise = socket.gethostname()
        if ":" in advertise and not advertise.startswith("["):
            advertise = f"[{advertise}]"
        self.url = f"http://{advertise}:{self._server.server_address[1]}"
        """The base URL other hosts fetch output from (recorded in every claim)."""

    def start(self) -> None:
        """Serve on a daemon thread."""
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                         name=f"jobs-logs-{self.node}", daemon=True).start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()


class _LogHandler(http.server.BaseHTTPRequestHandler):
    """``GET /v1/jobs/<id>/logs?offset=N&follow=true`` and ``GET /v1/ping``."""

    server_of: LogServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("log server: " + format, *args)

    def _plain(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        node = self.server_of
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if parts == ["v1", "ping"]:
            self._plain(200, f"job worker {node.node}\n")
            return
        if len(parts) != 4 or parts[:2] != ["v1", "jobs"] or parts[3] != "logs":
            self._plain(404, f"no such path: {url.path}\n")
            return
        job_id = parts[2]
        query = urllib.parse.parse_qs(url.query)
        try:
            offset = int(query.get("offset", ["0"])[0])
            if offset < 0:
                raise ValueError
        except ValueError:
            self._plain(400, "offset must be an integer >= 0\n")
            return
        follow = query.get("follow", ["false"])[0] in ("1", "true", "yes")
        try:
            validate_name(job_id, "job id")
        except SkedError as exc:
            self._plain(400, f"{exc}\n")
            return
        path = node.logs_dir / f"{job_id}.log"
        if not path.exists():
            self._plain(404, f"node {node.node} has no output of job {job_id}\n")
            return
        if not follow:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self._follow(path, job_id, offset)

    def _follow(self, path: Path, job_id: str, offset: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        idle_since = time.monotonic()
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                while True:
                    running = self.server_of.running(job_id)
                    data = f.read(65536)
                    if data:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                        self.wfile.flush()
                        idle_since = time.monotonic()
                        continue
                    if not running or time.monotonic() - idle_since > FOLLOW_IDLE:
                        break
                    time.sleep(0.1)  # a file, not the store: nothing to watch
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
