"""What is particular to the Consul backend, on real Consul agents.

URL handling and bad input (unreachable, bad token, ACLs, wrong scheme, TLS), the
mapping of the contract onto Consul (indexes, ``/v1/txn`` verbs, sessions, the 64-op
limit) checked through Consul's own HTTP API, and what watches can and cannot see.
"""

from __future__ import annotations

import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from skedlib_consul.backend import MAX_TXN_OPS, ConsulBackend, open_consul
from skedlib_consul.options import ConsulOptions, parse_url, redact_url
from skedlib_consul.watch import ConsulWatch

from skedlib.errors import BackendUnavailable, InvalidName, LeaseExpired, TxnTooLarge
from skedlib.plugins import open_backend
from skedlib.store.base import Compare, Delete, KeyValue, Put, WatchEvent
from tests.harness import consul as harness
from tests.harness.cli import sked_fails

consul_dev = harness.consul_dev
consul_acl = harness.consul_acl
consul_tls = harness.consul_tls

pytestmark = [pytest.mark.integration]

#: what a loaded machine may add to a call bounded by its timeout (one that is not bounded
#: would hang until pytest's own timeout)
LOAD_SLACK = 3.0


def _ns() -> str:
    return f"specific/{uuid.uuid4().hex[:10]}/"


def _one_line_within(call: object, timeout: float) -> str:
    """Run ``call``, which must fail within its ``timeout`` with a one-line message."""
    assert callable(call)
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable) as info:
        call()
    took = time.monotonic() - t0
    message = str(info.value)
    assert took < timeout + LOAD_SLACK, f"took {took:.2f}s: {message}"
    assert "\n" not in message and message.startswith("consul://"), message
    return message


# -- the URL -------------------------------------------------------------------------------
def test_parse_url_defaults_and_options(monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    assert parse_url("consul://10.0.0.1") == ConsulOptions(endpoints=(("10.0.0.1", 8500),))
    ca = harness.make_tls_files(tmp_path)["ca"]  # read when the URL is parsed
    o = parse_url(f"consul://a:1,b:2,[::1]:3/?dc=east&token=t0k&timeout=2.5&ca={ca}")
    assert o.endpoints == (("a", 1), ("b", 2), ("::1", 3))
    assert (o.dc, o.token, o.timeout, o.scheme, o.ca) == ("east", "t0k", 2.5, "https", str(ca))
    assert o.base_url(2) == "https://[::1]:3"
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "from-env")
    assert parse_url("consul://a").token == "from-env"
    assert parse_url("consul://a?token=url-wins").token == "url-wins"
    assert "from-env" not in repr(parse_url("consul://a"))


@pytest.mark.parametrize("url, why", [
    ("consul://", "no endpoint"),
    ("consul://[::1", "not a valid URL"),
    ("consul://a?key=/etc/hostname", "key= needs cert="),
    ("consul://a:99999", "bad port"),
    ("consul://a/some/path", "no path"),
    ("consul://a?tokn=x", "unknown option"),
    ("consul://a?timeout=soon", "timeout must be"),
    ("consul://a?timeout=0", "timeout must be"),
    ("consul://a?scheme=ftp", "scheme must be"),
    ("consul://a?ca=/nonexistent/ca.pem", "does not exist"),
    ("etcd://a", "not a consul"),
])
def test_bad_urls_are_refused_clearly(url: str, why: str) -> None:
    with pytest.raises(BackendUnavailable, match=why):
        parse_url(url)


def test_token_never_shown(consul_dev: harness.ConsulCluster) -> None:
    b = open_backend(consul_dev.url(token="s3cret-token"))
    try:
        assert "s3cret" not in b.url and "s3cret" not in repr(b)
    finally:
        b.close()
    port = harness.free_ports(1)[0]
    message = _one_line_within(
        lambda: open_consul(f"consul://127.0.0.1:{port}?token=s3cret-token&timeout=1"), 1)
    assert "s3cret" not in message and "token=***" in message


