"""The HTTP client under everything the plugin asks Consul: one mechanism, one place.

:class:`HttpClient` sends every request of the KV backend and of the health provider:

- **timeouts**: every call is bounded by the options' ``timeout`` (default 5 s), plus,
  for a blocking query, the wait Consul may legitimately hold it; when a frozen endpoint
  holds a read, the attempt is cut at half the timeout so that another endpoint can
  still answer within it;
- **failover**: a request that cannot reach an endpoint, times out or gets a server
  error moves on to the next endpoint. A request that must not be sent twice
  (``retry="unsent"``: a transaction) moves on only when Consul *cannot* have applied
  it (connection refused, TLS handshake failed, "No cluster leader"); otherwise its
  outcome is unknown, and it says so;
- **TLS and the ACL token** (sent as ``X-Consul-Token``; never in a message), from
  :class:`~skedlib_consul.options.ConsulOptions`; no proxy or ``CONSUL_*`` variable
  comes in between;
- **errors**: one line each, naming the backend or agent and the call, translated at
  this edge into :mod:`skedlib.errors`: :class:`~skedlib.errors.BackendUnavailable`
  when Consul cannot be reached in time or refuses the token, else
  :class:`~skedlib.errors.BackendError` (:func:`raise_for_status`,
  :func:`consul_errors`).

The few endpoints the plugin calls (KV reads, sessions, the agent API, ``/v1/txn``) are
plain HTTP through :meth:`HttpClient.call` and :meth:`HttpClient.call_json`: the plugin
needs no Consul client library, so it installs beside either of the distributions that
provide a ``consul`` module (python-consul, py-consul), whatever their version.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import requests
import requests.adapters
import urllib3.exceptions

from skedlib import BackendError, BackendUnavailable, Backoff
from skedlib_consul.options import ConsulOptions

__all__ = [
    "DEFAULT_POOL_SIZE",
    "HttpClient",
    "RetryPolicy",
    "body_text",
    "consul_errors",
    "index_of",
    "raise_for_status",
    "refused",
]

#: which failed requests may be sent again: any, or only those Consul cannot have applied
RetryPolicy = Literal["any", "unsent"]
# 5xx answers after which a write was certainly not applied: no leader to send it to, or
# the server could not connect to the leader to forward it
_NOT_APPLIED = ("No cluster leader", "No path to datacenter", "no leader",
                "failed to get conn")
#: connections kept per endpoint until :meth:`HttpClient.size_pool` asks for more
#: (requests' own default is 10, fewer than the agent's 16 task workers)
DEFAULT_POOL_SIZE = 16


def _innermost(exc: BaseException) -> BaseException:
    """The deepest cause inside requests' and urllib3's wrappers."""
    seen: set[int] = set()
    cur: BaseException = exc
    while id(cur) not in seen:
        seen.add(id(cur))
        nxt: BaseException | None = None
        if cur.args and isinstance(cur.args[0], BaseException):
            nxt = cur.args[0]
        reason = getattr(cur, "reason", None)
        if isinstance(reason, BaseException):
            nxt = reason
        if nxt is None:
            nxt = cur.__cause__ or cur.__context__
        if nxt is None:
            break
        cur = nxt
    return cur


def _not_sent(exc: requests.RequestException) -> bool:
    """True when the request certainly never reached Consul (safe to send elsewhere)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout | requests.exceptions.SSLError):
        return True
    if isinstance(exc, requests.exceptions.ConnectionError):
        inner = exc.args[0] if exc.args else None
        reason = getattr(inner, "reason", inner)
        return isinstance(reason, urllib3.exceptions.NewConnectionError
                          | urllib3.exceptions.ConnectTimeoutError | ConnectionRefusedError)
    return False


