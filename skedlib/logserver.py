"""The output server of a host, and its client: how job and task output leaves its host.

A :class:`LogServer` serves ``GET /v1/<collection>/<name>/logs?offset=&follow=`` for each
:class:`LogSource` it is given — ``jobs`` on a job worker (a job's output), ``tasks`` on an
agent (a task's container output) — and ``GET /v1/ping`` says who answers.

Every request but ``ping`` must carry ``Authorization: Bearer <token>``, the server's
secret (:func:`load_token`, kept 0600 in the state directory), which its owner publishes
in its record in the store for the clients (:func:`fetch_log`). Only regular files under
the source's directory are served, reached through no symbolic link (``O_NOFOLLOW`` on
the file, and its real path must be the path asked for). With ``follow`` the response is
chunked and held open while the source says the output may grow, for at most
:data:`FOLLOW_IDLE` seconds without new bytes (a long poll: the client asks again from the
byte it stopped at).
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import http.client
import http.server
import logging
import os
import socket
import stat
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from skedlib._files import STATE_FILE_MODE, SecretFileError, create_secret, narrow, read_secret
from skedlib.errors import SkedError, one_line
from skedlib.keys import validate_name

__all__ = ["FOLLOW_IDLE", "MAX_OFFSET", "LogServer", "LogSource",
           "LogsUnavailable", "fetch_log", "load_token"]

log = logging.getLogger("skedlib.logserver")

FOLLOW_IDLE = 15.0
"""Seconds a following log request is held open without new output."""
MAX_OFFSET = 2**63 - 1
"""The largest ``offset`` a request may give (what a file offset can hold)."""


class LogsUnavailable(SkedError):
    """The output cannot be fetched: nothing was written yet, or the host that keeps it
    cannot be reached or no longer has it."""


def load_token(path: Path) -> str:
    """The output server's token kept in ``path``; a new random one, written there
    readable by the owner only, when there is none."""
    narrow(path, STATE_FILE_MODE)  # made by an older version with a wider mode
    for _ in range(2):
        try:
            return read_secret(path, owner_only=True)
        except FileNotFoundError:
            pass
        except (OSError, SecretFileError) as exc:
            raise SkedError(f"{path}: cannot read the log server token: {exc}") from None
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            return create_secret(path)
    raise SkedError(f"{path}: the log server token keeps disappearing")


class LogSource:
    """One collection a :class:`LogServer` serves: the output of ``<name>`` is the file
    :meth:`parts` names under ``directory``; :meth:`running` says whether it may grow."""

    def __init__(self, what: str, directory: Path,
                 parts: Callable[[str, Mapping[str, str]], Sequence[str] | str],
                 running: Callable[[str], bool], *, moves: bool = False) -> None:
        self.what = what
        """What a name is, in messages (``job``, ``task``)."""
        self.moves = moves
        """Its owner may hand a file, once ended and empty, to another name (a job
        worker's spare output files): a read of one is checked to be still at its path."""
        self.directory = directory
        self._parts = parts
        self._running = running

    def parts(self, name: str, query: Mapping[str, str]) -> Sequence[str] | str:
        """The file's path under :attr:`directory`, as its names; or a one-line message
        (a ``str``) saying why the request cannot be served (400)."""
        return self._parts(name, query)

    def running(self, name: str) -> bool:
        """Whether ``name`` may still write more output."""
        return self._running(name)


class LogServer:
    """Serves ``sources`` (collection → :class:`LogSource`) of ``owner`` (``job worker
    n1``, ``agent h1``) on ``listen``, to requests bearing ``token``."""

    def __init__(self, owner: str, sources: Mapping[str, LogSource], listen: tuple[str, int],
                 advertise: str, *, token: str) -> None:
        if not token:
            raise SkedError(f"log server of {owner}: a token is required")
        self.owner = owner
        self.sources = dict(sources)
        self.token = token
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
        """The base URL other hosts fetch output from (published in the store)."""

    def start(self) -> None:
        """Serve on a daemon thread."""
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                         name=f"logs-{self.owner}", daemon=True).start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()