def test_no_deprecation_warning_from_python_consul2(consul_dev: harness.ConsulCluster) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = open_consul(consul_dev.url())
        b.get("x")
        b.close()


# -- bad input -----------------------------------------------------------------------------
def test_unreachable_endpoints_fail_in_time() -> None:
    p1, p2 = harness.free_ports(2)
    message = _one_line_within(
        lambda: open_backend(f"consul://127.0.0.1:{p1},127.0.0.1:{p2}?timeout=1"), 1)
    assert f"127.0.0.1:{p1}: connection refused" in message
    assert f"127.0.0.1:{p2}: connection refused" in message


def test_bad_token_and_missing_token_are_refused(consul_acl: harness.ConsulCluster) -> None:
    ns = _ns()
    bad = open_backend(consul_acl.url(token="not-a-token", timeout=2))
    try:
        for call in (lambda: bad.get(ns + "k"), lambda: bad.put(ns + "k", b"v"),
                     lambda: bad.list(ns), lambda: bad.grant_lease(10)):
            message = _one_line_within(call, 2)
            assert "Consul refused the ACL token" in message and "ACL not found" in message
            assert "not-a-token" not in message
    finally:
        bad.close()
    anonymous = open_backend(consul_acl.url(timeout=2))
    try:
        message = _one_line_within(lambda: anonymous.put(ns + "k", b"v"), 2)
        assert "anonymous access" in message and "Permission denied" in message
        # Consul filters reads it denies instead of refusing them: they look empty
        assert anonymous.get(ns + "k") is None
    finally:
        anonymous.close()
    with open_backend(consul_acl.url(token=harness.ACL_MASTER_TOKEN)) as good:
        good.put(ns + "k", b"v")
        kv = good.get(ns + "k")
        assert kv is not None and kv.value == b"v"
        lease = good.grant_lease(10)
        good.put(ns + "leased", b"v", lease=lease)
        good.revoke_lease(lease)
        assert good.get(ns + "leased") is None


def test_the_token_from_consul_http_token(consul_acl: harness.ConsulCluster,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    ns = _ns()
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", harness.ACL_MASTER_TOKEN)
    with open_backend(consul_acl.url()) as b:  # no token= in the URL
        b.put(ns + "k", b"v")
        kv = b.get(ns + "k")
        assert kv is not None and kv.value == b"v"
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "not-a-token")
    with open_backend(consul_acl.url()) as b:
        message = _one_line_within(lambda: b.get(ns + "k"), 5)  # the default timeout
        assert "Consul refused the ACL token" in message and "not-a-token" not in message


def test_https_against_plain_http_says_so(consul_dev: harness.ConsulCluster) -> None:
    message = _one_line_within(lambda: open_backend(consul_dev.url(scheme="https", timeout=1)),
                               1)
    assert "TLS failed" in message and "use scheme=http" in message


def test_tls(consul_tls: tuple[harness.ConsulCluster, dict[str, Path]]) -> None:
    agent, files = consul_tls
    ns = _ns()
    with open_backend(agent.url(ca=files["ca"])) as b:  # ca= implies https
        assert b.url.startswith("consul://")
        b.put(ns + "k", b"over tls")
        kv = b.get(ns + "k")
        assert kv is not None and kv.value == b"over tls"
        with b.watch(ns, b.current_revision() + 1) as w:
            b.put(ns + "w", b"1")
            deadline = time.monotonic() + 10
            events: list[WatchEvent] = []
            while not events and time.monotonic() < deadline:
                events = w.next(timeout=1)
            assert [e.key for e in events] == [ns + "w"]
    message = _one_line_within(lambda: open_backend(agent.url(ca=files["other_ca"],
                                                                timeout=1)), 1)
    assert "certificate verify failed" in message
    message = _one_line_within(lambda: open_backend(agent.url(timeout=1)), 1)
    assert "scheme=https" in message


