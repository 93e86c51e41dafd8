"""``consul://``: the skedlib storage contract on Consul's KV store (Consul 0.8 and later).

URL::

    consul://HOST[:PORT][,HOST[:PORT]...][?dc=DC&token=T&timeout=5&scheme=https&ca=F&cert=F&key=F]

``PORT`` defaults to 8500. ``token`` is the ACL token (default: ``$CONSUL_HTTP_TOKEN``);
``scheme=https`` talks TLS, verified against ``ca`` (a PEM bundle; default: the system
store), with an optional client certificate ``cert``/``key``. The token never appears in
:attr:`ConsulBackend.url` or in error messages. Full documentation, with the mapping of
the contract onto Consul and its limits: ``docs/backends/consul.md``.

How the contract maps onto Consul
---------------------------------

- **Revisions are Raft indexes.** A key's ``revision`` is its ``ModifyIndex`` and its
  ``create_revision`` its ``CreateIndex``. Every write is one Raft log entry, so all the
  keys a transaction writes share one index, greater than every earlier one; indexes
  also advance for writes that are not KV writes (sessions, catalog), so revisions have
  gaps. ``TxnResult.revision`` is the transaction's index when it wrote a key; for a
  transaction that only deletes (Consul does not report an index for deletes) or only
  compares, it is the KV index read just after it: equal to the transaction's own unless
  another write landed in between, and never lower.
- ``ListResult.revision`` is the ``X-Consul-Index`` of a consistent recursive read: the
  highest index of a write or delete *under that prefix* (for a prefix that never held a
  key, the index of the whole KV store). Nothing under the prefix changed after it, which
  is what ``watch(prefix, listed.revision + 1)`` needs.
- **Transactions** go to ``/v1/txn``: ``Compare(key, r)`` becomes ``check-index`` with
  ``r``; ``Compare(key, 0)`` becomes ``delete-cas`` with index 0, which in Consul 0.8
  succeeds exactly when the key is absent and then changes nothing (``cas`` with index 0
  would be a write, and 0.8 has no ``check-not-exists``). Compares come first, so they
  see the state before the transaction. ``Put`` is ``set``, or ``lock`` with the session
  when the put is bound to a lease; ``Delete`` is ``delete``. Consul 0.8 takes at most
  64 operations: :attr:`ConsulBackend.max_txn_ops` is 64, and larger transactions raise
  :class:`~skedlib.errors.TxnTooLarge` before anything is sent.
- **Leases are sessions**, behaviour ``delete`` (the session's keys are deleted when it
  ends), lock-delay 0 and *no* health checks (so a session does not die with the agent
  it was created through). Consul ends a session 2 x its TTL after its last renewal, so
  a lease of TTL t is a session of TTL t/2: it ends t after its last keep-alive, as on
  etcd. Consul's shortest session TTL is 10 s, so ``min_lease_ttl`` is 20 s.
- **Watches** are blocking queries on the prefix, diffed against the previous listing.
  See :class:`ConsulWatch` for what they can and cannot see.

Failover
--------

Every request goes to the current endpoint; when it cannot be reached, times out, or
answers with a server error, the backend moves to the next endpoint. Reads, session
calls and the agent API are retried there; a transaction is retried only when Consul
*cannot* have applied it (the connection was refused, the TLS handshake failed, or the
server answered "No cluster leader"). A transaction whose outcome is unknown (the server
died or froze after receiving it) raises :class:`~skedlib.errors.BackendUnavailable`
saying so, and is not retried: the caller re-reads (a fenced or ``create`` transaction
can then simply be tried again). Each call is bounded by ``timeout`` (default 5 s); when
a frozen endpoint holds a read, the attempt is cut at half the timeout so that another
endpoint can still answer within it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import consul.base
import requests
import urllib3.exceptions

from skedlib.errors import BackendError, BackendUnavailable, InvalidName, LeaseExpired, TxnTooLarge
from skedlib.store.base import (
    Backend,
    Compare,
    KeyValue,
    ListResult,
    Op,
    Put,
    TxnResult,
    Watch,
    WatchEvent,
)

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_TIMEOUT",
    "MAX_TXN_OPS",
    "MIN_LEASE_TTL",
    "MIN_SESSION_TTL",
    "ConsulBackend",
    "ConsulOptions",
    "ConsulWatch",
    "open_consul",
    "parse_url",
]

log = logging.getLogger(__name__)

DEFAULT_PORT = 8500
DEFAULT_TIMEOUT = 5.0
#: Consul 0.8's limit on operations in one ``/v1/txn`` request
MAX_TXN_OPS = 64
#: Consul's shortest session TTL (``session_ttl_min``, 10 s by default)
MIN_SESSION_TTL = 10.0
#: the shortest lease: a lease of TTL t is a session of TTL t/2, because Consul ends a
#: session 2 x its TTL after the last renewal; so a lease ends t after its last renewal
MIN_LEASE_TTL = 2 * MIN_SESSION_TTL
#: Consul's longest session TTL, which also bounds a lease's
MAX_LEASE_TTL = 86400.0
#: the longest blocking query a watch sends (a frozen server is noticed within this)
MAX_WATCH_WAIT = 10.0

# aliases: inside ConsulBackend, ``list`` names the method
_Payload = list[dict[str, Any]]
_Origins = list[tuple[str, int]]
_TxnErrors = list[tuple[int, str]]
_Listing = tuple[int, list[KeyValue]]

_SESSION_ID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                         r"[0-9a-fA-F]{12}")
_QUERY_KEYS = ("dc", "token", "timeout", "scheme", "ca", "cert", "key")
_RetryPolicy = Literal["any", "unsent"]
# 5xx answers after which a write was certainly not applied: no leader to send it to, or
# the server could not connect to the leader to forward it
_NOT_APPLIED = ("No cluster leader", "No path to datacenter", "no leader",
                "failed to get conn")


# -- the URL ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConsulOptions:
    """What a ``consul://`` URL says: endpoints, datacenter, token, timeout, TLS files."""

    endpoints: tuple[tuple[str, int], ...]
    dc: str | None = None
    token: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT
    scheme: Literal["http", "https"] = "http"
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def endpoint_text(self, index: int) -> str:
        """``host:port`` of one endpoint (IPv6 hosts in brackets)."""
        host, port = self.endpoints[index]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def base_url(self, index: int) -> str:
        """``scheme://host:port`` of one endpoint."""
        return f"{self.scheme}://{self.endpoint_text(index)}"


