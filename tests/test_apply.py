"""``apply``: validation against the store, all-or-nothing writes, immutable versions."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec
import pytest

from skedlib.client import Client
from skedlib.codecs import encode, parse_manifest
from skedlib.errors import ConflictError, NotFound, ValidationError
from skedlib.store.base import Compare, Op, Put, TxnResult

TD = """
task_definitions:
  - name: web
    version: {version}
    containers:
      - name: c
        type: bash
        executor: {{start: "{start}"}}
        checks: [{{http: "http://127.0.0.1:$PROVIDED_PORT"}}]
"""
SVC = """
services:
  - {{name: web, task_name: web, task_version: {version}, desired: {desired}, min: {min}}}
clusters:
  - {{name: default, services: [web]}}
"""


@pytest.fixture(params=["memory", "sqlite"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Client]:
    url = "memory://" if request.param == "memory" else f"sqlite://{tmp_path}/s.db"
    with Client.open(url) as c:
        yield c


def _manifest(version: int = 1, start: str = "run", desired: int = 2, minimum: int = 1) -> str:
    return TD.format(version=version, start=start) + SVC.format(
        version=version, desired=desired, min=minimum)


def test_apply_writes_then_is_a_no_op(client: Client) -> None:
    first = client.apply(parse_manifest(_manifest(), "m.yml"))
    assert set(first.created) == {"task_definitions/web:1", "services/web", "clusters/default"}
    rev = client.backend.current_revision()
    again = client.apply(parse_manifest(_manifest(), "m.yml"))
    assert again.created == again.configured == ()
    assert len(again.unchanged) == 3
    assert client.backend.current_revision() == rev
    td = client.task_definition("web", 1)
    assert td is not None
    assert td.grace_period == 60 * 10**9 and td.max_attempts == 10  # defaults applied
    check = td.containers[0].checks[0]
    assert (check.interval, check.timeout) == ("10s", "5s")
    svc = client.service("web")
    assert svc is not None and svc.max == 0  # 0: as many as desired, whatever it becomes
    assert svc.update.deadline == 600 * 10**9


def test_changed_service_is_configured(client: Client) -> None:
    client.apply(parse_manifest(_manifest(), "m.yml"))
    res = client.apply(parse_manifest(_manifest(desired=3), "m.yml"))
    assert res.configured == ("services/web",)
    svc = client.service("web")
    assert svc is not None and svc.desired == 3


def test_task_definition_versions_are_immutable(client: Client) -> None:
    client.apply(parse_manifest(_manifest(), "m.yml"))
    rev = client.backend.current_revision()
    with pytest.raises(ValidationError, match=r'task_definitions\[0\] "web": field version: '
                       'version 1 of "web" already exists with different content'):
        client.apply(parse_manifest(_manifest(start="other", desired=5), "m.yml"))
    assert client.backend.current_revision() == rev
    svc = client.service("web")
    assert svc is not None and svc.desired == 2  # the service change in the same file: not written


@pytest.mark.parametrize(("text", "message"), [
    (SVC.format(version=1, desired=2, min=1),
     'services[0] "web": field task_version: task definition "web" version 1 does not exist'),
    (_manifest(desired=1, minimum=3), "need 0 ≤ min ≤ desired ≤ max"),
    (TD.format(version=1, start="x") + "clusters: [{name: default, services: [nope]}]",
     'clusters[0] "default": field services[0]: service "nope" does not exist'),
    (TD.format(version=1, start="x").replace("name: web", "name: a/b", 1),
     "must not contain '/'"),
    (TD.format(version=1, start="x") + "clusters: [{name: prod-eu}]", "must not contain '-'"),
    (TD.format(version=1, start="x").replace("checks: [{http: \"http://127.0.0.1:$PROVIDED_PORT"
                                             "\"}]", "checks: [{tcp: a, http: b}]"),
     "a check needs exactly one of http, tcp, script, ttl, docker"),
    (TD.format(version=1, start="x").replace('{start: "x"}', "{stop: 1}"),
     "field containers[0].executor: bash executor"),
])
def test_bad_input_is_one_line_and_writes_nothing(client: Client, text: str,
                                                  message: str) -> None:
    before = client.backend.list("").items
    with pytest.raises(ValidationError) as info:
        client.apply(parse_manifest(text, "m.yml"))
    assert "\n" not in str(info.value)
    assert message in str(info.value)
    assert client.backend.list("").items == before


def test_duplicate_cluster_message(client: Client) -> None:
    text = _manifest() + "  - {name: default, services: []}\n"
    with pytest.raises(ValidationError, match=r"clusters\[1\]: default appears twice"):
        client.apply(parse_manifest(text, "m.yml"))


def test_service_can_reference_a_stored_task_definition(client: Client) -> None:
    client.apply(parse_manifest(TD.format(version=4, start="x"), "a.yml"))
    res = client.apply(parse_manifest(SVC.format(version=4, desired=1, min=0), "b.yml"))
    assert "services/web" in res.created


def test_delete(client: Client) -> None:
    client.apply(parse_manifest(_manifest(), "m.yml"))
    with pytest.raises(ConflictError, match="used by service 'web'"):
        client.delete("task_definition", "web:1")
    client.delete("service", "web")
    assert client.service("web") is None
    cluster = client.cluster("default")
    assert cluster is not None and cluster.services == []
    client.delete("task_definition", "web")
    assert client.task_definitions() == []
    with pytest.raises(NotFound):
        client.delete("service", "web")


def test_large_manifest_on_a_limited_backend_is_chunked() -> None:
    tds = "task_definitions:\n" + "".join(
        f"  - {{name: t{i}, version: 1, containers: [{{name: c, type: bash, executor: "
        f"{{start: x}}}}]}}\n" for i in range(40))
    with Client.open("memory://?max_txn_ops=16") as c:
        res = c.apply(parse_manifest(tds, "big.yml"))
        assert len(res.created) == 40
        assert len(c.task_definitions()) == 40


def test_a_chunked_apply_that_loses_a_race_writes_nothing() -> None:
    """Over the backend's transaction limit, apply writes in chunks; when a later chunk's
    compare fails, the earlier chunks are undone, so the store never holds part of it."""
    with Client.open("memory://?max_txn_ops=8") as c:
        c.apply(parse_manifest(_manifest(), "m.yml"))
        tds = "task_definitions:\n" + "".join(
            f"  - {{name: t{i}, version: 1, containers: [{{name: c, type: bash, executor: "
            f"{{start: x}}}}]}}\n" for i in range(20))
        text = tds + SVC.format(version=1, desired=7, min=1)
        contested = c.keys.service("web")
        real_txn = c.backend.txn
        calls = 0

        def racing_txn(compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
            nonlocal calls
            if any(cmp.key == contested for cmp in compares):
                calls += 1  # another writer changes the service just before each attempt
                svc = c.service("web")
                assert svc is not None
                c.backend.put(contested, encode(msgspec.structs.replace(svc, desired=100 + calls)))
            return real_txn(compares, ops)

        c.backend.txn = racing_txn  # type: ignore[method-assign]
        before = {kv.key: kv.value for kv in c.backend.list("").items}
        with pytest.raises(ConflictError, match="kept changing"):
            c.apply(parse_manifest(text, "big.yml"))
        c.backend.txn = real_txn  # type: ignore[method-assign]
        after = {kv.key: kv.value for kv in c.backend.list("").items}
        assert calls > 1
        assert after.keys() == before.keys()  # none of the 20 new definitions stayed
        assert {k: v for k, v in after.items() if k != contested} == {
            k: v for k, v in before.items() if k != contested}
        svc = c.service("web")
        assert svc is not None and svc.desired == 100 + calls  # the other writer's value is kept
        res = c.apply(parse_manifest(text, "big.yml"))  # without the race it goes through
        assert len(res.created) == 20 and res.configured == ("services/web",)


def test_an_undo_keeps_a_newer_write_by_someone_else() -> None:
    with Client.open("memory://?max_txn_ops=4") as c:
        key_a, key_b = c.keys.service("a"), c.keys.service("b")
        c.backend.put(key_a, b"old-a")
        rev_a = c.backend.get(key_a)
        assert rev_a is not None
        ops: list[Op] = [Put(key_a, b"new-a"), Put(key_b, b"new-b"),
                         Put(c.keys.service("c"), b"new-c"), Put(c.keys.service("d"), b"d")]
        compares = [Compare(key_a, rev_a.revision), Compare(key_b, 0),
                    Compare(c.keys.service("c"), 0), Compare(c.keys.service("d"), 0)]
        real_txn = c.backend.txn
        seen = 0

        def racing_txn(cmps: Sequence[Compare], txn_ops: Sequence[Op]) -> TxnResult:
            nonlocal seen
            seen += 1
            res = real_txn(cmps, txn_ops)
            if seen == 1:  # after the first chunk: someone rewrites b, and takes c
                real_txn([], [Put(key_b, b"theirs"), Put(c.keys.service("c"), b"theirs")])
            return res

        c.backend.txn = racing_txn  # type: ignore[method-assign]
        assert c._commit_pairs(compares, ops, {key_a: b"old-a", key_b: None}) == 0
        c.backend.txn = real_txn  # type: ignore[method-assign]
        got = {kv.key: kv.value for kv in c.backend.list(c.keys.services).items}
        assert got == {key_a: b"old-a", key_b: b"theirs", c.keys.service("c"): b"theirs"}