def test_tls_files_are_checked_when_the_url_is_opened(
        consul_tls: tuple[harness.ConsulCluster, dict[str, Path]]) -> None:
    _, files = consul_tls
    ca, cert, key = files["ca"], files["cert"], files["key"]
    ca_key = ca.with_suffix(".key")  # a key, but not the certificate's
    with pytest.raises(BackendUnavailable, match=r"ca file .* holds no PEM certificate"):
        parse_url(f"consul://a?ca={key}")
    with pytest.raises(BackendUnavailable, match="key does not match the certificate"):
        parse_url(f"consul://a?ca={ca}&cert={cert}&key={ca_key}")
    with pytest.raises(BackendUnavailable, match="must hold the key too"):
        parse_url(f"consul://a?ca={ca}&cert={cert}")
    assert parse_url(f"consul://a?ca={ca}&cert={cert}&key={key}").cert == str(cert)


def test_the_cli_says_what_is_wrong_in_one_line(
        consul_tls: tuple[harness.ConsulCluster, dict[str, Path]],
        consul_acl: harness.ConsulCluster, consul_dev: harness.ConsulCluster) -> None:
    agent, files = consul_tls
    cases = {
        agent.url(ca=files["other_ca"], timeout=1): "certificate verify failed",
        agent.url(timeout=1): "does the server expect scheme=https?",
        agent.url(ca=files["ca"], cert=files["cert"], key=files["ca"].with_suffix(".key"),
                  timeout=1): "the key does not match the certificate",
        consul_dev.url(scheme="https", timeout=1): "use scheme=http",
        consul_acl.url(token="not-a-token", timeout=1): "Consul refused the ACL token",
        f"consul://127.0.0.1:{harness.free_ports(1)[0]}?timeout=1": "connection refused",
        "consul://h?tokn=x": "unknown option",
    }
    for url, says in cases.items():
        # a token in the URL adds its one warning line (test_consul_credentials.py)
        lines = [line for line in sked_fails(url).splitlines()
                 if "the ACL token is written in the URL" not in line]
        assert len(lines) == 1, lines  # no traceback, no log lines
        assert lines[0].startswith(f"sked: error: {redact_url(url)}: "), lines[0]
        assert says in lines[0] and "not-a-token" not in lines[0]


# -- the contract, mapped -------------------------------------------------------------------
@pytest.fixture
def backend(consul_dev: harness.ConsulCluster) -> Iterator[ConsulBackend]:
    b = open_backend(consul_dev.url())
    assert isinstance(b, ConsulBackend)
    try:
        yield b
    finally:
        b.close()


def test_revisions_are_consul_indexes(consul_dev: harness.ConsulCluster,
                                      backend: ConsulBackend) -> None:
    agent = consul_dev.members[0]
    ns = _ns()
    res = backend.txn([], [Put(ns + "a", b"1"), Put(ns + "b", b"2")])
    status, raw = agent.api("GET", f"/v1/kv/{ns}?recurse")
    assert status == 200
    assert {e["Key"]: (e["ModifyIndex"], e["CreateIndex"]) for e in raw} == {
        ns + "a": (res.revision, res.revision), ns + "b": (res.revision, res.revision)}
    # list revision = the X-Consul-Index of a consistent recursive read
    listed = backend.list(ns)
    assert listed.revision == res.revision
    # a delete-only transaction reports the KV index just after it: its own index here
    r = backend.delete(ns + "a")
    assert r > res.revision
    assert backend.list(ns).revision == r  # the delete's tombstone index
    assert backend.current_revision() >= r


def test_compare_absent_is_exact_and_writes_nothing(backend: ConsulBackend) -> None:
    ns = _ns()
    backend.put(ns + "other", b"x")
    before = backend.list(ns).revision
    # a compare-only transaction on an absent key: holds, and leaves no trace
    assert backend.txn([Compare(ns + "absent", 0)], []).succeeded
    assert backend.get(ns + "absent") is None
    assert backend.list(ns).revision == before  # no write, no tombstone under the prefix
    assert not backend.txn([Compare(ns + "other", 0)], []).succeeded
    # absent-compare and put on the same key in one transaction (a lock's create)
    assert backend.txn([Compare(ns + "new", 0)], [Put(ns + "new", b"1")]).succeeded
    assert not backend.txn([Compare(ns + "new", 0)], [Put(ns + "new", b"2")]).succeeded
    kv = backend.get(ns + "new")
    assert kv is not None and kv.value == b"1"
    assert not backend.txn([Compare(ns + "new", -1)], [Put(ns + "new", b"3")]).succeeded