def redact_url(url: str) -> str:
    """``url`` with the value of a ``token`` query parameter replaced by ``***``."""
    return re.sub(r"(?i)([?&]token=)[^&#]*", r"\1***", url)


def parse_url(url: str) -> ConsulOptions:
    """Parse ``consul://host:port[,host:port…][?options]``; raises BackendUnavailable."""
    shown = redact_url(url)
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:  # e.g. an unbalanced IPv6 bracket
        raise BackendUnavailable(f"{shown}: not a valid URL: {exc}") from exc
    if parts.scheme.lower() != "consul":
        raise BackendUnavailable(f"{shown}: not a consul:// URL")
    if parts.path not in ("", "/") or parts.fragment:
        raise BackendUnavailable(f"{shown}: a consul:// URL has no path (expected "
                                 "consul://host:port[,host:port...][?options])")
    endpoints: list[tuple[str, int]] = []
    for item in parts.netloc.split(","):
        item = item.strip()
        if not item:
            continue
        m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:\[\]@/]+)(?::(\d+))?", item)
        if m is None:
            raise BackendUnavailable(f"{shown}: bad endpoint {item!r} (expected host:port)")
        host = m.group(1) or m.group(3)
        port = int(m.group(2) or m.group(4) or DEFAULT_PORT)
        if not 0 < port < 65536:
            raise BackendUnavailable(f"{shown}: bad port in {item!r}")
        endpoints.append((host, port))
    if not endpoints:
        raise BackendUnavailable(f"{shown}: no endpoint (expected consul://host:port)")
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - set(_QUERY_KEYS))
    if unknown:
        raise BackendUnavailable(f"{shown}: unknown option(s) {', '.join(unknown)} "
                                 f"(known: {', '.join(_QUERY_KEYS)})")

    def one(name: str) -> str | None:
        values = query.get(name)
        return values[-1] if values else None

    try:
        timeout = float(one("timeout") or DEFAULT_TIMEOUT)
    except ValueError:
        raise BackendUnavailable(f"{shown}: timeout must be a number of seconds") from None
    if not 0 < timeout <= 3600:
        raise BackendUnavailable(f"{shown}: timeout must be between 0 and 3600 seconds")
    scheme = (one("scheme") or "http").lower()
    if scheme not in ("http", "https"):
        raise BackendUnavailable(f"{shown}: scheme must be http or https, not {scheme!r}")
    ca, cert, key = one("ca") or None, one("cert") or None, one("key") or None
    for name, path in (("ca", ca), ("cert", cert), ("key", key)):
        if path is not None and not os.path.isfile(path):
            raise BackendUnavailable(f"{shown}: {name} file {path!r} does not exist")
    if key is not None and cert is None:
        raise BackendUnavailable(f"{shown}: key= needs cert= (the client certificate)")
    _check_tls_files(shown, ca, cert, key)
    if (ca or cert) and scheme == "http" and one("scheme") is None:
        scheme = "https"  # TLS files imply TLS
    token = one("token") or os.environ.get("CONSUL_HTTP_TOKEN") or None
    return ConsulOptions(endpoints=tuple(endpoints), dc=one("dc") or None, token=token,
                         timeout=timeout, scheme="https" if scheme == "https" else "http",
                         ca=ca, cert=cert, key=key)


