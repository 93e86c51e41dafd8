"""``etcd://``: the skedlib storage contract on an etcd v3 cluster (etcd 3.4+).

URL::

    etcd://HOST[:PORT][,HOST[:PORT]...][?timeout=5&user=U&password_file=F&ca=F&cert=F&key=F
                                        &max_txn_ops=128]
    etcds://...   the same over TLS (TLS is also implied by ``ca=`` or ``cert=``)

The password of ``user`` comes from ``$SKED_ETCD_PASSWORD`` or from the file named by
``password_file`` (which must not be readable by every user), so it never needs to be on
a command line; a password in the URL itself (``password=`` or ``user:password@``) still
works but is warned about once, as any local user can read a command line.

The client keeps one gRPC channel per listed member, with stubs for etcd's v3 API (messages
generated from etcd's own protos, see :mod:`skedlib_etcd.stubs`), and
sends every call to the *current* member. When a call fails because that member is down,
frozen or without a leader, the backend moves on to the next member and, when that is
safe, retries there; everything happens within the call's ``timeout`` (default 5 s), after
which :class:`~skedlib.errors.BackendUnavailable` names the backend and the cause. No call
waits longer than its timeout.

What is retried on another member:

- reads, lease grants, keep-alives and revokes, compactions and compare-only
  transactions: always (they are idempotent; a lease granted twice by a retry has no keys
  and expires by itself). On a member that answered within the last second an attempt
  may take half the timeout; on a quiet member, or after a recent failure, attempt *k*
  may take ``timeout/8 * 2**k`` seconds, so a frozen member costs little and a slow one
  still gets its time;
- transactions that write: only when etcd *cannot* have applied them (the connection was
  refused, the member had no leader, etcd rejected the request before proposing it). A
  write whose outcome is unknown (the member died or froze while it was in flight) is
  **never** retried: it raises ``BackendUnavailable`` saying that it may or may not have
  been applied; a frozen member can apply it after it is thawed. The caller knows whether
  its write can be repeated (``create``, or any transaction fenced by a compare, can).
  Before a write goes to a member that has not answered for a second, or after any
  failure in the last ``max(2 * timeout, 5)`` seconds, a linearizable read of one key
  (retried like any read) checks that the member answers and has a live leader. So after
  a member dies or freezes, writes wait for a working member and leader instead of being
  lost in a dead one.

Watches run one gRPC stream (on a background thread) on the current member. When the
stream breaks, or a probe of a quiet stream finds its member frozen or without a leader,
the watch reopens on the next member from the first revision it has not delivered, so
no event is lost or delivered twice. Every request carries etcd's ``hasleader`` metadata,
so a member cut off from its leader refuses at once instead of hanging or serving stale
data.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

# gRPC's C core logs failed TLS handshakes and bad keys to stderr, line after line, before
# the one BackendUnavailable line that says the same; set GRPC_VERBOSITY to see them
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
# gRPC's fork handlers pause its threads at every fork; skedlib forks only to exec (the
# agent starts tasks, the CLI runs tools) while watch threads are inside gRPC calls, the
# case those handlers do not support, and several grpcio releases enable them in the C
# core while the Python side says off. Off in both, unless the environment says otherwise
# (it must be set before grpc is first imported)
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

import grpc

from skedlib import (
    Backend,
    BackendUnavailable,
    Backoff,
    Compacted,
    Compare,
    Delete,
    KeyValue,
    LeaseExpired,
    ListResult,
    Op,
    Put,
    SkedError,
    TxnResult,
    TxnTooLarge,
    Watch,
    WatchEvent,
    WatchKind,
    check_watch_kinds,
    read_secret_file,
    warn_secret_in_url,
)
from skedlib_etcd._proto import rpc_pb2 as pb
from skedlib_etcd.stubs import Stub

__all__ = ["DEFAULT_PORT", "DEFAULT_TIMEOUT", "MAX_TXN_OPS", "PASSWORD_ENV", "EtcdBackend",
           "EtcdOptions", "open_etcd", "parse_url", "redact"]

DEFAULT_PORT = 2379
DEFAULT_TIMEOUT = 5.0
#: etcd's default ``--max-txn-ops``
MAX_TXN_OPS = 128

_T = TypeVar("_T")
_Metadata = tuple[tuple[str, str], ...]
_QUERY_KEYS = ("timeout", "user", "password", "password_file", "ca", "cert", "key",
               "max_txn_ops")
#: the environment variable the password of the URL's ``user`` is read from
PASSWORD_ENV = "SKED_ETCD_PASSWORD"

_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    ("grpc.enable_retries", 0),  # retries are ours: grpc's could repeat a write
    ("grpc.enable_http_proxy", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
# a failed call whose details contain one of these never reached etcd's state machine
_NOT_SENT = ("failed to connect to all addresses", "connection refused",
             "dns resolution failed", "name resolution", "network is unreachable",
             "no route to host")
_NOT_APPLIED = ("etcdserver: no leader", "etcdserver: not capable",
                "etcdserver: too many requests", "raft proposal dropped")
_AUTH_HINT = ("add user=... to the URL, with the password in $SKED_ETCD_PASSWORD or a file "
              "named by password_file=...; or a client certificate")
_TOKEN_STALE = ("invalid auth token", "auth store is old")
_TLS_TROUBLE = ("ssl", "tsi_", "handshake", "certificate", "unwrap failed", "tls")
# a member that answered nothing for this long is checked before a write is sent to it
_FRESH = 1.0


def _barrier(key: bytes) -> Any:
    """The barrier read before a write: the write's own key, linearizable (it needs a live
    leader and a quorum), so it needs no permission beyond the write's."""
    return pb.RangeRequest(key=key, limit=1, keys_only=True, count_only=True)