def test_txn_limit_is_64_and_checked_before_sending(backend: ConsulBackend) -> None:
    ns = _ns()
    assert backend.max_txn_ops == MAX_TXN_OPS == 64
    ops = [Put(f"{ns}{i:02d}", b"v") for i in range(63)]
    assert backend.txn([Compare(ns + "guard", 0)], ops).succeeded  # 64: Consul takes it
    assert len(backend.list(ns).items) == 63
    with pytest.raises(TxnTooLarge, match="64"):
        backend.txn([Compare(ns + "guard", 0)], [*ops, Put(ns + "extra", b"v")])
    assert backend.get(ns + "extra") is None


def test_sessions_are_ttl_delete_sessions_without_checks(consul_dev: harness.ConsulCluster,
                                                        backend: ConsulBackend) -> None:
    assert backend.min_lease_ttl == 20
    lease = backend.grant_lease(1)  # raised to the minimum: a session of Consul's minimum
    status, info = consul_dev.members[0].api("GET", f"/v1/session/info/{lease}")
    assert status == 200
    (session,) = info
    assert (session["TTL"], session["Behavior"], session["LockDelay"], session["Checks"]) == (
        "10s", "delete", 0, [])
    longer = backend.grant_lease(45)  # Consul ends a session 2 x its TTL after renewal
    status, info = consul_dev.members[0].api("GET", f"/v1/session/info/{longer}")
    assert status == 200 and info[0]["TTL"] == "22.5s"
    backend.revoke_lease(longer)
    backend.revoke_lease(lease)
    with pytest.raises(LeaseExpired):
        backend.keepalive(lease)
    with pytest.raises(LeaseExpired):
        backend.keepalive("not-a-session-id")
    backend.revoke_lease("not-a-session-id")  # a no-op, like any missing lease


def test_put_moves_a_key_between_leases(backend: ConsulBackend) -> None:
    ns = _ns()
    first, second = backend.grant_lease(10), backend.grant_lease(10)
    try:
        created = backend.put(ns + "k", b"1", lease=first)
        r = backend.put(ns + "k", b"2", lease=second)  # unlock(first) + lock(second)
        kv = backend.get(ns + "k")
        assert kv is not None
        assert (kv.value, kv.lease, kv.revision, kv.create_revision) == (
            b"2", second, r, created)
        backend.revoke_lease(first)
        assert backend.get(ns + "k") is not None
        # documented Consul difference: a put without a lease keeps the key's session
        backend.put(ns + "k", b"3")
        kv = backend.get(ns + "k")
        assert kv is not None and kv.value == b"3" and kv.lease == second
        backend.revoke_lease(second)
        assert backend.get(ns + "k") is None
    finally:
        backend.revoke_lease(first)
        backend.revoke_lease(second)


def test_bad_keys_are_refused(backend: ConsulBackend) -> None:
    with pytest.raises(InvalidName):
        backend.put("/leading-slash", b"x")
    with pytest.raises(InvalidName):
        backend.get("")


def test_keys_with_odd_characters_round_trip(backend: ConsulBackend) -> None:
    ns = _ns()
    keys = [ns + k for k in ("sp ace", "q?x=1&y", "hash#frag", "pct%41", "ünï", "a:b")]
    for i, k in enumerate(keys):
        backend.put(k, str(i).encode())
    assert [kv.key for kv in backend.list(ns).items] == sorted(keys)
    for i, k in enumerate(keys):
        kv = backend.get(k)
        assert kv is not None and kv.value == str(i).encode()


