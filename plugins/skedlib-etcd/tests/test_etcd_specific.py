"""etcd-specific behaviour: URL parsing, bad input, limits, auth and TLS.

Everything but the URL parsing runs against real etcd servers (see tests/harness/etcd.py).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from skedlib.errors import BackendUnavailable, Compacted, LeaseExpired, TxnTooLarge
from skedlib.plugins import get_registry, open_backend
from skedlib.runtime import Group, write_groups
from skedlib.store.base import (
    Backend,
    Compare,
    Delete,
    Put,
    Watch,
    WatchEvent,
)
from tests.harness import etcd as harness
from tests.harness.cli import sked_fails

harness.skip_module_unless_plugin_importable()

from skedlib_etcd.backend import (  # noqa: E402 - after the check above
    DEFAULT_TIMEOUT,
    EtcdBackend,
    open_etcd,
    parse_url,
    redact,
)

etcd_single = harness.etcd_single
etcd_auth = harness.etcd_auth
etcd_tls = harness.etcd_tls
etcd_limited = harness.etcd_limited

# on top of a timeout: far above the scheduling noise of a loaded machine; a call that
# hung would still exceed it
SLACK = 2.0


@pytest.fixture
def ns() -> str:
    return f"specific/{uuid.uuid4().hex[:10]}/"


@pytest.fixture
def backend(etcd_single: harness.EtcdCluster) -> Iterator[Backend]:
    b = open_backend(etcd_single.url())
    try:
        yield b
    finally:
        b.close()


def _unavailable_within(url: str, seconds: float) -> str:
    """Open ``url``; assert BackendUnavailable within ``seconds``; return its message."""
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable) as info:
        open_etcd(url).close()
    elapsed = time.monotonic() - t0
    message = str(info.value)
    assert elapsed < seconds + SLACK, f"took {elapsed:.2f}s: {message}"
    assert "\n" not in message
    return message


# -- URL parsing (no server) ------------------------------------------------------------------
def test_parse_url_members_and_options() -> None:
    o = parse_url("etcd://a:1,b:2,[::1]:3,c?timeout=2.5")
    assert o.endpoints == ("a:1", "b:2", "[::1]:3", "c:2379")
    assert o.timeout == 2.5 and not o.tls and o.user is None and o.max_txn_ops == 128
    assert parse_url("etcd://h").timeout == DEFAULT_TIMEOUT
    assert parse_url("etcd://a:1,a:1,b:2").endpoints == ("a:1", "b:2")  # duplicates once
    o = parse_url("etcd://u%40x:p%3Ass@h:1")
    assert (o.user, o.password) == ("u@x", "p:ss")
    o = parse_url("etcd://h:1?user=root&password=a%20b&max_txn_ops=512")
    assert (o.user, o.password, o.max_txn_ops) == ("root", "a b", 512)
    assert parse_url("etcds://h:1").tls
    o = parse_url("etcd://h:1?ca=/ca.pem&cert=/c.pem&key=/k.pem")
    assert o.tls and (o.ca, o.cert, o.key) == ("/ca.pem", "/c.pem", "/k.pem")


@pytest.mark.parametrize(("url", "says"), [
    ("http://127.0.0.1:2379", "not an etcd URL"),
    ("consul://h:8500", "not an etcd URL"),
    ("etcd://", "no etcd member"),
    ("etcd://a:1,,b:2", "empty member address"),
    ("etcd://h:0", "bad port"),
    ("etcd://h:99999", "bad port"),
    ("etcd://h:abc", "bad port"),
    ("etcd://[::1", "IPv6"),
    ("etcd://a:1,[::1:2", "IPv6"),
    ("etcd://h:1/some/path", "unexpected path"),
    ("etcd://h:1?timeout=0", "timeout must be a positive number"),
    ("etcd://h:1?timeout=-1", "timeout must be a positive number"),
    ("etcd://h:1?timeout=soon", "timeout must be a positive number"),
    ("etcd://h:1?timeout=inf", "timeout must be a positive number"),
    ("etcd://h:1?timeout=nan", "timeout must be a positive number"),
    ("etcd://h:1?timout=5", "unknown option(s) timout"),
    ("etcd://h:1?user=root", "both user and password"),
    ("etcd://h:1?cert=/c.pem", "both cert and key"),
    ("etcd://h:1?max_txn_ops=0", "max_txn_ops must be a positive integer"),
    ("etcd://h:1?ca=/nonexistent/ca.pem", "cannot read the TLS CA file"),
])
def test_bad_urls_are_one_clear_line(url: str, says: str) -> None:
    message = _unavailable_within(url, 0.5)
    assert says in message
    assert message.startswith(url.split("?")[0].split("/some")[0])  # names the backend


def test_passwords_never_appear_in_messages() -> None:
    assert redact("etcd://h:1?user=u&password=hunter2&timeout=1") == \
        "etcd://h:1?user=u&password=***&timeout=1"
    assert redact("etcd://u:hunter2@h:1") == "etcd://u:***@h:1"
    port = harness.free_ports(1)[0]
    message = _unavailable_within(f"etcd://127.0.0.1:{port}?user=u&password=hunter2"
                                  "&timeout=0.5", 0.5)
    assert "hunter2" not in message and "password=***" in message


_FORK_SUPPORT = ("import os, skedlib_etcd.backend; from grpc._cython import cygrpc; "
                 "print(os.environ['GRPC_ENABLE_FORK_SUPPORT'], "
                 "cygrpc.is_fork_support_enabled())")


@pytest.mark.parametrize(("env", "said"), [(None, "0 False"), ("1", "1 True")])
def test_grpc_fork_handlers_are_off_unless_the_environment_asks(env: str | None,
                                                                said: str) -> None:
    # the agent forks to exec while watch threads are inside gRPC calls: the plugin turns
    # gRPC's fork handlers off in its C core and its Python side alike, before grpc loads,
    # and a user's own setting wins
    environ = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    if env is not None:
        environ["GRPC_ENABLE_FORK_SUPPORT"] = env
    out = subprocess.run([sys.executable, "-c", _FORK_SUPPORT], env=environ, check=True,
                         capture_output=True, text=True, timeout=60).stdout
    assert out.split() == said.split()


def test_the_plugin_is_registered() -> None:
    harness.require_etcd_plugin()
    assert {"etcd", "etcds"} <= set(get_registry().names("backends"))


def test_a_wrong_scheme_through_the_registry_names_the_installed_ones() -> None:
    # the registry, not the plugin, answers for schemes no plugin offers
    from skedlib.errors import SkedError

    with pytest.raises(SkedError, match="etcd"):
        open_backend("http://127.0.0.1:2379")


# -- bad input against real sockets ---------------------------------------------------------
def test_unreachable_members_fail_within_the_timeout() -> None:
    ports = harness.free_ports(2)
    url = f"etcd://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}?timeout=1"
    message = _unavailable_within(url, 1.0)
    print(f"\nunreachable: {message}")
    assert message.startswith(url + ": ")
    assert "no etcd member answered within 1s" in message
    assert f"127.0.0.1:{ports[0]}:" in message and f"127.0.0.1:{ports[1]}:" in message
    assert "Connection refused" in message


def test_a_server_that_never_answers_does_not_hang_the_client() -> None:
    # something listens (the TCP handshake succeeds) but never speaks HTTP/2
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        message = _unavailable_within(f"etcd://127.0.0.1:{port}?timeout=1", 1.0)
    print(f"\nsilent server: {message}")
    assert "no etcd member answered within 1s" in message


def test_one_dead_member_in_the_url_is_skipped(etcd_single: harness.EtcdCluster) -> None:
    dead = harness.free_ports(1)[0]
    live = etcd_single.members[0].endpoint
    t0 = time.monotonic()
    # with a 40 s timeout a first attempt may take 5 s (timeout/8): a refused connection
    # must not wait for that, it fails over at once
    b = open_etcd(f"etcd://127.0.0.1:{dead},{live}?timeout=40")
    try:
        b.put("specific/dead-member", b"1")
        assert b.current_endpoint == live
    finally:
        b.close()
    assert time.monotonic() - t0 < 3.0


def test_closed_backend_raises_and_closes_its_watches(etcd_single: harness.EtcdCluster,
                                                      ns: str) -> None:
    b = open_etcd(etcd_single.url())
    w = b.watch(ns, 1)
    b.close()
    b.close()  # idempotent
    assert w.closed and w.next(timeout=0.1) == []
    with pytest.raises(BackendUnavailable, match="closed"):
        b.get(ns + "x")


def test_closing_while_in_use_raises_only_backend_errors(etcd_single: harness.EtcdCluster,
                                                        ns: str) -> None:
    from skedlib.errors import BackendError

    b = open_etcd(etcd_single.url())
    stray: list[BaseException] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                b.put(ns + "k", b"1")
                b.list(ns)
            except BackendError:
                pass
            except BaseException as exc:  # anything else escaping the backend is a bug
                stray.append(exc)

    def follow() -> None:
        try:
            w = b.watch(ns, 1)
            while not stop.is_set() and not w.closed:
                w.next(timeout=0.1)
        except BackendError:
            pass
        except BaseException as exc:
            stray.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    threads.append(threading.Thread(target=follow))
    for t in threads:
        t.start()
    time.sleep(0.5)
    b.close()
    time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(10)
    assert not stray, stray


# -- semantics on a real server ---------------------------------------------------------------
def test_several_ops_on_one_key_apply_in_order(backend: Backend, ns: str) -> None:
    res = backend.txn([], [Put(ns + "a", b"1"), Delete(ns + "a"),
                           Delete(ns + "b"), Put(ns + "b", b"2"),
                           Put(ns + "c", b"1"), Put(ns + "c", b"3")])
    assert res.succeeded
    assert backend.get(ns + "a") is None
    got = {kv.key[len(ns):]: kv.value for kv in backend.list(ns).items}
    assert got == {"b": b"2", "c": b"3"}


def test_unicode_keys_and_empty_values(backend: Backend, ns: str) -> None:
    backend.put(ns + "ключ/é✓", b"")
    kv = backend.get(ns + "ключ/é✓")
    assert kv is not None and kv.value == b""
    assert [k.key for k in backend.list(ns + "ключ/").items] == [ns + "ключ/é✓"]


def test_bad_lease_ids(backend: Backend, ns: str) -> None:
    for bogus in ["not-a-number", "-5", "0", "99999999999999999999"]:
        with pytest.raises(LeaseExpired):
            backend.put(ns + "x", b"1", lease=bogus)
        with pytest.raises(LeaseExpired):
            backend.keepalive(bogus)
        backend.revoke_lease(bogus)  # a no-op
    with pytest.raises(LeaseExpired):
        backend.keepalive("7777777")  # well-formed, unknown to etcd
    assert backend.get(ns + "x") is None


def test_lease_ttl_is_at_least_the_minimum(backend: Backend, ns: str) -> None:
    assert backend.min_lease_ttl == 2.0
    lease = backend.grant_lease(0.1)  # raised to 2 s
    backend.put(ns + "short", b"1", lease=lease)
    time.sleep(1.0)
    assert backend.get(ns + "short") is not None
    backend.revoke_lease(lease)


def test_compact_and_compacted_watch(backend: Backend, ns: str) -> None:
    first = backend.put(ns + "c", b"1")
    backend.put(ns + "c", b"2")
    now = backend.current_revision()
    backend.compact(now + 1000)  # clamped to the current revision
    backend.compact(now)  # again: a no-op
    with backend.watch(ns, first) as w, pytest.raises(Compacted) as info:
        w.next(timeout=5)
    assert info.value.compact_revision == now
    assert "compacted" in str(info.value)
    later = backend.put(ns + "c", b"3")
    with backend.watch(ns, now) as w:  # the compaction revision itself is still watchable
        events = w.next(timeout=5)
    assert [e.revision for e in events] == [now, later]


def test_current_revision_and_list_revision_agree(backend: Backend, ns: str) -> None:
    rev = backend.put(ns + "r", b"1")
    assert backend.current_revision() >= rev
    listed = backend.list(ns)
    assert listed.revision >= rev and [kv.revision for kv in listed.items] == [rev]
    assert backend.list("").revision >= rev  # the empty prefix lists everything


# -- limits -----------------------------------------------------------------------------------
def test_txn_limit_is_checked_before_sending(backend: Backend, ns: str) -> None:
    assert backend.max_txn_ops == 128
    ok = backend.txn([Compare(ns + "fence", 0)], [Put(f"{ns}k{i}", b"v") for i in range(127)])
    assert ok.succeeded
    with pytest.raises(TxnTooLarge, match="128"):
        backend.txn([Compare(ns + "fence", 0)], [Put(f"{ns}j{i}", b"v") for i in range(128)])
    assert backend.list(ns + "j").items == []


def test_server_side_limits_map_to_txn_too_large(etcd_limited: harness.EtcdCluster,
                                                 ns: str) -> None:
    with open_etcd(etcd_limited.url()) as b:  # the client thinks 128, the server says 16
        with pytest.raises(TxnTooLarge, match="too many operations"):
            b.txn([], [Put(f"{ns}{i}", b"v") for i in range(17)])
        with pytest.raises(TxnTooLarge, match="too large"):
            b.put(ns + "big", b"x" * 100_000)  # over --max-request-bytes
        assert b.list(ns).items == []
    with open_etcd(etcd_limited.url(max_txn_ops=16)) as b:
        assert b.max_txn_ops == 16
        with pytest.raises(TxnTooLarge, match="limit of 16"):
            b.txn([], [Put(f"{ns}{i}", b"v") for i in range(17)])
        result = write_groups(b, [Group(ops=(Put(f"{ns}g{i}/a", b"1"),
                                              Put(f"{ns}g{i}/b", b"1"))) for i in range(20)],
                              fence=[Compare(ns + "fence", 0)])
        assert result.succeeded and result.total_chunks == 3  # 7 groups of 2 per chunk
        assert len(b.list(ns + "g").items) == 40


def _drain(w: Watch, want: int, timeout: float = 10.0) -> list[WatchEvent]:
    events: list[WatchEvent] = []
    deadline = time.monotonic() + timeout
    while len(events) < want and time.monotonic() < deadline:
        events += w.next(timeout=0.5)
    return events


# -- auth -------------------------------------------------------------------------------------
def test_auth_good_credentials(etcd_auth: harness.EtcdCluster, ns: str) -> None:
    url = etcd_auth.url()
    assert "user=root" in url
    with open_backend(url) as b:
        rev = b.put(ns + "a", b"1")
        lease = b.grant_lease(5)
        b.put(ns + "l", b"1", lease=lease)
        b.keepalive(lease)
        with b.watch(ns, rev) as w:
            assert [e.key for e in _drain(w, 2)] == [ns + "a", ns + "l"]
        b.revoke_lease(lease)
    member = etcd_auth.members[0].endpoint
    with open_backend(f"etcd://root:s3cret%20pw@{member}") as b:  # userinfo form
        assert b.get(ns + "a") is not None


def test_auth_bad_credentials_are_refused_at_once(etcd_auth: harness.EtcdCluster) -> None:
    member = etcd_auth.members[0].endpoint
    message = _unavailable_within(etcd_auth.url(password="wrong"), 1.0)
    print(f"\nwrong password: {message}")
    assert "refused the credentials" in message
    assert "password=***" in message and "password=wrong" not in message
    message = _unavailable_within(etcd_auth.url(user="nobody", password="x"), 1.0)
    assert "refused the credentials" in message
    message = _unavailable_within(f"etcd://{member}", 1.0)
    print(f"no credentials: {message}")
    assert "requires authentication" in message


def test_auth_token_lost_by_a_restart_is_renewed(etcd_auth: harness.EtcdCluster,
                                                 ns: str) -> None:
    with open_backend(etcd_auth.url()) as b:
        start = b.put(ns + "before", b"1")
        with b.watch(ns, start) as w:
            assert len(_drain(w, 1)) == 1
            etcd_auth.restart(etcd_auth.members[0])  # simple tokens live in memory
            b.put(ns + "after", b"1")  # re-authenticates transparently
            assert [e.key for e in _drain(w, 1)] == [ns + "after"]


# -- TLS --------------------------------------------------------------------------------------
def test_tls_with_client_certificate(etcd_tls: harness.EtcdCluster, ns: str) -> None:
    url = etcd_tls.url()
    assert url.startswith("etcds://") and "cert=" in url
    with open_backend(url) as b:
        rev = b.put(ns + "a", b"1")
        with b.watch(ns, rev) as w:
            assert len(_drain(w, 1)) == 1
    with open_backend(url.replace("etcds://", "etcd://")) as b:  # ca= alone implies TLS
        assert b.get(ns + "a") is not None


def test_tls_misconfiguration_is_one_clear_line(etcd_tls: harness.EtcdCluster,
                                                tmp_path: Path) -> None:
    tls = etcd_tls.tls
    assert tls is not None
    member = etcd_tls.members[0].endpoint
    cases = {
        "wrong CA": etcd_tls.url(ca=str(tls.other_ca), timeout=1),
        "no client certificate": f"etcds://{member}?ca={tls.ca}&timeout=1",
        "plaintext to a TLS port": f"etcd://{member}?timeout=1",
        "system CAs only": f"etcds://{member}?timeout=1",
    }
    for what, url in cases.items():
        message = _unavailable_within(url, 1.0)
        print(f"\n{what}: {message}")
        assert "no etcd member answered within 1s" in message
        if what == "plaintext to a TLS port":
            assert "does it expect TLS (etcds://, ca=...)?" in message
        else:
            assert "TLS handshake failed" in message
    missing = _unavailable_within(etcd_tls.url(ca=str(tmp_path / "nope.pem")), 0.1)
    assert "cannot read the TLS CA file" in missing
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    assert "is not PEM" in _unavailable_within(etcd_tls.url(ca=str(not_pem)), 0.1)


def test_the_cli_says_what_is_wrong_in_one_line(etcd_tls: harness.EtcdCluster,
                                                etcd_auth: harness.EtcdCluster) -> None:
    tls = etcd_tls.tls
    assert tls is not None
    ca_key = str(tls.ca.with_suffix(".key"))  # a key that does not match the certificate
    cases = {
        etcd_tls.url(ca=str(tls.other_ca), timeout=1): "TLS handshake failed",
        etcd_tls.url(cert=str(tls.cert), key=ca_key, timeout=1): "key does not match",
        f"etcd://{etcd_tls.members[0].endpoint}?timeout=1": "no etcd member answered",
        etcd_auth.url(password="wrong", timeout=1): "refused the credentials",
        f"etcd://127.0.0.1:{harness.free_ports(1)[0]}?timeout=1": "Connection refused",
        "etcd://h:1?timout=1": "unknown option",
    }
    for url, says in cases.items():
        # a password in the URL adds its one warning line (test_etcd_credentials.py)
        lines = [line for line in sked_fails(url).splitlines()
                 if "the password is written in the URL" not in line]
        assert len(lines) == 1, lines  # no gRPC log lines, no traceback
        assert lines[0].startswith(f"sked: error: {redact(url)}: "), lines[0]
        assert says in lines[0]


def test_backend_class_is_exported() -> None:
    assert issubclass(EtcdBackend, Backend)


def test_credentials_for_a_server_without_auth_are_ignored(
        etcd_single: harness.EtcdCluster, ns: str) -> None:
    with open_etcd(etcd_single.url(user="root", password="unused")) as b:
        b.put(ns + "a", b"1")
        assert b.get(ns + "a") is not None


def _watch_messages_sent(cluster: harness.EtcdCluster) -> float:
    """The watch messages the member sent, from its /metrics."""
    member = cluster.members[0]
    url = f"http://{member.endpoint}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return sum(float(value) for value in re.findall(
        r'^grpc_server_msg_sent_total\{[^}]*grpc_method="Watch"[^}]*\} (\S+)$', text,
        re.MULTILINE))


def test_a_watch_of_deletes_gets_no_message_for_puts() -> None:
    """The kinds a watch leaves out are filtered by etcd, not sent and dropped here."""
    harness.require_etcd_plugin()
    cluster = harness.EtcdCluster(1, name=f"kinds-{uuid.uuid4().hex[:6]}")
    cluster.start()
    try:
        with open_etcd(cluster.url()) as b:
            prefix = "kinds/"
            w = b.watch_kinds(prefix, b.current_revision(prefix) + 1, ["delete"])
            with w:
                b.put(prefix + "ready", b"")
                b.delete(prefix + "ready")
                got = w.next(timeout=10)  # the watch is established
                assert [(e.kind, e.key) for e in got] == [("delete", prefix + "ready")]
                before = _watch_messages_sent(cluster)
                for i in range(20):
                    b.put(f"{prefix}{i}", b"x")
                b.delete(prefix + "7")
                got = w.next(timeout=10)
                after = _watch_messages_sent(cluster)
            assert [(e.kind, e.key) for e in got] == [("delete", prefix + "7")]
            # one message (the delete) for 21 revisions under the prefix
            assert after - before == 1
    finally:
        cluster.stop()
