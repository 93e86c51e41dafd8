"""The node's log server: ``GET /v1/jobs/<id>/logs?offset=&follow=`` serves a job's
output from this node's state directory, and ``GET /v1/ping`` says who answers.

Every request but ``ping`` must carry ``Authorization: Bearer <token>``, the node's
secret (:func:`load_token`), which the node publishes in its record in the store for
:meth:`~skedlib.jobs.client.JobClient.logs`. Only regular files directly inside the log
directory are served: a symbolic link is not followed."""

from __future__ import annotations

import contextlib
import errno
import hmac
import http.server
import logging
import os
import socket
import stat
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from skedlib._files import STATE_FILE_MODE, SecretFileError, create_secret, narrow, read_secret
from skedlib.errors import SkedError, one_line
from skedlib.keys import validate_name

__all__ = ["FOLLOW_IDLE", "MAX_OFFSET", "LogServer", "load_token"]

log = logging.getLogger("skedlib.jobs.worker")

FOLLOW_IDLE = 15.0
"""Seconds a following log request is held open without new output."""
MAX_OFFSET = 2**63 - 1
"""The largest ``offset`` a request may give (what a file offset can hold)."""


def load_token(path: Path) -> str:
    """The node's log server token kept in ``path``; a new random one, written there
    readable by the owner only, when there is none."""
    narrow(path, STATE_FILE_MODE)  # made by an older version with a wider mode
    for _ in range(2):
        try:
            return read_secret(path, owner_only=True)
        except FileNotFoundError:
            pass
        except (OSError, SecretFileError) as exc:
            raise SkedError(f"{path}: cannot read the log server token: {exc}") from None
        with contextlib.suppress(FileExistsError):  # another worker made it meanwhile
            return create_secret(path)
    raise SkedError(f"{path}: the log server token keeps disappearing")


class LogServer:
    """Serves the output files in ``logs_dir`` of node ``node`` on ``listen``;
    ``running(job_id)`` says whether a followed job may still write more."""

    def __init__(self, node: str, logs_dir: Path, listen: tuple[str, int], advertise: str,
                 running: Callable[[str], bool], *, token: str) -> None:
        if not token:
            raise SkedError(f"log server of node {node}: a token is required")
        self.node = node
        self.logs_dir = logs_dir
        self.token = token
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

    def _plain(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        body = text.encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
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
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 node.token.encode()):
            self._plain(401, "missing or wrong bearer token: send 'Authorization: Bearer "
                             "<token>' (the node's log_token)\n",
                        {"WWW-Authenticate": "Bearer"})
            return
        if len(parts) != 4 or parts[:2] != ["v1", "jobs"] or parts[3] != "logs":
            self._plain(404, f"no such path: {one_line(url.path)}\n")
            return
        job_id = parts[2]
        query = urllib.parse.parse_qs(url.query)
        text = query.get("offset", ["0"])[0]
        offset = int(text) if text.isascii() and text.isdigit() and len(text) <= 19 else -1
        if not 0 <= offset <= MAX_OFFSET:
            self._plain(400, f"offset must be an integer from 0 to {MAX_OFFSET}, got "
                             f"{one_line(text[:40])!r}\n")
            return
        follow = query.get("follow", ["false"])[0] in ("1", "true", "yes")
        try:
            validate_name(job_id, "job id")
        except SkedError as exc:
            self._plain(400, f"{exc}\n")
            return
        f = self._open(job_id)
        if f is None:
            self._plain(404, f"node {node.node} has no output of job {job_id}\n")
            return
        try:
            f.seek(offset)
        except (OSError, OverflowError):
            f.close()
            self._plain(400, f"offset {offset} is beyond what a file can hold here\n")
            return
        if not follow:
            with f:
                data = f.read()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self._follow(f, job_id)

    def _open(self, job_id: str) -> BinaryIO | None:
        """The job's output file, opened for reading; None when there is none, or when
        what is there is not a regular file directly inside the log directory (a
        symbolic link, a FIFO...)."""
        logs_dir = self.server_of.logs_dir
        path = logs_dir / f"{job_id}.log"
        if os.path.realpath(path) != os.path.join(os.path.realpath(logs_dir), path.name):
            return None
        try:
            # O_NOFOLLOW: a link put in place of the file is refused, not followed;
            # O_NONBLOCK: a FIFO does not hold the request (not a regular file: refused)
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ELOOP, errno.ENXIO):
                log.warning("log server: cannot open %s: %s", path, exc)
            return None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return os.fdopen(fd, "rb")

    def _follow(self, f: BinaryIO, job_id: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        idle_since = time.monotonic()
        try:
            with f:
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