# -- watches ---------------------------------------------------------------------------------
def test_watch_collapses_writes_between_polls(backend: ConsulBackend) -> None:
    ns = _ns()
    start = backend.current_revision() + 1
    with backend.watch(ns, start) as w:
        assert w.next(timeout=0.2) == []  # the first poll: nothing yet
        # between two polls: k written twice, gone created and deleted, x deleted+recreated
        backend.txn([], [Put(ns + "x", b"0")])
        first = w.next(timeout=5)
        assert [(e.kind, e.key, e.value) for e in first] == [("put", ns + "x", b"0")]
        # now write a burst while nobody polls
        backend.put(ns + "k", b"1")
        backend.put(ns + "k", b"2")
        backend.put(ns + "gone", b"1")
        backend.delete(ns + "gone")
        backend.delete(ns + "x")
        r = backend.put(ns + "x", b"again")
        events: list[WatchEvent] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            got = w.next(timeout=0.3)
            if not got:
                break
            events += got
        final = {e.key: (e.kind, e.value) for e in events}
        assert final == {ns + "k": ("put", b"2"), ns + "x": ("put", b"again")}
        assert [e.revision for e in events] == sorted(e.revision for e in events)
        assert events[-1].revision == r


def test_watch_delete_carries_the_index_it_was_seen_at(backend: ConsulBackend) -> None:
    ns = _ns()
    backend.put(ns + "a", b"1")
    listed = backend.list(ns)
    with backend.watch(ns, listed.revision + 1) as w:
        assert w.next(timeout=0.2) == []
        r = backend.delete(ns + "a")
        events = w.next(timeout=5)
        assert [(e.kind, e.key, e.revision) for e in events] == [("delete", ns + "a", r)]


def test_watch_from_the_past_reports_current_values(backend: ConsulBackend) -> None:
    ns = _ns()
    start = backend.current_revision() + 1
    backend.put(ns + "a", b"1")
    backend.put(ns + "a", b"2")
    backend.put(ns + "b", b"1")
    backend.delete(ns + "b")  # happened before the watch's first poll: not reported
    with backend.watch(ns, start) as w:
        events = w.next(timeout=5)
    assert [(e.kind, e.key, e.value) for e in events] == [("put", ns + "a", b"2")]


def test_backend_close_closes_watches_and_refuses_calls(
        consul_dev: harness.ConsulCluster) -> None:
    b = open_backend(consul_dev.url())
    w = b.watch("x/", 1)
    assert isinstance(w, ConsulWatch)
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(w.next(timeout=30)))
    t.start()
    time.sleep(0.3)
    b.close()
    t.join(10)  # long before the 30 s the blocked next() would otherwise wait
    assert not t.is_alive()
    assert w.closed
    with pytest.raises(BackendUnavailable, match="closed"):
        b.get("x")
    b.close()  # idempotent


def test_blocking_watch_does_not_busy_poll(consul_dev: harness.ConsulCluster,
                                          backend: ConsulBackend) -> None:
    ns = _ns()
    backend.put(ns + "a", b"1")
    with backend.watch(ns, backend.current_revision() + 1) as w:
        polls = 0
        original = backend.poll

        def counting(prefix: str, index: int, wait: float) -> tuple[int, list[KeyValue]]:
            nonlocal polls
            polls += 1
            return original(prefix, index, wait)

        backend.poll = counting  # type: ignore[method-assign]
        try:
            assert w.next(timeout=2.0) == []
        finally:
            del backend.poll
        assert polls <= 3, f"{polls} listings in 2 s while nothing changed"


def test_delete_op_inside_txn(backend: ConsulBackend) -> None:
    ns = _ns()
    backend.put(ns + "a", b"1")
    res = backend.txn([], [Delete(ns + "a"), Put(ns + "b", b"2")])
    assert res.succeeded and backend.get(ns + "a") is None
    kv = backend.get(ns + "b")
    assert kv is not None and kv.revision == res.revision