def _check_tls_files(shown: str, ca: str | None, cert: str | None, key: str | None) -> None:
    """Load the TLS files now, so that a wrong one is named (not "PEM lib" at connect)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as exc:
            raise BackendUnavailable(f"{shown}: the ca file {ca!r} holds no PEM "
                                     f"certificate ({exc})") from exc
    if cert is not None:
        try:  # a key protected by a password fails here instead of prompting for it
            context.load_cert_chain(cert, key, password=lambda: b"")
        except (ssl.SSLError, OSError) as exc:
            mismatch = getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH"
            files = f"the cert file {cert!r}" + (f" and the key file {key!r}" if key else
                                                " (no key=: it must hold the key too)")
            why = "the key does not match the certificate" if mismatch else \
                "not a PEM certificate and unencrypted key"
            raise BackendUnavailable(f"{shown}: cannot use {files}: {why}") from exc


# -- HTTP with timeouts and failover -------------------------------------------------------
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


def _body_text(resp: requests.Response, limit: int = 200) -> str:
    text = " ".join(resp.text.split())
    return text[:limit] + ("…" if len(text) > limit else "")


class _Transport:
    """requests to the listed endpoints, with a timeout on every call and failover.

    It also offers the ``get/put/delete/post(callback, path, params, data, headers)``
    interface python-consul2's endpoint classes call, so they run over this transport.
    """

    def __init__(self, options: ConsulOptions, label: str) -> None:
        self.options = options
        self.label = label
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

    @property
    def current_endpoint(self) -> str:
        """``host:port`` of the endpoint requests go to first."""
        return self.options.endpoint_text(self._current)

    def close(self) -> None:
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
                retry: _RetryPolicy = "any", what: str = "") -> requests.Response:
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
        pause = 0.05
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
                                f"{resp.status_code} {_body_text(resp)}")
                self._move_from(idx)
            attempt += 1
            if attempt % n == 0:
                if time.monotonic() + pause >= deadline:
                    break
                time.sleep(pause)  # every endpoint failed once: back off, then go round again
                pause = min(pause * 2, 0.5)
        causes = "; ".join(dict.fromkeys(failures[-n:]))
        raise BackendUnavailable(f"{self.label}: {what} failed: {causes}") from last_exc

    def _move_from(self, idx: int) -> None:
        with self._lock:
            if self._current == idx:
                self._current = (idx + 1) % len(self.options.endpoints)

    # -- the interface python-consul2's endpoint classes call ---------------------------
    def _call(self, method: str, callback: Any, path: str, params: Any, data: Any,
              headers: Any) -> Any:
        # writes through python-consul2 are idempotent here (sessions, agent API): a
        # session created twice by a retry expires on its own
        resp = self.request(method, path, params=params, data=data or None,
                            headers=headers, retry="any")
        resp.encoding = "utf-8"
        return callback(consul.base.Response(resp.status_code, resp.headers, resp.text,
                                             resp.content))

    def get(self, callback: Any, path: str, params: Any = None, headers: Any = None) -> Any:
        """python-consul2 HTTPClient.get."""
        return self._call("GET", callback, path, params, None, headers)

    def put(self, callback: Any, path: str, params: Any = None, data: Any = "",
            headers: Any = None) -> Any:
        """python-consul2 HTTPClient.put."""
        return self._call("PUT", callback, path, params, data, headers)

    def delete(self, callback: Any, path: str, params: Any = None, data: Any = "",
               headers: Any = None) -> Any:
        """python-consul2 HTTPClient.delete."""
        return self._call("DELETE", callback, path, params, data, headers)

    def post(self, callback: Any, path: str, params: Any = None, headers: Any = None,
             data: Any = "") -> Any:
        """python-consul2 HTTPClient.post."""
        return self._call("POST", callback, path, params, data, headers)


class _ApiContext:
    """What python-consul2's endpoint classes read from their ``agent`` argument.

    We do not construct ``consul.Consul`` itself: its constructor reads
    ``CONSUL_HTTP_ADDR``/``CONSUL_HTTP_SSL`` (which would override the URL), lets
    ``CONSUL_HTTP_TOKEN`` override an explicit token, and builds deprecated endpoint
    objects that emit DeprecationWarnings.
    """

    def __init__(self, http: _Transport, dc: str | None) -> None:
        self.http = http
        self.token: str | None = None  # sent by the transport's session
        self.dc = dc
        self.consistency = "consistent"


def _refused(label: str, what: str, detail: str, token: bool) -> BackendUnavailable:
    who = "the ACL token" if token else "anonymous access (no ACL token given)"
    return BackendUnavailable(f"{label}: {what}: Consul refused {who}: {detail}")


@contextlib.contextmanager
def consul_errors(label: str, what: str, *, token: bool = True) -> Iterator[None]:
    """Translate python-consul2's exceptions into skedlib's, naming ``label`` and ``what``.

    ``token`` says whether a token was sent (for the message when ACLs refuse).
    """
    try:
        yield
    except (consul.base.ACLPermissionDenied, consul.base.ACLDisabled) as exc:
        raise _refused(label, what, _short(exc) or "permission denied", token) from exc
    except consul.base.ConsulException as exc:
        raise BackendUnavailable(f"{label}: {what} failed: {_short(exc)}") from exc
    except (ValueError, KeyError, TypeError) as exc:  # a body that is not what Consul sends
        raise BackendError(f"{label}: {what}: unexpected answer from Consul: {exc}") from exc


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:200] + "…") if len(text) > 200 else (text or type(exc).__name__)


def _raise_for_status(label: str, what: str, resp: requests.Response, *,
                      token: bool = True) -> None:
    code = resp.status_code
    if code < 300:
        return
    body = _body_text(resp)
    if code in (401, 403):
        raise _refused(label, what, f"HTTP {code} {body or 'permission denied'}", token)
    if code >= 500:
        raise BackendUnavailable(f"{label}: {what} failed: HTTP {code} {body}")
    if "HTTP request to an HTTPS server" in body:
        raise BackendUnavailable(f"{label}: {what}: the server speaks HTTPS: use scheme=https")
    raise BackendError(f"{label}: {what}: Consul refused the request: HTTP {code} {body}")


# -- helpers ---------------------------------------------------------------------------------
def _check_key(key: str) -> None:
    if not key:
        raise InvalidName("a Consul key cannot be empty")
    if key.startswith("/"):
        raise InvalidName(f"invalid key {key!r}: Consul keys cannot start with '/'")


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _kv_from_json(item: Mapping[str, Any], *, decoded: bool = False) -> KeyValue:
    raw = item.get("Value")
    if raw is None:
        value = b""
    elif decoded:
        value = raw if isinstance(raw, bytes) else str(raw).encode()
    else:
        value = base64.b64decode(raw)
    return KeyValue(key=str(item["Key"]), value=value, revision=int(item["ModifyIndex"]),
                    create_revision=int(item["CreateIndex"]),
                    lease=str(item["Session"]) if item.get("Session") else None)


def _index_of(resp: requests.Response, label: str, what: str) -> int:
    raw = resp.headers.get("X-Consul-Index")
    try:
        return int(raw) if raw is not None else 0
    except ValueError:
        raise BackendError(f"{label}: {what}: bad X-Consul-Index {raw!r}") from None


# -- the backend -----------------------------------------------------------------------------
class ConsulBackend(Backend):
    """The storage contract on Consul's KV store, sessions and blocking queries.

    Thread-safe: one HTTP connection pool shared by every thread. Open it with
    :func:`open_consul` (or ``skedlib.plugins.open_backend("consul://…")``).
    """

    max_txn_ops = MAX_TXN_OPS
    min_lease_ttl = MIN_LEASE_TTL

    def __init__(self, options: ConsulOptions, *, url: str = "") -> None:
        self.options = options
        self.url = redact_url(url) if url else "consul://" + ",".join(
            options.endpoint_text(i) for i in range(len(options.endpoints)))
        self._http = _Transport(options, self.url)
        api = _ApiContext(self._http, options.dc)
        self._kv = consul.base.Consul.KV(api)
        self._sessions = consul.base.Consul.Session(api)
        self._watches: weakref.WeakSet[ConsulWatch] = weakref.WeakSet()
        self._watches_lock = threading.Lock()
        self._session_name = f"skedlib {socket.gethostname()}:{os.getpid()}"

    @property
    def current_endpoint(self) -> str:
        """``host:port`` of the endpoint requests currently go to first."""
        return self._http.current_endpoint

    def _errors(self, what: str) -> contextlib.AbstractContextManager[None]:
        return consul_errors(self.url, what, token=bool(self.options.token))

    def _check_status(self, what: str, resp: requests.Response) -> None:
        _raise_for_status(self.url, what, resp, token=bool(self.options.token))

    def check(self) -> None:
        """Raise BackendUnavailable unless some endpoint answers and knows a leader."""
        deadline = time.monotonic() + self.options.timeout
        while True:
            resp = self._http.request("GET", "/v1/status/leader", what="connect",
                                      timeout=max(0.1, deadline - time.monotonic()))
            if resp.status_code == 404:  # every Consul agent since 0.1 has this endpoint
                raise BackendUnavailable(
                    f"{self.url}: connect: {self._http.current_endpoint} answered HTTP 404 "
                    f"({_body_text(resp, 60)}) for /v1/status/leader: is it a Consul agent's "
                    "HTTP API?")
            self._check_status("connect", resp)
            if resp.text.strip() not in ('""', ""):
                return
            if time.monotonic() >= deadline:
                raise BackendUnavailable(f"{self.url}: connect: Consul answers but has no "
                                         f"cluster leader")
            time.sleep(0.1)

    # -- reads ----------------------------------------------------------------------------
    def get(self, key: str) -> KeyValue | None:
        _check_key(key)
        with self._errors(f"get {key!r}"):
            _index, item = self._kv.get(key, consistency="consistent")
            return None if item is None else _kv_from_json(item, decoded=True)

    def list(self, prefix: str) -> ListResult:
        if prefix.startswith("/"):
            raise InvalidName(f"invalid prefix {prefix!r}: Consul keys cannot start with '/'")
        with self._errors(f"list {prefix!r}"):
            index, items = self._kv.get(prefix, recurse=True, consistency="consistent")
            kvs = sorted((_kv_from_json(i, decoded=True) for i in items or ()),
                         key=lambda kv: kv.key)
            if index is None:
                raise BackendError(f"{self.url}: list {prefix!r}: Consul sent no index")
            return ListResult(kvs, int(index))  # python-consul2 hands the index as a string

    def current_revision(self) -> int:
        """The KV store's index (the index of the last KV write or delete)."""
        return self.list("\x00").revision

    # -- transactions -----------------------------------------------------------------------
    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        size = len(compares) + len(ops)
        if size > MAX_TXN_OPS:
            raise TxnTooLarge(f"{self.url}: transaction of {size} operations exceeds "
                              f"Consul's limit of {MAX_TXN_OPS}")
        for c in compares:
            _check_key(c.key)
        for op in ops:
            _check_key(op.key)
        for op in ops:
            if isinstance(op, Put) and op.lease is not None and \
                    not _SESSION_ID.fullmatch(op.lease):
                raise LeaseExpired(f"{self.url}: lease {op.lease!r} does not exist")
        if any(c.revision < 0 for c in compares):
            return TxnResult(False, self.current_revision())  # no key has such a revision
        if not ops and not compares:
            return TxnResult(True, self.current_revision())
        # op position -> the session to release first: a put that moves a key held by
        # another session (another lease) to this one is unlock(old) + lock(new)
        unlock: dict[int, str] = {}
        for _ in range(8):
            payload, origin = self._encode(compares, ops, unlock)
            if len(payload) > MAX_TXN_OPS:
                raise TxnTooLarge(
                    f"{self.url}: moving {len(unlock)} key(s) from another lease takes "
                    f"{len(payload)} operations, over Consul's limit of {MAX_TXN_OPS}")
            resp = self._http.request("PUT", "/v1/txn", data=json.dumps(payload),
                                      retry="unsent", what="txn")
            if resp.status_code == 200:
                return TxnResult(True, self._txn_revision(resp, ops))
            if resp.status_code >= 500:
                raise BackendUnavailable(
                    f"{self.url}: txn: outcome unknown, Consul may or may not have applied "
                    f"it (HTTP {resp.status_code} {_body_text(resp)}); read back before "
                    "retrying")
            if resp.status_code != 409:
                self._check_status("txn", resp)
                raise BackendError(f"{self.url}: txn: unexpected HTTP {resp.status_code}")
            errors = self._txn_errors(resp)
            denied = [w for _, w in errors if "permission denied" in w.lower()]
            if denied:
                raise _refused(self.url, "txn", denied[0], bool(self.options.token))
            if any(origin[i][0] == "compare" for i, _ in errors if 0 <= i < len(origin)):
                return TxnResult(False, self.current_revision())
            retry_keys: list[int] = []
            for i, what in errors:
                kind, j = origin[i] if 0 <= i < len(origin) else ("?", -1)
                failed: Op | None = ops[j] if 0 <= j < len(ops) else None
                if "invalid session" in what and isinstance(failed, Put):
                    raise LeaseExpired(f"{self.url}: lease {failed.lease} does not exist")
                if kind in ("op", "unlock") and isinstance(failed, Put) and failed.lease and (
                        "already held" in what or "unlock" in what):
                    retry_keys.append(j)
                    continue
                raise BackendError(f"{self.url}: txn refused by Consul: "
                                   + "; ".join(w for _, w in errors))
            for j in retry_keys:  # learn who holds the key now, then try again
                kv = self.get(ops[j].key)
                holder = kv.lease if kv is not None else None
                if holder is None or holder == getattr(ops[j], "lease", None):
                    unlock.pop(j, None)
                else:
                    unlock[j] = holder
        raise BackendUnavailable(f"{self.url}: txn: leased keys kept changing holders; "
                                 "gave up after 8 attempts")

    @staticmethod
    def _encode(compares: Sequence[Compare], ops: Sequence[Op], unlock: Mapping[int, str]
                ) -> tuple[_Payload, _Origins]:
        payload: _Payload = []
        origin: _Origins = []
        for i, c in enumerate(compares):
            if c.revision == 0:  # absent: deleting "index 0" succeeds only if there is no key
                payload.append({"KV": {"Verb": "delete-cas", "Key": c.key, "Index": 0}})
            else:
                payload.append({"KV": {"Verb": "check-index", "Key": c.key,
                                       "Index": c.revision}})
            origin.append(("compare", i))
        for j, op in enumerate(ops):
            if isinstance(op, Put):
                value = _b64(op.value)
                if j in unlock:
                    payload.append({"KV": {"Verb": "unlock", "Key": op.key, "Value": value,
                                           "Session": unlock[j]}})
                    origin.append(("unlock", j))
                if op.lease:
                    payload.append({"KV": {"Verb": "lock", "Key": op.key, "Value": value,
                                           "Session": op.lease}})
                else:
                    payload.append({"KV": {"Verb": "set", "Key": op.key, "Value": value}})
            else:
                payload.append({"KV": {"Verb": "delete", "Key": op.key}})
            origin.append(("op", j))
        return payload, origin

    def _txn_errors(self, resp: requests.Response) -> _TxnErrors:
        try:
            body = resp.json()
            return [(int(e.get("OpIndex", -1)), str(e.get("What", "")))
                    for e in body.get("Errors") or ()]
        except (ValueError, AttributeError, TypeError) as exc:
            raise BackendError(f"{self.url}: txn: unexpected answer from Consul: "
                               f"{_body_text(resp)}") from exc

    def _txn_revision(self, resp: requests.Response, ops: Sequence[Op]) -> int:
        if not any(isinstance(op, Put) for op in ops):
            return self.current_revision()  # Consul reports no index for deletes
        try:
            results = resp.json().get("Results") or []
            kvs = [r["KV"] for r in results if r.get("KV")]
        except (ValueError, AttributeError, TypeError, KeyError) as exc:
            raise BackendError(f"{self.url}: txn: unexpected answer from Consul: "
                               f"{_body_text(resp)}") from exc
        put_keys = {op.key for op in ops if isinstance(op, Put) and not op.lease}
        for kv in kvs:
            if kv.get("Key") in put_keys and kv.get("Session"):
                log.warning("%s: put of %r without a lease left it bound to session %s "
                            "(Consul's set keeps a key's session)", self.url, kv["Key"],
                            kv["Session"])
        # every write of the transaction has its index; compares report older ones
        indexes = [int(kv["ModifyIndex"]) for kv in kvs if "ModifyIndex" in kv]
        return max(indexes) if indexes else self.current_revision()

    # -- watches ----------------------------------------------------------------------------
    def watch(self, prefix: str, start_revision: int) -> Watch:
        if prefix.startswith("/"):
            raise InvalidName(f"invalid prefix {prefix!r}: Consul keys cannot start with '/'")
        w = ConsulWatch(self, prefix, start_revision)
        with self._watches_lock:
            self._watches.add(w)
        return w

    def _poll(self, prefix: str, index: int, wait: float) -> _Listing:
        """One (blocking, when ``index`` > 0) recursive read of ``prefix``."""
        params: list[tuple[str, Any]] = [("recurse", "")]
        if index > 0:
            params += [("index", index), ("wait", f"{max(1, int(wait * 1000))}ms")]
        # Consul adds up to wait/16 of jitter to a blocking query
        hold = wait * 17 / 16 if index > 0 else 0.0
        what = f"watch {prefix!r}"
        resp = self._http.request("GET", "/v1/kv/" + prefix, params=params, hold=hold,
                                  what=what)
        if resp.status_code == 404:
            return _index_of(resp, self.url, what), []
        self._check_status(what, resp)
        try:
            items = [_kv_from_json(i) for i in resp.json() or ()]
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(f"{self.url}: {what}: unexpected answer from Consul: "
                               f"{_body_text(resp)}") from exc
        return _index_of(resp, self.url, what), items

    # -- leases -----------------------------------------------------------------------------
    def grant_lease(self, ttl: float) -> str:
        ttl = min(max(float(ttl), MIN_LEASE_TTL), MAX_LEASE_TTL)
        session_ttl = ttl / 2  # Consul's timer runs 2 x the session's TTL
        with self._errors("grant lease"):
            session_id = self._sessions.create(
                name=self._session_name, lock_delay=0, behavior="delete",
                ttl=int(session_ttl) if session_ttl.is_integer() else round(session_ttl, 3),
                checks=[])
        if not isinstance(session_id, str) or not session_id:
            raise BackendError(f"{self.url}: grant lease: Consul returned no session id")
        return session_id

    def keepalive(self, lease: str) -> None:
        if not _SESSION_ID.fullmatch(lease):
            raise LeaseExpired(f"{self.url}: lease {lease!r} does not exist")
        with self._errors(f"keep-alive of lease {lease}"):
            try:
                renewed = self._sessions.renew(lease)
            except consul.base.NotFound:
                renewed = None
        if not renewed:
            raise LeaseExpired(f"{self.url}: lease {lease} does not exist")

    def revoke_lease(self, lease: str) -> None:
        if not _SESSION_ID.fullmatch(lease):
            return  # not a session id: there is no such lease
        with self._errors(f"revoke lease {lease}"):
            self._sessions.destroy(lease)

    # -- life cycle -------------------------------------------------------------------------
    def close(self) -> None:
        with self._watches_lock:
            watches = list(self._watches)
        for w in watches:
            w.close()
        self._http.close()

    def __repr__(self) -> str:
        return f"<ConsulBackend {self.url}>"