# -- the URL ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class EtcdOptions:
    """What an ``etcd://`` URL says: members, timeout, credentials and TLS files.

    ``password_in_url`` is True when the password was written in the URL itself (rather
    than taken from ``$SKED_ETCD_PASSWORD`` or ``password_file``).
    """

    endpoints: tuple[str, ...]
    timeout: float = DEFAULT_TIMEOUT
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    max_txn_ops: int = MAX_TXN_OPS
    password_in_url: bool = False


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "etcd URL (unparseable)" if "password" in url or "@" in url else url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, hosts = netloc.rsplit("@", 1)
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{hosts}"
    query = "&".join(
        f"{k}=***" if k == "password" else (f"{k}={v}" if v or "=" in pair else k)
        for pair in parts.query.split("&") if pair
        for k, _, v in [pair.partition("=")])
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def _parse_host(url: str, item: str) -> str:
    item = item.strip()
    if not item:
        raise BackendUnavailable(f"{url}: empty member address in the host list")
    if item.startswith("["):  # [v6]:port
        host, sep, rest = item[1:].partition("]")
        if not sep or not host:
            raise BackendUnavailable(f"{url}: bad IPv6 member address {item!r}")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise BackendUnavailable(f"{url}: bad member address {item!r}")
        host = f"[{host}]"
    else:
        host, _, port_text = item.partition(":")
        if not host:
            raise BackendUnavailable(f"{url}: member address {item!r} has no host")
    if not port_text:
        return f"{host}:{DEFAULT_PORT}"
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise BackendUnavailable(f"{url}: bad port {port_text!r} in member address "
                                 f"{item!r} (expected 1-65535)")
    return f"{host}:{int(port_text)}"