def _describe(exc: requests.RequestException, timeout: float, scheme: str) -> str:
    """A short cause for one failed attempt."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return f"no connection within {timeout:.1f}s"
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return f"no answer within {timeout:.1f}s"
    inner = _innermost(exc)
    text = str(inner)
    if isinstance(exc, requests.exceptions.SSLError):
        m = re.search(r"\[SSL[^\]]*\][^(\]]*", text)
        why = m.group(0).strip() if m else text
        hint = (" (is it plain HTTP? use scheme=http)" if "WRONG_VERSION" in why
                or "record layer" in why or "wrong version" in why else "")
        return f"TLS failed: {why}{hint}"
    if isinstance(inner, ConnectionRefusedError) or "Connection refused" in text:
        return "connection refused"
    if isinstance(inner, socket.gaierror) or "Name or service not known" in text:
        return f"cannot resolve the host name ({text.split(']')[-1].strip() or text})"
    m = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if m:
        return m.group(1).strip()
    if "RemoteDisconnected" in repr(inner) or "closed connection" in text \
            or "BadStatusLine" in repr(inner):
        hint = " (does the server expect scheme=https?)" if scheme == "http" else ""
        return f"the server closed the connection without answering{hint}"
    return text or type(inner).__name__


def body_text(resp: requests.Response, limit: int = 200) -> str:
    """The body of ``resp`` on one line, cut at ``limit`` characters."""
    text = " ".join(resp.text.split())
    return text[:limit] + ("…" if len(text) > limit else "")


class HttpClient:
    """requests to the listed endpoints, with a timeout on every call and failover.

    ``label`` starts every error message (the backend's URL, or ``consul agent URL``).
    Thread-safe: one connection pool per endpoint shared by every thread, keeping up to
    ``pool_size`` connections (:meth:`size_pool` widens it to the caller's concurrency,
    so that threads beyond it do not open and throw away connections, which urllib3
    reports as "Connection pool is full").
    """

    def __init__(self, options: ConsulOptions, label: str, *,
                 pool_size: int = DEFAULT_POOL_SIZE) -> None:
        self.options = options
        self.label = label
        self.pool_size = 0
        self._session = requests.Session()
        self._session.trust_env = False  # no proxy or netrc surprises between us and Consul
        self._session.headers["User-Agent"] = "skedlib-consul"
        if options.token:
            self._session.headers["X-Consul-Token"] = options.token
        if options.scheme == "https":
            self._session.verify = options.ca or True
            if options.cert:
                self._session.cert = (options.cert, options.key) if options.key \
                    else options.cert
        self._current = 0
        self._lock = threading.Lock()
        self._closed = False
        self.size_pool(pool_size)

    def size_pool(self, threads: int) -> None:
        """Keep up to ``threads`` connections per endpoint (never fewer than before).

        Call it with the number of threads that may call at once. A wider pool costs
        nothing until it is used: connections are opened on demand and kept for reuse.
        """
        with self._lock:
            if threads <= self.pool_size:
                return
            self.pool_size = threads
            # one pool per endpoint host; pool_block=False: a thread beyond the size still
            # gets a connection at once (it is then closed instead of kept)
            adapter = requests.adapters.HTTPAdapter(
                pool_connections=max(10, len(self.options.endpoints)), pool_maxsize=threads)
            # mounted anew: requests in flight finish on the old adapter's connections
            self._session.mount("http://", adapter)
            self._session.mount("https://", adapter)

    @property
    def current_endpoint(self) -> str:
        """``host:port`` of the endpoint requests go to first."""
        return self.options.endpoint_text(self._current)

    def close(self) -> None:
        """Release the connections; every later request raises BackendUnavailable."""
        self._closed = True
        self._session.close()

    def _params(self, params: Sequence[tuple[str, Any]] | None) -> list[tuple[str, str]]:
        out = [(k, "" if v is None else str(v)) for k, v in (params or ())]
        if self.options.dc and not any(k == "dc" for k, _ in out):
            out.append(("dc", self.options.dc))
        return out

    def request(self, method: str, path: str, *,
                params: Sequence[tuple[str, Any]] | None = None,
                data: str | bytes | None = None, headers: Mapping[str, str] | None = None,
                timeout: float | None = None, hold: float = 0.0,
                retry: RetryPolicy = "any", what: str = "") -> requests.Response:
        """Send one request; fail over as ``retry`` allows; raise BackendUnavailable.

        Returns the response for any status that is not a retried server error. With
        ``retry="unsent"`` a request that may have reached Consul is never sent again.
        ``hold`` is how long Consul may legitimately hold the answer (a blocking query's
        wait): it is added to the timeout of the call and of every attempt.
        """
        what = what or f"{method} {path}"
        if self._closed:
            raise BackendUnavailable(f"{self.label}: {what}: the backend was closed")
        budget = self.options.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget + hold
        n = len(self.options.endpoints)
        first = self._current
        qs = urllib.parse.quote(path, safe="/:")
        query = self._params(params)
        failures: list[str] = []
        last_exc: BaseException | None = None
        attempt = 0
        backoff = Backoff(initial=0.05, maximum=0.5)
        while True:
            idx = (first + attempt) % n
            left = deadline - time.monotonic()
            if attempt == 0:
                left = max(left, 0.1)
            if left <= 0:
                break
            per = left
            if retry == "any" and attempt < n - 1 and n > 1:
                per = min(left, hold + max(1.0, budget / 2))  # time for another endpoint
            try:
                resp = self._session.request(
                    method, self.options.base_url(idx) + qs, params=query, data=data,
                    headers=dict(headers) if headers else None, timeout=(min(per, 3.0), per),
                    allow_redirects=False)
            except requests.RequestException as exc:
                last_exc = exc
                failures.append(f"{self.options.endpoint_text(idx)}: "
                                f"{_describe(exc, per, self.options.scheme)}")
                self._move_from(idx)
                if retry == "unsent" and not _not_sent(exc):
                    raise BackendUnavailable(
                        f"{self.label}: {what}: outcome unknown, Consul may or may not have "
                        f"applied it ({failures[-1]}); read back before retrying") from exc
            else:
                if resp.status_code < 500 or (retry == "unsent" and not any(
                        s in resp.text for s in _NOT_APPLIED)):
                    if resp.status_code < 500:
                        self._current = idx
                    return resp
                failures.append(f"{self.options.endpoint_text(idx)}: HTTP "
                                f"{resp.status_code} {body_text(resp)}")
                self._move_from(idx)
            attempt += 1
            if attempt % n == 0:
                pause = backoff.next()
                if time.monotonic() + pause >= deadline:
                    break
                time.sleep(pause)  # every endpoint failed once: back off, then go round again
        causes = "; ".join(dict.fromkeys(failures[-n:]))
        raise BackendUnavailable(f"{self.label}: {what} failed: {causes}") from last_exc

    def _move_from(self, idx: int) -> None:
        with self._lock:
            if self._current == idx:
                self._current = (idx + 1) % len(self.options.endpoints)

    # -- Consul's API: JSON answers, the index, errors ------------------------------------
    def call(self, method: str, path: str, *, what: str,
             params: Sequence[tuple[str, Any]] | None = None,
             data: str | None = None) -> requests.Response:
        """One call that may be sent again (every call but a transaction).

        Writes sent here are safe to repeat: a session created twice by a retry expires on
        its own, a service registered twice is replaced, a TTL report or a deregistration
        sent twice changes nothing. Returns a success or an HTTP 404 (the caller says what
        a missing key, session or service means); raises :func:`refused` for HTTP 401/403
        and :class:`~skedlib.errors.BackendUnavailable` for another error.
        """
        resp = self.request(method, path, params=params, data=data, retry="any", what=what)
        code = resp.status_code
        if code in (401, 403):
            raise refused(self.label, what, body_text(resp) or "permission denied",
                          bool(self.options.token))
        if code >= 400 and code != 404:
            raise BackendUnavailable(f"{self.label}: {what} failed: {code} {body_text(resp)}")
        return resp

    def call_json(self, method: str, path: str, *, what: str,
                  params: Sequence[tuple[str, Any]] | None = None,
                  data: str | None = None) -> tuple[int, Any]:
        """:meth:`call`, answered with (``X-Consul-Index``, the decoded JSON body); the body
        is None for HTTP 404."""
        resp = self.call(method, path, what=what, params=params, data=data)
        index = index_of(resp, self.label, what)
        if resp.status_code == 404:
            return index, None
        try:
            return index, resp.json()
        except ValueError as exc:
            raise BackendError(f"{self.label}: {what}: unexpected answer from Consul: "
                               f"{body_text(resp)}") from exc


def refused(label: str, what: str, detail: str, token: bool) -> BackendUnavailable:
    """The error for a call Consul's ACLs refused (``token``: whether one was sent)."""
    who = "the ACL token" if token else "anonymous access (no ACL token given)"
    return BackendUnavailable(f"{label}: {what}: Consul refused {who}: {detail}")


@contextlib.contextmanager
def consul_errors(label: str, what: str) -> Iterator[None]:
    """Translate an answer that is not what Consul sends (a missing field, a value of the
    wrong type) into :class:`~skedlib.errors.BackendError`, naming ``label`` and ``what``."""
    try:
        yield
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BackendError(f"{label}: {what}: unexpected answer from Consul: "
                           f"{_short(exc)}") from exc


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:200] + "…") if len(text) > 200 else (text or type(exc).__name__)


def raise_for_status(label: str, what: str, resp: requests.Response, *,
                     token: bool = True) -> None:
    """Raise the error an answer that is not a success means (see the module docstring)."""
    code = resp.status_code
    if code < 300:
        return
    body = body_text(resp)
    if code in (401, 403):
        raise refused(label, what, f"HTTP {code} {body or 'permission denied'}", token)
    if code >= 500:
        raise BackendUnavailable(f"{label}: {what} failed: HTTP {code} {body}")
    if "HTTP request to an HTTPS server" in body:
        raise BackendUnavailable(f"{label}: {what}: the server speaks HTTPS: use scheme=https")
    raise BackendError(f"{label}: {what}: Consul refused the request: HTTP {code} {body}")


def index_of(resp: requests.Response, label: str, what: str) -> int:
    """The ``X-Consul-Index`` of an answer (0 when there is none)."""
    raw = resp.headers.get("X-Consul-Index")
    try:
        return int(raw) if raw is not None else 0
    except ValueError:
        raise BackendError(f"{label}: {what}: bad X-Consul-Index {raw!r}") from None