# -- watches ---------------------------------------------------------------------------------
class _Poll:
    """One listing in flight on a daemon thread; ``done`` is set when it has an outcome."""

    def __init__(self, backend: ConsulBackend, prefix: str, index: int, wait: float,
                 wake: threading.Event) -> None:
        self.done = threading.Event()
        self.result: tuple[int, list[KeyValue]] | None = None
        self.error: BaseException | None = None
        self._wake = wake
        thread = threading.Thread(target=self._run, args=(backend, prefix, index, wait),
                                  name="consul-watch", daemon=True)
        thread.start()

    def _run(self, backend: ConsulBackend, prefix: str, index: int, wait: float) -> None:
        try:
            self.result = backend._poll(prefix, index, wait)
        except BaseException as exc:  # handed to the caller of next()
            self.error = exc
        finally:
            self.done.set()
            self._wake.set()


class ConsulWatch(Watch):
    """Changes under a prefix, from Consul blocking queries diffed against the last listing.

    Each poll lists the prefix (``?recurse``) and blocks until its index moves past the
    last one seen; the new listing is compared with the previous one:

    - a key that is new or whose ``ModifyIndex`` moved is a ``put`` event with the key's
      current value, at the key's ``ModifyIndex`` (the same revision :meth:`~Backend.get`
      reports);
    - a key that disappeared is a ``delete`` event at the listing's index, the index at
      which the deletion was seen (exact when it was the only change between two polls).

    What a watcher cannot see: writes between two polls collapse. A key written twice
    between polls yields one put with the last value; a key created and deleted between
    polls yields nothing; a key deleted and re-created yields one put. The first poll
    reports every key whose ``ModifyIndex`` is at least ``start_revision`` as a put, but
    cannot report deletions that happened between ``start_revision`` and that first poll:
    Consul keeps no history. None of this raises (there is nothing like etcd's
    compaction to report); use ``list`` + ``watch(prefix, listed.revision + 1)`` and keep
    polling to miss no final state.

    Events come in revision order, a poll's events in one batch. ``close()`` returns a
    blocked :meth:`next` at once; the request in flight ends on its own within
    :data:`MAX_WATCH_WAIT` seconds. A failed poll raises BackendUnavailable from
    :meth:`next`; the watch stays usable and the next call resumes where it was.
    """

    def __init__(self, backend: ConsulBackend, prefix: str, start_revision: int) -> None:
        self._backend = backend
        self._prefix = prefix
        self._start = max(start_revision, 1)
        self._known: dict[str, KeyValue] | None = None  # the last listing
        self._index = 0
        self._last = 0  # highest revision delivered
        self._closed = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._pending: _Poll | None = None

    def next(self, timeout: float | None = None) -> list[WatchEvent]:
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        with self._lock:
            while not self._closed.is_set():
                if self._pending is None:
                    budget = MAX_WATCH_WAIT if deadline is None else \
                        deadline - time.monotonic()
                    wait = min(max(budget, 0.05), MAX_WATCH_WAIT)
                    index = max(self._index, 1) if self._known is not None else 0
                    self._pending = _Poll(self._backend, self._prefix, index, wait,
                                          self._wake)
                poll = self._pending
                if poll.done.is_set():
                    self._pending = None
                    if poll.error is not None:
                        raise poll.error
                    assert poll.result is not None
                    events = self._diff(*poll.result)
                    if events:
                        return events
                    if deadline is not None and time.monotonic() >= deadline:
                        return []
                    continue
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return []
                self._wake.wait(left)
                self._wake.clear()
        return []

    def _diff(self, index: int, items: list[KeyValue]) -> list[WatchEvent]:
        if self._known is not None and index < self._index:
            # the index went back: a server that lags (a deposed leader) or tombstones
            # reaped. Nothing newer can be in this listing; wait from here, diff later.
            self._index = index
            return []
        new = {kv.key: kv for kv in items}
        events: list[WatchEvent] = []
        old = self._known
        for key, kv in new.items():
            before = old.get(key) if old is not None else None
            if before is None or before.revision != kv.revision:
                events.append(WatchEvent("put", key, kv.value, kv.revision))
        if old is not None:
            at = max(index, self._last)
            events += [WatchEvent("delete", key, b"", at) for key in old if key not in new]
        self._known = new
        self._index = index
        events = [e for e in events if e.revision >= self._start]
        events.sort(key=lambda e: (e.revision, e.key))
        if events:
            self._last = max(self._last, events[-1].revision)
        return events

    def close(self) -> None:
        self._closed.set()
        self._wake.set()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()


def open_consul(url: str) -> ConsulBackend:
    """Open ``consul://host:port[,host:port…][?options]`` and check that Consul answers.

    Options: ``dc``, ``token`` (default ``$CONSUL_HTTP_TOKEN``), ``timeout`` (seconds per
    call, default 5), ``scheme`` (``http`` or ``https``), ``ca``, ``cert``, ``key`` (TLS
    files; ``ca`` or ``cert`` imply https). Raises
    :class:`~skedlib.errors.BackendUnavailable` when the URL is malformed or no endpoint
    answers with a leader within the timeout. The ACL token is first used (and a bad
    one reported) by the first KV call.
    """
    backend = ConsulBackend(parse_url(url), url=url)
    try:
        backend.check()
    except BaseException:
        backend.close()
        raise
    return backend
