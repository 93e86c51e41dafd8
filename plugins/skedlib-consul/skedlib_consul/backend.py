"""``consul://``: the skedlib storage contract on Consul's KV store (Consul 0.8 and later).

URL (parsed by :func:`skedlib_consul.options.parse_url`)::

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
  See :class:`skedlib_consul.watch.ConsulWatch` for what they can and cannot see.

Failover
--------

Every request (through :class:`skedlib_consul.client.HttpClient`) goes to the current
endpoint; when it cannot be reached, times out, or answers with a server error, the
backend moves to the next endpoint. Reads, session calls and the agent API are retried
there; a transaction is retried only when Consul *cannot* have applied it (the
connection was refused, the TLS handshake failed, or the server answered "No cluster
leader"). A transaction whose outcome is unknown (the server died or froze after
receiving it) raises :class:`~skedlib.errors.BackendUnavailable` saying so, and is not
retried: the caller re-reads (a fenced or ``create`` transaction can then simply be
tried again). Each call is bounded by ``timeout`` (default 5 s); when a frozen endpoint
holds a read, the attempt is cut at half the timeout so that another endpoint can still
answer within it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import requests

from skedlib import (
    Backend,
    BackendError,
    BackendUnavailable,
    Compare,
    InvalidName,
    KeyValue,
    LeaseExpired,
    ListResult,
    Op,
    Put,
    TxnResult,
    TxnTooLarge,
    Watch,
)
from skedlib_consul.client import (
    HttpClient,
    body_text,
    consul_errors,
    index_of,
    raise_for_status,
    refused,
)
from skedlib_consul.options import ConsulOptions, parse_url, redact_url
from skedlib_consul.watch import ConsulWatch

__all__ = [
    "MAX_LEASE_TTL",
    "MAX_TXN_OPS",
    "MIN_LEASE_TTL",
    "MIN_SESSION_TTL",
    "ConsulBackend",
    "open_consul",
]

log = logging.getLogger(__name__)

#: Consul 0.8's limit on operations in one ``/v1/txn`` request
MAX_TXN_OPS = 64
#: Consul's shortest session TTL (``session_ttl_min``, 10 s by default)
MIN_SESSION_TTL = 10.0
#: the shortest lease: a lease of TTL t is a session of TTL t/2, because Consul ends a
#: session 2 x its TTL after the last renewal; so a lease ends t after its last renewal
MIN_LEASE_TTL = 2 * MIN_SESSION_TTL
#: Consul's longest session TTL, which also bounds a lease's
MAX_LEASE_TTL = 86400.0

# aliases: inside ConsulBackend, ``list`` names the method
_Payload = list[dict[str, Any]]
_Origins = list[tuple[str, int]]
_TxnErrors = list[tuple[int, str]]
_Listing = tuple[int, list[KeyValue]]

_SESSION_ID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                         r"[0-9a-fA-F]{12}")


# -- helpers ---------------------------------------------------------------------------------
def _check_key(key: str) -> None:
    if not key:
        raise InvalidName("a Consul key cannot be empty")
    if key.startswith("/"):
        raise InvalidName(f"invalid key {key!r}: Consul keys cannot start with '/'")


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _kv_from_json(item: Mapping[str, Any]) -> KeyValue:
    raw = item.get("Value")
    value = b"" if raw is None else base64.b64decode(raw)
    return KeyValue(key=str(item["Key"]), value=value, revision=int(item["ModifyIndex"]),
                    create_revision=int(item["CreateIndex"]),
                    lease=str(item["Session"]) if item.get("Session") else None)


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
        self._http = HttpClient(options, self.url)
        self._watches: weakref.WeakSet[ConsulWatch] = weakref.WeakSet()
        self._watches_lock = threading.Lock()
        self._session_name = f"skedlib {socket.gethostname()}:{os.getpid()}"

    @property
    def current_endpoint(self) -> str:
        """``host:port`` of the endpoint requests currently go to first."""
        return self._http.current_endpoint

    def expect_concurrency(self, threads: int) -> None:
        """Keep up to ``threads`` connections per endpoint (see
        :meth:`HttpClient.size_pool <skedlib_consul.client.HttpClient.size_pool>`)."""
        self._http.size_pool(threads)

    def _errors(self, what: str) -> contextlib.AbstractContextManager[None]:
        return consul_errors(self.url, what)

    def _read(self, key: str, what: str, *, recurse: bool = False) -> tuple[int, list[Any]]:
        """A consistent read of ``/v1/kv/<key>``: (index, the entries; none for HTTP 404)."""
        params: list[tuple[str, Any]] = [("consistent", "")]
        if recurse:
            params.append(("recurse", ""))
        index, body = self._http.call_json("GET", "/v1/kv/" + key, params=params, what=what)
        return index, body or []

    def _check_status(self, what: str, resp: requests.Response) -> None:
        raise_for_status(self.url, what, resp, token=bool(self.options.token))

    def check(self) -> None:
        """Raise BackendUnavailable unless some endpoint answers and knows a leader."""
        deadline = time.monotonic() + self.options.timeout
        while True:
            resp = self._http.request("GET", "/v1/status/leader", what="connect",
                                      timeout=max(0.1, deadline - time.monotonic()))
            if resp.status_code == 404:  # every Consul agent since 0.1 has this endpoint
                raise BackendUnavailable(
                    f"{self.url}: connect: {self._http.current_endpoint} answered HTTP 404 "
                    f"({body_text(resp, 60)}) for /v1/status/leader: is it a Consul agent's "
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
        what = f"get {key!r}"
        _index, items = self._read(key, what)
        with self._errors(what):
            return _kv_from_json(items[0]) if items else None

    def list(self, prefix: str) -> ListResult:
        if prefix.startswith("/"):
            raise InvalidName(f"invalid prefix {prefix!r}: Consul keys cannot start with '/'")
        what = f"list {prefix!r}"
        index, items = self._read(prefix, what, recurse=True)
        with self._errors(what):
            kvs = sorted((_kv_from_json(i) for i in items), key=lambda kv: kv.key)
        if not index:
            raise BackendError(f"{self.url}: {what}: Consul sent no index")
        return ListResult(kvs, index)

    def current_revision(self, prefix: str = "") -> int:
        """The KV store's index (the index of the last KV write or delete), read through
        the empty range ``prefix + "\\x00"`` (an ACL token limited to ``prefix`` may)."""
        return self.list(prefix + "\x00").revision

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
                    f"it (HTTP {resp.status_code} {body_text(resp)}); read back before "
                    "retrying")
            if resp.status_code != 409:
                self._check_status("txn", resp)
                raise BackendError(f"{self.url}: txn: unexpected HTTP {resp.status_code}")
            errors = self._txn_errors(resp)
            denied = [w for _, w in errors if "permission denied" in w.lower()]
            if denied:
                raise refused(self.url, "txn", denied[0], bool(self.options.token))
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
                               f"{body_text(resp)}") from exc

    def _txn_revision(self, resp: requests.Response, ops: Sequence[Op]) -> int:
        if not any(isinstance(op, Put) for op in ops):
            return self.current_revision()  # Consul reports no index for deletes
        try:
            results = resp.json().get("Results") or []
            kvs = [r["KV"] for r in results if r.get("KV")]
        except (ValueError, AttributeError, TypeError, KeyError) as exc:
            raise BackendError(f"{self.url}: txn: unexpected answer from Consul: "
                               f"{body_text(resp)}") from exc
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

    def poll(self, prefix: str, index: int, wait: float) -> _Listing:
        """One (blocking, when ``index`` > 0) recursive read of ``prefix``: (index, items).

        What a :class:`~skedlib_consul.watch.ConsulWatch` sends; ``wait`` is how long
        Consul may hold the answer.
        """
        params: list[tuple[str, Any]] = [("recurse", "")]
        if index > 0:
            params += [("index", index), ("wait", f"{max(1, int(wait * 1000))}ms")]
        # Consul adds up to wait/16 of jitter to a blocking query
        hold = wait * 17 / 16 if index > 0 else 0.0
        what = f"watch {prefix!r}"
        resp = self._http.request("GET", "/v1/kv/" + prefix, params=params, hold=hold,
                                  what=what)
        if resp.status_code == 404:
            return index_of(resp, self.url, what), []
        self._check_status(what, resp)
        try:
            items = [_kv_from_json(i) for i in resp.json() or ()]
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(f"{self.url}: {what}: unexpected answer from Consul: "
                               f"{body_text(resp)}") from exc
        return index_of(resp, self.url, what), items

    # -- leases -----------------------------------------------------------------------------
    def grant_lease(self, ttl: float) -> str:
        ttl = min(max(float(ttl), MIN_LEASE_TTL), MAX_LEASE_TTL)
        session_ttl = ttl / 2  # Consul's timer runs 2 x the session's TTL
        seconds = int(session_ttl) if session_ttl.is_integer() else round(session_ttl, 3)
        # no checks: the session lives exactly as long as it is renewed (not as long as
        # this node's serfHealth); "delete": its keys go with it, as a lease's do
        spec = {"Name": self._session_name, "LockDelay": "0s", "Behavior": "delete",
                "TTL": f"{seconds}s", "Checks": []}
        _index, body = self._http.call_json("PUT", "/v1/session/create", what="grant lease",
                                            data=json.dumps(spec))
        with self._errors("grant lease"):
            session_id = body["ID"] if body is not None else None
        if not isinstance(session_id, str) or not session_id:
            raise BackendError(f"{self.url}: grant lease: Consul returned no session id")
        return session_id

    def keepalive(self, lease: str) -> None:
        if not _SESSION_ID.fullmatch(lease):
            raise LeaseExpired(f"{self.url}: lease {lease!r} does not exist")
        # Consul answers the renewed session, [] or HTTP 404 when it has ended
        _index, renewed = self._http.call_json("PUT", f"/v1/session/renew/{lease}",
                                               what=f"keep-alive of lease {lease}")
        if not renewed:
            raise LeaseExpired(f"{self.url}: lease {lease} does not exist")

    def revoke_lease(self, lease: str) -> None:
        if not _SESSION_ID.fullmatch(lease):
            return  # not a session id: there is no such lease
        self._http.call("PUT", f"/v1/session/destroy/{lease}", what=f"revoke lease {lease}")

    # -- life cycle -------------------------------------------------------------------------
    def close(self) -> None:
        with self._watches_lock:
            watches = list(self._watches)
        for w in watches:
            w.close()
        self._http.close()

    def __repr__(self) -> str:
        return f"<ConsulBackend {self.url}>"


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