class _LogHandler(http.server.BaseHTTPRequestHandler):
    """``GET /v1/<collection>/<name>/logs?offset=N&follow=true`` and ``GET /v1/ping``."""

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
        server = self.server_of
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if parts == ["v1", "ping"]:
            self._plain(200, f"{server.owner}\n")
            return
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 server.token.encode()):
            self._plain(401, "missing or wrong bearer token: send 'Authorization: Bearer "
                             "<token>' (the log_token published in the store)\n",
                        {"WWW-Authenticate": "Bearer"})
            return
        source = server.sources.get(parts[1]) if len(parts) == 4 else None
        if source is None or parts[0] != "v1" or parts[3] != "logs":
            self._plain(404, f"no such path: {one_line(url.path)}\n")
            return
        name = parts[2]
        query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        text = query.get("offset", "0")
        offset = int(text) if text.isascii() and text.isdigit() and len(text) <= 19 else -1
        if not 0 <= offset <= MAX_OFFSET:
            self._plain(400, f"offset must be an integer from 0 to {MAX_OFFSET}, got "
                             f"{one_line(text[:40])!r}\n")
            return
        follow = query.get("follow", "false") in ("1", "true", "yes")
        try:
            validate_name(name, f"{source.what} id")
            names = source.parts(name, query)
        except SkedError as exc:
            self._plain(400, f"{exc}\n")
            return
        if isinstance(names, str):
            self._plain(400, f"{one_line(names)}\n")
            return
        opened = self._open(source.directory, names)
        if opened is None:
            self._plain(404, f"{server.owner} has no output of {source.what} {name}"
                             + (f" ({'/'.join(names)})" if len(names) > 1 else "") + "\n")
            return
        f, path = opened
        try:
            f.seek(offset)
        except (OSError, OverflowError):
            f.close()
            self._plain(400, f"offset {offset} is beyond what a file can hold here\n")
            return
        if not follow:
            with f:
                data = f.read()
                if data and source.moves and not _still_at(f, path):
                    data = b""  # what was read is not its output (see _still_at)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self._follow(f, source, name, path)

    @staticmethod
    def _open(directory: Path, names: Sequence[str]) -> tuple[BinaryIO, Path] | None:
        """The file, opened for reading, and its path; None when there is none, or when
        what is there is not a regular file reached through no symbolic link (a link, a
        FIFO...)."""
        for part in names:
            try:
                validate_name(part, "log file name")
            except SkedError:
                return None
        path = directory.joinpath(*names)
        if os.path.realpath(path) != os.path.join(os.path.realpath(directory), *names):
            return None
        try:
            # O_NOFOLLOW: a link put in place of the file is refused, not followed;
            # O_NONBLOCK: a FIFO does not hold the request (not a regular file: refused)
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ELOOP, errno.ENXIO, errno.ENOTDIR):
                log.warning("log server: cannot open %s: %s", path, exc)
            return None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return os.fdopen(fd, "rb"), path

    def _follow(self, f: BinaryIO, source: LogSource, name: str, path: Path) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        idle_since = time.monotonic()
        try:
            with f:
                while True:
                    running = source.running(name)
                    data = f.read(65536)
                    if data and source.moves and not _still_at(f, path):
                        break  # its file went to another (see _still_at): it wrote none
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


def _still_at(f: BinaryIO, path: Path) -> bool:
    """Whether ``path`` still names the open file ``f``. A job worker hands the empty
    output file of an ended job to a next job (renamed), so a reader that opened it before
    that reads the next job's output: any data read from a file no longer at its path was
    not written by its job (the file was empty when it moved, and output only grows).
    Checked after each read that returned data."""
    try:
        st, at = os.fstat(f.fileno()), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (st.st_ino, st.st_dev) == (at.st_ino, at.st_dev)


# -- the client -----------------------------------------------------------------------------
def fetch_log(base_url: str, collection: str, name: str, token: str, *, offset: int = 0,
              follow: bool = False, query: Mapping[str, str] | None = None,
              timeout: float = 10.0, where: str, what: str) -> Iterator[bytes]:
    """The output of ``name`` in ``collection`` from the server at ``base_url``, from byte
    ``offset``; with ``follow``, one long poll (it ends after :data:`FOLLOW_IDLE` seconds
    without output, or when the output cannot grow any more).

    The request is sent before this returns; the body is read as it is iterated.
    ``where`` (``node n1 (http://…)``) and ``what`` (``job j1``) name the two in errors.
    Raises :class:`LogsUnavailable` when the server cannot be reached or will not serve.
    """
    url = urllib.parse.urlsplit(base_url)
    if url.scheme != "http" or not url.hostname:
        raise LogsUnavailable(f"{where}: its log URL is not http://: {base_url!r}")
    params = {"offset": str(offset), "follow": "true" if follow else "false",
              **(query or {})}
    path = (f"{url.path.rstrip('/')}/v1/{collection}/{urllib.parse.quote(name)}/logs?"
            f"{urllib.parse.urlencode(params)}")
    conn = http.client.HTTPConnection(url.hostname, url.port or 80,
                                      timeout=timeout + FOLLOW_IDLE)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
    except OSError as exc:
        conn.close()
        raise LogsUnavailable(f"the output of {what} is kept on {where}, which cannot be "
                              f"reached: {exc}") from None
    if resp.status != 200:
        body = resp.read(2000).decode(errors="replace").strip()
        conn.close()
        if resp.status == 404:
            raise LogsUnavailable(f"{where} no longer has the output of {what}: {body}")
        raise LogsUnavailable(f"{where} answered {resp.status}: {one_line(body)}")
    return _stream(conn, resp, where, what)


def _stream(conn: http.client.HTTPConnection, resp: http.client.HTTPResponse,
            where: str, what: str) -> Iterator[bytes]:
    try:
        while True:
            try:
                chunk = resp.read1(65536)
            except (OSError, http.client.HTTPException) as exc:
                raise LogsUnavailable(f"lost {where} while reading the output of {what}: "
                                      f"{exc}") from None
            if not chunk:
                if resp.length:  # a Content-Length body cut short
                    raise LogsUnavailable(f"lost {where} while reading the output of "
                                          f"{what}: {resp.length} bytes missing")
                return
            yield chunk
    finally:
        conn.close()
