"""The ACL token off the command line, and a token whose rules cover only ``sked/``.

Against the ``consul_acl`` agent (ACLs on, default policy deny): the token comes from a
``token_file`` or ``$CONSUL_HTTP_TOKEN_FILE`` that not every user can read; a token in the
URL works but is warned about once and never printed; a token limited to the key prefix
``sked/`` (and sessions) is enough for the storage contract under that prefix.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest
from skedlib_consul.backend import open_consul
from skedlib_consul.options import parse_url

from skedlib.errors import BackendUnavailable
from skedlib.plugins import open_backend
from skedlib.store import credentials
from tests.harness import consul as harness

consul_acl = harness.consul_acl
consul_acl_tls = harness.consul_acl_tls

pytestmark = [pytest.mark.integration]

PREFIX = "sked/"
LIMITED_RULES = 'key "sked/" { policy = "write" }\nsession "" { policy = "write" }\n'


def _ns() -> str:
    return f"{PREFIX}{uuid.uuid4().hex[:10]}/"


def _limited_token(cluster: harness.ConsulCluster) -> str:
    """A client token that may write keys under ``sked/`` and sessions, nothing more."""
    status, body = cluster.members[0].api(
        "PUT", "/v1/acl/create", {"Name": "sked", "Type": "client", "Rules": LIMITED_RULES},
        token=harness.ACL_MASTER_TOKEN, timeout=5)
    assert status == 200, body
    return str(body["ID"])


def _secret(tmp_path: Path, token: str, mode: int) -> Path:
    path = tmp_path / "consul.token"
    path.write_text(token + "\n")
    path.chmod(mode)
    return path


def test_a_prefix_limited_token_from_a_file(consul_acl: harness.ConsulCluster,
                                            tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    secret = _secret(tmp_path, _limited_token(consul_acl), 0o600)
    url = consul_acl.url(token_file=str(secret))
    ns = _ns()
    with open_backend(url) as b:
        start = b.current_revision(ns)
        rev = b.put(ns + "a", b"1")
        assert rev > start and b.current_revision(ns) >= rev
        assert [kv.key for kv in b.list(ns).items] == [ns + "a"]
        lease = b.grant_lease(20)
        b.put(ns + "leased", b"1", lease=lease)
        b.revoke_lease(lease)
        with pytest.raises(BackendUnavailable, match="Permission denied"):
            b.put("other/a", b"1")  # outside the prefix: refused


def test_a_prefix_limited_token_over_tls(
        consul_acl_tls: tuple[harness.ConsulCluster, dict[str, Path]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # how a production agent runs: ACLs on, the HTTP API over TLS only
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    cluster, files = consul_acl_tls
    secret = _secret(tmp_path, _limited_token(cluster), 0o600)
    ns = _ns()
    with open_backend(cluster.url(token_file=str(secret), ca=str(files["ca"]))) as b:
        rev = b.put(ns + "a", b"over tls")
        kv = b.get(ns + "a")
        assert kv is not None and kv.value == b"over tls" and kv.revision == rev
        with pytest.raises(BackendUnavailable, match="Permission denied"):
            b.put("other/a", b"1")  # outside the prefix: refused
    # a wrong token over TLS is refused as well, in one line without the token
    (tmp_path / "w").mkdir()
    wrong = _secret(tmp_path / "w", str(uuid.UUID(int=0)), 0o600)
    with open_backend(cluster.url(token_file=str(wrong), ca=str(files["ca"]), timeout=2)
                      ) as bad, pytest.raises(BackendUnavailable) as info:
        bad.put(ns + "b", b"1")
    assert "\n" not in str(info.value) and str(uuid.UUID(int=0)) not in str(info.value)


def test_the_token_file_from_the_environment(consul_acl: harness.ConsulCluster,
                                             tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    secret = _secret(tmp_path, harness.ACL_MASTER_TOKEN, 0o640)
    monkeypatch.setenv("CONSUL_HTTP_TOKEN_FILE", str(secret))
    ns = _ns()
    with open_backend(consul_acl.url()) as b:
        b.put(ns + "k", b"v")
        assert b.get(ns + "k") is not None


def test_a_world_readable_token_file_is_refused(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    secret = _secret(tmp_path, "s3cret-token", 0o644)
    for url, env in ((f"consul://127.0.0.1:1?token_file={secret}", None),
                     ("consul://127.0.0.1:1", str(secret))):
        if env is not None:
            monkeypatch.setenv("CONSUL_HTTP_TOKEN_FILE", env)
        with pytest.raises(BackendUnavailable) as info:
            parse_url(url)
        message = str(info.value)
        assert "\n" not in message and str(secret) in message
        assert "readable by every user" in message and "s3cret" not in message
    with pytest.raises(BackendUnavailable, match="not both"):
        parse_url(f"consul://127.0.0.1:1?token=t&token_file={secret}")


def test_a_token_in_the_url_warns_once_and_is_never_printed(
        consul_acl: harness.ConsulCluster, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(credentials, "_warned", set())  # as in a fresh process
    caplog.set_level(logging.WARNING)
    url = consul_acl.url(token=harness.ACL_MASTER_TOKEN)
    for _ in range(2):
        open_consul(url).close()
    warnings = [r.getMessage() for r in caplog.records
                if "the ACL token is written in the URL" in r.getMessage()]
    assert len(warnings) == 1 and "token=***" in warnings[0]
    assert "CONSUL_HTTP_TOKEN" in warnings[0]
    assert harness.ACL_MASTER_TOKEN not in caplog.text
