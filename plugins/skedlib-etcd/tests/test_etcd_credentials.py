"""Least privilege and credentials on a real etcd with authentication enabled.

- a user whose role may read and write only ``sked/`` runs everything: the backend
  contract, ``skedlib-agent``, ``skedlib-scheduler`` and ``sked apply/get/tasks``; reads
  outside the prefix are denied by etcd and skedlib never makes them;
- the password comes from ``$SKED_ETCD_PASSWORD`` or a ``password_file`` that not every
  user can read, so it never needs to be on a command line; a password written in the
  URL works but is warned about once and never printed.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from skedlib.errors import BackendUnavailable
from skedlib.plugins import open_backend
from skedlib.store.base import Backend, Put
from skedlib.testing import BackendConformance
from tests.harness import etcd as harness
from tests.harness.cli import sked_script

harness.skip_module_unless_plugin_importable()

from skedlib_etcd.backend import open_etcd  # noqa: E402 - after the check

pytestmark = pytest.mark.integration

etcd_auth = harness.etcd_auth
etcd_tls = harness.etcd_tls
etcd_tls_auth = harness.etcd_tls_auth

USER, PASSWORD, PREFIX = "sked", "sked user pw", "sked/"
PASSWORD_ENV = "SKED_ETCD_PASSWORD"
URL_WARNING = "the password is written in the URL"


@pytest.fixture
def limited_url(etcd_auth: harness.EtcdCluster, monkeypatch: pytest.MonkeyPatch) -> str:
    """The URL of user ``sked`` (role: readwrite on ``sked/`` only), without its password:
    that is in ``$SKED_ETCD_PASSWORD``, which child processes inherit."""
    etcd_auth.add_prefix_user(USER, PASSWORD, PREFIX)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    url = etcd_auth.url(user=USER)
    assert "password" not in url
    return url


@pytest.fixture
def limited(limited_url: str) -> Iterator[Backend]:
    b = open_backend(limited_url)
    try:
        yield b
    finally:
        b.close()


def _ns() -> str:
    return f"{PREFIX}{uuid.uuid4().hex[:10]}/"


# -- a role limited to the prefix ---------------------------------------------------------------
class TestPrefixLimitedUser(BackendConformance):
    """The whole conformance suite as the prefix-limited user, under ``sked/``."""

    lease_ttl = 2.0
    lease_expiry_slack = 3.0

    @pytest.fixture
    def backend_url(self, limited_url: str) -> str:
        return limited_url

    @pytest.fixture
    def ns(self) -> str:
        return _ns()


def test_outside_the_prefix_is_denied(limited: Backend) -> None:
    """etcd refuses the limited user everything outside ``sked/`` (what the old revision
    read, key "\\x00", did), so skedlib must never need it."""
    for what, call in {
        "get": lambda: limited.get("other/key"),
        "list everything": lambda: limited.list(""),
        "put": lambda: limited.put("other/key", b"1"),
        "revision outside": lambda: limited.current_revision("other/"),
        "revision without a prefix": lambda: limited.current_revision(),
    }.items():
        with pytest.raises(BackendUnavailable, match="denied permission to the user") as info:
            call()
        assert "\n" not in str(info.value), what


def test_inside_the_prefix_everything_works(limited: Backend) -> None:
    ns = _ns()
    start = limited.current_revision(ns)
    rev = limited.put(ns + "a", b"1")
    assert rev > start and limited.current_revision(ns) >= rev
    assert limited.txn([], [Put(ns + "b", b"2")]).succeeded  # writes check their own key
    seen: list[str] = []
    with limited.watch(ns, rev) as w:
        for _ in range(20):
            seen += [e.key for e in w.next(timeout=0.5)]
            if len(seen) >= 2:
                break
    assert seen == [ns + "a", ns + "b"]
    limited.compact(rev)  # compaction reads no key
    limited.compact(10**9)  # beyond the present: clamped to the member's revision


def _sked(url: str, prefix: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sked_script(), "--backend", url, "--prefix", prefix, *argv],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_agent_scheduler_and_cli_run_as_the_prefix_limited_user(
        limited_url: str, tmp_path: Path) -> None:
    from tests.scheduler.conftest import Loop, web_manifest  # the real-process loop

    prefix = _ns()
    loop = Loop(tmp_path, limited_url, prefix)
    try:
        loop.start_agent(1, "--jobs", "--jobs-listen", "127.0.0.1:0", memory=256)
        loop.start_scheduler()
        manifest = tmp_path / "web.yml"
        manifest.write_text(web_manifest(desired=2, memory=64))
        applied = _sked(limited_url, prefix, "apply", "-f", str(manifest))
        assert applied.returncode == 0, applied.stdout + applied.stderr
        loop.wait_healthy("web", 2)
        got = _sked(limited_url, prefix, "get", "services")
        assert got.returncode == 0 and "web" in got.stdout, got.stdout + got.stderr
        tasks = _sked(limited_url, prefix, "tasks")
        assert tasks.returncode == 0 and "default-web-1-0" in tasks.stdout, tasks.stderr
        job = _sked(limited_url, prefix, "job", "submit", "--wait", "--wait-timeout", "60",
                    "--", "true")  # the batch jobs run as that user too
        assert job.returncode == 0, job.stdout + job.stderr + loop.log_text()
        logs = loop.log_text() + applied.stderr + got.stderr + tasks.stderr + job.stderr
        assert "permission denied" not in logs.lower() and "denied permission" not in logs
        assert PASSWORD not in logs
    finally:
        loop.cleanup()


# -- where the password comes from ----------------------------------------------------------
def test_password_from_the_environment(limited: Backend) -> None:
    ns = _ns()
    limited.put(ns + "env", b"1")
    assert limited.get(ns + "env") is not None


def test_password_from_a_file_only_its_owner_reads(etcd_auth: harness.EtcdCluster,
                                                   tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    etcd_auth.add_prefix_user(USER, PASSWORD, PREFIX)
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    secret = tmp_path / "etcd.pw"
    secret.write_text(PASSWORD + "\n")  # as `echo pw > file` leaves it
    secret.chmod(0o600)
    ns = _ns()
    with open_etcd(etcd_auth.url(user=USER, password_file=str(secret))) as b:
        b.put(ns + "file", b"1")
        assert b.get(ns + "file") is not None
    secret.chmod(0o640)  # its group may read it: allowed
    open_etcd(etcd_auth.url(user=USER, password_file=str(secret))).close()


def test_a_world_readable_password_file_is_refused(etcd_auth: harness.EtcdCluster,
                                                   tmp_path: Path) -> None:
    secret = tmp_path / "etcd.pw"
    secret.write_text(PASSWORD)
    secret.chmod(0o644)
    url = etcd_auth.url(user=USER, password_file=str(secret))
    with pytest.raises(BackendUnavailable) as info:
        open_etcd(url).close()
    message = str(info.value)
    assert "\n" not in message and str(secret) in message
    assert "readable by every user" in message and PASSWORD not in message
    run = _sked(url, PREFIX, "get", "services")  # the CLI: one line, exit 1
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1 and str(secret) in run.stderr, run.stderr


def test_a_missing_password_file_is_one_line(etcd_auth: harness.EtcdCluster,
                                             tmp_path: Path) -> None:
    missing = tmp_path / "nope.pw"
    with pytest.raises(BackendUnavailable, match="cannot read the password file") as info:
        open_etcd(etcd_auth.url(user=USER, password_file=str(missing))).close()
    assert str(missing) in str(info.value)


def test_a_password_in_the_url_warns_once_and_is_never_printed(
        etcd_auth: harness.EtcdCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    etcd_auth.add_prefix_user(USER, PASSWORD, PREFIX)
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    url = etcd_auth.url(user=USER, password=PASSWORD)
    env = {k: v for k, v in os.environ.items() if k != PASSWORD_ENV}
    run = subprocess.run([sked_script(), "--backend", url, "--prefix", _ns(), "tasks"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr
    warnings = [line for line in run.stderr.splitlines() if URL_WARNING in line]
    assert len(warnings) == 1, run.stderr
    assert PASSWORD not in run.stderr + run.stdout
    assert "password=***" in warnings[0] and PASSWORD_ENV in warnings[0]
    # a failing command prints the URL redacted too
    wrong = "not-the-pw-42"
    bad = subprocess.run([sked_script(), "--backend", etcd_auth.url(user=USER, password=wrong),
                          "get", "services"], capture_output=True, text=True, timeout=120,
                         env=env)
    assert bad.returncode == 1 and "refused the credentials" in bad.stderr, bad.stderr
    assert wrong not in bad.stderr and "password=***" in bad.stderr


def test_the_password_env_without_a_user_is_ignored(
        etcd_auth: harness.EtcdCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    member = etcd_auth.members[0].endpoint
    with pytest.raises(BackendUnavailable, match="requires authentication"):
        open_etcd(f"etcd://{member}?timeout=1").close()


# -- client certificates -------------------------------------------------------------------
def test_tls_client_certificate_without_a_password(etcd_tls: harness.EtcdCluster,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A client certificate authenticates the client; nothing secret is in the URL."""
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    url = etcd_tls.url()
    assert "password" not in url
    ns = _ns()
    with open_etcd(url) as b:
        rev = b.put(ns + "tls", b"1")
        assert b.current_revision(ns) >= rev