def parse_url(url: str) -> EtcdOptions:
    """Parse an ``etcd://`` / ``etcds://`` URL; raises BackendUnavailable on bad input."""
    shown = redact(url) if isinstance(url, str) else repr(url)
    if not isinstance(url, str):
        raise BackendUnavailable(f"{shown}: an etcd URL must be a string")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unbalanced IPv6 bracket
        raise BackendUnavailable(f"{shown}: not a valid URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("etcd", "etcds"):
        raise BackendUnavailable(f"{shown}: not an etcd URL (expected "
                                 "etcd://host:port[,host:port...])")
    if parts.path not in ("", "/") or parts.fragment:
        raise BackendUnavailable(f"{shown}: unexpected path {parts.path!r} (expected "
                                 "etcd://host:port[,host:port...][?options])")
    netloc = parts.netloc
    user = password = None
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        name, sep, secret = userinfo.partition(":")
        user = unquote(name)
        password = unquote(secret) if sep else None
    if not netloc:
        raise BackendUnavailable(f"{shown}: no etcd member listed (expected "
                                 "etcd://host:port[,host:port...])")
    endpoints = tuple(dict.fromkeys(_parse_host(shown, h) for h in netloc.split(",")))
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise BackendUnavailable(f"{shown}: bad query string: {exc}") from exc
    unknown = sorted(set(query) - set(_QUERY_KEYS))
    if unknown:
        raise BackendUnavailable(f"{shown}: unknown option(s) {', '.join(unknown)} "
                                 f"(known: {', '.join(_QUERY_KEYS)})")
    opts = {k: v[-1] for k, v in query.items()}
    timeout = DEFAULT_TIMEOUT
    if "timeout" in opts:
        try:
            timeout = float(opts["timeout"])
        except ValueError:
            timeout = math.nan
        if not (math.isfinite(timeout) and timeout > 0):
            raise BackendUnavailable(f"{shown}: timeout must be a positive number of "
                                     f"seconds, not {opts['timeout']!r}")
    user = opts.get("user", user) or None
    password = opts.get("password", password)
    in_url = password is not None
    password_file = opts.get("password_file") or None
    if password_file is not None:
        if in_url:
            raise BackendUnavailable(f"{shown}: give the password in the URL or in "
                                     "password_file, not both")
        password = read_secret_file(shown, "password file", password_file)
    elif password is None and user is not None:
        password = os.environ.get(PASSWORD_ENV)
    if (user is None) != (password is None):
        raise BackendUnavailable(f"{shown}: give both user and password, or neither (the "
                                 f"password in ${PASSWORD_ENV} or a file named by "
                                 "password_file=)")
    cert, key = opts.get("cert") or None, opts.get("key") or None
    if (cert is None) != (key is None):
        raise BackendUnavailable(f"{shown}: give both cert and key (a client "
                                 "certificate), or neither")
    ca = opts.get("ca") or None
    tls = scheme == "etcds" or ca is not None or cert is not None
    max_ops = MAX_TXN_OPS
    if "max_txn_ops" in opts:
        text = opts["max_txn_ops"]
        if not text.isdigit() or int(text) < 1:
            raise BackendUnavailable(f"{shown}: max_txn_ops must be a positive integer "
                                     f"(the server's --max-txn-ops), not {text!r}")
        max_ops = int(text)
    return EtcdOptions(endpoints, timeout, user, password, tls, ca, cert, key, max_ops,
                       password_in_url=in_url)


def _read_file(shown: str, what: str, path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise BackendUnavailable(f"{shown}: cannot read the TLS {what} file {path!r}: "
                                 f"{exc.strerror or exc}") from exc
    if b"-----BEGIN" not in data:
        raise BackendUnavailable(f"{shown}: the TLS {what} file {path!r} is not PEM")
    return data


def _check_key_pair(shown: str, cert: str, key: str) -> None:
    """Load the client certificate and key now: a wrong pair is named, not left to the
    handshake ("Failed to create security handshaker")."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:  # a key protected by a password fails here instead of prompting for it
        context.load_cert_chain(cert, key, password=lambda: b"")
    except (ssl.SSLError, OSError) as exc:
        why = "the key does not match the certificate" if \
            getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH" else \
            "not a PEM certificate and unencrypted key"
        raise BackendUnavailable(f"{shown}: cannot use the TLS cert file {cert!r} with the "
                                 f"key file {key!r}: {why}") from exc


# -- errors -----------------------------------------------------------------------------------
def _code(exc: Any) -> Any:
    try:
        return exc.code()
    except Exception:  # an RpcError that is not a Call
        return None


def _details(exc: Any) -> str:
    try:
        text = exc.details()
    except Exception:
        text = None
    text = str(text or exc)
    return " ".join(text.split())[:300]


def _describe(exc: Any) -> str:
    code = _code(exc)
    name = code.name if code is not None else type(exc).__name__
    return f"{name}: {_details(exc)}"


def _not_applied(exc: Any) -> bool:
    """True when a failed call certainly did not change etcd's state."""
    details = _details(exc).lower()
    code = _code(exc)
    if code == grpc.StatusCode.UNAVAILABLE and any(m in details for m in _NOT_SENT):
        return True
    return any(m in details for m in _NOT_APPLIED)


def _is_transient(exc: Any) -> bool:
    """A failure of the member (down, frozen, leaderless), worth trying another one."""
    code = _code(exc)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.CANCELLED):
        return True
    # the server's side of our deadline (etcd answers UNKNOWN when its context ran out)
    details = _details(exc).lower()
    if "context deadline exceeded" in details or "context canceled" in details:
        return True
    return _not_applied(exc)


def _is_stale_token(exc: Any) -> bool:
    details = _details(exc).lower()
    return any(m in details for m in _TOKEN_STALE)


def _is_auth_refusal(exc: Any) -> str | None:
    """Why the server refused our identity, or None."""
    code = _code(exc)
    details = _details(exc).lower()
    if "authentication failed" in details:
        return "refused the credentials (wrong user or password)"
    if "user name is empty" in details:
        return f"requires authentication ({_AUTH_HINT})"
    if code == grpc.StatusCode.PERMISSION_DENIED or "permission denied" in details:
        return "denied permission to the user"
    if code == grpc.StatusCode.UNAUTHENTICATED and not _is_stale_token(exc):
        return "refused the credentials"
    return None


class _Refused(Exception):
    """Raised inside a call: the server gave an answer that ends the retry loop."""


# -- one member -------------------------------------------------------------------------------
class _Member:
    """A gRPC channel to one etcd member, its stubs and its auth token."""

    def __init__(self, endpoint: str, credentials: Any) -> None:
        self.endpoint = endpoint
        if credentials is None:
            self.channel = grpc.insecure_channel(endpoint, options=_CHANNEL_OPTIONS)
        else:
            self.channel = grpc.secure_channel(endpoint, credentials, options=_CHANNEL_OPTIONS)
        self.kv = Stub(self.channel, "KV")
        self.watch = Stub(self.channel, "Watch")
        self.lease = Stub(self.channel, "Lease")
        self.maintenance = Stub(self.channel, "Maintenance")
        self.auth = Stub(self.channel, "Auth")
        self.token: str | None = None
        self.auth_lock = threading.Lock()
        self.last_ok = 0.0  # monotonic time of the last answer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.channel.close()


# -- the backend ------------------------------------------------------------------------------
def _b(text: str) -> bytes:
    return text.encode("utf-8")


def _s(data: bytes) -> str:
    return data.decode("utf-8", errors="surrogateescape")


def _range_end(prefix: bytes) -> tuple[bytes, bytes]:
    """(key, range_end) for every key that starts with ``prefix`` (all keys for b"")."""
    if not prefix:
        return b"\x00", b"\x00"
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return prefix, bytes(end)
        end.pop()
    return prefix, b"\x00"


def _lease_id(lease: str) -> int | None:
    try:
        value = int(lease)
    except (TypeError, ValueError):
        return None
    return value if 0 < value < 2**63 else None


def _kv(kv: Any) -> KeyValue:
    return KeyValue(_s(kv.key), bytes(kv.value), int(kv.mod_revision), int(kv.create_revision),
                    str(kv.lease) if kv.lease else None)


class EtcdBackend(Backend):
    """The storage contract on etcd v3 (3.4+), with client-side failover between members.

    Safe to use from several threads. Every call finishes within ``options.timeout``
    seconds; see the module documentation for what is retried on another member.
    """

    max_txn_ops: int | None = MAX_TXN_OPS
    #: etcd raises shorter TTLs to 1.5 election timeouts, rounded up (2 s by default)
    min_lease_ttl: float = 2.0

    def __init__(self, options: EtcdOptions, *, url: str = "", connect: bool = True) -> None:
        if not options.endpoints:
            raise BackendUnavailable(f"{url or 'etcd://'}: no etcd member listed")
        self.options = options
        self.max_txn_ops = options.max_txn_ops
        # the URL with any password replaced by ***: url is printed and logged by callers
        self.url = self.display_url = redact(url or "etcd://" + ",".join(options.endpoints))
        if options.password_in_url:
            warn_secret_in_url(self.display_url, "the password",
                               f"${PASSWORD_ENV} or a file named by password_file=")
        self.timeout = options.timeout
        credentials = None
        if options.tls:
            credentials = grpc.ssl_channel_credentials(
                _read_file(self.display_url, "CA", options.ca),
                _read_file(self.display_url, "key", options.key),
                _read_file(self.display_url, "certificate", options.cert))
            if options.cert is not None and options.key is not None:
                _check_key_pair(self.display_url, options.cert, options.key)
        self._members = [_Member(ep, credentials) for ep in options.endpoints]
        self._current = 0
        self._lock = threading.Lock()
        self._first_budget = max(self.timeout / 8, 0.05)
        self._trouble_until = 0.0  # until then, writes are preceded by a barrier read
        self._closed = False
        self._watches: weakref.WeakSet[_EtcdWatch] = weakref.WeakSet()
        if connect:
            try:
                self._connect()
            except BaseException:
                self.close()
                raise

    # -- members and the retry loop -------------------------------------------------------
    @property
    def endpoints(self) -> list[str]:
        """Every member's ``host:port``, in URL order."""
        return [m.endpoint for m in self._members]

    @property
    def current_endpoint(self) -> str:
        """The member calls go to now."""
        return self._members[self._current].endpoint

    def _pick(self) -> tuple[int, _Member]:
        with self._lock:
            return self._current, self._members[self._current]

    def _advance(self, index: int) -> None:
        """Move on from member ``index`` (unless another thread already did)."""
        with self._lock:
            if self._current == index:
                self._current = (index + 1) % len(self._members)

    def _check_open(self) -> None:
        if self._closed:
            raise BackendUnavailable(f"{self.display_url}: the backend was closed")

    def _metadata(self, member: _Member) -> _Metadata:
        if member.token:
            return (("hasleader", "true"), ("token", member.token))
        return (("hasleader", "true"),)

    def _authenticate(self, member: _Member, timeout: float) -> None:
        """Get a token from ``member`` if the URL has credentials and it has none yet."""
        if self.options.user is None or member.token is not None:
            return
        with member.auth_lock:
            if member.token is not None:
                return
            request = pb.AuthenticateRequest(name=self.options.user,
                                                  password=self.options.password or "")
            try:
                response = member.auth.Authenticate(request, timeout=timeout,
                                                    metadata=(("hasleader", "true"),))
            except grpc.RpcError as exc:
                if "authentication is not enabled" in _details(exc).lower():
                    member.token = ""  # nothing to authenticate against: go on without
                    return
                raise
            member.token = str(response.token)

    def _fail(self, what: str, cause: str) -> BackendUnavailable:
        return BackendUnavailable(f"{self.display_url}: {what} failed: {cause}")

    def _note_trouble(self) -> None:
        """A member failed: for a while, check members before sending writes to them."""
        self._trouble_until = time.monotonic() + max(2 * self.timeout, 5.0)

    def _needs_barrier(self, member: _Member, now: float) -> bool:
        return now < self._trouble_until or now - member.last_ok > _FRESH

    def _run(self, what: str, call: Callable[[_Member, float, _Metadata], _T], *,
             write: bool, barrier: bytes = b"") -> _T:
        """Run ``call`` on the current member, failing over until the timeout.

        Reads (``write=False``) are retried on the next member after any member failure.
        An attempt on a member that answered within the last second (and no failure in
        the last ``max(2 * timeout, 5)`` s) may take half the timeout; otherwise attempt
        *k* may take ``timeout/8 * 2**k`` seconds, so a frozen member costs little and a
        slow one still gets its time. A write is sent once: before sending it to a
        member that has been quiet (or after any recent failure), a linearizable read of
        ``barrier`` (a key the write touches) on that member checks that it answers and
        has a live leader, which, unlike the write, may be retried elsewhere. If the write
        itself fails and etcd cannot have applied it, it is retried; if the outcome is
        unknown, BackendUnavailable says so.
        """
        self._check_open()
        deadline = time.monotonic() + self.timeout
        n = len(self._members)
        failures: dict[str, str] = {}
        attempt = failed_in_a_row = token_refreshes = 0
        while True:
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                causes = "; ".join(f"{ep}: {why}" for ep, why in failures.items())
                hint = ""
                if any(m in causes.lower() for m in _TLS_TROUBLE):
                    hint = (" - the TLS handshake failed: check the URL's ca, cert and key "
                            "and the server's certificate")
                elif not self.options.tls and "socket closed" in causes.lower():
                    hint = (" - the member closed the connection at once: does it expect "
                            "TLS (etcds://, ca=...)?")
                raise self._fail(what, f"no etcd member answered within {self.timeout:g}s "
                                       f"({causes or 'no attempt finished'}){hint}")
            index, member = self._pick()
            suspect = self._needs_barrier(member, now)
            if n == 1:
                budget = remaining
            elif suspect:  # quiet member or recent trouble: find out fast, then double
                budget = min(remaining, self._first_budget * 2 ** min(attempt, 16))
            else:  # a member that just answered gets half the timeout
                budget = min(remaining, self.timeout / 2)
            attempt += 1
            sent = False
            try:
                self._authenticate(member, budget)
                md = self._metadata(member)
                if write and suspect:
                    member.kv.Range(_barrier(barrier), timeout=budget, metadata=md)
                    member.last_ok = time.monotonic()
                    remaining = deadline - member.last_ok
                    if remaining <= 0:
                        continue
                sent = True
                result = call(member, remaining if write else budget, md)
                member.last_ok = time.monotonic()
                return result
            except ValueError as exc:  # grpc: "Cannot invoke RPC on closed channel!"
                if self._closed:
                    raise self._fail(what, "the backend was closed") from exc
                raise
            except grpc.RpcError as exc:
                if self._closed:
                    raise self._fail(what, "the backend was closed") from exc
                if _is_stale_token(exc) and token_refreshes < 2 and \
                        self.options.user is not None:
                    token_refreshes += 1
                    member.token = None
                    continue
                refusal = _is_auth_refusal(exc)
                if refusal is not None:
                    raise self._fail(what, f"{member.endpoint} {refusal}: "
                                           f"{_details(exc)}") from exc
                if not _is_transient(exc):
                    raise
                failures[member.endpoint] = _describe(exc)
                self._note_trouble()
                self._advance(index)
                if write and sent and not _not_applied(exc):
                    raise self._fail(what, f"{member.endpoint} failed while the write was in "
                                           "flight, so it may or may not have been applied "
                                           f"(not retried): {_describe(exc)}") from exc
                failed_in_a_row += 1
                if failed_in_a_row % n == 0:  # every member failed once: back off a little
                    rounds = failed_in_a_row // n
                    time.sleep(min(0.05 * 2 ** (rounds - 1), 0.5,
                                   max(0.0, deadline - time.monotonic())))

    def _rpc_error(self, what: str, exc: Any) -> BackendUnavailable:
        return self._fail(what, _describe(exc))

    # -- reads ----------------------------------------------------------------------------
    def _range(self, what: str, key: bytes, range_end: bytes = b"", *,
               limit: int = 0) -> Any:
        request = pb.RangeRequest(key=key, range_end=range_end, limit=limit)

        def call(m: _Member, timeout: float, md: _Metadata) -> Any:
            return m.kv.Range(request, timeout=timeout, metadata=md)

        try:
            return self._run(what, call, write=False)
        except grpc.RpcError as exc:
            raise self._rpc_error(what, exc) from exc

    def get(self, key: str) -> KeyValue | None:
        """The key's current value, or None (a linearizable read)."""
        response = self._range(f"get {key!r}", _b(key))
        return _kv(response.kvs[0]) if response.kvs else None

    def get_many(self, keys: Sequence[str]) -> dict[str, KeyValue]:
        """The keys' current values: one read-only Txn of Range requests per
        ``max_txn_ops`` keys (linearizable, as :meth:`get`)."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, KeyValue] = {}
        step = self.options.max_txn_ops
        for start in range(0, len(wanted), step):
            part = wanted[start:start + step]
            request = pb.TxnRequest()
            add = request.success.add
            for key in part:
                add().request_range.key = _b(key)

            def call(m: _Member, timeout: float, md: _Metadata, request: Any = request
                     ) -> Any:
                return m.kv.Txn(request, timeout=timeout, metadata=md)

            what = f"get {len(part)} keys ({part[0]!r} …)"
            try:
                response = self._run(what, call, write=False)
            except grpc.RpcError as exc:
                raise self._rpc_error(what, exc) from exc
            for answer in response.responses:
                for kv in answer.response_range.kvs:
                    item = _kv(kv)
                    found[item.key] = item
        return found

    def list(self, prefix: str) -> ListResult:
        """Every key under ``prefix`` and the revision they were read at: one Range call."""
        key, end = _range_end(_b(prefix))
        response = self._range(f"list {prefix!r}", key, end)
        return ListResult([_kv(kv) for kv in response.kvs], int(response.header.revision))

    def current_revision(self, prefix: str = "") -> int:
        """The cluster's current revision: a linearizable read of the one key
        ``prefix + "\\x00"``, so a user whose role covers only ``prefix`` may ask."""
        request = pb.RangeRequest(key=_b(prefix + "\x00"), keys_only=True,
                                       count_only=True)

        def call(m: _Member, timeout: float, md: _Metadata) -> Any:
            return m.kv.Range(request, timeout=timeout, metadata=md)

        try:
            response = self._run("read the revision", call, write=False)
        except grpc.RpcError as exc:
            raise self._rpc_error("read the revision", exc) from exc
        return int(response.header.revision)

    def _status(self, what: str) -> Any:
        """The current member's status (answered to any client: it reads no key)."""
        request = pb.StatusRequest()

        def call(m: _Member, timeout: float, md: _Metadata) -> Any:
            return m.maintenance.Status(request, timeout=timeout, metadata=md)

        try:
            return self._run(what, call, write=False)
        except grpc.RpcError as exc:
            raise self._rpc_error(what, exc) from exc

    def _connect(self) -> None:
        """Check that a member answers and has a leader, and that we may use it, without
        reading any key (the backend does not know which keys the user may read).

        With neither a user nor a client certificate, an empty authentication request
        finds out whether the cluster requires one, so that is said now rather than at
        the first read.
        """
        self._status("connect")
        if self.options.user is not None or self.options.cert is not None:
            return
        request = pb.AuthenticateRequest(name="", password="")

        def call(m: _Member, timeout: float, md: _Metadata) -> str | None:
            try:
                m.auth.Authenticate(request, timeout=timeout, metadata=md)
            except grpc.RpcError as exc:
                details = _details(exc).lower()
                if "authentication is not enabled" in details:
                    return None
                if "authentication failed" in details:
                    return m.endpoint
                raise
            return None

        try:
            refused_by = self._run("connect", call, write=False)
        except grpc.RpcError as exc:
            raise self._rpc_error("connect", exc) from exc
        if refused_by is not None:
            raise self._fail("connect", f"{refused_by} requires authentication "
                                        f"({_AUTH_HINT})")

    # -- transactions ---------------------------------------------------------------------
    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        """Apply ``ops`` if every compare holds, as one etcd Txn (128 operations at most).

        Several ops on one key collapse to the last (etcd refuses a key twice in a Txn);
        the stored result is the same as applying them in order.
        """
        total = len(compares) + len(ops)
        if total > self.options.max_txn_ops:
            raise TxnTooLarge(f"{self.display_url}: transaction of {total} operations "
                              f"exceeds the limit of {self.options.max_txn_ops} (etcd's "
                              "--max-txn-ops); split it, e.g. with write_groups")
        last: dict[str, Op] = {}
        for op in ops:
            last.pop(op.key, None)
            last[op.key] = op
        # filled in place: building each PutRequest and RequestOp on its own and passing
        # them to the constructors copies every one (several times slower on upb)
        request = pb.TxnRequest()
        for c in compares:
            compare = request.compare.add()
            compare.target = pb.Compare.MOD  # result EQUAL is the default
            compare.key = _b(c.key)
            compare.mod_revision = c.revision
        add = request.success.add
        for op in last.values():
            if isinstance(op, Put):
                put = add().request_put
                put.key = _b(op.key)
                put.value = op.value
                if op.lease is not None:
                    parsed = _lease_id(op.lease)
                    if parsed is None:
                        raise LeaseExpired(f"{self.display_url}: lease {op.lease!r} does not "
                                           "exist")
                    put.lease = parsed
            elif isinstance(op, Delete):
                add().request_delete_range.key = _b(op.key)

        def call(m: _Member, timeout: float, md: _Metadata) -> pb.TxnResponse:
            response: pb.TxnResponse = m.kv.Txn(request, timeout=timeout, metadata=md)
            return response

        what = f"txn ({len(compares)} compares, {len(ops)} ops)"
        try:
            response = self._run(what, call, write=len(request.success) > 0,
                                 barrier=_b(next(iter(last), "")))
        except grpc.RpcError as exc:
            leases = sorted({op.lease for op in ops if isinstance(op, Put) and op.lease})
            raise self._write_error(what, exc, leases) from exc
        return TxnResult(response.succeeded, response.header.revision)

    def _write_error(self, what: str, exc: Any, leases: Sequence[str]) -> SkedError:
        """The skedlib error for a write etcd refused."""
        details = _details(exc).lower()
        if "lease not found" in details:
            return LeaseExpired(f"{self.display_url}: lease {', '.join(leases)} does not "
                                "exist (expired or revoked)")
        if "too many operations" in details or "too large" in details or \
                _code(exc) == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return TxnTooLarge(f"{self.display_url}: etcd refused the write as too large: "
                               f"{_details(exc)}")
        return self._rpc_error(what, exc)

    def put(self, key: str, value: bytes, lease: str | None = None) -> int:
        """An unconditional write as one etcd Put (cheaper for etcd than a one-op Txn)."""
        lease_id = 0
        if lease is not None:
            parsed = _lease_id(lease)
            if parsed is None:
                raise LeaseExpired(f"{self.display_url}: lease {lease!r} does not exist")
            lease_id = parsed
        request = pb.PutRequest(key=_b(key), value=value, lease=lease_id)

        def call(m: _Member, timeout: float, md: _Metadata) -> Any:
            return m.kv.Put(request, timeout=timeout, metadata=md)

        try:
            response = self._run("put", call, write=True, barrier=request.key)
        except grpc.RpcError as exc:
            raise self._write_error("put", exc, [lease] if lease else []) from exc
        return int(response.header.revision)

    # -- watches --------------------------------------------------------------------------
    def watch(self, prefix: str, start_revision: int) -> Watch:
        """Changes under ``prefix`` from ``start_revision`` on, surviving member failures."""
        return self._watch(prefix, start_revision, [])

    def watch_kinds(self, prefix: str, start_revision: int,
                    kinds: Collection[WatchKind]) -> Watch:
        """Like :meth:`watch`, for the events of ``kinds`` only: etcd leaves the others
        out (the watch's ``NOPUT``/``NODELETE`` filters), and sends nothing for a
        revision with none of them."""
        chosen = check_watch_kinds(kinds)
        filters = [f for kind, f in (("put", pb.WatchCreateRequest.NOPUT),
                                     ("delete", pb.WatchCreateRequest.NODELETE))
                   if kind not in chosen]
        return self._watch(prefix, start_revision, filters)

    def _watch(self, prefix: str, start_revision: int,
               filters: Sequence[pb.WatchCreateRequest.FilterType]) -> Watch:
        self._check_open()
        w = _EtcdWatch(self, prefix, start_revision, filters)
        self._watches.add(w)
        return w

    # -- leases ---------------------------------------------------------------------------
    def grant_lease(self, ttl: float) -> str:
        """A new etcd lease; the TTL is rounded up to whole seconds, at least 2."""
        seconds = max(math.ceil(max(ttl, self.min_lease_ttl)), 1)
        request = pb.LeaseGrantRequest(TTL=seconds, ID=0)

        def call(m: _Member, timeout: float, md: _Metadata) -> Any:
            return m.lease.LeaseGrant(request, timeout=timeout, metadata=md)

        try:
            response = self._run("grant lease", call, write=False)
        except grpc.RpcError as exc:
            raise self._rpc_error("grant lease", exc) from exc
        if response.error:
            raise self._fail("grant lease", str(response.error))
        return str(response.ID)

    def keepalive(self, lease: str) -> None:
        """Restart the lease's TTL; raises LeaseExpired when etcd no longer has it."""
        lease_id = _lease_id(lease)
        if lease_id is None:
            raise LeaseExpired(f"{self.display_url}: lease {lease!r} does not exist")
        request = pb.LeaseKeepAliveRequest(ID=lease_id)

        def call(m: _Member, timeout: float, md: _Metadata) -> int:
            stream = m.lease.LeaseKeepAlive(iter([request]), timeout=timeout, metadata=md)
            try:
                for response in stream:
                    return int(response.TTL)
            finally:
                stream.cancel()
            raise _Refused("the keep-alive stream ended without an answer")

        try:
            ttl = self._run(f"keep-alive of lease {lease}", call, write=False)
        except grpc.RpcError as exc:
            raise self._rpc_error(f"keep-alive of lease {lease}", exc) from exc
        except _Refused as exc:
            raise self._fail(f"keep-alive of lease {lease}", str(exc)) from exc
        if ttl <= 0:
            raise LeaseExpired(f"{self.display_url}: lease {lease} does not exist (expired "
                               "or revoked)")

    def revoke_lease(self, lease: str) -> None:
        """End the lease now; its keys are deleted. A missing lease is a no-op."""
        lease_id = _lease_id(lease)
        if lease_id is None:
            return
        request = pb.LeaseRevokeRequest(ID=lease_id)

        def call(m: _Member, timeout: float, md: _Metadata) -> None:
            m.lease.LeaseRevoke(request, timeout=timeout, metadata=md)

        try:
            self._run(f"revoke lease {lease}", call, write=False)
        except grpc.RpcError as exc:
            if "lease not found" in _details(exc).lower():
                return
            raise self._rpc_error(f"revoke lease {lease}", exc) from exc

    # -- maintenance ----------------------------------------------------------------------
    def compact(self, revision: int) -> None:
        """Compact etcd's history before ``revision`` (clamped to the current revision).

        Watches may still start at ``revision`` itself; earlier ones raise Compacted.
        Compacting at or before an earlier compaction is a no-op.
        """
        if revision <= 1:
            return
        try:
            self._compact(revision)
        except grpc.RpcError as exc:
            details = _details(exc).lower()
            if "has been compacted" in details:
                return  # already compacted at or after it
            if "future revision" not in details:
                raise self._rpc_error(f"compact at {revision}", exc) from exc
        else:
            return
        # asked beyond the present: compact at it (a member's status reads no key)
        target = int(self._status(f"compact at {revision}").header.revision)
        try:
            self._compact(target)
        except grpc.RpcError as exc:
            if "has been compacted" not in _details(exc).lower():
                raise self._rpc_error(f"compact at {target}", exc) from exc

    def _compact(self, revision: int) -> None:
        request = pb.CompactionRequest(revision=revision, physical=False)

        def call(m: _Member, timeout: float, md: _Metadata) -> None:
            m.kv.Compact(request, timeout=timeout, metadata=md)

        self._run(f"compact at {revision}", call, write=False)

    def close(self) -> None:
        """Close every watch and channel. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for w in list(self._watches):
            w.close()
        for m in self._members:
            m.close()

    def __repr__(self) -> str:
        return f"EtcdBackend({self.display_url!r})"


# -- watches ----------------------------------------------------------------------------------
class _EtcdWatch(Watch):
    """One etcd watch stream at a time, reopened on the next member when it breaks."""

    def __init__(self, backend: EtcdBackend, prefix: str, start_revision: int,
                 filters: Sequence[pb.WatchCreateRequest.FilterType] = ()) -> None:
        self._backend = backend
        self._prefix = prefix
        self._filters = list(filters)
        self._key, self._end = _range_end(_b(prefix))
        self._next = max(int(start_revision), 1)  # the first revision not yet delivered
        self._cond = threading.Condition()
        self._batches: collections.deque[list[WatchEvent]] = collections.deque()
        self._error: BaseException | None = None
        self._down_since: float | None = time.monotonic()
        self._last_failure = "not connected yet"
        self._failed_attempts = 0
        self._closed = threading.Event()
        self._wake = threading.Event()  # cuts the reconnect back-off short
        self._stream: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"etcd-watch {prefix!r}")
        self._thread.start()

    # -- the consumer side ----------------------------------------------------------------
    def next(self, timeout: float | None = None) -> list[WatchEvent]:
        """The next batch (whole revisions), [] after ``timeout`` or once closed.

        Raises BackendUnavailable when no member has served the watch for longer than the
        backend's timeout and a reconnection tried during this call failed too; the watch
        keeps trying, and a later call resumes exactly where the last batch ended.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        limit = self._backend.timeout
        mark: int | None = None  # failed attempts seen when the outage was noticed
        with self._cond:
            while True:
                if self._closed.is_set():
                    return []
                if self._batches:
                    out: list[WatchEvent] = []
                    while self._batches:
                        out += self._batches.popleft()
                    return out
                if self._error is not None:
                    raise self._error
                now = time.monotonic()
                wait: float | None = None
                outage = False
                if self._down_since is not None:
                    down_for = now - self._down_since
                    if down_for < limit:
                        wait = limit - down_for
                    elif mark is None:  # try again now rather than after the back-off
                        mark = self._failed_attempts
                        self._wake.set()
                        outage = True
                    elif self._failed_attempts > mark:
                        raise self._outage(down_for)
                    else:
                        outage = True
                if deadline is not None:
                    left = deadline - now
                    if left <= 0:
                        if outage and self._down_since is not None:
                            raise self._outage(now - self._down_since)
                        return []
                    wait = left if wait is None else min(wait, left)
                self._cond.wait(wait)

    def _outage(self, down_for: float) -> BackendUnavailable:
        return BackendUnavailable(
            f"{self._backend.display_url}: watch on {self._prefix!r} failed: no etcd "
            f"member has served it for {down_for:.1f}s (still retrying; last: "
            f"{self._last_failure})")

    def close(self) -> None:
        """Stop watching; a blocked next() returns []. Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._wake.set()
        with self._cond:
            stream = self._stream
            self._cond.notify_all()
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.cancel()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2)

    @property
    def closed(self) -> bool:
        """True once close() was called."""
        return self._closed.is_set()

    # -- the stream side (a background thread) --------------------------------------------
    def _run(self) -> None:
        backend = self._backend
        backoff = Backoff(initial=0.05, maximum=1.0)
        token_refreshes = 0
        while not self._closed.is_set():
            index, member = backend._pick()
            established = False
            try:
                backend._authenticate(member, backend.timeout)
                established = self._follow(member)
                token_refreshes = 0
                failure = "the stream ended"
            except (Compacted, BackendUnavailable) as exc:
                self._finish(exc)
                return
            except _Refused as exc:  # the server cancelled the watch
                failure = str(exc)
                stale = "permission denied" in failure or any(
                    m in failure.lower() for m in _TOKEN_STALE)
                if stale and token_refreshes < 2 and backend.options.user is not None:
                    token_refreshes += 1  # maybe only the token expired: authenticate again
                    member.token = None
                    continue
                self._finish(BackendUnavailable(
                    f"{backend.display_url}: watch on {self._prefix!r} was refused by "
                    f"{member.endpoint}: {failure}"))
                return
            except grpc.RpcError as exc:
                if self._closed.is_set():
                    return
                if _is_stale_token(exc) and token_refreshes < 2:
                    token_refreshes += 1
                    member.token = None
                    continue
                refusal = _is_auth_refusal(exc)
                if refusal is not None:
                    self._finish(BackendUnavailable(
                        f"{backend.display_url}: watch on {self._prefix!r} failed: "
                        f"{member.endpoint} {refusal}: {_details(exc)}"))
                    return
                failure = _describe(exc)
            except Exception as exc:  # e.g. ValueError: the backend closed the channel
                if self._closed.is_set() or backend._closed:
                    return
                failure = f"{type(exc).__name__}: {exc}"
            if self._closed.is_set():
                return
            with self._cond:
                self._last_failure = f"{member.endpoint}: {failure}"
                self._failed_attempts += 1
                backend._note_trouble()
                if self._down_since is None:
                    self._down_since = time.monotonic()
                self._cond.notify_all()
            backend._advance(index)
            if established:
                backoff.reset()
            pause = backoff.next()
            self._wake.wait(pause)
            self._wake.clear()

    def _finish(self, error: BaseException) -> None:
        with self._cond:
            self._error = error
            self._cond.notify_all()

    def _follow(self, member: _Member) -> bool:
        """Stream from ``member`` until the stream ends; True if it was established."""
        backend = self._backend
        create = pb.WatchCreateRequest(key=self._key, range_end=self._end,
                                       start_revision=self._next, filters=self._filters)
        done = threading.Event()

        def requests() -> Iterator[Any]:
            yield pb.WatchRequest(create_request=create)
            done.wait()  # keep the request side open until the stream is over

        stream = member.watch.Watch(requests(), metadata=backend._metadata(member))
        with self._cond:
            self._stream = stream
        if self._closed.is_set():
            stream.cancel()
        activity = [time.monotonic()]
        dog = threading.Thread(target=self._watchdog, args=(member, stream, done, activity),
                               daemon=True, name=f"etcd-watchdog {self._prefix!r}")
        dog.start()
        established = False
        try:
            for response in stream:
                activity[0] = time.monotonic()
                if response.compact_revision:
                    raise Compacted(
                        f"{backend.display_url}: watch on {self._prefix!r} from revision "
                        f"{self._next}: that revision was compacted; the oldest watchable "
                        f"revision is {response.compact_revision}",
                        int(response.compact_revision))
                if response.canceled:
                    raise _Refused(response.cancel_reason or "the watch was cancelled")
                if response.created and not established:
                    established = True
                    with self._cond:
                        self._down_since = None
                        self._cond.notify_all()
                events = [WatchEvent("delete" if ev.type == 1 else "put", _s(ev.kv.key),
                                     b"" if ev.type == 1 else bytes(ev.kv.value),
                                     int(ev.kv.mod_revision))
                          for ev in response.events]
                if events:
                    with self._cond:
                        self._next = events[-1].revision + 1
                        self._batches.append(events)
                        self._cond.notify_all()
        finally:
            done.set()
            stream.cancel()
            with self._cond:
                self._stream = None
        return established

    def _watchdog(self, member: _Member, stream: Any, done: threading.Event,
                  activity: list[float]) -> None:
        """Probe a quiet stream's member; cancel the stream when it is frozen or leaderless."""
        backend = self._backend
        interval = min(1.0, backend.timeout / 2)
        probe = pb.RangeRequest(key=self._key, range_end=self._end, limit=1,
                                     serializable=True, keys_only=True)
        while not done.wait(interval):
            if time.monotonic() - activity[0] < interval:
                continue
            try:
                member.kv.Range(probe, timeout=max(backend.timeout / 2, 0.05),
                                metadata=backend._metadata(member))
            except grpc.RpcError as exc:
                if _is_transient(exc) and not done.is_set():
                    with self._cond:
                        self._last_failure = f"{member.endpoint}: probe: {_describe(exc)}"
                    stream.cancel()
                    return
            except Exception:  # the channel was closed under us
                return


def open_etcd(url: str) -> EtcdBackend:
    """Open ``etcd://host:port[,host:port...][?options]`` (or ``etcds://``) and check it.

    Options: ``timeout`` (seconds per call, default 5), ``user`` and ``password``,
    ``ca`` (a CA bundle; implies TLS), ``cert`` and ``key`` (a client certificate).
    Raises :class:`~skedlib.errors.BackendUnavailable` when the URL is wrong or no member
    answers within the timeout.
    """
    return EtcdBackend(parse_url(url), url=url)