def test_a_prefix_limited_user_by_client_certificate(etcd_tls_auth: harness.EtcdCluster,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """etcd with --client-cert-auth: the certificate's CN is the user; its role covers
    ``sked/`` only, and no password is anywhere."""
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    etcd_tls_auth.add_prefix_user("127.0.0.1", uuid.uuid4().hex, PREFIX)  # the cert's CN
    tls = etcd_tls_auth.tls
    assert tls is not None
    member = etcd_tls_auth.members[0].endpoint
    url = f"etcds://{member}?ca={tls.ca}&cert={tls.cert}&key={tls.key}"
    ns = _ns()
    with open_etcd(url) as b:
        start = b.current_revision(ns)
        rev = b.put(ns + "a", b"1")
        assert rev > start and b.list(ns).items[0].key == ns + "a"
        lease = b.grant_lease(5)
        b.put(ns + "l", b"1", lease=lease)
        b.revoke_lease(lease)
        with pytest.raises(BackendUnavailable, match="denied permission to the user"):
            b.get("other/a")
    with pytest.raises(BackendUnavailable, match="TLS handshake failed"):
        open_etcd(f"etcds://{member}?ca={tls.ca}&timeout=1").close()  # no certificate


def test_help_never_shows_the_password_in_sked_backend() -> None:
    """``--help`` shows the default backend, ``$SKED_BACKEND``: redacted."""
    env = dict(os.environ, SKED_BACKEND="etcd://u:hunter2@h:1?user=u&password=hunter2")
    scheduler = str(Path(sked_script()).with_name("skedlib-scheduler"))
    for argv in ([sked_script(), "--help"], [scheduler, "--help"]):
        run = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
        assert run.returncode == 0, run.stderr
        assert "hunter2" not in run.stdout + run.stderr
        assert "password=***" in run.stdout and "u:***@" in run.stdout
